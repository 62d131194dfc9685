#!/usr/bin/env bash
# CI smoke test of the SLURM launch path on CPU: two ranks started by srun, rendezvous over
# Gloo, one epoch of MBSGD on synthetic data. Submitted by tests/test_launchers.py as
#   sbatch --wait samplescripts/ci_slurm_gloo.sh [extra main.py args]
# on the one-node cluster that .ci/setup_slurm.sh builds (2 tasks on 1 node stand in for
# 2 nodes x 1 task; see docs/LAUNCHING.md).
#SBATCH --job-name=ci-slurm-gloo
#SBATCH --ntasks=2
#SBATCH --nodes=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
set -euo pipefail

# sbatch runs a copy of this script from the spool directory; main.py is found from where
# the job was submitted (the repository root).
cd "${SLURM_SUBMIT_DIR:?submit with sbatch from the repository root}"

PYTHON=${PYTHON:-python}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/ci-slurm-gloo-${SLURM_JOB_ID}}

# Threads per rank = CPUs SLURM gave the task. Left unset, main.py would split all of the
# node's cores among its ranks, more than the allocation on a shared node.
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

# --kill-on-bad-exit: if one rank dies, stop the other instead of leaving it blocked in a
# collective until the time limit.
srun --kill-on-bad-exit=1 "$PYTHON" main.py \
    --training-type MBSGD \
    --dataset synthetic \
    --model mlp \
    --epochs 1 \
    --device cpu \
    --backend gloo \
    --output-dir "$OUTPUT_DIR" \
    "$@"
