"""Content keys: one key function, and model files identified by their content."""
import os

from experiments import extraction, keys


def test_a_key_depends_on_every_part_and_on_nothing_else():
  assert keys.key({"a": 1, "b": [2, 3]}) == keys.key({"b": [2, 3], "a": 1})
  assert keys.key({"a": 1}) != keys.key({"a": 2}) and keys.key(1, 2) != keys.key(2, 1)
  assert keys.path("w", "cache/x", "name", 1, suffix=".json") == os.path.join("w", "cache/x",
                                                                               f"name-{keys.key(1)}.json")


def test_weights_replaced_in_place_with_size_and_mtime_restored_get_another_fingerprint(tmp_path):
  model = tmp_path / "model"
  model.mkdir()
  weights = model / "model.safetensors"
  weights.write_bytes(b"\x01" * 4096)
  (model / "config.json").write_text("{}")
  workdir = str(tmp_path / "run")
  before = extraction.source_fingerprint(str(model), workdir)
  assert extraction.source_fingerprint(str(model), workdir) == before  # unchanged: the same, from the digest cache
  stat = weights.stat()
  with open(weights, "r+b") as f:  # same size, other bytes, the old mtime put back
    f.write(b"\x02")
  os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
  after = extraction.source_fingerprint(str(model), workdir)
  assert after[1] != before[1] and after[0] == before[0]  # the weights' digest changed, config.json's did not
  assert len(os.listdir(os.path.join(workdir, "cache", "digests"))) == 3  # hashed once per version of each file
