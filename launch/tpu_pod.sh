#!/bin/bash
# Cloud TPU VM pod slice: the same command on every worker; jax.distributed.initialize() finds the pod.
#   bash launch/tpu_pod.sh my-tpu us-central2-b experiments/configs/sweep_models.py gs-fuse-mounted/runs/sweep
# The workdir must be shared by all workers (e.g. a mounted bucket or NFS); xsim must be installed on each worker
# (the first command below does it from this checkout's git remote).
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
ZONE=${2:?}
CONFIG=${3:?}
WORKDIR=${4:?}
shift 4
REPO=$(git config --get remote.origin.url)
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  set -e; [ -d xsim ] || git clone $REPO xsim; cd xsim && git pull && pip install -q -e '.[demo]' 'jax[tpu]' &&
  python -m experiments.run --config=$CONFIG --workdir=$WORKDIR $*"
