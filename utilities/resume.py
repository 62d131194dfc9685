"""Which checkpoint a run continues from, agreed by every rank.

An epoch is resumable only when every rank's own file of it exists and verifies (checksum, safe load).
Each rank checks its own file and the ranks compare their findings, so all of them resume the same
epoch, or all start afresh; a rank never loads another rank's state (local methods keep different
replicas between syncs, so rank 0's model is not rank 1's).
"""

from __future__ import annotations

import glob
import os
import re
import sys

import torch.distributed as dist

from utilities.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, rank_path
from utilities.distributed import is_distributed

CHECKPOINT_NAME = re.compile(r"epoch-(\d+)(?:\.step-(\d+))?(\.rank-\d+)?\.pt")


def gather(value) -> list:
    """Every rank's ``value`` (a small picklable object), on every rank."""
    if not is_distributed():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def positions_on_disk(directory: str) -> set:
    """(epoch, step) of every checkpoint any rank has on disk (stray and foreign files included); step is 0
    at an epoch's end and the global step of a mid-epoch (preemption) checkpoint."""
    names = (os.path.basename(p) for p in glob.glob(os.path.join(directory, "epoch-*.pt")))
    return {
        (int(match.group(1)), int(match.group(2) or 0)) for name in names if (match := CHECKPOINT_NAME.fullmatch(name))
    }


def describe(position: tuple) -> str:
    epoch, step = position
    return f"epoch {epoch}" + (f" step {step}" if step else "")


def try_load(path: str, device):
    """(state, None) or (None, why this file cannot be resumed from)."""
    if not os.path.exists(path):
        return None, f"{os.path.basename(path)} is missing"
    try:
        return load_checkpoint(path, device), None
    except CheckpointError as error:
        return None, str(error)


def saved_world_size(state):
    return None if state is None else (state.get("identity") or {}).get("world_size")


def newest_complete_state(directory: str, rank: int, device):
    """This rank's state of the newest epoch every rank can resume from, or None for a fresh start.
    Skipped epochs are reported in one warning line (rank 0)."""
    candidates = sorted(set().union(*gather(sorted(positions_on_disk(directory)))), reverse=True)
    skipped, other_world_sizes = [], set()
    for position in candidates:
        state, problem = try_load(checkpoint_path(directory, position[0], rank, step=position[1]), device)
        found = gather((problem, saved_world_size(state)))
        sizes = {size for _, size in found if size is not None}
        if sizes - {len(found)}:  # a set written by another number of ranks cannot be resumed here
            other_world_sizes |= sizes - {len(found)}
            problem = f"written by {', '.join(map(str, sorted(sizes)))} rank(s)"
            found = [(problem, None) for _ in found]
        problems = [f"rank {r}: {p}" for r, (p, _) in enumerate(found) if p is not None]
        if not problems:
            break
        skipped.append(f"{describe(position)} ({'; '.join(problems)})")
    else:
        state = None
        if other_world_sizes:  # starting afresh would write over the metrics of a run on other ranks
            raise agreed(
                CheckpointError(
                    f"the checkpoints in {directory} are from a run on {', '.join(map(str, sorted(other_world_sizes)))} "
                    f"rank(s); resume with that many ranks, or choose another --output-dir"
                )
            )
    if skipped and rank == 0:
        target = f"resuming from {describe(position)}" if state is not None else "none is complete; starting afresh"
        print(
            f"warning: skipped incomplete or unusable checkpoints: {', '.join(skipped)}; {target}",
            file=sys.stderr,
            flush=True,
        )
    return state


def agreed(error: CheckpointError) -> CheckpointError:
    """Mark an error every rank raises alike (after comparing findings): one rank prints it."""
    error.raised_on_every_rank = True
    return error


def state_at_path(path: str, rank: int, device) -> dict:
    """--resume PATH: this rank's own file beside rank 0's ``path``; every rank fails if any rank cannot load."""
    state, problem = try_load(rank_path(path, rank), device)
    problems = [f"rank {r}: {p}" for r, p in enumerate(gather(problem)) if p is not None]
    if problems:
        raise agreed(CheckpointError(f"cannot resume from {path}: {'; '.join(problems)}"))
    return state


def resume_state(resume: str, directory: str, rank: int, device) -> dict | None:
    """The state this rank continues from: --resume auto (newest complete set, or None) or --resume PATH."""
    if not resume:
        return None
    if resume == "auto":
        return newest_complete_state(directory, rank, device)
    return state_at_path(resume, rank, device)
