#!/usr/bin/env bash
# Minimal SLURM example: MNIST with LeNet-5 on 2 nodes, one rank per node.
#   sbatch samplescripts/slurmrunexample.sh                 # from the repository root
#   sbatch --partition=gpu samplescripts/slurmrunexample.sh --lr 0.05
# Arguments after the script name go to main.py and override the defaults below.
#SBATCH --job-name=mnist-example
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=00:30:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

# sbatch runs a copy of this script from the spool directory; main.py is found from where
# the job was submitted.
cd "${SLURM_SUBMIT_DIR:?submit with sbatch from the repository root}"

PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-data}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/mnist-example-${SLURM_JOB_ID}}
TRAINING_TYPE=${TRAINING_TYPE:-PLSGD}

# Threads per rank = CPUs SLURM gave the task. Left unset, main.py would split all of the
# node's cores among its ranks, more than the allocation on a shared node.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

# main.py reads its rank from SLURM_PROCID/SLURM_NTASKS and the master from the first host
# of SLURM_JOB_NODELIST, so srun only has to start one process per task.
srun --kill-on-bad-exit=1 "$PYTHON" main.py \
    --training-type "$TRAINING_TYPE" \
    --dataset mnist \
    --model lenet5 \
    --data-dir "$DATA_DIR" \
    --epochs "${EPOCHS:-5}" \
    --batch-size "${BATCH_SIZE:-64}" \
    --lr "${LR:-0.05}" \
    --local-steps "${LOCAL_STEPS:-4}" \
    --output-dir "$OUTPUT_DIR" \
    "$@"
