"""Saliency: the diagonal (empirical) Fisher of a loss over batches, F = mean over batches of (∂L/∂θ)².

``docs/design.md``, step 1: F is accumulated in fp32 (:data:`FISHER_PRECISION`) into exactly one buffer per target
parameter. Each parameter's gradient is squared into its buffer by a post-accumulate-grad hook the moment
autograd produces it and is then freed, so no per-batch copy and no full set of gradients is ever held.
Pruned positions get saliency too: their weight is zero but their gradient is defined, and it measures
what pruning took away.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from loguru import logger
from torch import nn
from tqdm.auto import tqdm

__all__ = ["FISHER_PRECISION", "compute_fisher"]

FISHER_PRECISION = torch.float32


def compute_fisher(
    params: Mapping[str, nn.Parameter],
    batches: Iterable[Any],
    loss_fn: Callable[[Any], torch.Tensor],
    total: int | None = None,
    desc: str = "saliency",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Mean of squared gradients of ``loss_fn(batch)`` over ``batches``, one fp32 buffer per parameter.

    Only ``params`` need ``requires_grad``; their ``.grad`` is ``None`` on return. Other parameters should
    have ``requires_grad=False`` (their gradients would be computed for nothing).

    :param params: ``{name: parameter}`` to measure
    :param batches: the batches (e.g. forget batches); consumed once
    :param loss_fn: batch -> scalar loss with a graph to ``params`` (e.g. the forget NLL)
    :param total: number of batches, for the progress bar
    :param desc: progress-bar label
    :param progress: show the progress bar
    :return: ``{name: F}`` with F fp32 of each parameter's shape, on its device
    :raises ValueError: no batch, a parameter without ``requires_grad``, or a loss with no gradient
    :raises FloatingPointError: a non-finite loss (naming the batch)
    """
    if not params:
        raise ValueError("no parameters to compute saliency for")
    frozen = [name for name, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"saliency parameters must require grad: {frozen[:5]}")
    fisher = {name: torch.zeros(p.shape, dtype=FISHER_PRECISION, device=p.device) for name, p in params.items()}
    hits = dict.fromkeys(params, 0)

    def make_hook(name: str) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            g = param.grad.detach()
            if g.dtype != FISHER_PRECISION:
                g = g.to(FISHER_PRECISION)
            fisher[name].addcmul_(g, g)
            hits[name] += 1
            param.grad = None

        return hook

    for p in params.values():
        p.grad = None
    handles = [p.register_post_accumulate_grad_hook(make_hook(name)) for name, p in params.items()]
    n = 0
    try:
        for batch in tqdm(batches, total=total, desc=desc, unit="batch", leave=False, disable=not progress):
            loss = loss_fn(batch)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"saliency loss is {float(loss.detach())} on batch {n}")
            loss.backward()
            n += 1
    finally:
        for handle in handles:
            handle.remove()
        for p in params.values():
            p.grad = None
    if n == 0:
        raise ValueError("saliency needs at least one batch")
    untouched = [name for name, k in hits.items() if k == 0]
    if untouched:
        raise ValueError(f"the saliency loss has no gradient for {len(untouched)} parameter(s): {untouched[:5]}")
    for f in fisher.values():
        f.div_(n)
    logger.debug(f"saliency over {n} batches for {len(fisher)} parameters")
    return fisher
