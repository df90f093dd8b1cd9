#!/usr/bin/env bash
# The tests that need no PyTorch, and tiny studies end to end (tests/experiments/test_run.py's and
# test_steering_stage.py's tiny checkpoints are drawn with NumPy without PyTorch), in a fresh venv of the newest
# Python 3 that pyenv has.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
python=$(ls -d "$root"/versions/3.* 2>/dev/null | grep -E '/3\.[0-9]+\.[0-9]+$' | sort -V | tail -n 1)/bin/python
if [ ! -x "$python" ]; then
  echo "newest_python: no pyenv Python 3 found under $root; skipping the newest-stack tests" >&2
  exit 0
fi
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q -e '.[test-without-torch]'
"$venv/bin/python" -c 'import sys, jax, numpy; print(f"newest stack: Python {sys.version.split()[0]}, JAX {jax.__version__}, NumPy {numpy.__version__}")'
"$venv/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider -n auto --maxprocesses 2 --dist loadfile \
  tests/similarity tests/transfer tests/data tests/test_io.py tests/test_resampling.py tests/test_layer_select.py \
  tests/test_linalg.py tests/experiments/test_answer.py tests/experiments/test_cli.py \
  tests/experiments/test_degenerate.py tests/experiments/test_document.py tests/experiments/test_keys.py \
  tests/experiments/test_report.py tests/experiments/test_run.py tests/experiments/test_steering_stage.py \
  tests/experiments/test_validate.py tests/experiments/test_workdir.py
