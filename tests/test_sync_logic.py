"""Sync logic against a fake communicator: N simulated ranks in one process (tests/fake_comm.py).

The first test layer: what each averaging round computes and sends, checked number by number,
without spawning. tests/test_sync_ranks.py and tests/test_communication.py check the same
classes on real Gloo ranks.
"""

import pytest
import torch

from tests.fake_comm import FakeCommunicator
from tests.harness import tiny_model, train_steps
from train.sync.adaptive import AdaptiveJ, LocalStepsController
from train.sync.averaging import Averager
from train.sync.flat_buffer import FlatBuffer, floating_state
from train.sync.plsgd import PLSGD
from train.sync.slowmo import SlowMo
from utilities.distributed import CommMeter


@pytest.fixture
def ranks(monkeypatch):
    return lambda world_size: FakeCommunicator(world_size).install(monkeypatch)


def flat_state(model) -> torch.Tensor:
    """Parameters and floating buffers: what PLSGD averages."""
    return torch.cat([t.detach().reshape(-1).clone() for t in floating_state(model, include_buffers=True)])


def train_recording(rank, world_size, models, make_sync, steps, lr=0.1, momentum=0.9):
    """Train ``models[rank]``; return the state just before and just after each ``after_step``, and the meter."""
    model, meter = models[rank], CommMeter()
    sync = make_sync(meter)
    before, after, original = [], [], sync.after_step

    def recording_after_step(step):
        before.append(flat_state(model))
        original(step)
        after.append(flat_state(model))

    sync.after_step = recording_after_step
    train_steps(sync, model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum), rank, steps)
    sync.settle()
    return before, after, meter, flat_state(model)


def mean_over_ranks(results, which, step):
    return torch.stack([result[which][step] for result in results]).mean(0)


def test_plsgd_averages_every_j_steps_in_one_flat_all_reduce(ranks):
    comm, local_steps, steps = ranks(3), 3, 7
    models = [tiny_model() for _ in range(3)]  # built here: tiny_model seeds the RNG every thread shares
    results = comm.run(train_recording, models, lambda meter: PLSGD(meter, local_steps), steps)
    for step in range(steps):
        afters = [result[1][step] for result in results]
        if (step + 1) % local_steps == 0:
            assert all(torch.equal(after, afters[0]) for after in afters)
            assert torch.allclose(afters[0], mean_over_ranks(results, 0, step), atol=1e-6)
        else:  # between rounds each rank keeps its own parameters, and they drift apart
            assert all(torch.equal(result[0][step], result[1][step]) for result in results)
            assert not torch.equal(afters[0], afters[1])
    rounds, state_bytes = steps // local_steps, afters[0].numel() * 4
    for _, _, meter, _ in results:
        assert (meter.rounds, meter.collectives, meter.bytes) == (rounds, rounds, rounds * state_bytes)
    assert [c.kind for c in comm.log] == ["broadcast"] + ["all_reduce"] * rounds  # start from rank 0, then rounds


def test_overlap_keeps_local_progress_on_top_of_the_average(ranks):
    comm, local_steps = ranks(2), 3
    models = [tiny_model() for _ in range(2)]
    make_sync = lambda meter: PLSGD(meter, local_steps, overlap=True, overlap_steps=1)  # noqa: E731
    results = comm.run(train_recording, models, make_sync, 6)
    # The round begun after step 2 completes after step 3: x = mean(snapshot) + (x_now - snapshot).
    average = mean_over_ranks(results, 0, 2)
    for before, after, meter, _ in results:
        assert torch.equal(after[2], before[2])  # in flight: nothing installed yet
        assert torch.allclose(after[3], average + (before[3] - before[2]), atol=1e-6)
        assert meter.rounds == 2
    assert not torch.equal(results[0][1][3], results[1][1][3])
    # settle() completes the round begun after the last step, with no progress since: plain average.
    assert torch.equal(results[0][3], results[1][3])
    assert torch.allclose(results[0][3], mean_over_ranks(results, 0, 5), atol=1e-6)


def test_overlap_depth_j_completes_each_round_as_the_next_begins(ranks):
    comm, local_steps = ranks(2), 3
    models = [tiny_model() for _ in range(2)]
    make_sync = lambda meter: PLSGD(meter, local_steps, overlap=True, overlap_steps=local_steps)  # noqa: E731
    results = comm.run(train_recording, models, make_sync, 9)
    # Rounds begin after steps 2, 5 and 8. The one begun after step 2 stays in flight for a whole period and
    # completes after step 5, just before the next begins: that round then sends mean + progress.
    average = mean_over_ranks(results, 0, 2)
    for before, after, meter, _ in results:
        assert all(torch.equal(after[step], before[step]) for step in (2, 3, 4))
        assert torch.allclose(after[5], average + (before[5] - before[2]), atol=1e-6)
        assert (meter.rounds, meter.collectives) == (3, 3)
    sent = comm.collectives("all_reduce")[1].sent
    assert all(torch.allclose(sent[rank], results[rank][1][5], atol=1e-6) for rank in range(2))
    assert torch.equal(results[0][3], results[1][3])  # settle(): the last round completed, replicas identical


def test_overlap_depth_above_j_is_refused():
    with pytest.raises(ValueError, match="between 1 and --local-steps"):
        PLSGD(CommMeter(), 3, overlap=True, overlap_steps=4)


def bf16_rounds(rank, world_size, starts, targets):
    """Move the parameters to ``targets[rank][k]`` before round k; record the reference and error around it."""
    parameters = starts.clone()
    meter = CommMeter()
    averager = Averager(FlatBuffer([parameters]), meter, "bf16")
    rounds = []
    for target in targets[rank]:
        reference, carried = averager.reference.clone(), averager.error.clone()
        parameters.copy_(target)
        averager.average()
        rounds.append((reference, carried, averager.error.clone(), parameters.clone()))
    return rounds, meter.bytes


def test_bf16_sends_the_change_and_carries_the_rounding_error(ranks):
    comm, world_size, size, count = ranks(2), 2, 64, 3
    generator = torch.Generator().manual_seed(0)
    starts = torch.randn(size, generator=generator)
    # Changes of 1e-3 on values near 1 are far below bf16's resolution there: most would be lost without feedback.
    targets = [
        [starts + 1e-3 * torch.randn(size, generator=generator) * (k + 1) for k in range(count)]
        for _ in range(world_size)
    ]
    results = comm.run(bf16_rounds, starts, targets)
    for k, collective in enumerate(comm.collectives("all_reduce")):
        assert collective.dtype == torch.bfloat16
        for rank, (rounds, _) in enumerate(results):
            reference, carried, error, _ = rounds[k]
            # What went on the wire plus the error kept back is exactly the true change plus the error carried in.
            assert torch.equal(collective.sent[rank].float() + error, targets[rank][k] - reference + carried)
            assert error.abs().max() > 0
        # Every rank installs the same point: the agreed reference plus the mean of the (bf16-summed) changes.
        new_point = results[0][0][k][0] + torch.stack(collective.sent).sum(0).float() / world_size
        assert all(torch.equal(rounds[k][3], new_point) for rounds, _ in results)
    assert all(sent_bytes == count * size * 2 for _, sent_bytes in results)  # bf16: two bytes a value


def slowmo_periods(rank, world_size, models, slow_momentum, slow_lr, lr):
    model = models[rank]
    sync = SlowMo(CommMeter(), 2, slow_momentum=slow_momentum, slow_lr=slow_lr)
    start = [p.detach().clone() for p in model.parameters()]
    averaged, outputs, outer_step = [], [], sync.outer_step

    def spy(fragment=None):
        averaged.append([p.detach().clone() for p in model.parameters()])
        outer_step(fragment)
        outputs.append([p.detach().clone() for p in model.parameters()])

    sync.outer_step = spy
    train_steps(sync, model, torch.optim.SGD(model.parameters(), lr=lr), rank, 4)
    return start, averaged, outputs


def test_slowmo_outer_step_follows_the_paper(ranks):
    comm, beta, alpha, lr = ranks(2), 0.6, 0.8, 0.05
    results = comm.run(slowmo_periods, [tiny_model() for _ in range(2)], beta, alpha, lr)
    start, averaged, outputs = results[0]
    # Wang et al. 2020, Algorithm 1: u = beta*u + (x_start - x_avg)/lr; x = x_start - alpha*lr*u.
    momentum, x_start = [torch.zeros_like(p) for p in start], start
    for period in range(2):
        expected = []
        for x0, x_avg, u in zip(x_start, averaged[period], momentum):
            u.mul_(beta).add_((x0 - x_avg) / lr)
            expected.append(x0 - alpha * lr * u)
        assert all(torch.allclose(out, want, atol=1e-6) for out, want in zip(outputs[period], expected))
        x_start = expected
    assert all(torch.equal(a, b) for a, b in zip(outputs[1], results[1][2][1]))  # replicas agree


@pytest.mark.parametrize(
    "rule,history,expected",
    [
        # threshold rule, thresholds (0.02, 0.005, 0.001) for epochs 0-2, 3-5, 6-8 of 9.
        ("threshold", [(0, 1.0), (1, 0.9), (2, 0.89)], [8, 8, 16]),  # large gain keeps J; 1.1% < 2% doubles it
        ("threshold", [(0, 1.0), (1, 1.1)], [8, 4]),  # the loss rose: halve
        ("threshold", [(3, 1.0), (4, 0.997), (6, 0.996), (7, 0.9959)], [8, 16, 16, 32]),  # later phases, finer
        ("threshold", [(0, 1.0), (1, 1.1), (2, 1.2), (3, 1.3)], [8, 4, 2, 2]),  # clamped at the minimum
        ("threshold", [(0, 1.0), (1, 0.999), (2, 0.998), (3, 0.9979)], [8, 16, 32, 32]),  # and at the maximum
        ("trend", [(0, 1.0), (1, 0.9), (2, 0.8)], [8, 8, 16]),  # fell twice: double
        ("trend", [(0, 1.0), (1, 1.1), (2, 1.2)], [8, 8, 4]),  # rose twice: halve
        ("trend", [(0, 1.0), (1, 0.9), (2, 1.0)], [8, 8, 8]),  # mixed: keep
    ],
)
def test_local_steps_controller_decisions(rule, history, expected):
    controller = LocalStepsController(8, 2, 32, rule, (0.02, 0.005, 0.001), total_epochs=9)
    assert [controller.update(epoch, loss) for epoch, loss in history] == expected


def adaptive_decision(rank, world_size, models, losses):
    model = models[rank]
    sync = AdaptiveJ(CommMeter(), LocalStepsController(8, 2, 32, total_epochs=9))
    sync.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return [sync.after_epoch(epoch, {"val_loss": loss})["local_steps"] for epoch, loss in enumerate(losses[rank])]


def test_adaptive_j_every_rank_follows_rank_0(ranks):
    comm = ranks(2)
    # Rank 0's loss rises (halve), rank 1's falls slowly (it alone would double): all ranks halve.
    losses = [[1.0, 1.1], [1.0, 0.999]]
    assert comm.run(adaptive_decision, [tiny_model() for _ in range(2)], losses) == [[8, 4], [8, 4]]


def _adam_steps_after_reset(rank, world_size, models):
    model = models[rank]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sync = PLSGD(CommMeter(), 2, momentum_sync="reset")
    train_steps(sync, model, optimizer, rank, 2)  # one round: moments zeroed, and their step counts too
    return [state["step"].item() for state in optimizer.state.values()], [
        state["exp_avg"].abs().sum().item() for state in optimizer.state.values()
    ]


def test_momentum_reset_restarts_adams_bias_correction(ranks):
    """Zeroed moments with the old step count would make the next update about 3x too large."""
    models = [tiny_model() for _ in range(2)]
    for steps, moments in ranks(2).run(_adam_steps_after_reset, models):
        assert steps and all(step == 0 for step in steps)
        assert all(moment == 0 for moment in moments)


def _post_local_reference(rank, world_size, models):
    from train.sync.post_local import PostLocalSGD

    model = models[rank]
    sync = PostLocalSGD(CommMeter(), 2, switch_step=3, sync_dtype="bf16")
    train_steps(sync, model, torch.optim.SGD(model.parameters(), lr=0.1), rank, 3)  # the synchronous phase only
    return torch.equal(sync.averager.reference, sync.state.gather()), sync.averager.error.abs().sum().item()


def test_post_local_sgd_sends_reduced_precision_changes_from_the_switch_point(ranks):
    models = [tiny_model() for _ in range(2)]
    for reference_is_switch_point, carried_error in ranks(2).run(_post_local_reference, models):
        assert reference_is_switch_point and carried_error == 0
