#!/usr/bin/env bash
# One machine, several ranks started by MPI (default 2):
#   samplescripts/singlenoderun.sh                        # from anywhere
#   NPROC=4 TRAINING_TYPE=SlowMo samplescripts/singlenoderun.sh --epochs 20
#   MPIEXEC="mpirun" MPIEXEC_ARGS="--allow-run-as-root --oversubscribe" samplescripts/singlenoderun.sh
# Arguments after the script name go to main.py and override the defaults below.
# main.py recognises the MPI launch (PMI_* / OMPI_COMM_WORLD_* variables), takes rank and
# size from mpi4py and broadcasts the rendezvous address from rank 0, so mpiexec only has
# to start the processes; MPI itself carries no training traffic.
# The rendezvous port is MASTER_PORT (default 29500): give concurrent runs distinct ones.
set -euo pipefail

cd "$(dirname "$0")/.."

MPIEXEC=${MPIEXEC:-mpiexec}
read -r -a mpiexec_args <<<"${MPIEXEC_ARGS:-}"   # launcher-specific flags, e.g. Open MPI's --oversubscribe
NPROC=${NPROC:-2}
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-data}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/singlenode-$(date +%Y%m%d-%H%M%S)}
TRAINING_TYPE=${TRAINING_TYPE:-PLSGD}

"$MPIEXEC" "${mpiexec_args[@]}" -n "$NPROC" "$PYTHON" main.py \
    --training-type "$TRAINING_TYPE" \
    --dataset "${DATASET:-mnist}" \
    --model "${MODEL:-lenet5}" \
    --data-dir "$DATA_DIR" \
    --epochs "${EPOCHS:-5}" \
    --batch-size "${BATCH_SIZE:-64}" \
    --lr "${LR:-0.05}" \
    --local-steps "${LOCAL_STEPS:-4}" \
    --device "${DEVICE:-auto}" \
    --backend "${BACKEND:-auto}" \
    --output-dir "$OUTPUT_DIR" \
    "$@"
