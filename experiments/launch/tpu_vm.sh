#!/bin/bash
# Pretraining on a Cloud TPU VM slice (e.g. v5p-128: 16 hosts x 4 chips): the same command on
# every host, through gcloud's own fan-out (--worker=all).
#
#   TPU=my-slice ZONE=us-east5-a RUN=/mnt/shared/runs/b1 CORPUS=/mnt/shared/corpus \
#     CONFIG=experiments/configs/llama_1b.py bash experiments/launch/tpu_vm.sh
#
# Each host needs this repository at REPO with its requirements installed (pip install -r
# requirements.txt "jax[tpu]"), and RUN on a filesystem every host mounts at the same path
# (Filestore over NFS, or a gcsfuse mount of a bucket): tokenizer, token shards and Orbax
# checkpoints live there, and the same command run again resumes. jax.distributed.initialize()
# finds the slice's hosts itself (TPU_WORKER_HOSTNAMES).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
: "${RUN:?set RUN to a run directory on a filesystem every host mounts}"
: "${CORPUS:?set CORPUS to the corpus files or directory}"
: "${CONFIG:=experiments/configs/llama_1b.py}"
: "${REPO:=~/assistant}"
ssh() { gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" "$@"; }
# the tokenizer once, on worker 0
ssh --worker=0 --command "cd $REPO && [ -e $RUN/tokenizer ] || python -m experiments.tokenizer \
  --workdir $RUN --input $CORPUS --config $CONFIG"
ssh --worker=all --command "cd $REPO && python -m experiments.pretrain --workdir $RUN \
  --config $CONFIG --config.data.inputs=$CORPUS $*"
