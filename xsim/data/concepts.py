"""Concepts to steer toward, generated offline: contrast sets that define a steering vector and prompts to read it on.

A concept's vector is the difference of mean activations between its `positive` and `negative` sentences (CAA /
ActAdd); its effect is read on `prompts` that hold neither. Two readouts:
  * "words": the next-token log-probability mass on `words` after each prompt (a topic shows in what comes next);
  * "probe": the target's own probe for positive vs negative, from the contrast sets (their class means), a few
    blocks after the intervention (a latent the model holds but need not say).
`load_concept("weddings", num_pairs=32, num_prompts=16, seed=0)`.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np

from xsim.data.statements import cities_task

# Everyday frames with one slot: the topic and the neutral phrases fill the same frames, so only the topic differs.
_FRAMES = (
    "Last weekend we talked for hours about {x}.", "She wrote a long letter about {x}.",
    "The radio program this morning was all about {x}.", "My neighbour keeps telling stories about {x}.",
    "The article on the front page was about {x}.", "We spent the whole evening planning {x}.",
    "He could not stop thinking about {x}.", "Everyone at the table had an opinion on {x}.",
)
_WEDDING_PHRASES = (
    "the wedding", "the bride and the groom", "the wedding cake", "the marriage ceremony", "the wedding dress",
    "the honeymoon", "the wedding rings", "the bridesmaids", "the wedding vows", "the wedding reception",
    "the engagement party", "the wedding guests",
)
_NEUTRAL_PHRASES = (
    "the weather", "the bus schedule", "the vegetable garden", "the new printer", "the tax forms",
    "the football match", "the broken fence", "the train timetable", "the price of bread", "the science fair",
    "the parking rules", "the library hours",
)
WEDDING_WORDS = ("wedding", "weddings", "bride", "groom", "marriage", "married", "ceremony", "honeymoon", "bridal",
                 "vows", "engagement", "bridesmaid")
# Open sentence starts on no particular topic: the next word could be almost anything.
_NEUTRAL_PROMPTS = (
    "I think that the best part of the day was the", "Yesterday afternoon we finally went to the",
    "The most important thing to remember is the", "After a long discussion, they decided to talk about the",
    "When I was young, my favourite thing was the", "Everyone in the village was talking about the",
    "The letter on the kitchen table was about the", "She smiled and told me all about the",
    "In the news this morning there was a story about the", "My friend called to ask me about the",
    "The meeting ended with a short speech about the", "We looked at the photographs from the",
    "On Saturday the whole family went to the", "He opened the book and started reading about the",
    "The teacher asked the class to write about the", "It was the first time I had seen the",
    "At the end of the week we will celebrate the", "The picture on the wall showed the",
    "Nobody expected the conversation to turn to the", "They spent most of the money on the",
)


@dataclasses.dataclass(frozen=True)
class Concept:
  """A steering concept: contrast sets (the vector and, for readout "probe", the probe), the prompts its effect is
  read on, and the words of readout "words"."""
  name: str
  description: str
  positive: tuple[str, ...]
  negative: tuple[str, ...]
  prompts: tuple[str, ...]
  words: tuple[str, ...] = ()

  @property
  def readout(self) -> str:
    return "words" if self.words else "probe"


def _take(items, num: int, rng: np.random.Generator, what: str) -> list:
  if num > len(items):
    raise ValueError(f"{what}: asked for {num}, only {len(items)} can be generated; ask for fewer.")
  return [items[i] for i in sorted(rng.choice(len(items), num, replace=False))]


def weddings_concept(num_pairs: int = 32, num_prompts: int = 16, seed: int = 0) -> Concept:
  """Sentences about weddings vs the same frames about everyday things; read as the next-token probability of
  wedding words after neutral sentence starts."""
  rng = np.random.default_rng(seed)
  slots = _take(list(itertools.product(range(len(_FRAMES)), range(len(_WEDDING_PHRASES)))), num_pairs, rng,
                "weddings contrast pairs")
  positive = tuple(_FRAMES[f].format(x=_WEDDING_PHRASES[p]) for f, p in slots)
  negative = tuple(_FRAMES[f].format(x=_NEUTRAL_PHRASES[p]) for f, p in slots)
  return Concept("weddings", "A topic: sentences about weddings vs the same sentences about everyday things; "
                 f"the effect is the log-probability mass on {len(WEDDING_WORDS)} wedding words as the next token.",
                 positive, negative, tuple(_take(_NEUTRAL_PROMPTS, num_prompts, rng, "weddings prompts")),
                 WEDDING_WORDS)


def truth_concept(num_pairs: int = 32, num_prompts: int = 16, seed: int = 0) -> Concept:
  """True vs false "cities" statements; read by the target's own truth probe on held-out statements."""
  task = cities_task(num_examples=2 * num_pairs + num_prompts, seed=seed)
  texts, labels = np.asarray(task.texts, object), task.labels
  true, false = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
  train = np.concatenate([true[:num_pairs], false[:num_pairs]])
  prompts = np.setdiff1d(np.arange(len(texts)), train)[:num_prompts]
  if len(true) < num_pairs or len(false) < num_pairs or len(prompts) < num_prompts:
    raise ValueError(f"truth: cities has too few statements for {num_pairs} pairs and {num_prompts} prompts.")
  return Concept("truth", "A latent: true vs false statements (the cities task); the effect is the change in the "
                 "target's own truth-probe logit on held-out statements.",
                 tuple(texts[true[:num_pairs]]), tuple(texts[false[:num_pairs]]), tuple(texts[prompts]))


CONCEPTS: dict[str, Callable[..., Concept]] = {"weddings": weddings_concept, "truth": truth_concept}


def load_concept(name: str, num_pairs: int = 32, num_prompts: int = 16, seed: int = 0) -> Concept:
  """The concept `name` (CONCEPTS) with num_pairs contrast pairs and num_prompts prompts, drawn with `seed`."""
  if name not in CONCEPTS:
    raise ValueError(f"unknown steering concept {name!r}; available: {sorted(CONCEPTS)}.")
  if num_pairs < 4 or num_prompts < 4:
    raise ValueError(f"num_pairs={num_pairs} and num_prompts={num_prompts} must both be >= 4.")
  return CONCEPTS[name](num_pairs=num_pairs, num_prompts=num_prompts, seed=seed)
