#!/usr/bin/env bash
# Multi-node comparison of the training types: by default 8 nodes x 1 GPU, one rank per GPU.
# Each training type runs as its own job step, one after another, into
# $OUTPUT_ROOT/<training type>/. Submit from the repository root:
#   sbatch samplescripts/slurmrun.sh
#   sbatch --nodes=4 --partition=gpu --account=myproj samplescripts/slurmrun.sh --lr 0.2
#   TRAINING_TYPES="MBSGD PLSGD" DATASET=cifar100 sbatch samplescripts/slurmrun.sh
# Arguments after the script name go to every main.py run and override the defaults below.
# Site specifics (partition, account, QOS) belong on the sbatch command line, not in here.
#
# Preemption and time limits: 120 s before the end SLURM sends USR1 to every process of the job
# steps (no "B:", so the ranks get it, not only this shell); the ranks agree on a step, write a
# checkpoint and exit 75. This script then requeues the job, which starts again here with the
# same job id (so the same OUTPUT_ROOT) and every training type continues with --resume auto;
# the types already finished are skipped. A preempted job therefore finishes by itself.
#SBATCH --job-name=localsgd-compare
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=USR1@120
#SBATCH --requeue
set -euo pipefail

# sbatch runs a copy of this script from the spool directory; main.py is found from where
# the job was submitted.
cd "${SLURM_SUBMIT_DIR:?submit with sbatch from the repository root}"

PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-data}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs/slurmrun-${SLURM_JOB_ID}}
DATASET=${DATASET:-cifar10}
MODEL=${MODEL:-resnet20}
EPOCHS=${EPOCHS:-200}
BATCH_SIZE=${BATCH_SIZE:-128}   # per rank
LR=${LR:-0.1}
LOCAL_STEPS=${LOCAL_STEPS:-8}   # J for the local-SGD types; MBSGD ignores it
DEVICE=${DEVICE:-auto}
BACKEND=${BACKEND:-auto}        # auto: NCCL when every rank has a GPU, Gloo otherwise
TRAINING_TYPES=${TRAINING_TYPES:-MBSGD PLSGD SlowMo AdaptiveJ LPPSGD LAPSGD}

# Threads per rank = CPUs SLURM gave the task. Left unset, main.py would split all of the
# node's cores among its ranks, more than the allocation on a shared node.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

PREEMPTED=75  # main.py's exit code for "stopped by a signal, checkpoint written, resume me"

echo "slurmrun: job ${SLURM_JOB_ID} (start $((${SLURM_RESTART_COUNT:-0} + 1))), ${SLURM_NTASKS} ranks on ${SLURM_JOB_NUM_NODES} nodes (${SLURM_JOB_NODELIST})"
echo "slurmrun: ${DATASET}/${MODEL}, ${EPOCHS} epochs, outputs in ${OUTPUT_ROOT}"

failed=()
for training_type in $TRAINING_TYPES; do
    output_dir="$OUTPUT_ROOT/$training_type"
    mkdir -p "$output_dir"
    if [ -f "$output_dir/summary.json" ]; then
        echo "slurmrun: $training_type already finished (before a requeue)"
        continue
    fi
    echo "slurmrun: starting $training_type"
    # main.py reads its rank from SLURM_PROCID/SLURM_NTASKS and the master from the first
    # host of SLURM_JOB_NODELIST. --kill-on-bad-exit stops the step when one rank dies
    # instead of leaving the others blocked in a collective until the time limit.
    # A failed type (e.g. one main.py does not implement yet) is recorded and the
    # comparison goes on with the next one.
    status=0
    srun --kill-on-bad-exit=1 "$PYTHON" main.py \
        --training-type "$training_type" \
        --dataset "$DATASET" \
        --model "$MODEL" \
        --data-dir "$DATA_DIR" \
        --epochs "$EPOCHS" \
        --batch-size "$BATCH_SIZE" \
        --lr "$LR" \
        --local-steps "$LOCAL_STEPS" \
        --device "$DEVICE" \
        --backend "$BACKEND" \
        --output-dir "$output_dir" \
        --resume auto \
        "$@" || status=$?
    if [ "$status" -eq 0 ]; then
        echo "slurmrun: $training_type finished"
    elif [ "$status" -eq "$PREEMPTED" ]; then
        echo "slurmrun: $training_type preempted (checkpoint written); requeueing job ${SLURM_JOB_ID}"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    else
        echo "slurmrun: $training_type FAILED (exit $status)"
        failed+=("$training_type")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "slurmrun: failed training types: ${failed[*]}"
    exit 1
fi
echo "slurmrun: all training types finished"
