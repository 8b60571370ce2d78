"""The losses of the unlearning steps: the reference passes NPO and KL compare against, and each micro-batch's
forget and retain losses, checked and back-propagated.

One optimizer step = ``grad_accum_steps`` micro-batches, each a forget batch (+ a retain batch for methods with
a retain term). The forget loss is computed, checked (NaN/inf stops before anything is applied) and
back-propagated before the retain batch runs, so each layer's full gradient lives only until the optimizer has
gathered it (the gradient of ``gamma * forget + retain_weight * retain`` is the sum of the two).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from loguru import logger

from sau_compress.data import sequential_batches
from sau_compress.errors import NonFiniteLossError
from sau_compress.losses import UnlearningLoss, answer_logprobs, kl_to_reference, retain_nll, sequence_nll
from sau_compress.memory import PeakMemory
from sau_compress.optim import UnlearningOptimizer, nbytes
from sau_compress.unlearn.batching import Batcher
from sau_compress.unlearn.config import UnlearnConfig

__all__ = ["StepLosses", "reference_logprobs", "reference_nll", "stop"]


@torch.no_grad()
def reference_nll(io: Batcher, forget: list[dict[str, Any]], batch_size: int) -> torch.Tensor:
    """NPO's reference: summed answer NLL of every forget item under the starting model (CPU fp32)."""
    out = torch.empty(len(forget), dtype=torch.float32)
    for idx in sequential_batches(len(forget), batch_size):
        batch = io.batch([forget[i] for i in idx])
        nll, _ = sequence_nll(*io.scored(batch))
        out[idx] = nll.float().cpu()
    if not torch.isfinite(out).all():
        raise NonFiniteLossError("the starting model gives a non-finite NLL on the forget set")
    return out


@torch.no_grad()
def reference_logprobs(
    io: Batcher, retain: list[dict[str, Any]], plan: list[tuple[list[int], list[int]]], batch_size: int,
    device: torch.device,
) -> dict[int, torch.Tensor]:
    """KL's reference: answer-position log-probs of the retain items the plan uses (CPU)."""
    used = sorted({j for _, r in plan for j in r})
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out: dict[int, torch.Tensor] = {}
    for chunk in sequential_batches(len(used), batch_size):
        idx = [used[c] for c in chunk]
        batch = io.batch([retain[j] for j in idx])
        for j, lp in zip(idx, answer_logprobs(*io.scored(batch)), strict=True):
            out[j] = lp.to(dtype).cpu()
    size = sum(nbytes(t) for t in out.values())
    logger.info(f"reference log-probs for {len(out)} retain items: {size / 2**20:.1f} MiB on CPU")
    return out


def stop(opt: UnlearningOptimizer, step: int, what: str, value: float) -> NoReturn:
    """Drop the step's gradients and raise: a loss or gradient of the step is not finite."""
    opt.zero_grad()
    raise NonFiniteLossError(
        f"step {step}: the {what} is {value}; stopped, and the model is as it was before this step. "
        "Lower learning_rate, set max_grad_norm, or check the data"
    )


class StepLosses:
    """The forget and retain losses of one run's micro-batches, against the run's references (``ref_nll``:
    :func:`reference_nll`, ``ref_logprobs``: :func:`reference_logprobs`; ``None`` when the method needs none)."""

    def __init__(
        self,
        opt: UnlearningOptimizer,
        config: UnlearnConfig,
        spec: UnlearningLoss,
        io: Batcher,
        forget: list[dict[str, Any]],
        retain: list[dict[str, Any]],
        use_retain: bool,
        memory: PeakMemory,
        release: Callable[..., None],
        ref_nll: torch.Tensor | None,
        ref_logprobs: dict[int, torch.Tensor] | None,
    ) -> None:
        self.opt = opt
        self.config = config
        self.spec = spec
        self.io = io
        self.device = io.device
        self.forget = forget
        self.retain = retain
        self.use_retain = use_retain
        self.memory = memory
        self.release = release
        self.ref_nll = ref_nll
        self.ref_logprobs = ref_logprobs

    def checked_backward(self, step: int, what: str, loss: torch.Tensor, scale: float) -> float:
        """Check a loss value (NaN/inf stops before anything is applied), then back-propagate ``scale * loss``
        with the forward pass's freed memory handed back first; return the value."""
        value = float(loss.detach())
        if not math.isfinite(value):
            stop(self.opt, step, what, value)
        self.memory.sample()
        self.release(force=False)
        (loss * scale).backward()
        self.memory.sample()
        return value

    def backward(self, step: int, f_idx: list[int], r_idx: list[int], weight: float) -> tuple[float, float, int]:
        """One micro-batch: the forget loss backward, then the retain loss backward (each scaled by ``weight``
        = 1 / micro-batches of the step); return the loss values and the tokens read."""
        cfg = self.config
        ref_nll, ref_logprobs = self.ref_nll, self.ref_logprobs
        batch = self.io.batch([self.forget[i] for i in f_idx])
        tokens = batch["n_tokens"]
        nll, n_tok = sequence_nll(*self.io.scored(batch))
        ref = ref_nll[f_idx].to(self.device) if ref_nll is not None else None
        f_loss = self.spec.forget(nll, n_tok, reference_nll=ref, beta=cfg.effective_beta(), delta=cfg.delta)
        del nll, batch
        f_val = self.checked_backward(step, "forget loss", f_loss, cfg.effective_gamma() * weight)
        del f_loss
        r_val = 0.0
        if self.use_retain:
            self.release(force=False)
            batch = self.io.batch([self.retain[j] for j in r_idx])
            tokens += batch["n_tokens"]
            logits, labels = self.io.scored(batch)
            if cfg.retain_loss == "kl":
                r_loss = kl_to_reference(logits, labels, [ref_logprobs[j] for j in r_idx])
            else:
                r_loss = retain_nll(*sequence_nll(logits, labels))
            del logits, labels
            r_val = self.checked_backward(step, "retain loss", r_loss, cfg.retain_weight * weight)
        return f_val, r_val, tokens
