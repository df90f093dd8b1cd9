"""Fixtures shared by the runner tests: two tiny checkpoints of different families and tokenizers."""
import pytest

from tests.activations.tiny import make_model_dir


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
  """A folder with llama/ (byte-level tokenizer, no BOS) and gemma/ (SentencePiece-like, BOS, left padding)."""
  root = tmp_path_factory.mktemp("models")
  make_model_dir(root / "llama", "bytelevel", "llama")
  make_model_dir(root / "gemma", "sentencepiece", "gemma2")
  return str(root)
