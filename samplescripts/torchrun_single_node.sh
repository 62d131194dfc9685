#!/usr/bin/env bash
# One machine, one rank per GPU (or NPROC_PER_NODE CPU ranks), started by torchrun:
#   samplescripts/torchrun_single_node.sh                 # from anywhere
#   NPROC_PER_NODE=2 DEVICE=cpu TRAINING_TYPE=MBSGD samplescripts/torchrun_single_node.sh --epochs 1
# Arguments after the script name go to main.py and override the defaults below.
set -euo pipefail

cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-data}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/torchrun-$(date +%Y%m%d-%H%M%S)}
TRAINING_TYPE=${TRAINING_TYPE:-PLSGD}

if [ -z "${NPROC_PER_NODE:-}" ]; then
    # One rank per visible GPU; two CPU ranks where there is none.
    gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
    NPROC_PER_NODE=$(( gpus > 0 ? gpus : 2 ))
fi

# `python -m torch.distributed.run` is torchrun, taken from the same environment as PYTHON.
# --standalone: a private rendezvous on a free local port, so two runs on one machine do
# not collide. torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT for main.py.
"$PYTHON" -m torch.distributed.run \
    --standalone \
    --nproc_per_node="$NPROC_PER_NODE" \
    main.py \
    --training-type "$TRAINING_TYPE" \
    --dataset "${DATASET:-cifar10}" \
    --model "${MODEL:-resnet20}" \
    --data-dir "$DATA_DIR" \
    --epochs "${EPOCHS:-200}" \
    --batch-size "${BATCH_SIZE:-128}" \
    --lr "${LR:-0.1}" \
    --local-steps "${LOCAL_STEPS:-8}" \
    --device "${DEVICE:-auto}" \
    --backend "${BACKEND:-auto}" \
    --output-dir "$OUTPUT_DIR" \
    "$@"
