"""The SLURM job-array script of a sweep: one array task per run, each `srun python main.py --config ...`."""

from __future__ import annotations

import os
import shlex

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")


def _submit_relative(path: str) -> str:
    """A path as the job sees it after cd-ing to the submit directory (this one)."""
    inside = not os.path.isabs(path) or os.path.commonpath([path, os.getcwd()]) == os.getcwd()
    return os.path.relpath(path) if inside else path


def slurm_array_script(runs: list, sweep, sweep_file: str) -> str:
    """One array task per run, each an srun of main.py with that run's config on ``ranks`` tasks."""
    most_ranks = max(run.ranks for run in runs)
    configs = "\n".join(f"    {shlex.quote(_submit_relative(run.config_path))}" for run in runs)
    ranks = " ".join(str(run.ranks) for run in runs)
    varying = (
        "# Runs differ in ranks; the array asks for the most and each srun uses its run's share. To avoid idle\n"
        "# nodes, write one array per rank count with --only 'ranks=K'.\n"
        if len({run.ranks for run in runs}) > 1
        else ""
    )
    return f"""#!/usr/bin/env bash
# Sweep {sweep.name}: {len(runs)} runs, one SLURM array task each. Written by
#   python -m tools.sweep {sweep_file} --slurm-array ...
# Submit from {os.getcwd()} (the paths below are relative to it):
#   sbatch THIS_FILE            or e.g.  sbatch --partition=gpu --account=myproj --array=0-{len(runs) - 1}%4 THIS_FILE
# One rank per node and GPU, as samplescripts/slurmrun.sh; site specifics (partition, account, QOS)
# belong on the sbatch command line. A task whose run already has summary.json exits at once.
{varying}#SBATCH --job-name=sweep-{sweep.name}
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --nodes={most_ranks}
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

cd "${{SLURM_SUBMIT_DIR:?submit with sbatch from {os.getcwd()}}}"
PYTHON=${{PYTHON:-python}}
# Threads per rank = CPUs SLURM gave the task, not all of the node's cores.
export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-${{SLURM_CPUS_PER_TASK:-1}}}}

CONFIGS=(
{configs}
)
RANKS=({ranks})
config=${{CONFIGS[$SLURM_ARRAY_TASK_ID]}}
ranks=${{RANKS[$SLURM_ARRAY_TASK_ID]}}
if [ -e "$(dirname "$config")/summary.json" ]; then
    echo "sweep: $config already finished"
    exit 0
fi
echo "sweep {sweep.name}: task $SLURM_ARRAY_TASK_ID, $ranks rank(s), $config"
# main.py reads its rank from SLURM_PROCID/SLURM_NTASKS; --kill-on-bad-exit stops the step when one
# rank dies instead of leaving the others blocked in a collective until the time limit.
srun --kill-on-bad-exit=1 --ntasks="$ranks" "$PYTHON" {shlex.quote(_submit_relative(MAIN))} --config "$config"
"""
