"""Optimizers of the unlearning loop, all with one interface (``attach``, ``detach``, ``zero_grad``,
``grads_finite``, ``clip_grad_norm_``, ``set_lr``, ``step``, ``state_bytes``, ``master``):

- :mod:`~sau_compress.optim.scaled`: the whole update, weight decay included, scaled per entry (modes
  ``sau``, ``topk``: compact layout on G; ``masked``: full layout, scale = the frozen mask);
- :mod:`~sau_compress.optim.projected`: the ``dense`` baseline, a ``torch.optim`` step then the frozen mask
  re-applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sau_compress.masking import PackedMask
from sau_compress.optim.projected import ProjectedOptimizer
from sau_compress.optim.scaled import (
    OPTIM_PRECISION,
    OPTIMIZERS,
    ParamScale,
    ScaledAdamW,
    ScaledOptimizer,
    ScaledSGD,
    nbytes,
)

__all__ = [
    "OPTIMIZERS",
    "OPTIM_PRECISION",
    "ParamScale",
    "ProjectedOptimizer",
    "ScaledAdamW",
    "ScaledOptimizer",
    "ScaledSGD",
    "UnlearningOptimizer",
    "make_optimizer",
    "nbytes",
]

#: What the loop holds: either kind shares the interface above.
UnlearningOptimizer = ScaledOptimizer | ProjectedOptimizer


def make_optimizer(
    kind: str,
    params: Mapping[str, nn.Parameter],
    scales: Mapping[str, ParamScale] | None = None,
    lr: float = 1e-5,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    keep: Mapping[str, torch.Tensor | PackedMask] | None = None,
) -> UnlearningOptimizer:
    """Build an optimizer by name: scaled (``scales``, modes ``sau``/``topk``/``masked``), or, with ``keep``
    (the frozen masks), the ``dense`` baseline's projected ``torch.optim`` optimizer.

    :param kind: one of :data:`OPTIMIZERS`
    :return: a :class:`ScaledAdamW` / :class:`ScaledSGD`, or a :class:`ProjectedOptimizer`
    :raises ValueError: unknown ``kind`` (the error lists the choices), or both ``scales`` and ``keep``
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{kind}'; choose from {list(OPTIMIZERS)}")
    if keep is not None:
        if scales is not None:
            raise ValueError("pass scales (scaled update) or keep (projected dense update), not both")

        def factory(tensors: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
            if kind == "adamw":
                return torch.optim.AdamW(tensors, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
            return torch.optim.SGD(tensors, lr=lr, momentum=momentum, weight_decay=weight_decay)

        return ProjectedOptimizer(factory, params, keep)
    if kind == "adamw":
        return ScaledAdamW(params, scales, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    return ScaledSGD(params, scales, lr=lr, weight_decay=weight_decay, momentum=momentum)
