"""Learning-rate schedules: the multiplier of the base learning rate at each optimizer step.

Same formulas as transformers' ``get_constant_schedule_with_warmup``, ``get_linear_schedule_with_warmup`` and
``get_cosine_schedule_with_warmup`` (half a cosine), written out because the unlearning optimizers are not
``torch.optim.Optimizer`` objects that a ``LambdaLR`` could drive.
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULERS", "lr_multiplier"]

SCHEDULERS = ("constant", "linear", "cosine")


def lr_multiplier(kind: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate for the ``step``-th update (0-based) of ``total_steps``."""
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler '{kind}'; choose from {list(SCHEDULERS)}")
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
