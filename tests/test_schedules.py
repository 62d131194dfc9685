"""Unit tests of the LR scaling rules and the warmup + constant / cosine / multistep schedules.

The schedule is a pure function of the step (DESIGN.md, style note 9): hand-computed
numbers for ``lr_at``, then the torch scheduler must reproduce ``lr_at`` step by step.
"""

import math

import pytest
import torch

from train.schedules import Schedule, default_warmup_start, scaled_lr

# ----------------------------------------------------------------------------- scaling rules


@pytest.mark.parametrize(
    "rule, global_batch, expected",
    [
        ("none", 1024, 0.1),
        ("linear", 1024, 0.4),
        ("linear", 128, 0.05),
        ("linear", 256, 0.1),
        ("sqrt", 1024, 0.2),
        ("sqrt", 64, 0.05),
        ("sqrt", 256, 0.1),
    ],
)
def test_scaled_lr_by_hand(rule, global_batch, expected):
    assert scaled_lr(0.1, global_batch, 256, rule) == pytest.approx(expected, rel=1e-12)


def test_scaled_lr_unknown_rule():
    with pytest.raises(ValueError, match="rule"):
        scaled_lr(0.1, 512, 256, "cubic")


def test_default_warmup_start():
    assert default_warmup_start(0.1, 0.4) == 0.1  # scaled: start at the unscaled LR (Goyal et al.)
    assert default_warmup_start(0.1, 0.1) == pytest.approx(0.01)  # unscaled: a tenth of the peak


# ----------------------------------------------------------------------------- lr_at


def test_warmup_is_linear_from_start_to_peak():
    schedule = Schedule(peak_lr=1.0, total_steps=100, warmup_steps=10, warmup_start_lr=0.1, kind="constant")
    for step in range(10):
        assert schedule.lr_at(step) == pytest.approx(0.1 + 0.9 * step / 10, rel=1e-12)
    assert schedule.lr_at(5) == pytest.approx(0.55)
    assert schedule.lr_at(10) == 1.0
    assert schedule.lr_at(99) == 1.0


def test_warmup_then_cosine():
    schedule = Schedule(peak_lr=0.8, total_steps=110, warmup_steps=10, warmup_start_lr=0.0, kind="cosine")
    assert schedule.lr_at(0) == 0.0
    assert schedule.lr_at(5) == pytest.approx(0.4)
    assert schedule.lr_at(10) == pytest.approx(0.8)  # peak right after warmup
    assert schedule.lr_at(60) == pytest.approx(0.4)  # half-way through the decay
    assert schedule.lr_at(35) == pytest.approx(0.4 * (1 + math.cos(math.pi / 4)))
    assert schedule.lr_at(110) == pytest.approx(0.0, abs=1e-15)  # zero at total_steps
    assert schedule.lr_at(150) == pytest.approx(0.0, abs=1e-15)  # and stays there


def test_cosine_without_warmup_is_monotone():
    schedule = Schedule(peak_lr=0.1, total_steps=50)
    lrs = [schedule.lr_at(step) for step in range(51)]
    assert lrs[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)


def test_multistep_milestones_with_gamma():
    schedule = Schedule(peak_lr=1.0, total_steps=100, kind="multistep", milestone_steps=(30, 60), gamma=0.5)
    assert schedule.lr_at(0) == 1.0
    assert schedule.lr_at(29) == 1.0
    assert schedule.lr_at(30) == 0.5
    assert schedule.lr_at(59) == 0.5
    assert schedule.lr_at(60) == 0.25
    assert schedule.lr_at(99) == 0.25


def test_multistep_after_warmup():
    schedule = Schedule(
        peak_lr=0.4,
        total_steps=100,
        warmup_steps=4,
        warmup_start_lr=0.1,
        kind="multistep",
        milestone_steps=(50,),
        gamma=0.1,
    )
    assert [schedule.lr_at(step) for step in range(5)] == pytest.approx([0.1, 0.175, 0.25, 0.325, 0.4])
    assert schedule.lr_at(50) == pytest.approx(0.04)


# ----------------------------------------------------------------------------- torch scheduler


SCHEDULES = [
    Schedule(peak_lr=0.3, total_steps=40, warmup_steps=5, warmup_start_lr=0.03, kind="cosine"),
    Schedule(peak_lr=0.3, total_steps=40, warmup_steps=0, kind="cosine"),
    Schedule(
        peak_lr=0.2,
        total_steps=40,
        warmup_steps=3,
        warmup_start_lr=0.02,
        kind="multistep",
        milestone_steps=(10, 25),
        gamma=0.1,
    ),
    Schedule(peak_lr=0.05, total_steps=40, warmup_steps=8, warmup_start_lr=0.5, kind="constant"),
]


def one_parameter_sgd(lr=0.123):
    return torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=lr, momentum=0.9)


def run_steps(optimizer, scheduler, steps):
    """The LR each step trains with: read before the optimizer step, then advance the scheduler."""
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{s.kind}-warmup{s.warmup_steps}")
def test_lambda_lr_reproduces_lr_at(schedule):
    optimizer = one_parameter_sgd()
    scheduler = schedule.scheduler(optimizer)
    lrs = run_steps(optimizer, scheduler, schedule.total_steps + 3)
    assert lrs == pytest.approx(
        [schedule.lr_at(step) for step in range(schedule.total_steps + 3)], rel=1e-12, abs=1e-15
    )


def test_scheduler_ignores_a_previous_scheduler_on_the_optimizer():
    optimizer = one_parameter_sgd(lr=7.0)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)  # leaves initial_lr = 7.0 behind
    schedule = SCHEDULES[0]
    scheduler = schedule.scheduler(optimizer)
    assert run_steps(optimizer, scheduler, 10) == pytest.approx([schedule.lr_at(step) for step in range(10)])


def test_scheduler_resumes_from_state_dicts():
    schedule = SCHEDULES[0]
    optimizer = one_parameter_sgd()
    scheduler = schedule.scheduler(optimizer)
    run_steps(optimizer, scheduler, 12)
    saved = optimizer.state_dict(), scheduler.state_dict()
    expected_tail = run_steps(optimizer, scheduler, 10)

    resumed_optimizer = one_parameter_sgd()
    resumed_scheduler = schedule.scheduler(resumed_optimizer)
    resumed_optimizer.load_state_dict(saved[0])
    resumed_scheduler.load_state_dict(saved[1])
    tail = run_steps(resumed_optimizer, resumed_scheduler, 10)
    assert tail == pytest.approx(expected_tail)
    assert tail == pytest.approx([schedule.lr_at(step) for step in range(12, 22)])


# ----------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(peak_lr=0.1, total_steps=10, kind="linear"), "kind"),
        (dict(peak_lr=0.1, total_steps=0), "total_steps"),
        (dict(peak_lr=0.1, total_steps=-5), "total_steps"),
        (dict(peak_lr=0.1, total_steps=10, warmup_steps=-1), "warmup_steps"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Schedule(**kwargs)
