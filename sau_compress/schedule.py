"""Learning-rate schedules as plain math: the multiplier of the base learning rate at each optimizer step.

The three kinds are transformers' ``get_constant_schedule_with_warmup``, ``get_linear_schedule_with_warmup``
and ``get_cosine_schedule_with_warmup`` (``num_cycles=0.5``), value for value: a linear warmup from 0 over
``warmup_steps`` steps, then constant, a linear decay to 0 at ``total_steps``, or a half cosine to 0 at
``total_steps``. Past ``total_steps`` the linear schedule stays at 0 and the cosine one rises again, as
transformers' do. Nothing here imports torch, transformers or llmcompressor.
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULERS", "lr_multiplier"]

#: the schedule kinds :func:`lr_multiplier` knows
SCHEDULERS = ("constant", "linear", "cosine")
#: half a cosine period over the decay (transformers' default ``num_cycles``)
_NUM_CYCLES = 0.5


def lr_multiplier(kind: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The factor of the base learning rate for the ``step``-th optimizer update (0-based).

    Equals ``LambdaLR``'s factor after ``step`` calls of ``scheduler.step()`` for the matching transformers
    schedule, so update 0 uses ``lr_multiplier(kind, 0, ...)`` (0 with a warmup, 1 without).

    :param kind: ``constant``, ``linear`` or ``cosine`` (:data:`SCHEDULERS`)
    :param step: the update's index, ``>= 0``
    :param total_steps: updates in the run (``num_training_steps``), ``>= 0``; unused by ``constant``
    :param warmup_steps: updates of linear warmup from 0, ``>= 0``; may reach or pass ``total_steps``
    :return: the multiplier (``[0, 1]``)
    :raises ValueError: an unknown ``kind``, or a negative ``step``, ``total_steps`` or ``warmup_steps``
    """
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {list(SCHEDULERS)}")
    for name, value in (("step", step), ("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if kind == "constant":
        if step < warmup_steps:
            return float(step) / float(max(1.0, warmup_steps))
        return 1.0
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if kind == "linear":
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(_NUM_CYCLES) * 2.0 * progress)))
