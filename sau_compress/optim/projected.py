"""The ``dense`` baseline's optimizer: a standard ``torch.optim`` step, then the frozen mask re-applied.

This is what a standard unlearning trainer does to a sparse model when it keeps the sparsity: every entry of
the target layers is updated (pruned ones included), and each step ends by projecting the weights back onto
the frozen pattern (pruned entries set to exactly +0.0). It has the same interface as
:class:`~sau_compress.optim.scaled.ScaledOptimizer`, so the unlearning loop never branches on the mode.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sau_compress.optim.scaled import nbytes

__all__ = ["ProjectedOptimizer"]


class ProjectedOptimizer:
    """A ``torch.optim`` optimizer over whole parameters, each step followed by ``weight[~keep] = 0``.

    :param optimizer: the torch optimizer (``AdamW`` / ``SGD``) over exactly ``params``' tensors
    :param params: ``{name: parameter}``
    :param keep: ``{name: bool mask}`` (True = surviving) for the parameters whose pattern is frozen; a name
        without a mask is updated freely
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Mapping[str, nn.Parameter],
        keep: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if not params:
            raise ValueError("no parameters to optimize")
        self.params = dict(params)
        unknown = sorted(set(keep or {}) - set(self.params))
        if unknown:
            raise KeyError(f"masks for unknown parameters: {unknown[:5]}")
        self.pruned = {name: ~m.to(self.params[name].device) for name, m in (keep or {}).items()}
        self.opt = optimizer

    def attach(self) -> None:
        """Nothing to attach: gradients stay full-size ``.grad`` tensors."""

    def detach(self) -> None:
        """Nothing to detach."""

    def zero_grad(self) -> None:
        """Drop every gradient."""
        for p in self.params.values():
            p.grad = None

    def grads_finite(self) -> bool:
        """Whether every gradient entry is finite (grouped norms, one device synchronisation)."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True

    def clip_grad_norm_(self, max_norm: float) -> float:
        """torch's ``clip_grad_norm_`` over all gradients (pruned positions included); return the norm before."""
        return float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_norm))

    @torch.no_grad()
    def step(self) -> None:
        """One torch optimizer step, then pruned entries back to exactly +0.0."""
        self.opt.step()  # torch creates its state lazily, in the first step
        for name, pruned in self.pruned.items():
            self.params[name].masked_fill_(pruned, 0.0)

    def state_bytes(self) -> int:
        """Bytes of torch's optimizer state (moments, momentum buffers, step counters)."""
        return sum(nbytes(t) for st in self.opt.state.values() for t in st.values() if torch.is_tensor(t))

    def held_bytes(self) -> int:
        """Bytes held at the peak of a step: state, every full gradient, the pruned-position masks."""
        grads = sum(nbytes(p.grad) for p in self.params.values())
        return self.state_bytes() + grads + sum(nbytes(m) for m in self.pruned.values())
