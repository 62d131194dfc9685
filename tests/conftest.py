"""Test tiers: every test that starts processes (spawned Gloo ranks, main.py launches) is marked ``slow``.

``pytest -m "not slow" tests`` is then the quick tier for the edit-test loop; CI runs everything.
A test is slow when it, a fixture it takes, or a function of its module that it calls (directly or
through other functions of the module) names one of ``PROCESS_STARTERS``. Found by reading the
module's source, so a new spawning test is marked without anyone remembering to.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

# Names whose use starts processes: the harness launchers, and the standard libraries behind them.
PROCESS_STARTERS = frozenset({"run_main", "spawn_ranks", "run_ranks", "subprocess", "multiprocessing", "mp"})
# Marked by hand (tests, or fixtures they take): in-process runs of a command-line tool, and the largest
# models, each several seconds of computation; the sweep fixture launches main.py through tools.sweep.
SLOW_BY_NAME = frozenset(
    {
        "smoke_runs",  # tests/test_sweep_report.py: the smoke sweep, four main.py runs
        "test_command_line_writes_top_k_and_the_density_plot",  # tests/test_hessian_spectrum.py
        "test_wide_resnets_match_the_paper_and_train_a_step",  # tests/test_models.py: WRN-28-10, 36M parameters
    }
)


@functools.lru_cache(maxsize=None)
def process_starting_functions(path: Path) -> frozenset:
    """Names of the module's functions (methods as Class.name too) that start processes, directly or not."""
    tree = ast.parse(path.read_text())
    references = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    references[f"{node.name}.{member.name}"] = names_used(member)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            references.setdefault(node.name, names_used(node))
    starting = set()
    while True:  # grow until stable: a function calling a starting function starts processes too
        grown = {
            name
            for name, used in references.items()
            if used & (PROCESS_STARTERS | {n.split(".")[-1] for n in starting})
        }
        if grown == starting:
            return frozenset(starting)
        starting = grown


def names_used(function: ast.AST) -> set:
    names = {node.id for node in ast.walk(function) if isinstance(node, ast.Name)}
    return names | {node.attr for node in ast.walk(function) if isinstance(node, ast.Attribute)}


def starts_processes(item: pytest.Item) -> bool:
    if not isinstance(item, pytest.Function):
        return False
    starting = process_starting_functions(Path(item.path))
    name = item.originalname
    qualified = f"{item.cls.__name__}.{name}" if item.cls is not None else name
    return qualified in starting or bool(starting & set(item.fixturenames))


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = {getattr(item, "originalname", item.name), *getattr(item, "fixturenames", ())}
        if starts_processes(item) or SLOW_BY_NAME & names:
            item.add_marker(pytest.mark.slow)
