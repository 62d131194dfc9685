"""Runs main.py's training in spawned ranks with probes on the collectives and the evaluations.

Each rank runs ``main.main(argv)`` in-process with torchrun's environment, while
- every collective of torch.distributed issued inside a training window (a training step, the
  sync's ``settle``/``finish``, a Hogwild! averaging round) is counted independently of the meter;
  evaluation, metrics and --check-replicas traffic are outside those windows;
- every evaluated model and the final model are fingerprinted, so ranks can be compared.
"""

from __future__ import annotations

import functools
import hashlib
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.harness import free_port

COLLECTIVES = ("all_reduce", "broadcast", "_broadcast_coalesced")


def fingerprint(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Probe:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.depth = 0  # inside a training window
        self.paused = 0  # inside traffic that is not training communication
        self.collectives = 0
        self.bytes = 0
        self.rounds = 0
        self.window_collectives = 0
        self.evaluated = []
        self.final = None
        self.meter = None
        self.summary = None

    def counted(self, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if self.depth and not self.paused:
                # all_reduce/broadcast(tensor, ...) or _broadcast_coalesced(group, tensors, ...)
                tensor = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("tensor")
                tensors = [tensor] if torch.is_tensor(tensor) else list(args[1])
                self.collectives += 1
                self.window_collectives += 1
                self.bytes += sum(t.numel() * t.element_size() for t in tensors)
            return function(*args, **kwargs)

        return wrapper

    def window(self, function):
        """A training window: it is a round when it issued at least one collective."""

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            outer = self.depth == 0
            if outer:
                self.window_collectives = 0
            self.depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1
                if outer and self.window_collectives:
                    self.rounds += 1

        return wrapper

    def pause(self, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            self.paused += 1
            try:
                return function(*args, **kwargs)
            finally:
                self.paused -= 1

        return wrapper


def install(probe: Probe, inject_nan_at: int = -1) -> None:
    """Wrap torch.distributed's collectives and the training windows in this process."""
    import train.loop as loop
    import train.sync.flat_buffer as flat_buffer
    import train.sync.hogwild as hogwild
    import train.sync.plsgd as plsgd

    for name in COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, probe.counted(getattr(dist, name)))
    for module, name in (
        (loop, "all_reduce_sum"),
        (loop, "replicas_identical"),
        (hogwild, "all_reduce_sum"),
        (plsgd, "averaged_copy"),
        (hogwild, "averaged_copy"),
        (flat_buffer, "averaged_copy"),
    ):
        setattr(module, name, probe.pause(getattr(module, name)))

    original_evaluate = loop.evaluate

    def evaluate(model, batches, device):
        probe.evaluated.append(fingerprint(model))
        return original_evaluate(model, batches, device)

    loop.evaluate = evaluate
    original_train_step = loop.Trainer.train_step

    def train_step(trainer, inputs, targets):
        if trainer.progress.step == inject_nan_at and dist.get_rank() == 1:
            inputs = torch.full_like(inputs, float("nan"))
        return original_train_step(trainer, inputs, targets)

    loop.Trainer.train_step = probe.window(train_step)
    original_run = loop.Trainer.run

    def run(trainer):
        sync = trainer.sync
        for name in ("settle", "finish", "average_in_place"):
            if hasattr(sync, name):
                setattr(sync, name, probe.window(getattr(sync, name)))
        summary = original_run(trainer)
        probe.final, probe.meter, probe.summary = fingerprint(trainer.model), trainer.meter.snapshot(), summary
        return summary

    loop.Trainer.run = run


def _rank(rank: int, world_size: int, runs: list, results, inject_nan_at: int) -> None:
    import main

    torch.set_num_threads(1)
    outcomes = []
    probe = Probe()
    install(probe, inject_nan_at)
    for argv, port in runs:
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        probe.reset()
        code = main.main(argv)
        if dist.is_initialized():
            dist.destroy_process_group()
        outcomes.append(
            {
                "argv": argv,
                "code": code,
                "collectives": probe.collectives,
                "bytes": probe.bytes,
                "rounds": probe.rounds,
                "evaluated": list(probe.evaluated),
                "final": probe.final,
                "meter": probe.meter,
                "summary": probe.summary,
            }
        )
    results[rank] = outcomes


def run_ranks(argvs: list, world_size: int = 2, inject_nan_at: int = -1) -> list:
    """Run each argv on ``world_size`` spawned ranks, one after another; per rank, a list of outcomes."""
    runs = [(argv, free_port()) for argv in argvs]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank, args=(world_size, runs, results, inject_nan_at), nprocs=world_size, join=True)
    return [results[rank] for rank in range(world_size)]
