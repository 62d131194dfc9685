"""One Hogwild!-style worker process of LAPSGD/LPPSGD.

It trains the node's shared-memory model in place, lock-free, on its own part of the node's
shard, with its own optimizer (momentum is never shared or averaged). The node-wide step
counter drives the learning-rate schedule and tells the averager when J steps have passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from dataloaders import TrainBatches
from train.optimizers import build_optimizer
from train.schedules import Schedule
from train.sync.hogwild_watch import bind_to_rank


@dataclass
class WorkerSpec:
    """Everything a worker needs besides the shared model and data, all picklable."""

    optimizer: str
    optimizer_kwargs: dict
    schedule: Schedule
    threads: int
    block: Optional[tuple] = None  # (start, stop) parameter indices of this worker's LPPSGD partition
    prepass_epochs: int = 0
    optimizer_state: Optional[dict] = None
    max_steps: int = 0  # the node stops after this many steps (0 = no limit)
    rank_pid: int = 0  # the rank process: the worker dies with it


class WorkerReport(NamedTuple):
    """What a worker sends back after an epoch."""

    index: int
    loss_sum: float
    correct: int
    images: int
    optimizer_state: dict  # host copies: the coordinator keeps them for the next start and checkpoints


def use_block(parameters: list, block: Optional[tuple]) -> None:
    """Let autograd compute gradients only for ``block`` (all parameters when None).

    ``requires_grad`` is a property of this process's Parameter objects, not of the shared
    storage, so every worker sets its own: backpropagation stops below the earliest layer it owns.
    """
    for index, parameter in enumerate(parameters):
        parameter.requires_grad_(block is None or block[0] <= index < block[1])


def hogwild_step(model, optimizer, inputs, targets, parameters, block) -> tuple:
    """One lock-free step on the shared model: (loss sum, correct) of the batch."""
    use_block(parameters, block)
    logits = model(inputs)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    optimizer.step()  # parameters without a gradient (outside the block) are left untouched
    optimizer.zero_grad(set_to_none=True)
    return loss.detach().double() * len(targets), (logits.detach().argmax(dim=1) == targets).sum()


def take_step(node_steps, max_steps: int) -> Optional[int]:
    """Claim the node's next step and return its number (None once --max-steps are taken); the claim is
    atomic, so the node takes exactly max_steps steps however many workers race for the last ones."""
    with node_steps.get_lock():
        if max_steps and node_steps.value >= max_steps:
            return None
        node_steps.value += 1
        return node_steps.value - 1


def host_copy(state):
    """``state`` with its tensors copied to host memory. A CUDA tensor sent through a queue is a
    handle into this process's memory, invalid once the worker exits; and even a CPU tensor would
    be shared, changing under the coordinator as this worker trains on."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: host_copy(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(host_copy(value) for value in state)
    return state


def worker_main(
    index: int, spec: WorkerSpec, model, train: TrainBatches, commands, results, node_steps, worker_steps
) -> None:
    """Process entry: run the epochs the coordinator asks for until it sends None."""
    bind_to_rank(spec.rank_pid)
    os.environ["OMP_NUM_THREADS"] = str(spec.threads)
    torch.set_num_threads(spec.threads)
    parameters = list(model.parameters())
    optimizer = build_optimizer(spec.optimizer, parameters, **spec.optimizer_kwargs)
    if spec.optimizer_state is not None:
        optimizer.load_state_dict(spec.optimizer_state)
    model.train()
    results.put(("ready", index))
    while (epoch := commands.get()) is not None:
        partitioned = spec.block is not None and epoch >= spec.prepass_epochs
        # On the model's device: a CPU total cannot take a GPU step's loss in place.
        device = parameters[0].device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        images = 0
        for step, (inputs, targets) in enumerate(train.epoch(epoch)):
            node_step = take_step(node_steps, spec.max_steps)
            if node_step is None:
                break
            lr = spec.schedule.lr_at(node_step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # After the prepass, partitioned steps alternate with full steps (LPP-SGD).
            block = spec.block if partitioned and step % 2 == 0 else None
            step_loss, step_correct = hogwild_step(model, optimizer, inputs, targets, parameters, block)
            worker_steps[index] += 1  # the rank's sign of life from this worker (hogwild_watch)
            loss_sum += step_loss
            correct += step_correct
            images += len(targets)
        use_block(parameters, None)
        results.put(WorkerReport(index, loss_sum.item(), correct.item(), images, host_copy(optimizer.state_dict())))
