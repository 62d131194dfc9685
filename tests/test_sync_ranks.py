"""The sync classes on real Gloo ranks (spawned processes): when replicas agree, and what it costs."""

import pytest
import torch

from tests.harness import spawn_ranks, tiny_model, train_steps
from train.sync.adaptive import AdaptiveJ, LocalStepsController
from train.sync.plsgd import PLSGD
from train.sync.slowmo import DiLoCo, SlowMo
from utilities.distributed import CommMeter, replicas_identical


def _plsgd_agreement(rank, world_size, local_steps, steps):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    meter = CommMeter()
    identical = []
    train_steps(PLSGD(meter, local_steps), model, optimizer, rank, steps, identical)
    state_bytes = sum(
        t.numel() * 4 for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    )
    return identical, meter.snapshot(), state_bytes


@pytest.mark.parametrize("world_size,local_steps", [(2, 3), (4, 2)])
def test_plsgd_replicas_agree_exactly_after_each_sync_and_counts_are_exact(world_size, local_steps):
    steps = 12
    results = spawn_ranks(_plsgd_agreement, world_size, local_steps, steps)
    identical, comm, state_bytes = results[0]
    assert identical == [(step + 1) % local_steps == 0 for step in range(steps)]
    rounds = steps // local_steps
    assert comm["comm_rounds"] == rounds
    assert comm["comm_collectives"] == rounds  # one flat all-reduce per round, never one per tensor
    assert comm["comm_bytes"] == rounds * state_bytes
    counts = lambda snapshot: {k: v for k, v in snapshot.items() if not k.endswith("seconds")}  # noqa: E731
    assert all(counts(result[1]) == counts(comm) for result in results)


def _slowmo_versus_plsgd(rank, world_size):
    finals = []
    for make_sync in (lambda m: PLSGD(m, 4), lambda m: SlowMo(m, 4, slow_momentum=0.0, slow_lr=1.0)):
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        train_steps(make_sync(CommMeter()), model, optimizer, rank, 12)
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return (finals[0] - finals[1]).abs().max().item()


def test_slowmo_with_alpha_one_beta_zero_is_local_sgd():
    assert max(spawn_ranks(_slowmo_versus_plsgd, 2)) < 1e-6


def _slowmo_outer_step(rank, world_size, slow_momentum, slow_lr):
    lr = 0.05
    model = tiny_model()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    sync = SlowMo(CommMeter(), 2, slow_momentum=slow_momentum, slow_lr=slow_lr)
    # Two periods: the second outer step uses the momentum of the first.
    averaged, outputs = [], []
    outer_step = sync.outer_step

    def spy(fragment=None):
        averaged.append([p.detach().clone() for p in model.parameters()])
        outer_step(fragment)
        outputs.append([p.detach().clone() for p in model.parameters()])

    sync.outer_step = spy
    train_steps(sync, model, optimizer, rank, 4)
    # The paper's update, by hand: u = beta*u + (x_start - x_avg)/lr; x = x_start - alpha*lr*u.
    momentum = [torch.zeros_like(p) for p in start]
    expected_first, expected_second = [], []
    for x0, x_avg, u in zip(start, averaged[0], momentum):
        u.mul_(slow_momentum).add_((x0 - x_avg) / lr)
        expected_first.append(x0 - slow_lr * lr * u)
    for x0, x_avg, u in zip(expected_first, averaged[1], momentum):
        u.mul_(slow_momentum).add_((x0 - x_avg) / lr)
        expected_second.append(x0 - slow_lr * lr * u)
    error_first = max((a - b).abs().max().item() for a, b in zip(outputs[0], expected_first))
    error_second = max((a - b).abs().max().item() for a, b in zip(outputs[1], expected_second))
    return max(error_first, error_second), replicas_identical(model)


def test_slowmo_outer_step_follows_the_paper():
    for error, identical in spawn_ranks(_slowmo_outer_step, 2, 0.6, 0.8):
        assert error < 1e-6
        assert identical


def _diloco_outer_step(rank, world_size):
    model = tiny_model()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sync = DiLoCo(CommMeter(), 3, outer_lr=0.7, outer_momentum=0.9)
    averaged = []
    original = sync.outer_step

    def spy(fragment=None):
        averaged.append([p.detach().clone() for p in model.parameters()])
        original(fragment)

    sync.outer_step = spy
    train_steps(sync, model, optimizer, rank, 3)
    # Nesterov SGD on the pseudo-gradient, first step (buffer = g): x = x0 - lr * (g + mu * g).
    expected = [x0 - 0.7 * (1 + 0.9) * (x0 - x_avg) for x0, x_avg in zip(start, averaged[0])]
    return max((p.detach() - e).abs().max().item() for p, e in zip(model.parameters(), expected))


def test_diloco_outer_step_is_nesterov_sgd_on_the_pseudo_gradient():
    assert max(spawn_ranks(_diloco_outer_step, 2)) < 1e-6


def _adaptive_ranks_agree(rank, world_size):
    controller = LocalStepsController(8, 2, 32, "threshold", (0.02, 0.005, 0.001), total_epochs=9)
    sync = AdaptiveJ(CommMeter(), controller)
    model = tiny_model()
    sync.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    decisions = []
    # Each rank sees a different (fake) loss sequence; rank 0's decision must win everywhere.
    losses = [1.0, 0.999, 0.998] if rank == 0 else [1.0, 2.0, 3.0]
    for epoch, loss in enumerate(losses):
        decisions.append(sync.after_epoch(epoch, {"val_loss": loss})["local_steps"])
    return decisions


def test_adaptive_j_rank0_decides_and_every_rank_follows():
    results = spawn_ranks(_adaptive_ranks_agree, 2)
    assert results[0] == results[1] == [8, 16, 32]


def _adaptive_overlap_below_depth(rank, world_size):
    """J falls from 4 to 1 under --overlap --overlap-steps 3: every round begun is completed, none overwritten."""
    controller = LocalStepsController(4, 1, 8, "threshold", (0.02, 0.005, 0.001), total_epochs=4)
    meter = CommMeter()
    sync = AdaptiveJ(meter, controller, overlap=True, overlap_steps=3)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    completed = []
    sync.prepare(model, optimizer)
    complete = sync.averager.complete

    def counting_complete(*args, **kwargs):
        completed.append(1)
        return complete(*args, **kwargs)

    sync.averager.complete = counting_complete
    js = []
    for epoch, loss in enumerate([1.0, 2.0, 3.0, 4.0]):  # rising loss: J halves twice, 4 -> 2 -> 1
        generator = torch.Generator().manual_seed(100 * epoch + rank)
        for step in range(4):
            inputs, targets = torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
            optimizer.zero_grad()
            sync.after_step(step)
        sync.settle()
        js.append(sync.after_epoch(epoch, {"val_loss": loss})["local_steps"])
    sync.finish()
    return js, meter.rounds, len(completed), replicas_identical(model)


def test_adaptive_j_with_overlap_completes_every_round_when_j_falls_below_the_depth():
    for js, rounds, completed, identical in spawn_ranks(_adaptive_overlap_below_depth, 2):
        assert js == [4, 2, 1, 1]
        assert rounds == completed == 1 + 1 + 2 + 4  # epochs of 4 steps with J = 4, 4, 2, 1
        assert identical
