#!/bin/bash
# One multi-GPU machine: a single process sees every GPU; the mesh (config.mesh) spreads the batch over them
# (mesh.data) and, for models that do not fit one GPU, the heads and MLP features (mesh.model).
#   bash launch/gpu_node.sh experiments/configs/aligned.py runs/aligned --config.mesh.model=2
set -euo pipefail
CONFIG=${1:?usage: launch/gpu_node.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/gpu_node.sh CONFIG WORKDIR [overrides...]}
shift 2
python -m experiments.run --config="$CONFIG" --workdir="$WORKDIR" "$@"
