"""Shared pieces of the benchmarks: launch main.py as users do, read back what a run wrote, print tables.

A benchmark script builds main.py arguments, calls ``run_main`` once per configuration and turns the
runs' ``summary.json`` / ``metrics.jsonl`` / ``config.yaml`` into rows for ``markdown_table``.
Every run lives in its own folder; a folder whose ``summary.json`` exists and whose recorded
arguments match is reused, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tools.launch import child_environment, main_command

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
LAUNCH_FILE = "bench_launch.json"  # the ranks and main.py arguments a run folder was made with
LOG_FILE = "bench_log.txt"  # the run's stdout and stderr
TORCHRUN_LOG_LINE = re.compile(r"^[DIWE]\d{4} ")  # torchrun's own log lines, e.g. "W1125 11:11:06 ... SIGTERM"


class RunFailed(RuntimeError):
    """A main.py run exited with an error; the message is one line, ``stderr_tail`` holds the details."""

    def __init__(self, message: str, stderr_tail: str = ""):
        super().__init__(message)
        self.stderr_tail = stderr_tail


def add_common_arguments(parser: argparse.ArgumentParser, script: str) -> None:
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="data sets folder passed to main.py")
    parser.add_argument("--extra", default="", help="extra main.py flags for every run, as one quoted string")
    parser.add_argument("--runs-dir", default=f"bench_runs/{script}", help="one sub-folder per run")
    parser.add_argument("--rerun", action="store_true", help="run again even where a finished run exists")
    parser.add_argument("--out", help="also write the Markdown output to this file")


def finished(run_dir: Path, ranks: int, args: list) -> bool:
    """True when the folder holds a finished run made with exactly these ranks and arguments."""
    launch_file = run_dir / LAUNCH_FILE
    if not (run_dir / "summary.json").exists() or not launch_file.exists():
        return False
    return json.loads(launch_file.read_text()) == {"ranks": ranks, "args": args}


def run_main(run_dir, ranks: int, args: list, rerun: bool = False) -> dict:
    """Run main.py with ``args`` on ``ranks`` ranks into ``run_dir`` (or reuse it); return its summary."""
    run_dir = Path(run_dir)
    args = [str(arg) for arg in args]
    if not rerun and finished(run_dir, ranks, args):
        print(f"reusing {run_dir}", file=sys.stderr)
        return load_summary(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").unlink(missing_ok=True)  # a failed launch must not leave an old result behind
    (run_dir / LAUNCH_FILE).write_text(json.dumps({"ranks": ranks, "args": args}) + "\n")
    print(f"running {run_dir} ({ranks} rank(s)) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    for _ in range(2):  # the free port can be taken between probing and torchrun binding it
        exit_code, tail = launch(run_dir, ranks, args)
        if exit_code == 0 or not any(sign in tail.lower() for sign in ("address already in use", "eaddrinuse")):
            break
    if exit_code != 0 or not (run_dir / "summary.json").exists():
        (run_dir / LAUNCH_FILE).unlink()  # not finished: a resumed sweep runs it again
        raise RunFailed(f"run {run_dir} failed (exit {exit_code}): {failure_reason(tail)}", tail)
    print(f"  done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return load_summary(run_dir)


def failure_reason(tail: str) -> str:
    """The line that best says why: main.py's "error:" line, else an exception or abort, else the last line."""
    lines = [line for line in tail.splitlines() if line.strip() and not TORCHRUN_LOG_LINE.match(line)]
    for wanted in (
        lambda line: line.startswith("error:"),
        lambda line: re.search(r"Error\b|Exception\b|terminate called|Killed|Segmentation", line),
    ):
        found = [line for line in lines if wanted(line)]
        if found:
            return found[-1].removeprefix("error: ")
    return lines[-1] if lines else "no output"


def launch(run_dir: Path, ranks: int, args: list) -> tuple:
    """One launch with the output in the run folder's log; returns the exit code and the log's last lines."""
    command = main_command(ranks, [*args, "--output-dir", str(run_dir), "--overwrite"])
    with open(run_dir / LOG_FILE, "w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        result = subprocess.run(command, env=child_environment(), stdout=log, stderr=subprocess.STDOUT)
    lines = (run_dir / LOG_FILE).read_text().splitlines()
    # torchrun ends a failed launch with its own traceback and report; the ranks' output before it says why.
    agent_report = next((index for index, line in enumerate(lines) if "failed (exitcode:" in line), len(lines))
    return result.returncode, "\n".join(lines[max(1, agent_report - 15) : agent_report])


def load_summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def load_metrics(run_dir) -> list:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_run_config(run_dir) -> dict:
    """config.yaml: the resolved settings plus the ``run`` section (world size, global batch, peak LR, ...)."""
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def header_line(script: str, arguments: argparse.Namespace) -> str:
    """The command line as typed, every resolved setting, the torch version and the CPU count."""
    import torch

    typed = shlex.join(["python", f"bench/{script}.py", *sys.argv[1:]])
    settings = ", ".join(f"{name}={value}" for name, value in vars(arguments).items())
    threads = os.environ.get("OMP_NUM_THREADS", "1 (set by the benchmark)")
    return (
        f"`{typed}` | settings: {settings} | torch {torch.__version__} | {os.cpu_count()} CPUs | "
        f"OMP_NUM_THREADS={threads}"
    )


def markdown_table(headers: list, rows: list) -> str:
    """A Markdown table; a column whose cells are all numbers (or n/a) is right-aligned."""
    cells = [[str(value) for value in row] for row in rows]
    numeric = [bool(cells) and all(_looks_numeric(row[column]) for row in cells) for column in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---:" if right else "---" for right in numeric) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list:
    """The rows of the first Markdown table in ``text``, as dicts keyed by the header cells."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return [dict(zip(table[0], row)) for row in table[2:]]


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text == "n/a"


def emit(text: str, out: str | None) -> None:
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def fail(error: RunFailed) -> int:
    """Report a failed run in one line (its log tail below it) and return the exit code for the script."""
    print(f"error: {error}", file=sys.stderr)
    if error.stderr_tail:
        print("--- end of the run's output ---\n" + error.stderr_tail, file=sys.stderr)
    return 1


def percent(fraction) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.2f}"
