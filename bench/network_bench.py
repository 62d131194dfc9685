"""Training types between two emulated hosts on a shaped link: images/s, communication and accuracy, one table.

    sudo .venv/bin/python bench/network_bench.py                  # MNIST, lenet5w, 1 epoch, unshaped and 100 Mbit/s
    sudo .venv/bin/python bench/network_bench.py --rates none 100mbit 10mbit --out network.md
    sudo .venv/bin/python bench/network_bench.py --dataset synthetic --synthetic-size 2000 --model mlp \\
        --max-steps 20 --types MBSGD PLSGD                          # smoke check: about 2 minutes
    sudo .venv/bin/python bench/network_bench.py --types MBSGD PLSGD:16 --extra "--lr 0.1"

Needs root. For each --rates entry, bench/two_hosts.sh makes two network namespaces, dtbench0
(10.77.0.1) and dtbench1 (10.77.0.2), joined by a veth pair whose two ends are shaped with
`tc qdisc ... tbf rate RATE` (`none`: unshaped); a TCP probe then sends --probe-mb MB from dtbench0 to
dtbench1 and the header states the rate it achieved. Every training type is one main.py run with
rank 0 in dtbench0 and rank 1 in dtbench1, started as two processes with the torchrun-style
environment main.py reads (RANK, WORLD_SIZE=2, LOCAL_RANK=0, MASTER_ADDR=10.77.0.1, MASTER_PORT)
and GLOO_SOCKET_IFNAME set to the namespace's veth, so all of Gloo's traffic crosses the shaped link (the runs
use --device cpu --backend gloo; --extra comes after those flags and can change them).
OMP_NUM_THREADS defaults to 1 per rank. The namespaces are removed at the end, on failure and on
Ctrl-C or SIGTERM. Only one network bench runs at a time (the namespace names are fixed).

--types takes TYPE, TYPE:J or TYPE+VARIANT:J (variants: overlap [plain --overlap: automatic depth and fragments], whole [one round for the whole state], overlap1/3/4 [fixed depth], frag2/frag4 [that many streamed fragments], bf16overlap, fp16 gradients, bf16sync, normalthreads [Gloo's network thread at default scheduling]; variants chain, TYPE+V1+V2:J; a PLSGD:1000000 run gives the "of compute alone" column). A bare type runs its default J values: MBSGD (J=1), PLSGD (J=4, 8, 32),
SlowMo (J=8), AdaptiveJ (J=8 at the start; the J column shows how it changed between epochs).
Runs land in <runs-dir>/<rate>/<type>-J<J>/ with each rank's output in bench_log_rank<R>.txt; a run
whose summary.json exists and was made with the same link and arguments is reused unless --rerun.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

from bench.common import (  # noqa: E402
    add_common_arguments,
    emit,
    header_line,
    load_metrics,
    markdown_table,
    percent,
)
from bench.emulated_hosts import NAMESPACES, measure_link, on_two_hosts, run_pair, two_hosts  # noqa: E402

DEFAULT_J = {"MBSGD": (1,), "PLSGD": (4, 8, 32), "SlowMo": (8,), "AdaptiveJ": (8,), "TorchPeriodicAverager": (8,)}
# TYPE+VARIANT adds these main.py flags, e.g. PLSGD+overlap:8 or MBSGD+fp16; variants chain: PLSGD+overlap+normalthreads:8.
# overlap: the depth chosen from measurements (--overlap-steps auto); overlap1/3/4: a fixed depth;
# fragN: N streamed fragments, each overlapped at the automatic depth.
VARIANTS = {
    "overlap": ["--overlap"],
    "whole": ["--fragments", "1"],  # with overlap: the whole state in one round (--fragments auto streams fragments)
    "overlap1": ["--overlap", "--overlap-steps", "1"],
    "overlap3": ["--overlap", "--overlap-steps", "3"],
    "bf16overlap": ["--overlap", "--sync-dtype", "bf16"],
    "frag2": ["--overlap", "--fragments", "2"],
    "frag4": ["--overlap", "--fragments", "4"],
    "overlap4": ["--overlap", "--overlap-steps", "4"],
    "fp16": ["--grad-compression", "fp16"],
    "powersgd": ["--grad-compression", "powersgd"],
    "bf16sync": ["--sync-dtype", "bf16"],
    "normalthreads": ["--comm-thread-policy", "normal"],  # Gloo's network thread at default scheduling
}
DEFAULT_TYPES = ["MBSGD", "PLSGD", "SlowMo", "AdaptiveJ"]
HEADERS = [
    "link",
    "training type",
    "J",
    "images/s",
    "of compute alone",
    "comm seconds",
    "comm MB per rank",
    "rounds",
    "final test accuracy (%)",
]
COMPUTE_ALONE_J = 1000000  # PLSGD with this J averages only at the end: the compute-alone reference
FIRST_MASTER_PORT = 29500


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--rates", nargs="+", default=["none", "100mbit"], help="tc rates of the link, none = unshaped")
    parser.add_argument(
        "--types",
        nargs="+",
        default=DEFAULT_TYPES,
        type=training_type,
        help="TYPE or TYPE:J, TYPE one of " + " ".join(DEFAULT_J),
    )
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--synthetic-size", type=int, default=10000, help="training images of --dataset synthetic")
    parser.add_argument("--model", default="lenet5w")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (0 = all)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per rank per step")
    parser.add_argument("--run-timeout", type=float, default=3600, help="seconds one run may take before it is killed")
    parser.add_argument("--probe-mb", type=int, default=50, help="MB the link probe sends")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="run the whole list of types this many times, interleaved (1, 2, ..., 1, 2, ...): each fraction of "
        "compute alone divides by the same repeat's PLSGD:1000000 run, so a machine whose speed drifts "
        "between repeats does not bias one variant; repeat k runs with --seed k-1 (the first with the default 0), so "
        "accuracies vary too; the table gives the mean and every repeat's figure",
    )
    add_common_arguments(parser, "network_bench")
    parser.set_defaults(runs_dir="bench_runs/network")
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def training_type(text: str) -> str:
    name, _, j = text.partition(":")
    name, *variants = name.split("+")
    for variant in variants:
        if variant not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if name not in DEFAULT_J or (j and not (j.isdigit() and int(j) >= 1)) or (name == "MBSGD" and j not in ("", "1")):
        raise argparse.ArgumentTypeError(
            f"expected TYPE or TYPE:J with TYPE one of {', '.join(DEFAULT_J)} and J a "
            f"positive integer (MBSGD only J=1), got {text!r}"
        )
    return text


def expand_types(tokens: list) -> list:
    """[(type, J)] in the order given, bare types expanded to their default J values, duplicates dropped."""
    runs = []
    for token in tokens:
        name, _, j = token.partition(":")
        for local_steps in [int(j)] if j else DEFAULT_J[name.partition("+")[0]]:
            if (name, local_steps) not in runs:
                runs.append((name, local_steps))
    return runs


def main_arguments(arguments: argparse.Namespace, name: str, local_steps: int, seed: int = 0) -> list:
    name, *variants = name.split("+")
    flags = [
        "--training-type",
        name,
        "--dataset",
        arguments.dataset,
        "--data-dir",
        arguments.data_dir,
        "--model",
        arguments.model,
        "--epochs",
        arguments.epochs,
        "--batch-size",
        arguments.batch_size,
        "--max-steps",
        arguments.max_steps,
        "--device",
        "cpu",
        "--backend",
        "gloo",
    ]
    if name != "MBSGD":
        flags += ["--local-steps", local_steps]
    for variant in variants:
        flags += VARIANTS[variant]
    if arguments.dataset == "synthetic":
        flags += ["--synthetic-size", arguments.synthetic_size]
    if seed:
        flags += ["--seed", seed]
    return [str(flag) for flag in flags + shlex.split(arguments.extra)]


# --- the two hosts -------------------------------------------------------------------------------------------


def local_steps_label(name: str, local_steps: int, metrics: list) -> str:
    """J as the run used it; for AdaptiveJ the J of each epoch (a metrics row holds the J chosen after it)."""
    if name != "AdaptiveJ":
        return str(local_steps)
    used = [local_steps] + [row["local_steps"] for row in metrics[:-1]]
    return " → ".join(str(j) for index, j in enumerate(used) if index == 0 or j != used[index - 1])


def depth_label(metrics: list) -> str:
    """The overlap depth logged for each epoch (``--overlap``), e.g. "4/5"; empty for a blocking run."""
    return "/".join(str(row["overlap_steps"]) for row in metrics if "overlap_steps" in row)


def table_row(link: str, name: str, local_steps: int, repeats: list) -> list:
    """One row per type; ``repeats`` holds (summary, metrics, compute-alone images/s) for each repeat. With
    several repeats a column reads "mean (first / second / ...)"."""

    def column(values: list, digits: int) -> str:
        mean = f"{sum(values) / len(values):.{digits}f}"
        return mean if len(values) == 1 else f"{mean} ({' / '.join(f'{v:.{digits}f}' for v in values)})"

    summaries = [summary for summary, _, _ in repeats]
    label = local_steps_label(name, local_steps, repeats[0][1])
    depths = [depth_label(metrics) for _, metrics, _ in repeats]
    fragments = next((row["fragments"] for row in repeats[0][1] if "fragments" in row), 1)
    if fragments > 1:
        label += f", F {fragments}"
    if any(depths):
        label += f", D {'; '.join(depths)}"  # no '|': it would split the markdown cell
    fractions = [summary["images_per_second"] / alone for summary, _, alone in repeats if alone]
    accuracies = [summary["final_test_accuracy"] for summary in summaries]
    return [
        link,
        name,
        label,
        column([summary["images_per_second"] for summary in summaries], 0),
        column(fractions, 2) if len(fractions) == len(repeats) else "",
        column([summary["comm_seconds"] for summary in summaries], 2),
        f"{summaries[0]['comm_bytes'] / 1e6:.1f}",
        summaries[0]["comm_rounds"],
        percent(sum(accuracies) / len(accuracies))
        + ("" if len(accuracies) == 1 else f" ({' / '.join(percent(a) for a in accuracies)})"),
    ]


def bench_link(arguments: argparse.Namespace, link: str, first_port: int) -> tuple:
    """Bring the link up, measure it, run every type across it (--repeats times, interleaved); the header line
    and the table rows."""
    shape = two_hosts("up", link).removeprefix("two_hosts: up, ")
    rate = measure_link(arguments.probe_mb)
    print(f"link {link}: {shape}; measured {rate:.1f} Mbit/s", file=sys.stderr, flush=True)
    types = expand_types(arguments.types)
    runs = {run: [] for run in types}
    for repeat in range(arguments.repeats):
        results = []
        for offset, (name, local_steps) in enumerate(types):
            run_dir = Path(arguments.runs_dir) / link / f"{name}-J{local_steps}"
            if arguments.repeats > 1:
                run_dir /= f"repeat{repeat + 1}"
            summary = run_pair(
                run_dir,
                link,
                main_arguments(arguments, name, local_steps, seed=repeat),
                first_port + repeat * len(types) + offset,
                arguments.run_timeout,
                arguments.rerun,
            )
            results.append((name, local_steps, summary, load_metrics(run_dir)))
        alone = next(
            (
                summary["images_per_second"]
                for name, j, summary, _ in results
                if name == "PLSGD" and j == COMPUTE_ALONE_J
            ),
            0.0,
        )
        for name, local_steps, summary, metrics in results:
            runs[(name, local_steps)].append((summary, metrics, alone))
    rows = [table_row(link, name, j, repeats) for (name, j), repeats in runs.items()]
    return (
        f"- `{link}`: {shape.split(':')[0]}; measured {rate:.1f} Mbit/s (TCP, {arguments.probe_mb} MB "
        f"{NAMESPACES[0]} → {NAMESPACES[1]})",
        rows,
    )


def main(argv=None) -> int:
    arguments = parse_arguments(argv)

    def every_link() -> tuple:
        links, rows = [], []
        for index, link in enumerate(arguments.rates):
            link_line, link_rows = bench_link(arguments, link, FIRST_MASTER_PORT + 1000 * index)
            links.append(link_line)
            rows += link_rows
        return links, rows

    code, result = on_two_hosts("network_bench.py", every_link)
    if code:
        return code
    links, rows = result
    steps = f", at most {arguments.max_steps} steps" if arguments.max_steps else ""
    title = (
        f"Two emulated hosts, one rank each (network namespaces + veth, tc tbf): {arguments.model} on "
        f"{arguments.dataset}, {arguments.epochs} epoch(s){steps}, batch {arguments.batch_size} per rank"
        + (f", {arguments.repeats} repeats interleaved" if arguments.repeats > 1 else "")
    )
    settings = argparse.Namespace(
        **{
            name: value
            for name, value in vars(arguments).items()
            if not name.startswith("probe_") or name == "probe_mb"
        }
    )
    emit(
        f"{header_line('network_bench', settings)}\n\nLinks:\n"
        + "\n".join(links)
        + f"\n\n### {title}\n\n{markdown_table(HEADERS, rows)}",
        arguments.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
