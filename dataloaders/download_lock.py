"""One download per node: local rank 0 fetches a missing data set, the node's other ranks wait, then read.

Ranks of one node share the data folder, and torchvision writes its archive and extracts it in
place, so several ranks downloading at once corrupt a first run. A file lock in the data folder
orders them without the process group (which a failing download must not leave waiting in a
collective): local rank 0 holds it exclusively while it loads (and downloads what is missing);
the others take it shared and read only what is already complete, retrying until it is.
"""

from __future__ import annotations

import fcntl
import os
import time

from dataloaders.validate import DataError

LOCK_NAME = ".download.lock"
RETRY_SECONDS = 0.5


def _open_lock(data_dir: str):
    try:
        os.makedirs(data_dir, exist_ok=True)
        return open(os.path.join(data_dir, LOCK_NAME), "a")
    except OSError:  # a read-only data folder: nothing can be downloaded into it, so nothing to order
        return None


def load_once_per_node(load, data_dir: str, download: bool, local_rank: int, wait_seconds: float):
    """``load(download_allowed)`` returns the data set or raises DataError when it is missing."""
    handle = _open_lock(data_dir) if download else None
    if handle is None:
        return load(download)
    with handle:
        if local_rank == 0:
            fcntl.flock(handle, fcntl.LOCK_EX)
            return load(True)
        deadline = time.monotonic() + wait_seconds
        while True:
            fcntl.flock(handle, fcntl.LOCK_SH)  # blocks while local rank 0 downloads
            try:
                return load(False)
            except DataError as error:
                if time.monotonic() > deadline:
                    raise DataError(
                        f"waited {wait_seconds:g} s for local rank 0 to download into {data_dir}, in vain: {error}"
                    )
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            time.sleep(RETRY_SECONDS)
