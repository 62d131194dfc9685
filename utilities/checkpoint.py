"""Checkpoints written atomically (temporary file, fsync, rename) with a checksum.

A reader never sees half a file: either the old checkpoint or the new one exists under
the final name. The SHA-256 of the payload is stored beside it so a truncated or
corrupted file is detected and skipped instead of resumed from. Files are read with
``weights_only=True``: a checkpoint holds tensors and plain Python values only, so a
crafted file cannot run code when it is loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import io
import os
import re
import sys

import numpy
import torch

TEMPORARY = re.compile(r".+\.tmp\.\d+")  # what atomic_write_bytes leaves behind when its writer dies


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which and why."""


def atomic_write_bytes(path: str, payload: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp.{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"no space left to write {path}; free disk space (or keep fewer checkpoints "
                f"with --keep-checkpoints N), then continue with --resume auto"
            ) from None
        raise


def remove_orphan_temporaries(directory: str) -> list:
    """Delete the half-written files of writers that died (a kill, a full disk); returns their paths.
    Called before any rank of a new run writes, so no live writer's file is removed."""
    removed = []
    for path in glob.glob(os.path.join(directory, "*.tmp.*")):
        if TEMPORARY.fullmatch(os.path.basename(path)) and os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


def plain_values(value):
    """``value`` with numpy values and dataclass objects turned into tensors and plain Python types, the
    only things ``weights_only=True`` loads."""
    if isinstance(value, dict):  # rebuilt only when something changed: a state_dict keeps its _metadata
        converted = {key: plain_values(item) for key, item in value.items()}
        return value if all(converted[key] is item for key, item in value.items()) else converted
    if isinstance(value, (list, tuple)):
        converted = [plain_values(item) for item in value]
        unchanged = all(new is old for new, old in zip(converted, value))
        return value if unchanged else converted if isinstance(value, list) else tuple(converted)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_values(dataclasses.asdict(value))
    if isinstance(value, numpy.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def atomic_torch_save(obj, path: str) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def checkpoint_path(directory: str, epoch: int, rank: int = 0, step: int = 0) -> str:
    """Rank 0's checkpoint of ``epoch``, or another rank's own state beside it. A mid-epoch checkpoint
    (preemption) also names its global ``step``; the names sort in training order."""
    suffix = "" if rank == 0 else f".rank-{rank}"
    position = f".step-{step:09d}" if step else ""
    return os.path.join(directory, f"epoch-{epoch:05d}{position}{suffix}.pt")


def rank_path(path: str, rank: int) -> str:
    """The file holding ``rank``'s state next to rank 0's checkpoint ``path``."""
    return path if rank == 0 else re.sub(r"\.pt$", f".rank-{rank}.pt", path)


def save_checkpoint(state: dict, directory: str, epoch: int, keep: int = 0, rank: int = 0, step: int = 0) -> str:
    """Write ``state`` as ``rank``'s checkpoint of ``epoch`` (mid-epoch at ``step`` when given); keep that
    rank's newest ``keep`` (0 = all)."""
    buffer = io.BytesIO()
    torch.save(plain_values(state), buffer)
    payload = buffer.getvalue()
    path = checkpoint_path(directory, epoch, rank, step)
    atomic_write_bytes(path, payload)
    atomic_write_bytes(path + ".sha256", hashlib.sha256(payload).hexdigest().encode())
    if keep > 0:
        for old in list_checkpoints(directory, rank)[:-keep]:
            for name in (old, old + ".sha256"):
                if os.path.exists(name):
                    os.remove(name)
    return path


def list_checkpoints(directory: str, rank: int = 0) -> list:
    """One rank's checkpoint files of a run, oldest first."""
    suffix = "" if rank == 0 else rf"\.rank-{rank}"
    pattern = re.compile(rf"epoch-\d+(\.step-\d+)?{suffix}\.pt")
    return sorted(p for p in glob.glob(os.path.join(directory, "epoch-*.pt")) if pattern.fullmatch(os.path.basename(p)))


def checkpoint_epoch(path: str) -> int:
    return int(re.search(r"epoch-(\d+)", os.path.basename(path)).group(1))


def checkpoint_step(path: str) -> int:
    """The global step of a mid-epoch checkpoint; 0 for one written at an epoch's end."""
    found = re.search(r"\.step-(\d+)", os.path.basename(path))
    return int(found.group(1)) if found else 0


def load_checkpoint(path: str, device="cpu") -> dict:
    """Load and verify one checkpoint, or raise CheckpointError naming the file."""
    try:
        with open(path, "rb") as handle:
            payload = handle.read()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}")
    try:
        with open(path + ".sha256") as handle:
            expected = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded: its checksum file {path}.sha256 is missing "
            f"or unreadable (copy it along with the checkpoint)"
        )
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except Exception as error:  # any unpickling failure, a forbidden global included, means the file is unusable
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {type(error).__name__}")
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer")
    return state


def newest_valid_checkpoint(directory: str, device="cpu"):
    """(path, state) of the newest checkpoint that verifies, skipping corrupt ones with a warning; None if none."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path, device)
        except CheckpointError as error:
            print(f"warning: {error}; trying an older one", file=sys.stderr)
    return None
