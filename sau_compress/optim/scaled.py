"""Optimizers whose whole update, weight decay included, is multiplied elementwise by a per-parameter scale.

SAU's step (``docs/design.md``, the update rule) replaces each update Δθ by Δθ ⊙ G ⊙ W. Scaling the *update*, not the
gradient, keeps the meaning under Adam, whose per-element normalisation would cancel a constant gradient
scale. Entries with scale 0 never move: no weight decay, no momentum leakage; pruned entries stay exactly 0.

Each parameter is updated in one of two layouts (:class:`ParamScale`):

- **compact** (``indices`` given, modes ``sau``/``topk``): only the selected entries G exist for the
  optimizer. Gradients are gathered to ``[|G|]`` by a post-accumulate-grad hook the moment autograd produces
  them (the full gradient is freed at once), and the moments are ``[|G|]`` too. At ``topk_ratio`` 0.3 on a
  50%-sparse layer that is about 15% of a dense optimizer's state, and no full-size gradient is ever held
  for all layers at once.
- **full** (``indices`` None, mode ``masked``): full-size gradient and moments, update multiplied by a full
  scale (a bool mask, or floats).

The math is torch's: AdamW with decoupled weight decay (``torch.optim.AdamW``), SGD with L2 weight decay
added to the gradient and optional (Nesterov) momentum (``torch.optim.SGD``). It runs in fp32
(:data:`OPTIM_PRECISION`) whatever the parameter dtype.

**Mixed precision.** A parameter stored in a lower precision (bf16, fp16) gets an fp32 *master* of what is
updated: ``[|G|]`` values in the compact layout, the full tensor in the full layout. Updates accumulate in
the master and the weight is the master rounded to its dtype after every step, so updates far below the
weight's rounding step (bf16 keeps 8 significant bits: an update of 1e-5 on a weight of 0.02 rounds away)
still add up. fp32 parameters are their own master.

The step runs one parameter at a time, so its temporaries are those of one layer, not of all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sau_compress.shards import local_tensor

__all__ = [
    "OPTIMIZERS",
    "OPTIM_PRECISION",
    "ParamScale",
    "ScaledAdamW",
    "ScaledOptimizer",
    "ScaledSGD",
]

OPTIM_PRECISION = torch.float32
OPTIMIZERS = ("adamw", "sgd")


def nbytes(tensor: torch.Tensor | None) -> int:
    """Bytes of ``tensor``'s elements (0 for ``None``)."""
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


@dataclass
class ParamScale:
    """How one parameter is updated.

    :param indices: flat indices of the entries that may move (compact layout), or ``None`` for the full layout
    :param scale: multiplier of the update: ``[|indices|]`` floats in the compact layout, a tensor of the
        parameter's shape (bool or float) in the full layout, or ``None`` for 1 everywhere
    """

    indices: torch.Tensor | None = None
    scale: torch.Tensor | None = None


class _Slot:
    """Per-parameter bookkeeping: the parameter, its layout and its state."""

    def __init__(self, name: str, param: nn.Parameter, spec: ParamScale) -> None:
        self.name = name
        self.param = param
        local = local_tensor(param.detach())  # a sharded parameter is updated through its local shard
        numel = local.numel()
        self.indices: torch.Tensor | None = None
        if spec.indices is not None:
            if not local.is_contiguous():
                raise ValueError(f"parameter '{name}' must be contiguous for the compact layout")
            idx = spec.indices.reshape(-1).to(param.device)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
                raise ValueError(f"parameter '{name}': indices outside [0, {numel})")
            # int32 halves the index memory; index_select / index_put_ accept it
            self.indices = idx.to(torch.int32 if numel < 2**31 else torch.long)
        size = (self.indices.numel(),) if self.indices is not None else tuple(local.shape)
        self.scale: torch.Tensor | None = None
        if spec.scale is not None:
            scale = spec.scale.to(param.device)
            if tuple(scale.shape) != size:
                raise ValueError(
                    f"parameter '{name}': scale shape {tuple(scale.shape)} != expected {size} "
                    f"({'|indices|' if self.indices is not None else 'parameter shape'})"
                )
            self.scale = scale if scale.dtype == torch.bool else scale.to(OPTIM_PRECISION)
        self.size = size
        self.grad: torch.Tensor | None = None  # compact layout only
        self.state: dict[str, torch.Tensor] = {}
        #: fp32 master of the updated entries, for parameters stored in a lower precision
        self.master: torch.Tensor | None = None
        if param.dtype != OPTIM_PRECISION:
            data = local
            if self.indices is not None:
                self.master = data.view(-1).index_select(0, self.indices).to(OPTIM_PRECISION)
            else:
                self.master = data.to(OPTIM_PRECISION, copy=True)

    @property
    def compact(self) -> bool:
        return self.indices is not None

    def reselect(self, spec: ParamScale) -> None:
        """Switch a compact slot to a new selection: the state (moments, momentum, fp32 master) of entries
        in both selections is carried over, entries new to it start from zero state and the parameter's value.
        The slot object stays the same, so a gradient hook that holds it keeps working."""
        if not self.compact or spec.indices is None:
            raise ValueError(f"parameter '{self.name}': only a compact selection can be re-selected")
        fresh = _Slot(self.name, self.param, spec)
        old_idx = self.indices.long()
        new_idx = fresh.indices.long()
        pos = torch.searchsorted(old_idx, new_idx).clamp_(max=max(old_idx.numel() - 1, 0))
        hit = old_idx[pos] == new_idx if old_idx.numel() else torch.zeros_like(new_idx, dtype=torch.bool)
        src = pos[hit]
        for key, value in self.state.items():
            carried = torch.zeros(fresh.size, dtype=value.dtype, device=value.device)
            carried[hit] = value[src]
            fresh.state[key] = carried
        if self.master is not None:
            fresh.master[hit] = self.master[src]
        self.indices, self.scale, self.size = fresh.indices, fresh.scale, fresh.size
        self.state, self.master, self.grad = fresh.state, fresh.master, None

    def gather_grad(self) -> torch.Tensor | None:
        """The gradient in the optimizer's layout, fp32 (``None`` when backward produced none)."""
        if self.compact:
            return self.grad
        g = self.param.grad
        return None if g is None else local_tensor(g).to(OPTIM_PRECISION)

    def used_grad(self) -> torch.Tensor | None:
        """The part of the gradient the update uses (scale != 0), for norms and finiteness checks."""
        g = self.gather_grad()
        if g is None or self.compact or self.scale is None:
            return g
        keep = self.scale if self.scale.dtype == torch.bool else self.scale != 0
        return torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))

    def values(self) -> torch.Tensor:
        """Current values in the optimizer's layout, fp32: the master, else the parameter (a copy of the
        selected entries in the compact layout, the parameter itself in the full layout)."""
        if self.master is not None:
            return self.master
        data = local_tensor(self.param.detach())
        if self.compact:
            return data.view(-1).index_select(0, self.indices)
        return data

    def apply(self, old: torch.Tensor, update: torch.Tensor) -> None:
        """Write ``old + scale ⊙ update`` back (through the master when there is one); entries with scale 0
        are left untouched (bit-identical)."""
        if self.scale is not None:
            if self.scale.dtype == torch.bool:
                update = torch.where(self.scale, update, torch.zeros((), dtype=update.dtype, device=update.device))
            elif self.compact:
                update = update.mul_(self.scale)
            else:
                update = torch.where(self.scale != 0, update * self.scale, torch.zeros((), device=update.device))
        data = local_tensor(self.param.data)
        if self.master is not None:
            self.master.add_(update)
            if self.compact:
                data.view(-1).index_put_((self.indices,), self.master.to(data.dtype))
            else:
                data.copy_(self.master)
        elif self.compact:
            data.view(-1).index_put_((self.indices,), old.add_(update))
        else:
            data.add_(update)


class ScaledOptimizer:
    """Base class: parameters, layouts, gradient hooks, clipping, finiteness checks, memory accounting.

    Not a ``torch.optim.Optimizer``: the compact layout keeps its own gradients. Use it as::

        opt = ScaledAdamW(params, scales, lr=1e-5)
        opt.attach()                      # hooks that gather compact gradients during backward
        loss.backward(); opt.step(); opt.zero_grad()
        opt.detach()

    :param params: ``{name: parameter}``
    :param scales: ``{name: ParamScale}``; a missing name is updated in full with scale 1
    :param lr: learning rate
    :param weight_decay: weight decay (decoupled for AdamW, L2 for SGD), scaled like the rest of the update
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        scales: Mapping[str, ParamScale] | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
    ) -> None:
        if not params:
            raise ValueError("no parameters to optimize")
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be non-negative, got lr={lr}, weight_decay={weight_decay}")
        scales = dict(scales or {})
        unknown = sorted(set(scales) - set(params))
        if unknown:
            raise KeyError(f"scales for unknown parameters: {unknown[:5]}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.slots = [_Slot(name, p, scales.get(name, ParamScale())) for name, p in params.items()]
        self.step_count = 0
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        #: sums a tensor over the processes of a sharded run (each holds some rows of every parameter), so
        #: that the gradient norm and the finiteness check are the whole model's; ``None``: one process
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    # ---- gradients

    def attach(self) -> None:
        """Register the hooks that gather compact gradients (and free the full ones) during backward."""
        if self._hooks:
            return
        for slot in self.slots:
            if slot.compact:
                self._hooks.append(slot.param.register_post_accumulate_grad_hook(self._make_hook(slot)))

    def detach(self) -> None:
        """Remove the gradient hooks."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    @staticmethod
    def _make_hook(slot: _Slot) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            g = local_tensor(param.grad.detach()).view(-1).index_select(0, slot.indices).to(OPTIM_PRECISION)
            slot.grad = g if slot.grad is None else slot.grad.add_(g)
            param.grad = None

        return hook

    def zero_grad(self) -> None:
        """Drop every gradient (compact and full)."""
        for slot in self.slots:
            slot.grad = None
            slot.param.grad = None

    def grad_norm(self) -> torch.Tensor:
        """L2 norm (fp32 scalar) of the gradient entries the update uses (G in the compact layout)."""
        norms = [g.norm() for slot in self.slots if (g := slot.used_grad()) is not None]
        if self.reduce is not None:  # sharded: the square root of the sum of every process's squares
            local = torch.stack([n.to(norms[0].device) for n in norms]).square().sum() if norms else torch.zeros(())
            return self.reduce(local.reshape(1).double()).sqrt().reshape(()).float()
        if not norms:
            return torch.zeros(())
        return torch.stack([n.to(norms[0].device) for n in norms]).norm()

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Scale the gradients so that :meth:`grad_norm` is at most ``max_norm``; return the norm before."""
        total = self.grad_norm()
        coef = float(max_norm) / (float(total) + 1e-6)
        if coef < 1.0:
            for slot in self.slots:
                if slot.compact and slot.grad is not None:
                    slot.grad.mul_(coef)
                elif not slot.compact and slot.param.grad is not None:
                    local_tensor(slot.param.grad).mul_(coef)
        return float(total)

    def grads_finite(self) -> bool:
        """Whether every used gradient entry is finite (per-parameter norms, one device synchronisation)."""
        norms = [g.norm() for slot in self.slots if (g := slot.used_grad()) is not None]
        finite = bool(torch.isfinite(torch.stack([n.to(norms[0].device) for n in norms])).all()) if norms else True
        if self.reduce is not None:  # sharded: finite on every process
            return int(self.reduce(torch.tensor([0 if finite else 1]))) == 0
        return finite

    def reselect(self, scales: Mapping[str, ParamScale]) -> None:
        """Move compact parameters to new selections (``{name: ParamScale}``, see :meth:`_Slot.reselect`),
        e.g. after the saliency was recomputed. Pending gradients are dropped."""
        unknown = sorted(set(scales) - {slot.name for slot in self.slots})
        if unknown:
            raise KeyError(f"scales for unknown parameters: {unknown[:5]}")
        for slot in self.slots:
            if slot.name in scales:
                slot.reselect(scales[slot.name])

    # ---- memory

    def state_bytes(self) -> int:
        """Bytes of optimizer state (moments, momentum, fp32 masters, compact indices and scales)."""
        return sum(
            sum(nbytes(t) for t in slot.state.values()) + nbytes(slot.indices) + nbytes(slot.scale)
            + nbytes(slot.master)
            for slot in self.slots
        )

    def master(self, name: str) -> torch.Tensor | None:
        """The fp32 master of parameter ``name`` (``[|G|]`` or full; ``None`` for an fp32 parameter)."""
        for slot in self.slots:
            if slot.name == name:
                return slot.master
        raise KeyError(name)

    # ---- step

    def set_lr(self, lr: float) -> None:
        """Learning rate of the next steps (a schedule sets it before each step)."""
        self.lr = float(lr)

    @torch.no_grad()
    def step(self) -> None:
        """Apply one update to every parameter that has a gradient, one parameter at a time."""
        self.step_count += 1
        for slot in self.slots:
            g = slot.gather_grad()
            if g is None:
                continue
            old = slot.values()
            slot.apply(old, self._update(slot, old, g))
            del g, old

    def _update(self, slot: _Slot, old: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The unscaled update of one parameter (a new fp32 tensor of the slot's size)."""
        raise NotImplementedError


class ScaledAdamW(ScaledOptimizer):
    """AdamW (decoupled weight decay, as ``torch.optim.AdamW``) with the update scaled per entry.

    Unscaled update of one entry at step t: ``-lr·wd·θ - lr·m̂/(√v̂ + eps)``, with bias-corrected moments.

    :param betas: Adam's (β1, β2)
    :param eps: Adam's epsilon
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        scales: Mapping[str, ParamScale] | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, scales, lr, weight_decay)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        for slot in self.slots:
            dev = slot.param.device
            slot.state["exp_avg"] = torch.zeros(slot.size, dtype=OPTIM_PRECISION, device=dev)
            slot.state["exp_avg_sq"] = torch.zeros(slot.size, dtype=OPTIM_PRECISION, device=dev)

    def _update(self, slot: _Slot, old: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        t = self.step_count
        m, v = slot.state["exp_avg"], slot.state["exp_avg_sq"]
        m.lerp_(grad, 1.0 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
        denom = v.sqrt().div_(math.sqrt(1.0 - b2**t)).add_(self.eps)
        update = torch.div(m, denom, out=denom).mul_(-self.lr / (1.0 - b1**t))
        if self.weight_decay:
            update.add_(old, alpha=-self.lr * self.weight_decay)
        return update


class ScaledSGD(ScaledOptimizer):
    """SGD (L2 weight decay in the gradient, optional momentum/Nesterov, as ``torch.optim.SGD``), update scaled.

    :param momentum: momentum factor (0 = plain SGD, no state)
    :param nesterov: Nesterov momentum
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        scales: Mapping[str, ParamScale] | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, scales, lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = nesterov

    def _update(self, slot: _Slot, old: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        d = grad.add(old, alpha=self.weight_decay) if self.weight_decay else grad.clone()
        if self.momentum:
            buf = slot.state.get("momentum_buffer")
            if buf is None:
                buf = slot.state["momentum_buffer"] = d.clone()
            else:
                buf.mul_(self.momentum).add_(d)
            d = d.add_(buf, alpha=self.momentum) if self.nesterov else buf.clone()
        return d.mul_(-self.lr)
