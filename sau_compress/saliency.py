"""Saliency: the diagonal (empirical) Fisher of a loss over batches, F = mean over batches of (∂L/∂θ)².

``docs/design.md``, step 1: F is accumulated in fp32 (:data:`FISHER_PRECISION`) into exactly one buffer per target
parameter. Each parameter's gradient is squared into its buffer by a post-accumulate-grad hook the moment
autograd produces it and is then freed, so no per-batch copy and no full set of gradients is ever held.
Pruned positions get saliency too: their weight is zero but their gradient is defined, and it measures
what pruning took away.

With the frozen masks given, the saliency is kept *compact*: F on the surviving entries only (row-major
order) and one total for the pruned entries, which is all the selection needs of them (ρ). On a 50%-sparse
model that halves the largest buffer of the saliency pass (4 bytes per target entry down to 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from loguru import logger
from torch import nn
from tqdm.auto import tqdm

from sau_compress.logs import progress_disabled
from sau_compress.masking import PackedMask
from sau_compress.shards import local_tensor

__all__ = ["FISHER_PRECISION", "CompactFisher", "compute_fisher"]

FISHER_PRECISION = torch.float32


@dataclass
class CompactFisher:
    """One layer's saliency as the loop keeps it: F on the surviving entries and ΣF over the pruned ones.

    :ivar surviving: fp32 ``[n_surviving]``, F at the mask's True entries in row-major order
    :ivar pruned_total: ΣF over the mask's False entries (fp64 arithmetic)
    """

    surviving: torch.Tensor
    pruned_total: float


def compute_fisher(
    params: Mapping[str, nn.Parameter],
    batches: Iterable[Any],
    loss_fn: Callable[[Any], torch.Tensor],
    total: int | None = None,
    desc: str = "saliency",
    progress: bool = True,
    masks: Mapping[str, torch.Tensor | PackedMask] | None = None,
) -> dict[str, torch.Tensor] | dict[str, CompactFisher]:
    """Mean of squared gradients of ``loss_fn(batch)`` over ``batches``, one fp32 buffer per parameter.

    Only ``params`` need ``requires_grad``; their ``.grad`` is ``None`` on return. Other parameters should
    have ``requires_grad=False`` (their gradients would be computed for nothing).

    :param params: ``{name: parameter}`` to measure
    :param batches: the batches (e.g. forget batches); consumed once
    :param loss_fn: batch -> scalar loss with a graph to ``params`` (e.g. the forget NLL)
    :param total: number of batches, for the progress bar
    :param desc: progress-bar label
    :param progress: show the progress bar
    :param masks: ``{name: frozen mask}`` (bool or :class:`~sau_compress.masking.PackedMask`) for every
        parameter: keep F compact (:class:`CompactFisher`)
    :return: ``{name: F}`` with F fp32 of each parameter's shape, on its device; with ``masks``,
        ``{name: CompactFisher}``
    :raises ValueError: no batch, a parameter without ``requires_grad``, or a loss with no gradient
    :raises FloatingPointError: a non-finite loss (naming the batch)
    """
    if not params:
        raise ValueError("no parameters to compute saliency for")
    frozen = [name for name, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"saliency parameters must require grad: {frozen[:5]}")
    if masks is not None:
        missing = sorted(set(params) - set(masks))
        if missing:
            raise ValueError(f"no mask for saliency parameters: {missing[:5]}")
        n_surv = {name: (m.n_surviving if isinstance(m, PackedMask) else int(m.sum())) for name, m in masks.items()}
        fisher = {name: torch.zeros(n_surv[name], dtype=FISHER_PRECISION, device=p.device)
                  for name, p in params.items()}
        pruned = {name: torch.zeros((), dtype=torch.float64, device=p.device) for name, p in params.items()}
    else:
        fisher = {name: torch.zeros(p.shape, dtype=FISHER_PRECISION, device=p.device) for name, p in params.items()}
    hits = dict.fromkeys(params, 0)

    def make_hook(name: str) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            g = local_tensor(param.grad.detach())  # a sharded parameter's saliency is kept for its shard
            param.grad = None
            if masks is None:
                if g.dtype != FISHER_PRECISION:
                    g = g.to(FISHER_PRECISION)
                fisher[name].addcmul_(g, g)
            else:
                mask = masks[name]
                mask = mask.unpack(g.device) if isinstance(mask, PackedMask) else mask.to(g.device)
                sq = g.to(FISHER_PRECISION).square_() if g.dtype != FISHER_PRECISION else g.square()
                fisher[name].add_(sq[mask])
                pruned[name].add_(sq.masked_fill_(mask, 0.0).sum(dtype=torch.float64))
            hits[name] += 1

        return hook

    for p in params.values():
        p.grad = None
    handles = [p.register_post_accumulate_grad_hook(make_hook(name)) for name, p in params.items()]
    n = 0
    try:
        for batch in tqdm(batches, total=total, desc=desc, unit="batch", leave=False,
                          disable=progress_disabled(not progress)):
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
    if masks is None:
        return fisher
    return {name: CompactFisher(fisher[name], float(pruned[name]) / n) for name in fisher}
