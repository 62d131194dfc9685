"""Unsafe checkpoints, incomplete checkpoint sets, concurrent runs and changed settings on resume.

Multi-rank cases run 2 Gloo ranks under torchrun through main.py, as users run it.
"""

import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys

import numpy
import pytest
import torch
import yaml

import main
from tests.harness import REPO, check_ok, child_env, metrics, run_main
from utilities.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from utilities.resume import newest_complete_state

SMALL = [
    "--dataset",
    "synthetic",
    "--synthetic-size",
    "1400",
    "--model",
    "mlp",
    "--batch-size",
    "32",
    "--log-every",
    "1000",
]
LOCAL = [*SMALL, "--training-type", "PLSGD", "--local-steps", "4", "--epochs", "3"]  # 19 steps per epoch


class RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_crafted_checkpoint(path, marker, with_checksum: bool) -> None:
    """A file named like a checkpoint whose pickle runs a command; with a matching .sha256 if asked."""
    if with_checksum:
        save_checkpoint(
            {"model": {"weight": torch.ones(1)}, "hook": RunsCode(marker)},
            os.path.dirname(path),
            epoch=int(os.path.basename(path)[6:11]),
        )
    else:
        torch.save({"model": {}, "hook": RunsCode(marker)}, path)


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def lines_starting(text: str, prefix: str) -> list:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def no_rank_traceback(stderr: str) -> bool:
    """No traceback through this project's code (torchrun's agent prints its own for a failed rank)."""
    project_frames = [
        line for line in stderr.splitlines() if f'File "{REPO}/' in line and f'File "{REPO}/.venv/' not in line
    ]
    return not project_frames


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """A 2-rank PLSGD run stopped after epoch 2 of 3: every rank's checkpoints of epochs 1 and 2."""
    folder = tmp_path_factory.mktemp("two-ranks") / "run"
    check_ok(run_main([*LOCAL, "--epochs-per-job", "2", "--output-dir", str(folder)], nproc=2))
    return folder


@pytest.fixture
def run_copy(two_rank_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(two_rank_run, folder)
    return folder


# ----- unsafe files -----------------------------------------------------------------------------------


def test_a_crafted_checkpoint_with_a_valid_checksum_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "epoch-00001.pt"
    plant_crafted_checkpoint(str(path), marker, with_checksum=True)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_a_checkpoint_without_its_checksum_is_skipped_with_one_warning(tmp_path, capsys):
    for epoch in (1, 2):
        save_checkpoint(
            {"model": {"w": torch.full((2,), float(epoch))}, "progress": {"epoch": epoch}}, str(tmp_path), epoch
        )
    os.remove(tmp_path / "epoch-00002.pt.sha256")
    state = newest_complete_state(str(tmp_path), rank=0, device="cpu")
    assert state["progress"]["epoch"] == 1
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "epoch-00002.pt.sha256" in warnings[0]


def test_numpy_and_dataclass_values_are_saved_as_plain_types(tmp_path):
    @dataclasses.dataclass
    class Progress:
        epoch: int = 3

    state = {"model": {"w": torch.ones(2)}, "loss": numpy.float32(0.5), "rng": numpy.arange(3), "progress": Progress()}
    loaded = load_checkpoint(save_checkpoint(state, str(tmp_path), epoch=1))  # weights_only=True
    assert loaded["loss"] == 0.5 and type(loaded["loss"]) is float
    assert torch.equal(loaded["rng"], torch.arange(3)) and loaded["progress"] == {"epoch": 3}


@pytest.mark.parametrize("with_checksum", [False, True])
def test_resume_auto_skips_a_crafted_newest_file_without_running_it(run_copy, tmp_path, with_checksum):
    marker = tmp_path / "pwned"
    plant_crafted_checkpoint(str(run_copy / "checkpoints" / "epoch-99999.pt"), marker, with_checksum)
    result = run_main([*LOCAL, "--resume", "auto", "--output-dir", str(run_copy)], nproc=2)
    check_ok(result)
    assert not marker.exists()
    warnings = lines_starting(result.stderr, "warning:")
    assert (
        len(warnings) == 1
        and "epoch 99999" in warnings[0]
        and "rank 1: epoch-99999.rank-1.pt is missing" in warnings[0]
    ), result.stderr
    assert "resuming after epoch 2" in result.stderr
    assert [row["epoch"] for row in metrics(run_copy)] == [1, 2, 3]


# ----- incomplete sets ----------------------------------------------------------------------------------


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def remove_with_checksum(path):
    path.unlink()
    (path.parent / (path.name + ".sha256")).unlink()


@pytest.mark.parametrize("damage", [truncate, remove_with_checksum], ids=["corrupt", "missing"])
def test_a_bad_rank_1_file_makes_every_rank_resume_the_older_complete_epoch(run_copy, damage):
    damage(run_copy / "checkpoints" / "epoch-00002.rank-1.pt")
    result = run_main([*LOCAL, "--resume", "auto", "--output-dir", str(run_copy)], nproc=2)
    check_ok(result)
    warnings = lines_starting(result.stderr, "warning:")
    assert len(warnings) == 1 and "epoch 2 (rank 1:" in warnings[0] and "resuming from epoch 1" in warnings[0]
    assert "rank 0" not in warnings[0]
    assert "resuming after epoch 1" in result.stderr
    assert [row["epoch"] for row in metrics(run_copy)] == [1, 2, 3]


def test_resume_from_a_path_never_loads_another_ranks_state(run_copy):
    remove_with_checksum(run_copy / "checkpoints" / "epoch-00002.rank-1.pt")
    before = snapshot(run_copy)
    result = run_main(
        [*LOCAL, "--resume", str(run_copy / "checkpoints" / "epoch-00002.pt"), "--output-dir", str(run_copy)],
        nproc=2,
        timeout=120,
    )
    assert result.returncode != 0 and no_rank_traceback(result.stderr)
    errors = lines_starting(result.stderr, "error:")
    assert errors and all("rank 1: epoch-00002.rank-1.pt is missing" in line for line in errors), result.stderr
    assert snapshot(run_copy) == before


# ----- changed settings ---------------------------------------------------------------------------------


def test_resume_with_another_J_is_refused_naming_the_change(run_copy):
    before = snapshot(run_copy)
    result = run_main(
        [*LOCAL, "--local-steps", "8", "--lr", "0.1", "--resume", "auto", "--output-dir", str(run_copy)], nproc=2
    )
    assert result.returncode != 0 and no_rank_traceback(result.stderr)
    errors = lines_starting(result.stderr, "error:")
    assert errors and all(
        "local-steps 4 -> 8" in line and "lr 0.05 -> 0.1" in line and "--allow-config-change" in line for line in errors
    ), result.stderr
    assert snapshot(run_copy) == before


def test_an_allowed_change_of_J_takes_effect_and_is_recorded(run_copy):
    check_ok(
        run_main(
            [*LOCAL, "--local-steps", "8", "--allow-config-change", "--resume", "auto", "--output-dir", str(run_copy)],
            nproc=2,
        )
    )
    rows = metrics(run_copy)
    steps = rows[2]["step"] - rows[1]["step"]
    # Two epochs of J=4 left steps_since_sync at (2 x 19) mod 4; from there on a round every 8 steps.
    assert rows[2]["comm_rounds"] - rows[1]["comm_rounds"] == ((2 * steps) % 4 + steps) // 8
    recorded = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert recorded["local_steps"] == 8
    assert recorded["config_changes"] == [{"from_epoch": 3, "changes": {"local_steps": {"from": 4, "to": 8}}}]


def test_an_allowed_change_to_another_fragment_layout_is_refused_in_one_line(run_copy):
    """A blocking run resumed with --overlap would stream min(J, 8) fragments (--fragments auto): the checkpoint's
    rounds belong to the whole state, so even --allow-config-change cannot apply it; --fragments 1 can."""
    before = snapshot(run_copy)
    resume = [*LOCAL, "--overlap", "--allow-config-change", "--resume", "auto", "--output-dir", str(run_copy)]
    result = run_main(resume, nproc=2)
    assert result.returncode != 0 and no_rank_traceback(result.stderr), result.stderr
    errors = lines_starting(result.stderr, "error:")
    assert errors and all("in 1 fragment(s), this run in 4" in line for line in errors), result.stderr
    assert all(line.endswith("resume with --fragments 1") for line in errors), result.stderr
    assert snapshot(run_copy) == before
    check_ok(run_main([*resume, "--fragments", "1"], nproc=2))
    assert [row.get("fragments") for row in metrics(run_copy)] == [1, 1, 1]


def test_a_checkpoint_records_the_fragment_count_streamed_so_auto_resumes_it(tmp_path):
    folder = tmp_path / "run"
    check_ok(
        run_main([*LOCAL, "--overlap", "--fragments", "4", "--epochs-per-job", "1", "--output-dir", str(folder)], 2)
    )
    # --fragments auto resolves to 4 here (J=4): the layout the checkpoint was written with, so no permission.
    check_ok(run_main([*LOCAL, "--overlap", "--resume", "auto", "--output-dir", str(folder)], nproc=2))
    assert [row.get("fragments") for row in metrics(folder)] == [4, 4, 4]


# ----- the output folder --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """A one-process run stopped after epoch 1 of 2."""
    folder = tmp_path_factory.mktemp("single") / "run"
    check_ok(run_main([*SMALL, "--epochs", "2", "--epochs-per-job", "1", "--output-dir", str(folder)]))
    return folder


@pytest.fixture
def single_copy(single_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(single_run, folder)
    return folder


def start_lock_holder(folder):
    code = (
        "import sys, time; from utilities.run_lock import hold_output_folder; "
        "hold_output_folder(sys.argv[1], 0); print('held', flush=True); time.sleep(300)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], cwd=REPO, env=child_env(), stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_second_run_in_a_locked_folder_exits_naming_the_holder(single_copy, nproc):
    holder = start_lock_holder(single_copy)
    try:
        before = snapshot(single_copy)
        result = run_main(
            [*SMALL, "--epochs", "2", "--resume", "auto", "--output-dir", str(single_copy)], nproc=nproc, timeout=120
        )
        assert snapshot(single_copy) == before
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == (2 if nproc == 1 else 1) and no_rank_traceback(result.stderr)
    errors = lines_starting(result.stderr, "error:")
    assert errors and all("in use by another run" in line and f"pid {holder.pid}" in line for line in errors)
    if nproc == 1:
        assert result.stderr.strip() == errors[0]


def test_a_dead_holders_lock_does_not_block(single_copy):
    holder = start_lock_holder(single_copy)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (single_copy / ".run.lock").exists()  # left behind by the killed holder
    check_ok(run_main([*SMALL, "--epochs", "2", "--resume", "auto", "--output-dir", str(single_copy)]))
    assert [row["epoch"] for row in metrics(single_copy)] == [1, 2]
    assert not (single_copy / ".run.lock").exists()


def test_resume_with_overwrite_is_refused(single_copy):
    before = snapshot(single_copy)
    result = run_main([*SMALL, "--epochs", "2", "--resume", "auto", "--overwrite", "--output-dir", str(single_copy)])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and "--overwrite" in result.stderr
    assert snapshot(single_copy) == before


def test_orphan_temporary_files_are_removed_and_not_counted(single_copy):
    orphans = [single_copy / "checkpoints" / "epoch-00003.pt.tmp.4242", single_copy / "model.pt.tmp.17"]
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    check_ok(
        run_main(
            [*SMALL, "--epochs", "3", "--keep-checkpoints", "1", "--resume", "auto", "--output-dir", str(single_copy)]
        )
    )
    assert not any(orphan.exists() for orphan in orphans)
    recorded = yaml.safe_load((single_copy / "config.yaml").read_text())  # a longer run needs no flag
    assert recorded["config_changes"] == [{"from_epoch": 2, "changes": {"epochs": {"from": 2, "to": 3}}}]
    assert sorted(p.name for p in (single_copy / "checkpoints").iterdir()) == [
        "epoch-00003.pt",
        "epoch-00003.pt.sha256",
    ]


def test_a_full_disk_while_writing_a_checkpoint_is_one_error_line(tmp_path, monkeypatch, capsys):
    real_fsync = os.fsync

    def full_disk(fd):
        if "epoch-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    code = main.main([*SMALL, "--epochs", "1", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = lines_starting(err, "error:")
    assert len(errors) == 1 and "no space left" in errors[0] and "epoch-00001.pt" in errors[0]
    assert os.listdir(tmp_path / "run" / "checkpoints") == []  # no half-written file left


def test_resume_auto_with_another_world_size_is_refused_not_restarted(single_copy):
    before = snapshot(single_copy)
    result = run_main(
        [*SMALL, "--epochs", "2", "--resume", "auto", "--output-dir", str(single_copy)], nproc=2, timeout=120
    )
    assert result.returncode != 0 and no_rank_traceback(result.stderr)
    errors = lines_starting(result.stderr, "error:")
    assert len(errors) == 1 and "from a run on 1 rank(s)" in errors[0], result.stderr  # agreed: printed once
    assert snapshot(single_copy) == before


def test_a_newer_set_from_another_world_size_is_skipped_not_blocking(run_copy, single_run):
    """A stray 1-rank checkpoint (with valid checksums) newer than the 2-rank run's own sets."""
    stray = single_run / "checkpoints" / "epoch-00001.pt"
    for name in ("epoch-00011.pt", "epoch-00011.rank-1.pt"):
        shutil.copy(stray, run_copy / "checkpoints" / name)
        shutil.copy(f"{stray}.sha256", run_copy / "checkpoints" / f"{name}.sha256")
    result = run_main([*LOCAL, "--resume", "auto", "--output-dir", str(run_copy)], nproc=2, timeout=180)
    check_ok(result)
    warnings = lines_starting(result.stderr, "warning: skipped")
    assert len(warnings) == 1 and "epoch 11" in warnings[0] and "resuming from epoch 2" in warnings[0]
    assert [row["epoch"] for row in metrics(run_copy)] == [1, 2, 3]
