"""An exclusive lock on a run's output folder, held by rank 0 for the whole run.

Two runs writing one folder interleave metrics.jsonl and mix their checkpoints, so the second
one is refused, naming the holder. The lock is ``fcntl.flock`` on a file in the folder: the
kernel drops it when the holder dies however it dies, so a killed run never blocks the next.
One lock for all ranks (rank 0's) rather than one per node, because on a shared file system
(NFS emulates flock with whole-file locks) the nodes of one run would lock each other out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

from utilities.config import ConfigError
from utilities.resume import gather

LOCK_NAME = ".run.lock"


class FolderLock:
    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.handle = None
        self.created_folders = []  # removed again on release when still empty: a refused run leaves nothing

    def acquire(self) -> None:
        try:
            self.create_folders()
            self.lock_file()
        except OSError as error:
            self.remove_created_folders()
            raise ConfigError(f"cannot lock {self.path}: {error.strerror}; choose a writable --output-dir") from None

    def lock_file(self) -> None:
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                self.remove_created_folders()
                raise ConfigError(
                    f"{self.directory} is in use by another run ({holder}); wait for it to finish, "
                    f"or choose another --output-dir"
                ) from None
            # A holder that just finished unlinks the file after we opened it: lock the file now at the path.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        handle.flush()
        self.handle = handle

    def create_folders(self) -> None:
        missing, folder = [], os.path.abspath(self.directory)
        while not os.path.exists(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        self.created_folders = missing  # innermost first
        os.makedirs(self.directory, exist_ok=True)

    def remove_created_folders(self) -> None:
        for folder in self.created_folders:
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    def release(self) -> None:
        """Unlink while still holding the lock, so a waiting run cannot lock a file that is going away."""
        if self.handle is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)
        self.handle.close()
        self.handle = None
        self.remove_created_folders()


_held = None


def hold_output_folder(directory: str, rank: int) -> None:
    """Rank 0 locks ``directory`` until release_output_folder (or its death); every rank raises the same
    ConfigError when another run holds it."""
    global _held
    problem = None
    if rank == 0:
        lock = FolderLock(directory)
        try:
            lock.acquire()
            _held = lock
        except ConfigError as error:
            problem = str(error)
    problem = gather(problem)[0]
    if problem:
        raise ConfigError(problem)


def release_output_folder() -> None:
    global _held
    if _held is not None:
        _held.release()
        _held = None
