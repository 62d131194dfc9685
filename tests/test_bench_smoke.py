"""bench/local_methods.py end to end on tiny synthetic data: both runs land in one table with the right rounds;
network_bench's variants turn into main.py flags."""

import subprocess
import sys

import pytest

from bench.common import REPO, child_environment, parse_markdown_table


def test_local_methods_table_has_every_type_and_local_sgd_talks_a_quarter_as_often(tmp_path):
    out = tmp_path / "table.md"
    # Batch 32 per rank: 1800 training images over 2 ranks give 28 steps, a multiple of J = 4.
    command = [
        sys.executable,
        str(REPO / "bench" / "local_methods.py"),
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "2000",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--types",
        "MBSGD",
        "PLSGD",
        "--local-steps",
        "4",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, cwd=REPO, env=child_environment(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == out.read_text().strip()
    rows = {row["training type"]: row for row in parse_markdown_table(out.read_text())}
    assert set(rows) == {"MBSGD", "PLSGD"}
    mbsgd_rounds, plsgd_rounds = int(rows["MBSGD"]["rounds"]), int(rows["PLSGD"]["rounds"])
    assert mbsgd_rounds == 28 and 4 * plsgd_rounds == mbsgd_rounds
    assert float(rows["PLSGD"]["comm reduction (%)"]) == 75.0


def test_network_bench_variants_chain_into_main_flags():
    from bench import network_bench

    arguments = network_bench.parse_arguments(["--types", "PLSGD+overlap+normalthreads:8"])
    flags = network_bench.main_arguments(arguments, arguments.types[0].partition(":")[0], 8)
    assert flags[flags.index("--local-steps") + 1] == "8"
    assert "--overlap" in flags and flags[flags.index("--comm-thread-policy") + 1] == "normal"
    with pytest.raises(SystemExit):  # argparse: one line naming the unknown variant, exit 2
        network_bench.parse_arguments(["--types", "PLSGD+overlap+bogus:8"])


def test_network_bench_repeats_divide_by_their_own_compute_alone_run():
    from bench import network_bench

    def summary(images_per_second, accuracy):
        return {
            "images_per_second": images_per_second,
            "comm_seconds": 0.5,
            "comm_bytes": 3.2e6,
            "comm_rounds": 20,
            "final_test_accuracy": accuracy,
        }

    depth = [{"overlap_steps": 4}]
    # Repeat 1 ran on a machine 10% faster than repeat 2; each fraction uses its own repeat's reference.
    repeats = [(summary(900.0, 0.40), depth, 1000.0), (summary(720.0, 0.42), [{"overlap_steps": 5}], 900.0)]
    row = network_bench.table_row("100mbit", "PLSGD+overlap", 8, repeats)
    assert row[2] == "8, D 4; 5"
    assert row[3] == "810 (900 / 720)"
    assert row[4] == "0.85 (0.90 / 0.80)"
    assert row[8] == "41.00 (40.00 / 42.00)"
    single = network_bench.table_row("100mbit", "PLSGD", 8, repeats[:1])
    assert (single[3], single[4]) == ("900", "0.90")
    with pytest.raises(SystemExit):
        network_bench.parse_arguments(["--repeats", "0"])
