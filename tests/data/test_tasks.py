"""Tests for the probe tasks: Task, sample_examples, the offline statement tasks, the HF task loaders, load_task."""
import collections
import re
import sys
import types

import numpy as np
import pytest

from xsim.data import statements
from xsim.data.sources import DataUnavailableError
from xsim.data.statements import load_countries, names_overlap, number_to_words
from xsim.data.task import Task, sample_examples
from xsim.data.tasks import OFFLINE_TASKS, TASKS, load_task
from tests.data.fakes import FakeDataset

# Capitals checked by hand, independently of the packaged table.
KNOWN_CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasília",
    "Nigeria": "Abuja", "Turkey": "Ankara", "Kazakhstan": "Astana", "Myanmar": "Naypyidaw",
    "Pakistan": "Islamabad", "New Zealand": "Wellington", "Morocco": "Rabat", "Vietnam": "Hanoi",
    "Ukraine": "Kyiv", "Egypt": "Cairo", "Argentina": "Buenos Aires", "Peru": "Lima", "Kenya": "Nairobi",
    "Switzerland": "Bern", "Germany": "Berlin", "India": "New Delhi", "South Korea": "Seoul",
    "Mongolia": "Ulaanbaatar", "Belize": "Belmopan", "Palau": "Ngerulmud", "Malawi": "Lilongwe",
    "Iceland": "Reykjavík", "Chile": "Santiago", "United States": "Washington, D.C.", "Tanzania": "Dodoma",
}


def _template_regex(template):
  return re.compile("^" + re.escape(template).replace(r"\{city\}", "(?P<city>.+)")
                    .replace(r"\{country\}", "(?P<country>.+)") + "$")


def _parse(text, templates):
  for template in templates:
    match = _template_regex(template).match(text)
    if match:
      return match["city"], match["country"]
  raise AssertionError(f"{text!r} matches no template")


# --- Task and sample_examples -----------------------------------------------------------------------


def test_task_validates_its_fields():
  task = Task(["a", "b"], [0, 1], "t", "d")
  assert task.texts == ("a", "b") and task.labels.dtype == np.int64 and len(task) == 2
  with pytest.raises(ValueError, match="shape"):
    Task(["a", "b"], [0], "t", "d")
  with pytest.raises(ValueError, match="0 or 1"):
    Task(["a", "b"], [0, 2], "t", "d")
  with pytest.raises(ValueError, match="integers"):
    Task(["a", "b"], [0.0, 1.0], "t", "d")
  with pytest.raises(ValueError, match="not str"):
    Task(["a", 3], [0, 1], "t", "d")
  with pytest.raises(ValueError, match="single string"):
    Task("ab", [0, 1], "t", "d")


def test_sample_examples_balances_and_keeps_pairs():
  texts = [f"text {i}" for i in range(100)]
  labels = (np.arange(100) % 5 == 0).astype(int)  # 20 positives, 80 negatives
  truth = dict(zip(texts, labels))
  for num in (10, 11, None):
    out_texts, out_labels = sample_examples(texts, labels, num, seed=0)
    counts = np.bincount(out_labels, minlength=2)
    assert abs(counts[0] - counts[1]) <= 1
    assert len(out_texts) == (40 if num is None else num) == len(set(out_texts))
    assert [truth[t] for t in out_texts] == list(out_labels)
  assert sample_examples(texts, labels, 10, seed=0)[0] == sample_examples(texts, labels, 10, seed=0)[0]
  assert sample_examples(texts, labels, 10, seed=0)[0] != sample_examples(texts, labels, 10, seed=1)[0]
  with pytest.raises(ValueError, match="at most 40"):
    sample_examples(texts, labels, 41, seed=0)
  out_texts, out_labels = sample_examples(texts, labels, None, seed=0, balance=False)
  assert sorted(out_texts) == sorted(texts) and out_labels.sum() == 20


# --- Country table and statement tasks -----------------------------------------------------------------


def test_country_table_agrees_with_hand_checked_capitals():
  table = {c.name: c.capital for c in load_countries()}
  assert len(table) == 193
  for country, capital in KNOWN_CAPITALS.items():
    assert table[country] == capital, country
  assert len({c.capital for c in load_countries()}) == 193


def test_names_overlap_flags_giveaway_names():
  assert names_overlap("Kuwait City", "Kuwait") and names_overlap("Tunis", "Tunisia")
  assert names_overlap("São Tomé", "São Tomé and Príncipe") and names_overlap("Santo Domingo",
                                                                              "Dominican Republic")
  assert not names_overlap("Paris", "France") and not names_overlap("Port of Spain", "Trinidad and Tobago")


def _check_statement_task(task, templates, allowed_false):
  """Labels agree with the table; false statements are never accidentally true."""
  capital_to_country = {c.capital: c for c in load_countries()}
  in_sentence = {c.in_sentence: c.name for c in load_countries()}
  for text, label in zip(task.texts, task.labels):
    city, stated = _parse(text, templates)
    row = capital_to_country[city]
    assert not names_overlap(row.capital, row.name)
    assert label == int(in_sentence[stated] == row.name), text
    if label == 0:
      assert allowed_false(row, in_sentence[stated]), text


def test_cities_task_is_correct_balanced_and_unbiased():
  task = load_task("cities")
  assert len(task) == 2 * len(statements.CITY_TEMPLATES) * 176
  assert task.labels.sum() * 2 == len(task)
  _check_statement_task(task, statements.CITY_TEMPLATES,
                        lambda row, stated: stated != row.name and stated not in row.shared_city_name_in)
  # Every city and every country occurs equally often in true and in false statements.
  by_label = [collections.Counter(), collections.Counter()]
  for text, label in zip(task.texts, task.labels):
    city, country = _parse(text, statements.CITY_TEMPLATES)
    by_label[label].update([("city", city), ("country", country)])
  assert by_label[0] == by_label[1]
  assert "The city of Paris is in France." in task.texts
  assert not any("Kuwait City" in t or "London is located in Canada" in t for t in task.texts)


def test_cities_task_is_deterministic_and_subsamples():
  small, again = load_task("cities", num_examples=100, seed=3), load_task("cities", num_examples=100, seed=3)
  assert small.texts == again.texts and np.array_equal(small.labels, again.labels)
  assert small.labels.sum() == 50
  assert small.texts != load_task("cities", num_examples=100, seed=4).texts


def test_capitals_task_is_correct_and_skips_split_capitals():
  task = load_task("capitals", num_examples=400, seed=1)
  assert task.labels.sum() == 200
  _check_statement_task(task, statements.CAPITAL_TEMPLATES, lambda row, stated: stated != row.name)
  noted = {c.capital for c in load_countries() if c.capital_note}
  assert not any(_parse(t, statements.CAPITAL_TEMPLATES)[0] in noted for t in task.texts)
  assert not any("Sucre" in t or "Pretoria" in t for t in task.texts)


_WORD_VALUES = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
                "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
                "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}


def _words_to_number(words):
  return sum(_WORD_VALUES[w] for w in words.lower().split("-"))


def test_number_words_round_trip_and_spelling():
  words = [number_to_words(n) for n in range(100)]
  assert [_words_to_number(w) for w in words] == list(range(100))
  assert len(set(words)) == 100
  assert (words[15], words[40], words[72], words[99], words[80]) == (
      "fifteen", "forty", "seventy-two", "ninety-nine", "eighty")
  assert all(("-" in w) == (n > 20 and n % 10 != 0) for n, w in enumerate(words))
  with pytest.raises(ValueError, match="0..99"):
    number_to_words(100)


@pytest.mark.parametrize("name, relation", [("larger_than", lambda a, b: a > b),
                                            ("smaller_than", lambda a, b: a < b)])
def test_comparison_tasks_label_every_statement_correctly(name, relation):
  task = load_task(name)
  assert len(task) == 99 * 98 and task.labels.sum() * 2 == len(task)
  pattern = re.compile(r"^([A-Z][a-z-]+) is (larger|smaller) than ([a-z-]+)\.$")
  pairs = set()
  for text, label in zip(task.texts, task.labels):
    first, _, second = pattern.match(text).groups()
    a, b = _words_to_number(first), _words_to_number(second)
    assert label == int(relation(a, b)), text
    pairs.add((a, b))
  assert len(pairs) == 99 * 98
  assert "Seventy-two is larger than fifteen." in load_task("larger_than").texts
  small = load_task(name, num_examples=31, seed=2, low=51, high=99)
  assert len(small) == 31 and abs(2 * small.labels.sum() - 31) == 1


# --- HF tasks, with a fake `datasets` (no network) -------------------------------------------------------




@pytest.fixture
def fake_hub(monkeypatch):
  """Installs a fake `datasets` serving small tables; records the (name, config, split) it was asked for."""
  tables = {
      "stanfordnlp/sst2": {"idx": [0, 1, 2, 3], "sentence": ["great film ", "awful plot ", "fine ", "bad "],
                           "label": [1, 0, 1, 0]},
      "nyu-mll/glue": {"sentence": ["nice ", "dull ", "x "], "label": [1, 0, -1]},
      "fancyzhx/ag_news": {"text": ["war news", "goal scored", "stocks up", "new chip", "match won"],
                           "label": [0, 1, 2, 3, 1]},
      "toxigen/toxigen-data": {"text": ["a", "b", "c", "d", "e"],
                               "toxicity_human": [1.0, 2.99, 3.0, 4.5, 5.0]},
  }
  calls = []

  def load_dataset(name, config=None, split=None, revision=None):
    calls.append((name, config, split))
    return FakeDataset(tables[name])

  module = types.ModuleType("datasets")
  module.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, "datasets", module)
  return calls


def _as_dict(task):
  return dict(zip(task.texts, task.labels.tolist()))


def test_sst2_strips_texts_and_reads_labels(fake_hub):
  task = load_task("sst2")
  assert _as_dict(task) == {"great film": 1, "awful plot": 0, "fine": 1, "bad": 0}
  glue = load_task("sst2", source="glue", split="validation")
  assert _as_dict(glue) == {"nice": 1, "dull": 0}
  assert fake_hub == [("stanfordnlp/sst2", None, "train"), ("nyu-mll/glue", "sst2", "validation")]


def test_ag_news_is_sports_vs_rest(fake_hub):
  task = load_task("ag_news_sports", balance=False)
  assert _as_dict(task) == {"war news": 0, "goal scored": 1, "stocks up": 0, "new chip": 0, "match won": 1}
  balanced = load_task("ag_news_sports")
  assert sorted(balanced.labels.tolist()) == [0, 0, 1, 1]


def test_toxigen_threshold(fake_hub):
  task = load_task("toxigen", balance=False)
  assert _as_dict(task) == {"a": 0, "b": 0, "c": 1, "d": 1, "e": 1}
  assert fake_hub == [("toxigen/toxigen-data", "annotated", "train")]
  assert _as_dict(load_task("toxigen", balance=False, threshold=4.0))["d"] == 1
  assert _as_dict(load_task("toxigen", balance=False, threshold=4.6))["d"] == 0


def test_sst2_test_split_without_labels_is_refused(monkeypatch):
  module = types.ModuleType("datasets")
  module.load_dataset = lambda *a, **k: FakeDataset({"sentence": ["a", "b"], "label": [-1, -1]})
  monkeypatch.setitem(sys.modules, "datasets", module)
  with pytest.raises(ValueError, match="has no labels"):
    load_task("sst2", split="test")


@pytest.mark.parametrize("name", ["sst2", "ag_news_sports", "toxigen"])
def test_hf_tasks_raise_the_offline_error(monkeypatch, name):
  def load_dataset(*args, **kwargs):
    raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

  module = types.ModuleType("datasets")
  module.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, "datasets", module)
  with pytest.raises(DataUnavailableError, match="offline tasks 'cities'"):
    load_task(name, num_examples=10)


# --- Registry -------------------------------------------------------------------------------------------


def test_offline_tasks_load_without_datasets(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)
  for name in OFFLINE_TASKS:
    task = load_task(name, num_examples=20, seed=5)
    assert task.name == name and len(task) == 20 and task.labels.sum() == 10
  assert set(OFFLINE_TASKS) < set(TASKS)


def test_unknown_task_lists_the_known_ones():
  with pytest.raises(ValueError, match="available: .*cities"):
    load_task("imdb")


def test_constrained_permutation_respects_forbidden_sets():
  rng = np.random.default_rng(0)
  for _ in range(50):
    n = int(rng.integers(10, 30))
    forbidden = [{i} | set(rng.choice(n, size=int(rng.integers(0, 2)), replace=False).tolist())
                 for i in range(n)]
    perm = statements._constrained_permutation(forbidden, rng)  # pylint: disable=protected-access
    assert sorted(perm.tolist()) == list(range(n))
    assert all(int(perm[i]) not in forbidden[i] for i in range(n))
  with pytest.raises(ValueError, match="no permutation"):
    statements._constrained_permutation([{0, 1}, {0, 1}], rng)  # pylint: disable=protected-access
