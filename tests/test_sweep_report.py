"""Sweeps and reports: grid expansion and bad sweep files (unit), dry runs and SLURM arrays (no runs), then
the smoke sweep for real (4 tiny runs), its resumption, results.csv, the report and the Hessian tool on it."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tools import hessian, report, sweep

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke_sweep.yaml")
SMOKE_RUNS = [
    "training_type=MBSGD,ranks=1",
    "training_type=MBSGD,ranks=2",
    "training_type=PLSGD,ranks=1",
    "training_type=PLSGD,ranks=2",
]


def write_sweep(directory: Path, text: str) -> str:
    path = directory / "sweep.yaml"
    path.write_text(text)
    return str(path)


def test_grid_expands_to_the_product_with_readable_names_and_merged_settings(tmp_path):
    path = write_sweep(
        tmp_path,
        """
name: unit
base: {dataset: synthetic, model: mlp, lr: 0.1, local_steps: 4}
launch: {ranks: 3}
grid:
  training_type: [PLSGD, SlowMo]
  local_steps: [8, 16]
  weight_decay: [1e-4, 5.0e-4]
  "optimizer,lr": [[sgd, 0.2], [lamb, 0.002]]
""",
    )
    loaded = sweep.load_sweep(path, str(tmp_path / "runs"))
    runs = sweep.expand(loaded)
    assert len(runs) == 2 * 2 * 2 * 2
    first = runs[0]
    assert first.name == "training_type=PLSGD,local_steps=8,weight_decay=0.0001,optimizer=sgd,lr=0.2"
    assert first.ranks == 3 and first.directory == str(tmp_path / "runs" / first.name)
    assert first.settings == {
        "dataset": "synthetic",
        "model": "mlp",
        "lr": 0.2,
        "local_steps": 8,
        "training_type": "PLSGD",
        "weight_decay": 1e-4,
        "optimizer": "sgd",
        "output_dir": first.directory,
        "resume": "auto",
    }
    assert runs[-1].name == "training_type=SlowMo,local_steps=16,weight_decay=0.0005,optimizer=lamb,lr=0.002"
    assert len({run.name for run in runs}) == len(runs)
    sweep.check_settings(runs)  # every run parses as main.py would parse it


def test_null_in_a_linked_value_leaves_the_setting_out_of_that_run(tmp_path):
    path = write_sweep(
        tmp_path,
        """
name: rows
base: {dataset: synthetic, model: mlp, local_steps: 4}
grid:
  "training_type,local_steps,optimizer": [[MBSGD, null, adamw], [PLSGD, 8, null]]
""",
    )
    runs = sweep.expand(sweep.load_sweep(path, str(tmp_path / "runs")))
    assert [run.name for run in runs] == ["training_type=MBSGD,optimizer=adamw", "training_type=PLSGD,local_steps=8"]
    assert runs[0].settings["local_steps"] == 4 and "optimizer" not in runs[1].settings
    sweep.check_settings(runs)


def test_ranks_in_the_grid_choose_the_launcher(tmp_path):
    runs = sweep.expand(sweep.load_sweep(SMOKE, str(tmp_path)))
    assert [run.name for run in runs] == SMOKE_RUNS
    assert [run.ranks for run in runs] == [1, 2, 1, 2]
    assert "ranks" not in runs[0].settings
    single, pair = sweep.command(runs[0]), sweep.command(runs[1])
    assert single[1].endswith("main.py") and single[-2:] == ["--config", runs[0].config_path]
    assert pair[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    assert pair[4].startswith("--master_port=")


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: bad\ngrid: {lrr: [0.1]}\n", "unknown setting 'lrr' (did you mean 'lr'?)"),
        ("name: bad\nbase: {epoch: 1}\ngrid: {lr: [0.1]}\n", "unknown setting 'epoch'"),
        ("name: bad\ngrid: {lr: []}\n", "grid 'lr' needs a non-empty list"),
        ("name: bad\ngrid: {lr: 0.1}\n", "grid 'lr' needs a non-empty list"),
        ("name: bad\ngrid: {lr: [0.1}\n", "not valid YAML"),
        ("name: bad\ngrid: {lr: [-1.0]}\n", "--lr must be positive"),
        ("name: bad\ngrid: {optimizer: [sgdd]}\n", "unknown value 'sgdd'"),
        ("name: bad\ngrid: {ranks: [0]}\n", "ranks must be a positive whole number"),
        ("name: bad\nbase: {output_dir: x}\ngrid: {lr: [0.1]}\n", "set by the sweep"),
        ("name: bad\ngrids: {lr: [0.1]}\n", "unknown top-level key 'grids'"),
        ("grid: {lr: [0.1]}\n", "'name' must be"),
    ],
)
def test_bad_sweep_files_fail_with_one_line_and_code_2(tmp_path, capsys, text, message):
    assert sweep.main([write_sweep(tmp_path, text), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error


def test_unknown_setting_from_the_command_line(tmp_path):
    path = write_sweep(tmp_path, "name: bad\ngrid: {training_typ: [MBSGD]}\n")
    result = subprocess.run(
        [sys.executable, "-m", "tools.sweep", path], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown setting 'training_typ'" in result.stderr
    assert not (REPO / "runs" / "sweeps" / "bad").exists()


def test_dry_run_lists_the_runs_and_creates_nothing(tmp_path, capsys):
    assert sweep.main([SMOKE, "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" [")[0] for line in lines[:4]] == SMOKE_RUNS
    assert "torch.distributed.run --nproc_per_node=2" in lines[1] and "torch.distributed" not in lines[0]
    assert lines[-1].startswith("4 runs (0 done)")
    assert not (tmp_path / "runs").exists()


def test_only_selects_runs_by_folder_name(tmp_path, capsys):
    assert sweep.main([SMOKE, "--dry-run", "--only", "ranks=2", "--runs-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("2 runs")
    assert sweep.main([SMOKE, "--dry-run", "--only", "nothing-like-this", "--runs-dir", str(tmp_path)]) == 2


def test_slurm_array_script(tmp_path):
    script = tmp_path / "smoke.sh"
    assert sweep.main([SMOKE, "--slurm-array", str(script), "--runs-dir", str(tmp_path / "runs")]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-3\n" in text and "#SBATCH --nodes=2\n" in text
    assert text.count("sweep_config.yaml") == 4 and "RANKS=(1 2 1 2)" in text
    assert "srun --kill-on-bad-exit=1" in text and '--config "$config"' in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for name in SMOKE_RUNS:  # configs written, nothing run
        settings = yaml.safe_load((tmp_path / "runs" / name / "sweep_config.yaml").read_text())
        assert settings["output_dir"] == str(tmp_path / "runs" / name)
        assert not (tmp_path / "runs" / name / "summary.json").exists()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """The smoke sweep run for real: 4 runs of a few seconds each."""
    runs_dir = tmp_path_factory.mktemp("smoke") / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        code = sweep.main([SMOKE, "--runs-dir", str(runs_dir)])
    logs = "\n".join(path.read_text()[-2000:] for path in runs_dir.glob("*/sweep.log"))
    assert code == 0, logs
    return runs_dir


def test_smoke_sweep_runs_every_point_and_resumes_by_skipping(smoke_runs, capsys):
    capsys.readouterr()
    started = time.perf_counter()
    assert sweep.main([SMOKE, "--runs-dir", str(smoke_runs)]) == 0
    assert time.perf_counter() - started < 5
    assert capsys.readouterr().out.count("done already (summary.json), skipped") == 4
    with open(smoke_runs / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == SMOKE_RUNS
    assert [row["world_size"] for row in rows] == ["1", "2", "1", "2"]
    for row in rows:
        assert row["status"] == "done" and 0 <= float(row["final_test_accuracy"]) <= 1
        assert row["model"] == "mlp" and row["dataset"] == "synthetic"
    assert int(rows[3]["comm_rounds"]) < int(rows[1]["comm_rounds"])  # PLSGD averages every 4 steps


def test_report_of_the_smoke_sweep(smoke_runs, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{}")  # no config.yaml, no metrics: skipped with a warning
    out = tmp_path / "report"
    assert report.main([str(smoke_runs), str(broken), "--out", str(out)]) == 0
    assert "warning:" in capsys.readouterr().err
    text = (out / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 4
    assert [row.split(" | ")[1:3] for row in rows] == [["MBSGD", "1"], ["MBSGD", "2"], ["PLSGD", "1"], ["PLSGD", "2"]]
    assert rows[0].split(" | ")[3] == "" and rows[3].split(" | ")[3] == "4"  # J blank for MBSGD
    for name in ("accuracy_vs_epoch.png", "accuracy_vs_rounds.png", "accuracy_vs_wall_time.png"):
        assert (out / name).stat().st_size > 1000, name


def test_report_without_runs_fails(tmp_path, capsys):
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2


def test_hessian_of_a_smoke_run(smoke_runs):
    run_dir = smoke_runs / SMOKE_RUNS[3]
    arguments = [str(run_dir), "--samples", "200", "--iterations", "5", "--hutchinson", "2"]
    assert hessian.main(arguments) == 0
    result = json.loads((run_dir / "hessian.json").read_text())
    assert result["samples"] == 200 and 1 <= result["iterations"] <= 5
    assert result["top_eigenvalue"] > 0 and result["trace"] > 0
    assert os.path.exists(run_dir / "model.pt")


def test_runs_dir_that_is_a_file_and_folder_names_too_long_fail_with_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for extra in ([], ["--dry-run"], ["--collect"], ["--slurm-array", str(tmp_path / "x.sh")]):
        assert sweep.main([SMOKE, "--runs-dir", str(a_file), *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert error.splitlines() == [f"error: runs folder {a_file} is a file; give --runs-dir a folder"]
    long_value = "x" * 300
    path = write_sweep(tmp_path, f"name: long\ngrid: {{data_dir: [{long_value}]}}\n")
    assert sweep.main([path, "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "over the file system's 255" in error, error


def test_a_damaged_summary_is_refused_and_the_run_resumes_once_it_is_moved_away(smoke_runs, tmp_path, capsys):
    import shutil

    name = "training_type=MBSGD,ranks=1"
    runs_dir = tmp_path / "runs"
    shutil.copytree(smoke_runs / name, runs_dir / name)
    expected = json.loads((smoke_runs / name / "summary.json").read_text())
    summary = runs_dir / name / "summary.json"
    for damaged in ('{"final_test_acc', "", "[1, 2]"):
        summary.write_text(damaged)
        for extra in (["--dry-run"], ["--collect"], []):
            assert sweep.main([SMOKE, "--runs-dir", str(runs_dir), "--only", name, *extra]) == 2
            # The smoke sweep's own settings warn first (MBSGD ignores --local-steps); then one error line.
            error = capsys.readouterr().err.strip().splitlines()
            assert error[-1].startswith(f"error: run {name}: its summary.json is unreadable"), error
            assert not any("Traceback" in line or line.startswith("error") for line in error[:-1]), error
    summary.unlink()  # as the message says: move it away, run the sweep again
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        assert sweep.main([SMOKE, "--runs-dir", str(runs_dir), "--only", name]) == 0
    resumed = json.loads(summary.read_text())
    assert resumed["final_test_accuracy"] == expected["final_test_accuracy"]
    assert resumed["steps"] == expected["steps"] and resumed["comm_rounds"] == expected["comm_rounds"]
