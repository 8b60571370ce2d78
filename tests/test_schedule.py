"""``sau_compress.schedule``: the same multipliers as transformers' schedulers, at every step."""

from __future__ import annotations

import math

import pytest
import torch

from sau_compress.schedule import SCHEDULERS, lr_multiplier

#: (total_steps, warmup_steps): no warmup, short and long warmups, warmup equal to and beyond the run, one step
PAIRS = [(10, 0), (10, 3), (7, 1), (80, 8), (5, 5), (4, 6), (1, 0), (1, 1), (0, 0), (3, 0)]


def _transformers_lrs(kind: str, total: int, warmup: int, steps: int) -> list[float]:
    """The learning rate of each update under transformers' scheduler (base lr 1.0), read off the optimizer."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    if kind == "constant":
        sched = get_constant_schedule_with_warmup(opt, num_warmup_steps=warmup)
    elif kind == "linear":
        sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    else:
        sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedulers_are_the_three_kinds():
    assert SCHEDULERS == ("constant", "linear", "cosine")


@pytest.mark.parametrize("kind", SCHEDULERS)
@pytest.mark.parametrize(("total", "warmup"), PAIRS)
def test_matches_transformers_at_every_step(kind, total, warmup):
    steps = 2 * max(total, warmup) + 3  # through the warmup, the decay, and past the end of the run
    expected = _transformers_lrs(kind, total, warmup, steps)
    ours = [lr_multiplier(kind, step, total, warmup) for step in range(steps)]
    for step, (a, b) in enumerate(zip(ours, expected, strict=True)):
        assert isinstance(a, float)
        assert a == pytest.approx(b, rel=0, abs=1e-12), (kind, total, warmup, step)


def test_hand_computed_values():
    # constant: warmup 4 -> 0, 1/4, 2/4, 3/4, then 1
    assert [lr_multiplier("constant", s, 100, 4) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_multiplier("constant", 0, 0) == 1.0
    # linear, total 10, warmup 2: 0, 1/2, then (10 - s) / 8 down to 0, and 0 after the run
    assert [lr_multiplier("linear", s, 10, 2) for s in (0, 1, 2, 6, 10, 12)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    # cosine, total 10, warmup 0: 1 at the start, 1/2 halfway, 0 at the end, rising again after it
    assert lr_multiplier("cosine", 0, 10) == 1.0
    assert lr_multiplier("cosine", 5, 10) == pytest.approx(0.5, abs=1e-15)
    assert lr_multiplier("cosine", 10, 10) == 0.0
    assert lr_multiplier("cosine", 15, 10) == pytest.approx(0.5, abs=1e-15)
    assert lr_multiplier("cosine", 2, 10) == 0.5 * (1 + math.cos(math.pi * 0.2))
    # warmup at least the run: linear is 0 from the end of the warmup on
    assert [lr_multiplier("linear", s, 4, 6) for s in range(8)] == [0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 0.0, 0.0]


def test_unknown_kind_lists_the_choices():
    with pytest.raises(ValueError, match=r"'cosin'.*\['constant', 'linear', 'cosine'\]"):
        lr_multiplier("cosin", 0, 10)


@pytest.mark.parametrize(("step", "total", "warmup", "name"),
                         [(0, 10, -1, "warmup_steps"), (-1, 10, 0, "step"), (0, -5, 0, "total_steps")])
def test_negative_counts_are_refused(step, total, warmup, name):
    with pytest.raises(ValueError, match=rf"{name} must be >= 0, got -"):
        lr_multiplier("linear", step, total, warmup)
