"""Only local rank 0 downloads a missing data set; the node's other ranks wait for it, then read."""

import multiprocessing
import os
import time

import numpy as np
import pytest
import torchvision.datasets

from dataloaders import DataError, load_raw

DOWNLOAD_SECONDS = 1.5


class FakeCIFAR10:
    """torchvision's CIFAR10 as seen by the loader: a slow download, and 'not found' until it is complete."""

    def __init__(self, root, train, download):
        complete, log = os.path.join(root, "complete"), os.path.join(root, "events")
        if download and not os.path.exists(complete):
            with open(log, "a") as handle:
                handle.write(f"download-start {os.environ['FAKE_LOCAL_RANK']} {time.time()}\n")
            time.sleep(DOWNLOAD_SECONDS)
            open(complete, "w").close()
            with open(log, "a") as handle:
                handle.write(f"download-end {os.environ['FAKE_LOCAL_RANK']} {time.time()}\n")
        if not os.path.exists(complete):
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        with open(log, "a") as handle:
            handle.write(f"read {os.environ['FAKE_LOCAL_RANK']} {time.time()}\n")
        self.data = np.zeros((40 if train else 10, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(len(self.data))]


def load_as_local_rank(local_rank: int, data_dir: str, start_after: float, results) -> None:
    os.environ["FAKE_LOCAL_RANK"] = str(local_rank)
    torchvision.datasets.CIFAR10 = FakeCIFAR10
    time.sleep(start_after)
    try:
        raw = load_raw("cifar10", data_dir, True, 0, 0.1, 0, local_rank=local_rank, wait_seconds=30)
        results[local_rank] = len(raw.train_images)
    except DataError as error:
        results[local_rank] = str(error)


def run_ranks(data_dir, starts: dict) -> tuple:
    # spawn, not fork: by now the test process has threads (torch, earlier tests), and a fork can copy a lock
    # one of them held, so the child hangs.
    context = multiprocessing.get_context("spawn")
    results = context.Manager().dict()
    processes = [
        context.Process(target=load_as_local_rank, args=(rank, str(data_dir), delay, results))
        for rank, delay in starts.items()
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    events = [line.split() for line in (data_dir / "events").read_text().splitlines()]
    return dict(results), [(kind, int(rank), float(when)) for kind, rank, when in events]


@pytest.mark.parametrize("rank_1_starts_first", [True, False])
def test_the_second_rank_waits_for_local_rank_0_and_never_downloads(tmp_path, rank_1_starts_first):
    starts = {0: 0.5, 1: 0.0} if rank_1_starts_first else {0: 0.0, 1: 0.3}
    results, events = run_ranks(tmp_path, starts)
    assert results == {0: 40, 1: 40}
    downloads = [event for event in events if event[0].startswith("download")]
    assert [(kind, rank) for kind, rank, _ in downloads] == [("download-start", 0), ("download-end", 0)]
    finished = downloads[1][2]
    reads_by_1 = [when for kind, rank, when in events if kind == "read" and rank == 1]
    assert len(reads_by_1) == 2 and min(reads_by_1) >= finished  # train and test split, both after the download


def test_without_download_no_lock_file_is_made(tmp_path):
    with pytest.raises(DataError, match="--no-download"):
        load_raw("cifar10", str(tmp_path), False, 0, 0.1, 0, local_rank=1)
    assert not (tmp_path / ".download.lock").exists()
