"""bench/gpu_check.sh's dry run (--device cpu, tiny sizes), so the script a GPU machine runs cannot rot."""

import subprocess
import sys

import pytest
import torch

from bench.common import REPO, child_environment, parse_markdown_table


def run_check(*arguments, timeout=240):
    environment = dict(child_environment(), PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_dry_run_passes_every_step_and_writes_both_tables(tmp_path):
    result = run_check("--device", "cpu", "--no-venv", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    log = (tmp_path / "check.log").read_text()
    for step in ("gpu tests", "local methods, 2 ranks on one device over Gloo", "epoch timings"):
        assert f"=== {step}: ok" in log, step
    assert "gpu_check (cpu): all steps passed" in log
    local = parse_markdown_table((tmp_path / "local_methods.md").read_text())
    assert [row["training type"] for row in local] == ["PLSGD"] and int(local[0]["rounds"]) > 0
    timings = parse_markdown_table((tmp_path / "gpu_bench.md").read_text())
    assert [(row["model"], row["amp"]) for row in timings] == [("lenet5", "off")]
    assert float(timings[0]["later epochs, median (s)"]) > 0 and float(timings[0]["images/s (later epochs)"]) > 0


def test_unknown_argument_is_one_error_line():
    result = run_check("--devcie", "cpu", timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown argument --devcie; see bash bench/gpu_check.sh --help"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_a_gpu_says_so(tmp_path):
    result = run_check("--no-venv", "--out", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "error: no CUDA device visible to torch; run with --device cpu for the dry run" in result.stdout
