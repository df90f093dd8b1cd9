#!/bin/bash
# xsim's benchmark suite on one GPU machine at shared/BENCHMARKS.md's sizes, in about 8 minutes (--budget_s 480;
# the most important runs first, so a shorter budget cuts the tail).
#   bash launch/gpu_benchmarks.sh OUT_DIR [suite options]      # e.g. OUT_DIR=$OUT; --only cka extract; --smoke
#   bash launch/gpu_benchmarks.sh /tmp/rehearsal --rehearse    # its smoke sizes on a machine without a GPU
#
# The GPU image has jax 0.11.2 (CUDA), flax, optax, orbax, chex, absl, transformers, torch, safetensors and
# tokenizers, no network, and neither ml_collections (the runner's configs: the sweep benchmark needs it) nor gguf
# (xsim's GGUF reader: no GPU run reads a GGUF file). Bring their pure-Python wheels in launch/wheels/ (untracked
# files travel with the working tree), fetched where PyPI is reachable:
#   pip download --no-deps ml_collections==1.1.0 gguf==0.19.0 -d launch/wheels
#     ml_collections-1.1.0-py3-none-any.whl  sha256 23b6fa4772aac1ae745a96044b925a5746145a70734f087eaca6626e92c05cbc
#     gguf-0.19.0-py3-none-any.whl            sha256 70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd
# They are unpacked into a temporary folder on PYTHONPATH (nothing is installed into the image's Python), and the
# repository itself is imported from this tree (pip install -e would look for dependencies online).
set -euo pipefail
OUT_DIR=${1:?usage: launch/gpu_benchmarks.sh OUT_DIR [suite options, e.g. --only cka extract]}
shift
OUT_DIR=$(mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${XSIM_WHEELS:-launch/wheels}
DEPS=$(mktemp -d)
trap 'rm -rf "$DEPS"' EXIT
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"

for module in ml_collections gguf; do
  if ! "$PY" -c "import $module" 2>/dev/null; then
    wheel=$(ls "$WHEELS"/"$module"-*.whl 2>/dev/null | head -n 1 || true)
    if [[ -n "$wheel" ]]; then
      "$PY" -m pip install --quiet --no-index --no-deps --target "$DEPS" "$wheel"
    elif [[ "$module" == ml_collections ]]; then
      echo "ml_collections is missing and $WHEELS has no wheel for it; fetch it first (see the top of $0):" >&2
      echo "  pip download --no-deps ml_collections==1.1.0 gguf==0.19.0 -d $WHEELS" >&2
      exit 2
    fi
  fi
done

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" -m experiments.benchmarks.suite --platform gpu --out_dir "$OUT_DIR" --budget_s "${BUDGET_S:-480}" "$@"
