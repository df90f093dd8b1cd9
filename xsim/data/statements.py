"""True/false statement tasks generated offline from packaged tables, after Marks & Tegmark's Geometry of Truth.

Labels: 1 = the statement is true, 0 = false. Each generator pairs every true statement with a false one
built from the same pieces, so no single city, country or number predicts the label: in "cities", every
city and every country appears in exactly one true and one false statement per template.

The country table is xsim/data/tables/countries.csv (193 sovereign states: the UN members without Israel,
whose capital is disputed, plus Vatican City). Two rules keep the labels right and the task non-trivial:
  * rows whose capital and country share a word or a 4-letter prefix (Kuwait City / Kuwait, Tunis /
    Tunisia, Santo Domingo / Dominican Republic) are left out, since the answer could be read off the
    spelling;
  * `shared_city_name_in` lists the countries that have another well-known city of the same name (London,
    Ontario; Victoria, British Columbia); "The city of London is in Canada." could be read as true, so
    such countries are never used for that city's false statements.
The "capitals" task also leaves out rows with a `capital_note` (several capitals, or one in dispute).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
import re
import unicodedata

import numpy as np

from xsim.data.task import Task, sample_examples

COUNTRY_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tables", "countries.csv")

CITY_TEMPLATES = (
    "The city of {city} is in {country}.",
    "{city} is a city in {country}.",
    "{city} is located in {country}.",
)
CAPITAL_TEMPLATES = (
    "{city} is the capital of {country}.",
    "The capital of {country} is {city}.",
)
_STOPWORDS = frozenset({"the", "of", "and", "la", "de"})

_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


@dataclasses.dataclass(frozen=True)
class Country:
  name: str                               # "United Kingdom"
  in_sentence: str                        # "the United Kingdom", as it reads inside a sentence
  capital: str
  shared_city_name_in: tuple[str, ...]    # countries with another well-known city named like `capital`
  capital_note: str                       # non-empty when the capital is split or disputed


@functools.lru_cache(maxsize=None)
def load_countries(path: str = COUNTRY_TABLE) -> tuple[Country, ...]:
  """The country table, in file order; checks that every `shared_city_name_in` entry is a country in it."""
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  countries = tuple(
      Country(r["country"], r["country_in_sentence"], r["capital"],
              tuple(s for s in r["shared_city_name_in"].split(";") if s), r["capital_note"])
      for r in rows)
  names = {c.name for c in countries}
  if len(names) != len(countries):
    raise ValueError(f"{path}: country names must be unique.")
  for c in countries:
    unknown = set(c.shared_city_name_in) - names
    if unknown:
      raise ValueError(f"{path}: {c.name}'s shared_city_name_in names unknown countries {sorted(unknown)}.")
  return countries


def _name_tokens(name: str) -> list[str]:
  folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
  return [t for t in re.split(r"[^a-z]+", folded) if t and t not in _STOPWORDS]


def names_overlap(capital: str, country: str) -> bool:
  """True when the capital's name gives the country away: a shared word or a shared 4-letter prefix."""
  return any(a == b or (len(a) >= 4 and len(b) >= 4 and a[:4] == b[:4])
             for a in _name_tokens(capital) for b in _name_tokens(country))


def _constrained_permutation(forbidden: list[set[int]], rng: np.random.Generator) -> np.ndarray:
  """A uniformly random permutation p with p[i] not in forbidden[i] for every i (rejection sampling)."""
  n = len(forbidden)
  for _ in range(10_000):
    perm = rng.permutation(n)
    if all(int(perm[i]) not in forbidden[i] for i in range(n)):
      return perm
  raise ValueError("no permutation meets the constraints after 10,000 tries; the forbidden sets are too "
                   "large for the number of rows.")


def _paired_statements(rows: list[Country], templates: tuple[str, ...], forbidden: list[set[int]],
                       rng: np.random.Generator) -> tuple[list[str], list[int]]:
  """For each template: one true statement per row and one false, with a country from a constrained shuffle."""
  texts, labels = [], []
  for template in templates:
    perm = _constrained_permutation(forbidden, rng)
    for i, row in enumerate(rows):
      wrong = rows[int(perm[i])]
      texts.append(template.format(city=row.capital, country=row.in_sentence))
      labels.append(1)
      texts.append(template.format(city=row.capital, country=wrong.in_sentence))
      labels.append(0)
  return texts, labels


def _statement_task(name, rows, templates, forbidden, num_examples, seed, description) -> Task:
  """The paired true/false statements of `rows` (see _paired_statements), sampled class-balanced."""
  rng = np.random.default_rng(seed)
  texts, labels = _paired_statements(rows, templates, forbidden, rng)
  texts, labels = sample_examples(texts, labels, num_examples, seed=int(rng.integers(2**31)), source=name)
  return Task(texts, labels, name, description)


def cities_task(num_examples: int | None = None, seed: int = 0) -> Task:
  """"The city of Paris is in France." (1) vs "The city of Paris is in Japan." (0), in three templates."""
  rows = [c for c in load_countries() if not names_overlap(c.capital, c.name)]
  index = {c.name: i for i, c in enumerate(rows)}
  forbidden = [{i} | {index[s] for s in c.shared_city_name_in if s in index} for i, c in enumerate(rows)]
  return _statement_task("cities", rows, CITY_TEMPLATES, forbidden, num_examples, seed,
                         f"Is the city (a national capital) in the named country? 1 = true, 0 = false. Templates: "
                         f"{list(CITY_TEMPLATES)}; {len(rows)} countries from xsim/data/tables/countries.csv.")


def capitals_task(num_examples: int | None = None, seed: int = 0) -> Task:
  """"Paris is the capital of France." (1) vs "Paris is the capital of Japan." (0), in two templates."""
  rows = [c for c in load_countries() if not names_overlap(c.capital, c.name) and not c.capital_note]
  return _statement_task("capitals", rows, CAPITAL_TEMPLATES, [{i} for i in range(len(rows))], num_examples, seed,
                         f"Is the city the capital of the named country? 1 = true, 0 = false. Templates: "
                         f"{list(CAPITAL_TEMPLATES)}; {len(rows)} countries with one undisputed capital.")


def number_to_words(n: int) -> str:
  """English words for 0 <= n <= 99, hyphenated as in "seventy-two"."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= 99:
    raise ValueError(f"number_to_words covers the integers 0..99, got {n!r}.")
  n = int(n)
  if n < 20:
    return _UNITS[n]
  tens, units = divmod(n, 10)
  return _TENS[tens] if units == 0 else f"{_TENS[tens]}-{_UNITS[units]}"


def comparison_task(relation: str = "larger", num_examples: int | None = None, seed: int = 0,
                    low: int = 1, high: int = 99) -> Task:
  """"Seventy-two is larger than fifteen." (1) / "Fifteen is larger than seventy-two." (0).

  Every pair of distinct numbers in [low, high] gives both orders, one true and one false; relation is
  "larger" or "smaller". Numbers are written in words (0..99), as in Geometry of Truth's larger_than.
  """
  if relation not in ("larger", "smaller"):
    raise ValueError(f"relation={relation!r} is unknown; use 'larger' or 'smaller'.")
  if not (isinstance(low, int) and isinstance(high, int) and 0 <= low < high <= 99):
    raise ValueError(f"need integers 0 <= low < high <= 99, got low={low!r}, high={high!r}.")
  texts, labels = [], []
  for a in range(low, high + 1):
    for b in range(low, high + 1):
      if a != b:
        first = number_to_words(a)
        texts.append(f"{first[0].upper()}{first[1:]} is {relation} than {number_to_words(b)}.")
        labels.append(int(a > b) if relation == "larger" else int(a < b))
  name = f"{relation}_than"
  texts, labels = sample_examples(texts, labels, num_examples, seed, source=name)
  return Task(texts, labels, name,
              f"Is the first number {relation} than the second? 1 = true, 0 = false. Numbers "
              f"{low}..{high} in words, every ordered pair of distinct numbers.")
