"""xsim.data.concepts: contrast sets that differ only in the concept, prompts that hold neither, drawn by seed."""
import pytest

from xsim.data import concepts, statements


def test_weddings_sets_share_their_frames_and_the_prompts_name_no_wedding():
  c = concepts.load_concept("weddings", num_pairs=24, num_prompts=12, seed=3)
  assert c.readout == "words" and len(c.positive) == len(c.negative) == 24 and len(c.prompts) == 12
  words = set(concepts.WEDDING_WORDS) | {"bride", "wedding"}
  for positive, negative in zip(c.positive, c.negative):
    # The same frame: the sentences agree up to the topic phrase.
    frame = next(f for f in concepts._FRAMES if positive.startswith(f.split("{x}")[0]))
    assert negative.startswith(frame.split("{x}")[0]) and negative.endswith(frame.split("{x}")[1])
    assert not words & set(negative.lower().replace(".", "").split())
  assert all(not words & set(p.lower().split()) for p in c.prompts)
  assert c == concepts.load_concept("weddings", num_pairs=24, num_prompts=12, seed=3)  # drawn by the seed
  assert c != concepts.load_concept("weddings", num_pairs=24, num_prompts=12, seed=4)


def test_truth_sets_are_true_and_false_statements_and_the_prompts_are_held_out():
  c = concepts.load_concept("truth", num_pairs=16, num_prompts=8, seed=0)
  assert c.readout == "probe" and not c.words
  task = statements.cities_task(seed=0)
  label = dict(zip(task.texts, task.labels.tolist()))
  assert all(label[t] == 1 for t in c.positive) and all(label[t] == 0 for t in c.negative)
  assert not set(c.prompts) & (set(c.positive) | set(c.negative)) and len(set(c.prompts)) == 8


def test_bad_requests_name_the_problem():
  with pytest.raises(ValueError, match="unknown steering concept 'romance'"):
    concepts.load_concept("romance")
  with pytest.raises(ValueError, match="num_prompts=2"):
    concepts.load_concept("weddings", num_prompts=2)
  with pytest.raises(ValueError, match="asked for 200"):
    concepts.load_concept("weddings", num_pairs=200)
