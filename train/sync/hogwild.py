"""LAPSGD and LPPSGD: Hogwild!-style workers per node, non-blocking averaging across nodes.

Chatterjee, Kungurtsev, Alistarh, "Scaling the Wild: Decentralizing Hogwild!-style
Shared-memory SGD" (2022). On every node (rank), ``workers`` processes share ONE model in
shared memory and update it lock-free on disjoint parts of the node's shard:
- LAPSGD: each worker computes the full gradient and updates the whole model;
- LPPSGD: each worker backpropagates into and updates only its own block of the parameters
  (partial backpropagation), so concurrent updates do not collide; after the prepass epochs,
  partitioned steps alternate with full steps.
The rank process itself is the averager: every J node steps (counted over all its workers)
it averages the shared model with the other nodes in place while the workers keep training.
It snapshots the flat parameters, all-reduces the snapshot and adds (average - snapshot) to
the live parameters, so updates the workers made during the all-reduce survive. Only this
process talks to the process group, so collectives never come from two threads at once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dataloaders import TrainBatches
from train.sync.base import RunShape, Sync
from train.sync.flat_buffer import FlatBuffer, averaged_copy, floating_state
from train.sync.hogwild_watch import WorkerWatch
from train.sync.hogwild_worker import WorkerSpec, worker_main
from train.sync.layer_blocks import balanced_blocks
from train.sync.plsgd import broadcast_from_rank0
from utilities.distributed import CommMeter, all_reduce_sum, is_distributed

POLL_SECONDS = 0.002  # how often the averager looks at the node's step counter


class LAPSGD(Sync):
    # Also reads the optimizer settings (--optimizer, --lr, ...) every type uses: its workers build their own.
    OPTIONS = ("local_steps", "workers_per_node", "average_buffers", "switch_epoch")
    REFUSED_OPTIONS = ()
    trains_in_workers = True

    def __init__(
        self,
        meter: CommMeter,
        local_steps: int,
        workers: int,
        optimizer: str,
        optimizer_kwargs: dict,
        schedule,
        prepass_epochs: int = 0,
        average_buffers: bool = True,
        all_reduce=None,
        pre_post_epochs: int = 0,
        max_steps: int = 0,
        timeout: float = 300.0,
    ):
        super().__init__(meter)
        if local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {local_steps}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.local_steps, self.workers, self.prepass_epochs = local_steps, workers, prepass_epochs
        # LPP-SGD's --pre_post_epochs: average after every node step for the first epochs, then every J.
        self.pre_post_epochs, self.interval = pre_post_epochs, local_steps
        self.optimizer_name, self.optimizer_kwargs, self.schedule = optimizer, optimizer_kwargs, schedule
        self.average_buffers, self.max_steps = average_buffers, max_steps
        self.all_reduce = all_reduce or dist.all_reduce
        self.context = mp.get_context("spawn")
        self.node_steps = self.context.Value("q", 0)  # optimizer steps of all this node's workers
        self.synced_at = 0  # node step count at the last averaging round
        # Node step count when the ranks last held one model: after a round made while the workers were
        # idle. A round made while they train keeps their updates on top of the average, different per rank.
        self.identical_at = 0
        self.steps_during_rounds = 0  # node steps the workers took while a round was in flight
        self.processes, self.worker_states = [], {}
        self.watch = WorkerWatch(self.context, workers, timeout)  # a stuck worker fails its rank within timeout s

    @classmethod
    def from_config(cls, config, meter: CommMeter, shape: RunShape):
        kwargs = {
            "lr": config.lr,
            "momentum": config.momentum,
            "nesterov": config.nesterov,
            "weight_decay": config.weight_decay,
            "trust_coefficient": config.trust_coefficient,
            "exclude_bias_and_norm": config.lars_exclude_bias_norm,
        }
        return cls(
            meter,
            config.local_steps,
            config.workers_per_node,
            config.optimizer,
            kwargs,
            shape.schedule,
            config.prepass_epochs,
            config.average_buffers,
            pre_post_epochs=max(config.switch_epoch, 0),
            max_steps=shape.max_steps,
            timeout=config.timeout,
        )

    def prepare(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        broadcast_from_rank0(model)
        model.share_memory()
        self.state = FlatBuffer(floating_state(model, self.average_buffers))
        self.rank = dist.get_rank() if is_distributed() else 0
        self.world_size = dist.get_world_size() if is_distributed() else 1
        return model

    def node_step_count(self) -> int:
        """The node's step count, read without its lock: a worker stopped while holding it (SIGSTOP) must not
        stall the rank, whose watch has to notice that worker. Reading one aligned 64-bit value is atomic."""
        return self.node_steps.get_obj().value

    def worker_blocks(self) -> list:
        return [None] * self.workers

    def start_workers(self, train: TrainBatches) -> None:
        train.share_memory()
        threads = max(1, torch.get_num_threads() // self.workers)
        self.commands = [self.context.SimpleQueue() for _ in range(self.workers)]
        self.results = self.context.Queue()
        for index, block in enumerate(self.worker_blocks()):
            # Worker w of rank r reads shard r*P + w of W*P: the node's shard, split P ways.
            data = train.resharded(self.rank * self.workers + index, self.world_size * self.workers)
            spec = WorkerSpec(
                self.optimizer_name,
                self.optimizer_kwargs,
                self.schedule,
                threads,
                block,
                self.prepass_epochs,
                self.worker_states.get(index),
                self.max_steps,
                os.getpid(),
            )
            process = self.context.Process(
                target=worker_main,
                daemon=True,
                name=f"hogwild-{self.rank}-{index}",
                args=(
                    index,
                    spec,
                    self.model,
                    data,
                    self.commands[index],
                    self.results,
                    self.node_steps,
                    self.watch.steps,
                ),
            )
            process.start()
            self.processes.append(process)
        for _ in self.processes:  # start-up (imports) is not training time
            self.results.get(timeout=300)

    def train_epoch(self, epoch: int, batches, device) -> dict:
        if not self.processes:
            self.start_workers(batches)
        lr = self.schedule.lr_at(self.node_step_count())
        steps_during_rounds_before = self.steps_during_rounds
        self.interval = 1 if epoch < self.pre_post_epochs else self.local_steps
        started = time.perf_counter()
        self.watch.start_epoch()
        for commands in self.commands:
            commands.put(epoch)
        reports = {}
        while len(reports) < self.workers:
            self.average_when_due()
            try:
                report = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self.watch.check(self.processes, self.rank, idle=set(reports))
                continue
            reports[report.index] = report
        self.average_when_due(workers_idle=True)
        seconds = time.perf_counter() - started
        self.worker_states = {index: report.optimizer_state for index, report in reports.items()}
        loss, correct, images = all_reduce_sum(
            [
                sum(r.loss_sum for r in reports.values()),
                sum(r.correct for r in reports.values()),
                sum(r.images for r in reports.values()),
            ],
            device,
        )
        return {
            "step": self.node_step_count(),
            "lr": lr,
            "train_loss": loss / images,
            "train_accuracy": correct / images,
            "images_per_second": images / seconds,
            "train_seconds": seconds,
            "node_steps_during_sync": self.steps_during_rounds - steps_during_rounds_before,
        }

    def average_when_due(self, workers_idle: bool = False) -> None:
        while self.node_step_count() - self.synced_at >= self.interval:
            self.synced_at += self.interval
            self.average_in_place(workers_idle)

    def average_in_place(self, workers_idle: bool = False) -> None:
        """One round that never stops the workers: live = mean(snapshot) + (live - snapshot)."""
        if not is_distributed():
            return
        self.meter.count_round()
        snapshot = self.state.gather()
        average = snapshot.clone()
        steps_before = self.node_step_count()
        started = time.perf_counter()
        self.all_reduce(average)
        seconds = time.perf_counter() - started
        # Training is held up only when the workers have nothing to do meanwhile (end of an epoch).
        self.meter.record(average, seconds if workers_idle else 0.0, seconds)
        average.div_(self.world_size)
        sizes = [t.numel() for t in self.state.tensors]
        with torch.no_grad():
            for tensor, before, mean in zip(
                self.state.tensors, torch.split(snapshot, sizes), torch.split(average, sizes)
            ):
                # live - snapshot is what the workers did meanwhile (exactly 0 if nothing): keep it on the mean.
                tensor.sub_(before.view_as(tensor)).add_(mean.view_as(tensor))
        self.steps_during_rounds += self.node_step_count() - steps_before
        if workers_idle:
            self.identical_at = self.node_step_count()

    @contextlib.contextmanager
    def eval_model(self):
        """Workers are idle between epochs; nodes differ until the next round, so evaluate their average."""
        if self.node_step_count() == self.identical_at or not is_distributed():
            yield self.model
            return
        yield averaged_copy(self.model)

    def finish(self) -> None:
        """Stop the workers, then one last exact average so every node holds the same model."""
        for commands in getattr(self, "commands", []):
            commands.put(None)
        for process in self.processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
        self.processes = []
        if self.node_step_count() != self.identical_at and is_distributed():
            self.synced_at = self.identical_at = self.node_step_count()
            self.meter.count_round()
            self.state.average(self.meter)  # no worker runs now: copy the average itself, bit for bit

    def state_dict(self) -> dict:
        return {
            "node_steps": self.node_step_count(),
            "synced_at": self.synced_at,
            "identical_at": self.identical_at,
            "steps_during_rounds": self.steps_during_rounds,
            "worker_states": self.worker_states,
        }

    def load_state_dict(self, state: dict) -> None:
        self.node_steps.value, self.synced_at = state["node_steps"], state["synced_at"]
        self.identical_at = state.get("identical_at", -1)
        self.steps_during_rounds, self.worker_states = state["steps_during_rounds"], state["worker_states"]


class LPPSGD(LAPSGD):
    OPTIONS = (*LAPSGD.OPTIONS, "prepass_epochs")

    def worker_blocks(self) -> list:
        sizes = [p.numel() for p in self.model.parameters()]
        return balanced_blocks(sizes, self.workers)
