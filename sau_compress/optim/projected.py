"""The ``dense`` baseline's optimizer: a standard ``torch.optim`` step, then the frozen mask re-applied.

This is what a standard unlearning trainer does to a sparse model when it keeps the sparsity: every entry of
the target layers is updated (pruned ones included), and each step ends by projecting the weights back onto
the frozen pattern (pruned entries set to exactly +0.0). It has the same interface as
:class:`~sau_compress.optim.scaled.ScaledOptimizer`, so the unlearning loop never branches on the mode.

Mixed precision as standard trainers do it: a parameter stored in bf16/fp16 gets a full fp32 master, the torch
optimizer steps the master (its gradient is the parameter's gradient upcast), and the parameter is the
master rounded. fp32 parameters are stepped directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from sau_compress.masking import PackedMask
from sau_compress.optim.scaled import OPTIM_PRECISION, nbytes

__all__ = ["ProjectedOptimizer"]


class ProjectedOptimizer:
    """A ``torch.optim`` optimizer over whole parameters, each step followed by ``weight[~keep] = 0``.

    :param factory: builds the torch optimizer (``AdamW`` / ``SGD``) over the tensors it is given
    :param params: ``{name: parameter}``
    :param keep: ``{name: mask}`` (bool or :class:`~sau_compress.masking.PackedMask`; True = surviving) for
        the parameters whose pattern is frozen; a name without a mask is updated freely. The masks are
        referenced, not copied
    """

    def __init__(
        self,
        factory: Callable[[Sequence[torch.Tensor]], torch.optim.Optimizer],
        params: Mapping[str, nn.Parameter],
        keep: Mapping[str, torch.Tensor | PackedMask] | None = None,
    ) -> None:
        if not params:
            raise ValueError("no parameters to optimize")
        self.params = dict(params)
        unknown = sorted(set(keep or {}) - set(self.params))
        if unknown:
            raise KeyError(f"masks for unknown parameters: {unknown[:5]}")
        self.keep = dict(keep or {})
        #: fp32 masters of the parameters stored in a lower precision
        self.masters = {
            name: p.detach().to(OPTIM_PRECISION, copy=True)
            for name, p in self.params.items() if p.dtype != OPTIM_PRECISION
        }
        self.opt = factory([self.masters.get(name, p) for name, p in self.params.items()])

    def attach(self) -> None:
        """Nothing to attach: gradients stay full-size ``.grad`` tensors."""

    def detach(self) -> None:
        """Nothing to detach."""

    def zero_grad(self) -> None:
        """Drop every gradient."""
        for p in self.params.values():
            p.grad = None
        for m in self.masters.values():
            m.grad = None

    def set_lr(self, lr: float) -> None:
        """Learning rate of the next steps (a schedule sets it before each step)."""
        for group in self.opt.param_groups:
            group["lr"] = float(lr)

    def grads_finite(self) -> bool:
        """Whether every gradient entry is finite (per-parameter norms, one device synchronisation)."""
        norms = [p.grad.norm() for p in self.params.values() if p.grad is not None]
        return bool(torch.isfinite(torch.stack([n.to(norms[0].device) for n in norms])).all()) if norms else True

    def clip_grad_norm_(self, max_norm: float) -> float:
        """torch's ``clip_grad_norm_`` over all gradients (pruned positions included); return the norm before."""
        return float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_norm))

    def _mask(self, name: str, device: torch.device) -> torch.Tensor | None:
        mask = self.keep.get(name)
        if isinstance(mask, PackedMask):
            return mask.unpack(device)
        return None if mask is None else mask.to(device)

    @torch.no_grad()
    def step(self) -> None:
        """One torch optimizer step, then pruned entries back to exactly +0.0."""
        for name, master in self.masters.items():
            grad = self.params[name].grad
            master.grad = None if grad is None else grad.to(OPTIM_PRECISION)
            self.params[name].grad = None
        self.opt.step()  # torch creates its state lazily, in the first step
        for name, p in self.params.items():
            target = self.masters.get(name, p)
            mask = self._mask(name, target.device)
            if mask is not None:
                target.masked_fill_(~mask, 0.0)
            if name in self.masters:
                target.grad = None
                p.copy_(target)

    def state_bytes(self) -> int:
        """Bytes of torch's optimizer state (moments, momentum buffers, step counters) and fp32 masters."""
        state = sum(nbytes(t) for st in self.opt.state.values() for t in st.values() if torch.is_tensor(t))
        return state + sum(nbytes(m) for m in self.masters.values())

    def master(self, name: str) -> torch.Tensor | None:
        """The fp32 master of parameter ``name`` (``None`` for an fp32 parameter)."""
        if name not in self.params:
            raise KeyError(name)
        return self.masters.get(name)
