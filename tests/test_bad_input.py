"""Every bad input ends as one `error:` line, exit code 2, and an output folder left as it was.

Single-process cases call ``main.main`` in this process (the same path as the command line, minus the
interpreter start-up), once with a folder that does not exist (it must not appear) and once with
``--overwrite`` over a previous run (nothing in it may change). Multi-rank cases start 2 real ranks.
"""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

import main
from tests.harness import REPO, TINY, child_env, free_port

GOOD_IMAGES = np.random.default_rng(0).integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
GOOD_LABELS = np.arange(200) % 4
NPY = ["--dataset", "npy", "--model", "mlp", "--batch-size", "8", "--epochs", "1", "--log-every", "1000"]


def npy_data(folder, images=GOOD_IMAGES, labels=GOOD_LABELS, test_images=None, test_labels=None, raw=None):
    """A data folder for --dataset npy; ``raw`` maps file names to bytes written as they are."""
    folder.mkdir(exist_ok=True)
    for name, array in (
        ("images.npy", images),
        ("labels.npy", labels),
        ("test_images.npy", test_images),
        ("test_labels.npy", test_labels),
    ):
        if array is not None:
            np.save(folder / name, array)
    for name, payload in (raw or {}).items():
        (folder / name).write_bytes(payload)
    return [*NPY, "--data-dir", str(folder)]


def truncated_npy(folder):
    npy_data(folder)
    payload = (folder / "images.npy").read_bytes()
    return npy_data(folder, raw={"images.npy": payload[: len(payload) // 2]})


def yaml_file(folder, payload: bytes):
    path = folder / "settings.yaml"
    path.write_bytes(payload)
    return [*TINY, "--config", str(path)]


# name: (argv built in a scratch folder, words the error line must contain)
CASES = {
    "--config names a folder": (lambda d: [*TINY, "--config", str(d)], "folder"),
    "--config not UTF-8": (lambda d: yaml_file(d, b"lr: 0.1\nmodel: l\xe9net\n"), "UTF-8"),
    "duplicate YAML key": (lambda d: yaml_file(d, b"lr: 0.1\nepochs: 2\nlr: 0.2\n"), "'lr' appears twice"),
    "--lr 1e308": (lambda d: [*TINY, "--lr", "1e308"], "--lr"),
    "--warmup-epochs inf": (lambda d: [*TINY, "--warmup-epochs", "inf"], "--warmup-epochs"),
    "huge --seed": (lambda d: [*TINY, "--seed", "99999999999999999999999"], "--seed"),
    "--timeout 1e-9": (lambda d: [*TINY, "--timeout", "1e-9"], "--timeout"),
    "--timeout 1e300": (lambda d: [*TINY, "--timeout", "1e300"], "--timeout"),
    "--dist-url garbage": (lambda d: [*TINY, "--dist-url", "garbage://x"], "--dist-url"),
    "NaN --dirichlet-alpha": (lambda d: [*TINY, "--dirichlet-alpha", "nan"], "--dirichlet-alpha"),
    "negative --dirichlet-alpha": (lambda d: [*TINY, "--dirichlet-alpha", "-1"], "--dirichlet-alpha"),
    "NaN --gamma": (lambda d: [*TINY, "--gamma", "nan"], "--gamma"),
    "negative --gamma": (lambda d: [*TINY, "--gamma", "-0.5"], "--gamma"),
    "NaN --warmup-start-lr": (lambda d: [*TINY, "--warmup-start-lr", "nan"], "--warmup-start-lr"),
    "negative --warmup-start-lr": (lambda d: [*TINY, "--warmup-start-lr", "-0.1"], "--warmup-start-lr"),
    "negative --milestones": (lambda d: [*TINY, "--milestones", "-3"], "--milestones"),
    "unsorted --milestones": (lambda d: [*TINY, "--milestones", "5", "2"], "--milestones"),
    "NaN --bucket-cap-mb": (lambda d: [*TINY, "--bucket-cap-mb", "nan"], "--bucket-cap-mb"),
    "negative --bucket-cap-mb": (lambda d: [*TINY, "--bucket-cap-mb", "-25"], "--bucket-cap-mb"),
    "NaN --adaptive-thresholds": (
        lambda d: [*TINY, "--adaptive-thresholds", "0.1", "nan", "0.01"],
        "--adaptive-thresholds",
    ),
    "negative --adaptive-thresholds": (
        lambda d: [*TINY, "--adaptive-thresholds", "0.1", "-0.1", "0.01"],
        "--adaptive-thresholds",
    ),
    "more micro-batches than images": (
        lambda d: [*TINY, "--batch-size", "16", "--accumulation-steps", "64"],
        "--accumulation-steps",
    ),
    "LAPSGD batch larger than a worker's shard": (
        lambda d: [*TINY, "--training-type", "LAPSGD", "--workers-per-node", "2", "--batch-size", "1000"],
        "worker",
    ),
    "npy empty": (lambda d: npy_data(d, GOOD_IMAGES[:0], GOOD_LABELS[:0]), "empty"),
    "npy 3 samples": (lambda d: npy_data(d, GOOD_IMAGES[:3], GOOD_LABELS[:3]), "test split is empty"),
    "npy garbage": (lambda d: npy_data(d, raw={"images.npy": b"this is no array\n" * 20}), "images.npy"),
    "npy truncated": (truncated_npy, "images.npy"),
    "npy object array": (lambda d: npy_data(d, labels=np.array([{}] * 200, dtype=object)), "labels.npy"),
    "npy string labels": (lambda d: npy_data(d, labels=np.array(["cat", "dog"] * 100)), "integer class indices"),
    "npy label -1": (lambda d: npy_data(d, labels=np.where(GOOD_LABELS == 3, -1, GOOD_LABELS)), "label is -1"),
    "npy label 1e9": (lambda d: npy_data(d, labels=np.where(GOOD_LABELS == 3, 10**9, GOOD_LABELS)), "classes"),
    "npy float labels": (lambda d: npy_data(d, labels=GOOD_LABELS + 0.5), "integer class indices"),
    "npy test labels out of range": (
        lambda d: npy_data(d, test_images=GOOD_IMAGES[:20], test_labels=np.arange(20)),
        "test label is",
    ),
    "npy test split of another length": (
        lambda d: npy_data(d, test_images=GOOD_IMAGES[:20], test_labels=GOOD_LABELS[:19]),
        "test split has 20",
    ),
    "npy test split of another shape": (
        lambda d: npy_data(d, test_images=GOOD_IMAGES[:20, :4], test_labels=GOOD_LABELS[:20]),
        "shape",
    ),
}


def snapshot(folder) -> dict:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def previous_run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "epoch-00001.pt").write_bytes(b"an earlier run's checkpoint")
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return folder


def one_error_line(capsys, exit_code: int, named: str) -> str:
    stderr = capsys.readouterr().err
    assert exit_code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], stderr
    return lines[0]


@pytest.mark.parametrize("over_a_previous_run", [False, True], ids=["new-folder", "overwrite"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_exit_2_and_leaves_the_folder_alone(case, over_a_previous_run, tmp_path, capsys):
    build_argv, named = CASES[case]
    (tmp_path / "scratch").mkdir()
    argv = build_argv(tmp_path / "scratch")
    output = previous_run(tmp_path / "run") if over_a_previous_run else tmp_path / "run"
    before = snapshot(output)
    one_error_line(capsys, main.main([*argv, "--overwrite", "--output-dir", str(output)]), named)
    assert output.exists() == over_a_previous_run and snapshot(output) == before


@pytest.mark.parametrize("below,named", [("", "is a file"), ("run", "lies under the file")])
def test_output_dir_that_is_a_file_or_lies_under_one(below, named, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    output = tmp_path / "file" / below
    one_error_line(capsys, main.main([*TINY, "--output-dir", str(output)]), named)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_read_only_output_dir_is_refused_before_anything_is_made(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes through the mode bits, so make the check see them as a user would
        real_access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode, *rest, **options: (
                os.fspath(path) != str(locked) and real_access(path, mode, *rest, **options)
            ),
        )
    one_error_line(capsys, main.main([*TINY, "--output-dir", str(locked / "run")]), "not writable")
    assert list(locked.iterdir()) == []


def test_full_disk_gives_one_line(tmp_path, capsys, monkeypatch):
    import utilities.checkpoint

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):  # creating a file fails as with no free inode
        if "w" in mode or "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(utilities.checkpoint, "open", open_on_a_full_disk, raising=False)
    one_error_line(capsys, main.main([*TINY, "--output-dir", str(tmp_path / "run")]), "no space left")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_command_line_path_prints_no_traceback(tmp_path):
    npy_args = npy_data(tmp_path / "data", labels=np.where(GOOD_LABELS == 3, -1, GOOD_LABELS))
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *npy_args, "--output-dir", str(tmp_path / "run")],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def start_two_ranks(argv_of_rank, output):
    port = free_port()
    ranks = []
    for rank in range(2):
        env = dict(
            child_env(),
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        ranks.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "main.py"),
                    *argv_of_rank(rank),
                    "--timeout",
                    "60",
                    "--output-dir",
                    str(output),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        stderr = [process.communicate(timeout=120)[1] for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    return [process.returncode for process in ranks], stderr


MULTI_RANK_CASES = {
    # Both ranks fail after the process group exists: the lower one prints.
    "--hierarchy on ranks that do not split into nodes": (
        lambda d: lambda rank: [*TINY, "--training-type", "PLSGD", "--hierarchy", "2", "4", "--ranks-per-node", "3"],
        0,
        "--ranks-per-node",
    ),
    # Only rank 1 fails (its node's data folder is bad): rank 1 prints, rank 0 stops instead of waiting.
    "bad data on one rank only": (
        lambda d: lambda rank: npy_data(d / f"data-{rank}", labels=GOOD_LABELS if rank == 0 else GOOD_LABELS + 0.5),
        1,
        "integer class indices",
    ),
    # Both ranks fail before the process group exists: rank 0 prints.
    "bad flag on every rank": (lambda d: lambda rank: [*TINY, "--gamma", "nan"], 0, "--gamma"),
}


@pytest.mark.parametrize("case", sorted(MULTI_RANK_CASES))
def test_on_two_ranks_one_line_in_all_and_every_rank_exits_2(case, tmp_path):
    argv_for, printer, named = MULTI_RANK_CASES[case]
    codes, stderr = start_two_ranks(argv_for(tmp_path), tmp_path / "run")
    assert codes == [2, 2], stderr
    assert "Traceback" not in "".join(stderr)
    assert stderr[1 - printer] == "", stderr
    assert stderr[printer].startswith("error: ") and stderr[printer].count("\n") == 1 and named in stderr[printer]
    assert not (tmp_path / "run").exists()


def test_under_torchrun_the_line_appears_once(tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(REPO / "main.py"),
        *TINY,
        "--training-type",
        "PLSGD",
        "--hierarchy",
        "2",
        "4",
        "--ranks-per-node",
        "3",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 1  # the agent's own code; the ranks' code 2 is in its failure report
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--ranks-per-node" in errors[0], result.stderr[-3000:]
    assert "exitcode: 2" in result.stderr
