"""Bad input on many ranks: one `error:` line for the whole run, exit code 2 on every rank.

Before the process group exists every rank checks the same command line and files, so rank 0
alone prints. After it exists a check can fail on some ranks only (a node's data folder), so the
ranks agree once, with one tiny all-reduce, right after the inputs are checked: the lowest failing
rank prints its line and every rank stops with code 2 instead of waiting for a peer that is gone.
Errors raised after that point are printed by each rank that meets them.
"""

from __future__ import annotations

import errno
import os

import torch
import torch.distributed as dist

from utilities.config import ConfigError

_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")
_agreement = {"pending": False}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class FailedOnAnotherRank(ConfigError):
    """Another rank found bad input and printed the line; this rank only stops."""


def _launcher_rank() -> int:
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _lowest(value: int) -> int:
    on_gpu = dist.get_backend() == "nccl"
    tensor = torch.tensor(
        [value], dtype=torch.int64, device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu"
    )
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def inputs_being_checked() -> None:
    """Call once the process group is up: from here to ``inputs_checked`` errors are agreed on."""
    _agreement["pending"] = dist.is_available() and dist.is_initialized()


def inputs_checked() -> None:
    """Every rank whose inputs passed calls this; it raises when another rank's did not."""
    if _agreement["pending"]:
        _agreement["pending"] = False
        if _lowest(dist.get_world_size()) < dist.get_world_size():
            raise FailedOnAnotherRank("bad input on another rank")


def prints_the_line(error: BaseException) -> bool:
    """Whether this rank prints ``error`` (a bad-input error that ends the run with code 2)."""
    if isinstance(error, FailedOnAnotherRank):
        return False
    if getattr(error, "raised_on_every_rank", False) and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    if _agreement["pending"]:  # the failing ranks meet the others' all-reduce in inputs_checked
        _agreement["pending"] = False
        return _lowest(dist.get_rank()) == dist.get_rank()
    if not (dist.is_available() and dist.is_initialized()):
        return _launcher_rank() == 0
    return True


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL


def disk_full_message(error: OSError) -> str:
    where = f" while writing {error.filename}" if error.filename else ""
    return f"no space left on the device{where}; free space there or choose another --output-dir"
