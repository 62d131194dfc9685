#!/usr/bin/env bash
# Several machines, started by hand (or by any job system): run the same command on every
# node, with the same RDZV_ENDPOINT (a host:port of one of them) and NNODES, e.g.
#   node0$ NNODES=2 RDZV_ENDPOINT=node0:29400 samplescripts/torchrun_multi_node.sh
#   node1$ NNODES=2 RDZV_ENDPOINT=node0:29400 samplescripts/torchrun_multi_node.sh
# There is no NODE_RANK: with c10d rendezvous torchrun numbers the nodes in the order they
# join and ignores --node_rank (it warns that node_rank is only used for static rendezvous).
# Put OUTPUT_DIR on a shared file system: rank 0, which writes the results, runs on
# whichever node joined first.
# Arguments after the script name go to main.py and override the defaults below.
set -euo pipefail

cd "$(dirname "$0")/.."

: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the node that hosts the rendezvous}"
NNODES=${NNODES:-2}
NPROC_PER_NODE=${NPROC_PER_NODE:-1}
# All agents of one run must agree on the id; a leftover agent of another run with a
# different id cannot join by mistake.
RDZV_ID=${RDZV_ID:-localsgd}
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-data}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/torchrun-${RDZV_ID}}
TRAINING_TYPE=${TRAINING_TYPE:-PLSGD}

# c10d rendezvous: the agent on the RDZV_ENDPOINT host serves the store, no etcd needed.
# The agents then assign RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT for main.py.
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --nproc_per_node="$NPROC_PER_NODE" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$RDZV_ENDPOINT" \
    --rdzv_id="$RDZV_ID" \
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
