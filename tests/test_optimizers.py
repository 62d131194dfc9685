"""LARS and LAMB against the papers' update rules, written out by hand in float64.

The reference updates below are plain torch arithmetic, one step at a time, so a mistake in
train/optimizers.py cannot be copied into the expected values.
"""

import copy
import math

import pytest
import torch

from train.optimizers import LAMB, LARS, OPTIMIZER_NAMES, build_optimizer

TOLERANCE = 1e-12
DTYPE = torch.float64

WEIGHT_2D = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=DTYPE)
GRADS_2D = [
    torch.tensor([[0.1, -0.2, 0.3], [0.05, 0.4, -0.1]], dtype=DTYPE),
    torch.tensor([[-0.3, 0.1, 0.2], [0.6, -0.05, 0.15]], dtype=DTYPE),
    torch.tensor([[0.25, 0.25, -0.5], [-0.2, 0.3, 0.1]], dtype=DTYPE),
    torch.tensor([[0.0, -0.4, 0.1], [0.35, 0.2, -0.6]], dtype=DTYPE),
]
BIAS = torch.tensor([0.3, -0.2, 0.1], dtype=DTYPE)
GRADS_1D = [
    torch.tensor([0.2, -0.1, 0.05], dtype=DTYPE),
    torch.tensor([-0.15, 0.3, 0.1], dtype=DTYPE),
    torch.tensor([0.05, 0.05, -0.25], dtype=DTYPE),
    torch.tensor([0.4, -0.2, 0.0], dtype=DTYPE),
]
ZERO_GRAD_2D = torch.zeros_like(WEIGHT_2D)
LRS = [0.1, 0.1, 0.1, 0.1]


def norm(tensor):
    return math.sqrt((tensor * tensor).sum().item())


def lars_reference(weight, grads, lrs, momentum, weight_decay, trust_coefficient, excluded):
    """You, Gitman, Ginsburg 2017, Algorithm 1; excluded tensors take a plain momentum step."""
    w = weight.clone()
    v = torch.zeros_like(w)
    for g, lr in zip(grads, lrs):
        if excluded:
            v = momentum * v + lr * g
        else:
            w_norm, g_norm = norm(w), norm(g)
            if w_norm == 0 or g_norm == 0:
                local_lr = 1.0
            else:
                local_lr = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm)
            v = momentum * v + lr * local_lr * (g + weight_decay * w)
        w = w - v
    return w


def lamb_reference(weight, grads, lrs, betas, eps, weight_decay, excluded):
    """You et al. 2019, Algorithm 2; excluded tensors take a plain Adam step."""
    b1, b2 = betas
    w = weight.clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        r = m_hat / (torch.sqrt(v_hat) + eps)
        if excluded:
            w = w - lr * r
            continue
        u = r + weight_decay * w
        w_norm, u_norm = norm(w), norm(u)
        trust = 1.0 if w_norm == 0 or u_norm == 0 else w_norm / u_norm
        w = w - lr * trust * u
    return w


def run_optimizer(make_optimizer, weight, grads, lr_lambda=None):
    param = torch.nn.Parameter(weight.clone())
    optimizer = make_optimizer([param])
    scheduler = None if lr_lambda is None else torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return param.detach()


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE)


# (name, weight, grads, weight_decay, exclude_bias_and_norm, excluded in the reference)
CASES = [
    ("2d_weight_decay", WEIGHT_2D, GRADS_2D, 0.01, True, False),
    ("2d_no_weight_decay", WEIGHT_2D, GRADS_2D, 0.0, True, False),
    ("bias_excluded", BIAS, GRADS_1D, 0.01, True, True),
    ("bias_not_excluded", BIAS, GRADS_1D, 0.01, False, False),
    ("zero_weight", torch.zeros_like(WEIGHT_2D), GRADS_2D, 0.01, True, False),
    ("zero_grad", WEIGHT_2D, [ZERO_GRAD_2D, GRADS_2D[1], ZERO_GRAD_2D, GRADS_2D[3]], 0.01, True, False),
]
CASE_IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("trust_coefficient", [0.001, 0.02])
def test_lars_matches_algorithm_1(case, trust_coefficient):
    _, weight, grads, weight_decay, exclude, excluded = case
    actual = run_optimizer(
        lambda params: LARS(
            params,
            lr=0.1,
            momentum=0.9,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            exclude_bias_and_norm=exclude,
        ),
        weight,
        grads,
    )
    expected = lars_reference(weight, grads, LRS, 0.9, weight_decay, trust_coefficient, excluded)
    assert_close(actual, expected)
    assert not torch.equal(actual, weight)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_lamb_matches_algorithm_2(case):
    _, weight, grads, weight_decay, exclude, excluded = case
    actual = run_optimizer(
        lambda params: LAMB(
            params, lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay, exclude_bias_and_norm=exclude
        ),
        weight,
        grads,
    )
    expected = lamb_reference(weight, grads, LRS, (0.9, 0.999), 1e-6, weight_decay, excluded)
    assert_close(actual, expected)
    assert not torch.equal(actual, weight)


def test_lars_zero_gradient_uses_local_lr_one():
    # One step from zero momentum with g = 0: v = lr * 1 * (0 + wd * w), not lr * eta/wd * wd * w.
    actual = run_optimizer(lambda params: LARS(params, lr=0.1, weight_decay=0.01), WEIGHT_2D, [ZERO_GRAD_2D])
    assert_close(actual, WEIGHT_2D - 0.1 * 0.01 * WEIGHT_2D)


def test_lamb_zero_weight_uses_trust_one():
    # First Adam step from w = 0: r = g / (|g| + eps) elementwise, u = r, trust ratio 1.
    grad = GRADS_2D[0]
    actual = run_optimizer(lambda params: LAMB(params, lr=0.1), torch.zeros_like(WEIGHT_2D), [grad])
    assert_close(actual, -0.1 * grad / (grad.abs() + 1e-6))


LR_FACTORS = [1.0, 0.5, 0.25, 2.0]


def test_lars_follows_lambda_lr():
    actual = run_optimizer(
        lambda params: LARS(params, lr=0.1, weight_decay=0.01, trust_coefficient=0.02),
        WEIGHT_2D,
        GRADS_2D,
        lr_lambda=lambda step: LR_FACTORS[step % len(LR_FACTORS)],
    )
    lrs = [0.1 * factor for factor in LR_FACTORS]
    assert_close(actual, lars_reference(WEIGHT_2D, GRADS_2D, lrs, 0.9, 0.01, 0.02, False))
    constant_lr = lars_reference(WEIGHT_2D, GRADS_2D, LRS, 0.9, 0.01, 0.02, False)
    assert (actual - constant_lr).abs().max() > 1e-6


def test_lamb_follows_lambda_lr():
    actual = run_optimizer(
        lambda params: LAMB(params, lr=0.1, weight_decay=0.01),
        WEIGHT_2D,
        GRADS_2D,
        lr_lambda=lambda step: LR_FACTORS[step % len(LR_FACTORS)],
    )
    lrs = [0.1 * factor for factor in LR_FACTORS]
    assert_close(actual, lamb_reference(WEIGHT_2D, GRADS_2D, lrs, (0.9, 0.999), 1e-6, 0.01, False))
    constant_lr = lamb_reference(WEIGHT_2D, GRADS_2D, LRS, (0.9, 0.999), 1e-6, 0.01, False)
    assert (actual - constant_lr).abs().max() > 1e-6


def test_param_groups_override_defaults_and_skip_missing_grads():
    weight = torch.nn.Parameter(WEIGHT_2D.clone())
    bias = torch.nn.Parameter(BIAS.clone())
    frozen = torch.nn.Parameter(WEIGHT_2D.clone())
    optimizer = LARS(
        [
            {"params": [weight, frozen]},
            {
                "params": [bias],
                "momentum": 0.5,
                "weight_decay": 0.1,
                "trust_coefficient": 0.05,
                "exclude_bias_and_norm": False,
            },
        ],
        lr=0.1,
        weight_decay=0.01,
        trust_coefficient=0.02,
    )
    for grad_2d, grad_1d in zip(GRADS_2D, GRADS_1D):
        weight.grad, bias.grad = grad_2d.clone(), grad_1d.clone()
        optimizer.step()
    assert_close(weight.detach(), lars_reference(WEIGHT_2D, GRADS_2D, LRS, 0.9, 0.01, 0.02, False))
    assert_close(bias.detach(), lars_reference(BIAS, GRADS_1D, LRS, 0.5, 0.1, 0.05, False))
    assert torch.equal(frozen.detach(), WEIGHT_2D)
    assert frozen not in optimizer.state


def run_two_tensors(optimizer, weight, bias, grads):
    for grad_2d, grad_1d in grads:
        weight.grad, bias.grad = grad_2d.clone(), grad_1d.clone()
        optimizer.step()


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: LARS(params, lr=0.1, weight_decay=0.01, trust_coefficient=0.02),
        lambda params: LAMB(params, lr=0.1, weight_decay=0.01),
    ],
    ids=["lars", "lamb"],
)
def test_state_dict_round_trip_equals_uninterrupted(make_optimizer):
    grads = list(zip(GRADS_2D, GRADS_1D))
    weight, bias = torch.nn.Parameter(WEIGHT_2D.clone()), torch.nn.Parameter(BIAS.clone())
    uninterrupted = make_optimizer([weight, bias])
    run_two_tensors(uninterrupted, weight, bias, grads)

    first_weight, first_bias = torch.nn.Parameter(WEIGHT_2D.clone()), torch.nn.Parameter(BIAS.clone())
    first = make_optimizer([first_weight, first_bias])
    run_two_tensors(first, first_weight, first_bias, grads[:2])
    saved = copy.deepcopy(first.state_dict())
    del first

    resumed_weight = torch.nn.Parameter(first_weight.detach().clone())
    resumed_bias = torch.nn.Parameter(first_bias.detach().clone())
    resumed = make_optimizer([resumed_weight, resumed_bias])
    resumed.load_state_dict(saved)
    run_two_tensors(resumed, resumed_weight, resumed_bias, grads[2:])
    assert_close(resumed_weight.detach(), weight.detach())
    assert_close(resumed_bias.detach(), bias.detach())


@pytest.mark.parametrize(
    "make_optimizer, argument",
    [
        (lambda params: LARS(params, lr=-0.1), "lr"),
        (lambda params: LARS(params, lr=0.1, momentum=1.0), "momentum"),
        (lambda params: LARS(params, lr=0.1, momentum=-0.1), "momentum"),
        (lambda params: LARS(params, lr=0.1, weight_decay=-1e-4), "weight_decay"),
        (lambda params: LARS(params, lr=0.1, trust_coefficient=0.0), "trust_coefficient"),
        (lambda params: LARS(params, lr=0.1, eps=-1.0), "eps"),
        (lambda params: LARS([{"params": params, "momentum": 2.0}], lr=0.1), "momentum"),
        (lambda params: LAMB(params, lr=-0.1), "lr"),
        (lambda params: LAMB(params, lr=0.1, betas=(1.0, 0.999)), r"betas\[0\]"),
        (lambda params: LAMB(params, lr=0.1, betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda params: LAMB(params, lr=0.1, betas=(0.9,)), "betas"),
        (lambda params: LAMB(params, lr=0.1, eps=-1e-6), "eps"),
        (lambda params: LAMB(params, lr=0.1, weight_decay=-0.01), "weight_decay"),
        (lambda params: LAMB([{"params": params, "weight_decay": -1.0}], lr=0.1), "weight_decay"),
    ],
)
def test_constructor_rejects_bad_arguments(make_optimizer, argument):
    with pytest.raises(ValueError, match=argument):
        make_optimizer([torch.nn.Parameter(WEIGHT_2D.clone())])


@pytest.mark.parametrize(
    "name, expected_class",
    [
        ("sgd", torch.optim.SGD),
        ("adamw", torch.optim.AdamW),
        ("lars", LARS),
        ("lamb", LAMB),
    ],
)
def test_build_optimizer_returns_the_named_class(name, expected_class):
    optimizer = build_optimizer(
        name, [torch.nn.Parameter(WEIGHT_2D.clone())], lr=0.1, momentum=0.9, nesterov=(name == "sgd"), weight_decay=5e-4
    )
    assert type(optimizer) is expected_class
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.1
    assert group["weight_decay"] == 5e-4


def test_build_optimizer_passes_method_settings():
    params = [torch.nn.Parameter(WEIGHT_2D.clone())]
    sgd = build_optimizer("sgd", params, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.0)
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"] is True
    adamw = build_optimizer("adamw", params, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0, betas=(0.8, 0.99))
    assert adamw.param_groups[0]["eps"] == 1e-8 and adamw.param_groups[0]["betas"] == (0.8, 0.99)
    lars = build_optimizer(
        "lars",
        params,
        lr=0.1,
        momentum=0.8,
        nesterov=False,
        weight_decay=0.0,
        trust_coefficient=0.02,
        exclude_bias_and_norm=False,
    )
    assert lars.param_groups[0]["trust_coefficient"] == 0.02
    assert lars.param_groups[0]["momentum"] == 0.8
    assert lars.param_groups[0]["exclude_bias_and_norm"] is False
    lamb = build_optimizer("lamb", params, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)
    assert lamb.param_groups[0]["eps"] == 1e-6
    assert set(OPTIMIZER_NAMES) == {"sgd", "adamw", "lars", "lamb"}


def test_build_optimizer_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(
            "adagrad", [torch.nn.Parameter(WEIGHT_2D.clone())], lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0
        )
