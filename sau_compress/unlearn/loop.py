"""The unlearning loop: SAU and its baselines on the target layers of a (pruned) causal LM.

Modes (``docs/design.md``):

- ``sau``: saliency F over the forget set, G = top ``topk_ratio`` of survivors, update scaled by G ⊙ W.
- ``topk``: as ``sau`` with W = 1 (the selection alone).
- ``masked``: G = all survivors, W = 1 (gradient masking; full-size optimizer state).
- ``dense``: the base method as a standard trainer runs it (``torch.optim.AdamW``/``SGD`` on every entry
  of the target layers), then the frozen mask is re-applied after each step.

:func:`unlearn` owns every step of a run: it captures the frozen masks once, refuses an unpruned model unless
told otherwise, builds G and W, trains, and verifies once at the end that the pattern is bit-identical. The
optimizer of every mode has one interface (:mod:`sau_compress.optim`), so the training loop does not branch on
the mode. One step = one forget batch (+ one retain batch for methods with a retain term): forwards, loss
values checked (NaN/inf stops before anything is applied), one backward of ``gamma * forget + retain_weight *
retain``, gradients checked, optional clipping, optimizer step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from loguru import logger
from torch import nn
from tqdm.auto import tqdm

from sau_compress.data import pair_forget_retain, sequential_batches
from sau_compress.errors import NonFiniteLossError, UserError
from sau_compress.losses import answer_logprobs, get_loss, kl_to_reference, retain_nll, sequence_nll
from sau_compress.masking import all_2of4, capture_masks, mean_sparsity, resolve_targets, sparsity, verify_masks
from sau_compress.optim import ParamScale, UnlearningOptimizer, make_optimizer, nbytes
from sau_compress.saliency import compute_fisher
from sau_compress.selection import build_selection
from sau_compress.unlearn.batching import Batcher, check_items
from sau_compress.unlearn.config import UnlearnConfig, UnlearnResult

__all__ = ["unlearn"]


def _pick_device(requested: str | None) -> torch.device:
    if requested is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{requested}' requested but CUDA is not available; use 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def unlearn(
    model: nn.Module,
    forget: Sequence[dict[str, Any]],
    retain: Sequence[dict[str, Any]] | None,
    config: UnlearnConfig,
    pad_token_id: int = 0,
    callback: Callable[[int, nn.Module], bool] | None = None,
) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` in place, keeping its sparsity pattern bit-identical.

    :param model: a causal LM (``model(input_ids, attention_mask).logits``), pruned unless ``allow_dense``
    :param forget: tokenized items (:func:`sau_compress.data.tokenize_records`: ``input_ids``, ``labels``)
    :param retain: tokenized retain items (needed by methods with a retain term unless ``retain_weight`` is 0)
    :param config: the run's settings
    :param pad_token_id: padding id for batches
    :param callback: ``callback(step, model)`` after every step (1-based); returning ``True`` stops early
    :return: an :class:`UnlearnResult` with the frozen masks; the model ends on the device (and dtype) it
        started on
    :raises UserError: empty forget set, missing retain set, an unpruned model without ``allow_dense``, bad items
    :raises NonFiniteLossError: a NaN/inf loss or gradient (the model is as before that step)
    :raises sau_compress.masking.MaskViolationError: the sparsity pattern changed (a bug)
    """
    if not isinstance(config, UnlearnConfig):
        raise TypeError(f"config must be an UnlearnConfig, got {type(config).__name__}")
    t_start = time.perf_counter()
    forget = list(forget)
    if not forget:
        raise UserError("the forget set is empty; nothing to unlearn")
    check_items(forget, "forget")
    spec = get_loss(config.method)
    retain = list(retain or [])
    use_retain = spec.uses_retain and config.retain_weight > 0
    if use_retain and not retain:
        raise UserError(f"method '{config.method}' needs a retain set (or set retain_weight=0)")
    if not use_retain and retain:
        logger.info(f"method '{config.method}' with retain_weight={config.retain_weight} ignores the retain set")
        retain = []
    check_items(retain, "retain")

    layers = resolve_targets(model, config.targets, config.ignore)
    for name, layer in layers.items():
        if not layer.weight.is_floating_point():
            raise UserError(f"target layer '{name}' has a {layer.weight.dtype} weight; only float weights train")
    device = _pick_device(config.device)
    start_device = next(model.parameters()).device
    logger.info(
        f"unlearning on {device}: mode={config.mode} method={config.method} optimizer={config.optimizer} "
        f"{len(layers)} target layers, {len(forget)} forget / {len(retain)} retain items"
        + (" (bf16 autocast)" if device.type == "cuda" and config.autocast else "")
    )
    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    devices = [device.index] if device.type == "cuda" else []
    runner = _Runner(model, layers, forget, retain, config, device, pad_token_id, use_retain, callback)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            result = runner.run()
    finally:
        runner.close()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
        model.to(start_device)
        model.train(was_training)
    if device.type == "cuda":
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
        result.memory_measure = "cuda_max_allocated"
    result.seconds = time.perf_counter() - t_start
    logger.info(
        f"unlearning done: {result.steps} steps in {result.seconds:.1f}s (saliency {result.saliency_seconds:.1f}s), "
        f"{result.tokens_per_second:.0f} tokens/s, peak memory {result.peak_memory_bytes / 2**20:.1f} MiB "
        f"({result.memory_measure}), pattern preserved in {len(result.masks)} layers"
    )
    return result


def _refuse_dense(sparsities: dict[str, float]) -> None:
    listed = ", ".join(f"{n} (sparsity {s:.3f})" for n, s in list(sparsities.items())[:8])
    more = f" and {len(sparsities) - 8} more" if len(sparsities) > 8 else ""
    raise UserError(
        f"none of the {len(sparsities)} target layers has pruned weights: {listed}{more}. SAU unlearns pruned "
        "models: put a pruning stage before it (SparseGPTModifier, WandaPruningModifier, "
        "OneShotMagnitudePruningModifier; llmcompressor's MagnitudePruningModifier does not prune inside oneshot), "
        "start from a pruned checkpoint, or set allow_dense: true"
    )


class _Runner:
    """State of one :func:`unlearn` call (split out so that ``unlearn`` can always clean up)."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, nn.Linear],
        forget: list[dict[str, Any]],
        retain: list[dict[str, Any]],
        config: UnlearnConfig,
        device: torch.device,
        pad_token_id: int,
        use_retain: bool,
        callback: Callable[[int, nn.Module], bool] | None,
    ) -> None:
        self.model = model
        self.params = {name: layer.weight for name, layer in layers.items()}
        self.forget = forget
        self.retain = retain
        self.config = config
        self.device = device
        self.use_retain = use_retain
        self.callback = callback
        self.spec = get_loss(config.method)
        self.io = Batcher(model, device, pad_token_id, config.autocast)
        self.opt: UnlearningOptimizer | None = None
        self.peak_state = 0
        self.fixed_bytes = 0  # masks + reference values
        self.selected: dict[str, torch.Tensor] = {}

    def close(self) -> None:
        if self.opt is not None:
            self.opt.detach()
            self.opt.zero_grad()

    def _note(self, extra: int = 0) -> None:
        """Record the training state held now (the CPU memory measure)."""
        held = self.fixed_bytes + extra + (self.opt.held_bytes() if self.opt is not None else 0)
        self.peak_state = max(self.peak_state, held)

    # ---- phases

    def run(self) -> UnlearnResult:
        cfg = self.config
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        masks = capture_masks(self.model, cfg.targets, cfg.ignore)
        self.fixed_bytes = sum(nbytes(m) for m in masks.values())
        sparsities = {name: sparsity(m) for name, m in masks.items()}
        if not cfg.allow_dense and all(s == 0.0 for s in sparsities.values()):
            _refuse_dense(sparsities)
        pattern_2of4 = all_2of4(masks.values())
        overall = mean_sparsity(masks)
        logger.info(f"frozen masks captured: {len(masks)} layers, sparsity {overall:.3f}, 2:4 pattern: {pattern_2of4}")

        generator = torch.Generator().manual_seed(cfg.seed)
        plan = pair_forget_retain(
            len(self.forget), len(self.retain) if self.use_retain else 0, cfg.batch_size, generator,
            cfg.epochs, cfg.max_steps,
        )

        t_ref = time.perf_counter()
        self.model.eval()
        ref_nll = self._reference_nll() if self.spec.needs_reference_nll else None
        ref_logprobs = self._reference_logprobs(plan) if self.use_retain and cfg.retain_loss == "kl" else None
        reference_seconds = time.perf_counter() - t_ref

        t_sal = time.perf_counter()
        layer_info, scales = self._select(masks, sparsities)
        saliency_seconds = time.perf_counter() - t_sal

        self.opt = self._make_optimizer(masks, scales)
        self.opt.attach()
        self.model.train()
        t_train = time.perf_counter()
        out = self._train(plan, ref_nll, ref_logprobs)
        train_seconds = time.perf_counter() - t_train

        verify_masks(self.model, masks)
        return UnlearnResult(
            steps=out["steps"],
            losses=out["losses"],
            forget_losses=out["forget_losses"],
            retain_losses=out["retain_losses"],
            seconds=0.0,
            saliency_seconds=saliency_seconds,
            peak_memory_bytes=self.peak_state,
            device=str(self.device),
            layers=layer_info,
            pattern_preserved=True,
            stopped_early=out["stopped_early"],
            mode=cfg.mode,
            method=cfg.method,
            reference_seconds=reference_seconds,
            train_seconds=train_seconds,
            tokens=out["tokens"],
            tokens_per_second=out["tokens"] / train_seconds if train_seconds > 0 else 0.0,
            optimizer_state_bytes=self.opt.state_bytes(),
            pattern_2of4=pattern_2of4,
            extra={"planned_steps": len(plan), "beta": cfg.effective_beta(), "mean_sparsity": overall},
            selected=self.selected,
            masks={name: m.cpu() for name, m in masks.items()},
        )

    @torch.no_grad()
    def _reference_nll(self) -> torch.Tensor:
        """NPO's reference: summed answer NLL of every forget item under the starting model (CPU fp32)."""
        out = torch.empty(len(self.forget), dtype=torch.float32)
        for idx in sequential_batches(len(self.forget), self.config.batch_size):
            batch = self.io.batch([self.forget[i] for i in idx])
            nll, _ = sequence_nll(self.io.logits(batch), batch["labels"])
            out[idx] = nll.float().cpu()
        if not torch.isfinite(out).all():
            raise NonFiniteLossError("the starting model gives a non-finite NLL on the forget set")
        self.fixed_bytes += nbytes(out)
        return out

    @torch.no_grad()
    def _reference_logprobs(self, plan: list[tuple[list[int], list[int]]]) -> dict[int, torch.Tensor]:
        """KL's reference: answer-position log-probs of the retain items the plan uses (CPU)."""
        used = sorted({j for _, r in plan for j in r})
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        out: dict[int, torch.Tensor] = {}
        for chunk in sequential_batches(len(used), self.config.batch_size):
            idx = [used[c] for c in chunk]
            batch = self.io.batch([self.retain[j] for j in idx])
            for j, lp in zip(idx, answer_logprobs(self.io.logits(batch), batch["labels"]), strict=True):
                out[j] = lp.to(dtype).cpu()
        size = sum(nbytes(t) for t in out.values())
        self.fixed_bytes += size
        logger.info(f"reference log-probs for {len(out)} retain items: {size / 2**20:.1f} MiB on CPU")
        return out

    def _select(
        self, masks: dict[str, torch.Tensor], sparsities: dict[str, float]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, ParamScale]]:
        """Per-layer G and W (modes ``sau``/``topk``) or the full-layout scales (``masked``)."""
        cfg = self.config
        info: dict[str, dict[str, Any]] = {}
        scales: dict[str, ParamScale] = {}
        if cfg.mode in ("dense", "masked"):
            for name, mask in masks.items():
                n_sel = mask.numel() if cfg.mode == "dense" else int(mask.sum())
                info[name] = {
                    "sparsity": sparsities[name], "rho": None,
                    "selected_fraction": n_sel / mask.numel(), "n_selected": n_sel,
                }
                if cfg.mode == "masked":
                    scales[name] = ParamScale(indices=None, scale=mask)
            return info, scales
        batches = sequential_batches(len(self.forget), cfg.batch_size, cfg.saliency_batches)

        def forget_nll(idx: list[int]) -> torch.Tensor:
            batch = self.io.batch([self.forget[i] for i in idx])
            return retain_nll(*sequence_nll(self.io.logits(batch), batch["labels"]))

        fisher = compute_fisher(self.params, batches, forget_nll, total=len(batches), desc="saliency",
                                progress=cfg.progress)
        # the saliency buffers, plus the one full gradient alive before its hook squares it
        self._note(extra=sum(nbytes(f) for f in fisher.values()) + max(nbytes(p) for p in self.params.values()))
        for name in list(fisher):
            f = fisher.pop(name)
            # on a dense layer rho = 0, so W = 1: SAU is exactly its top-k selection there
            sel = build_selection(f, masks[name], cfg.topk_ratio, cfg.alpha, cfg.max_scale,
                                  redistribution=cfg.mode == "sau")
            del f
            info[name] = sel.summary()
            scales[name] = ParamScale(indices=sel.indices, scale=sel.scale)
            self.selected[name] = sel.indices.cpu()
            logger.debug(
                f"{name}: sparsity {sel.sparsity:.3f} rho {sel.rho:.4g} |G| {sel.n_selected} "
                f"W mean {info[name]['w_mean']:.3f} max {info[name]['w_max']:.3f} clipped {sel.n_clipped}"
            )
        return info, scales

    def _make_optimizer(self, masks: dict[str, torch.Tensor], scales: dict[str, ParamScale]) -> UnlearningOptimizer:
        cfg = self.config
        hyper = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "betas": cfg.adam_betas,
                 "eps": cfg.adam_eps, "momentum": cfg.momentum}
        if cfg.mode == "dense":  # a standard torch step, then the frozen mask re-applied
            return make_optimizer(cfg.optimizer, self.params, keep=masks, **hyper)
        return make_optimizer(cfg.optimizer, self.params, scales, **hyper)

    def _fail(self, step: int, what: str, value: float) -> None:
        self.opt.zero_grad()
        raise NonFiniteLossError(
            f"step {step}: the {what} is {value}; stopped, and the model is as it was before this step. "
            "Lower learning_rate, set max_grad_norm, or check the data"
        )

    def _step_loss(
        self, f_idx: list[int], r_idx: list[int], ref_nll: torch.Tensor | None,
        ref_logprobs: dict[int, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """The step's combined loss, its detached parts (forget[, retain]) and the tokens it read."""
        cfg = self.config
        batch = self.io.batch([self.forget[i] for i in f_idx])
        tokens = batch["n_tokens"]
        nll, n_tok = sequence_nll(self.io.logits(batch), batch["labels"])
        ref = ref_nll[f_idx].to(self.device) if ref_nll is not None else None
        f_loss = self.spec.forget(nll, n_tok, reference_nll=ref, beta=cfg.effective_beta(), delta=cfg.delta)
        loss = cfg.gamma * f_loss
        parts = [f_loss.detach()]
        if self.use_retain:
            batch = self.io.batch([self.retain[j] for j in r_idx])
            tokens += batch["n_tokens"]
            logits = self.io.logits(batch)
            if cfg.retain_loss == "kl":
                r_loss = kl_to_reference(logits, batch["labels"], [ref_logprobs[j] for j in r_idx])
            else:
                r_loss = retain_nll(*sequence_nll(logits, batch["labels"]))
            loss = loss + cfg.retain_weight * r_loss
            parts.append(r_loss.detach())
        return loss, parts, tokens

    def _train(
        self,
        plan: list[tuple[list[int], list[int]]],
        ref_nll: torch.Tensor | None,
        ref_logprobs: dict[int, torch.Tensor] | None,
    ) -> dict[str, Any]:
        cfg = self.config
        opt = self.opt
        losses: list[float] = []
        forget_losses: list[float] = []
        retain_losses: list[float] = []
        tokens = 0
        stopped_early = False
        bar = tqdm(total=len(plan), desc=f"unlearning ({cfg.mode}, {cfg.method})", unit="step",
                   disable=not cfg.progress, leave=False)
        for step, (f_idx, r_idx) in enumerate(plan, start=1):
            loss, parts, n_tokens = self._step_loss(f_idx, r_idx, ref_nll, ref_logprobs)
            tokens += n_tokens
            values = torch.stack(parts).tolist()  # one synchronisation for the loss values
            f_val = values[0]
            r_val = values[1] if self.use_retain else 0.0
            if not math.isfinite(f_val):
                self._fail(step, "forget loss", f_val)
            if not math.isfinite(r_val):
                self._fail(step, "retain loss", r_val)
            # one backward of gamma * forget + retain_weight * retain, as open-unlearning's trainers
            loss.backward()
            del loss, parts
            if not opt.grads_finite():
                self._fail(step, "gradient", math.nan)
            if cfg.max_grad_norm is not None:
                opt.clip_grad_norm_(cfg.max_grad_norm)
            opt.step()
            if step == 1:
                self._note()  # gradients and state both held; their sizes are the same at every step
            opt.zero_grad()
            total = cfg.gamma * f_val + (cfg.retain_weight * r_val if self.use_retain else 0.0)
            losses.append(total)
            forget_losses.append(f_val)
            if self.use_retain:
                retain_losses.append(r_val)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}", forget=f"{f_val:.4f}")
            if self.callback is not None and self.callback(step, self.model):
                stopped_early = step < len(plan)
                if stopped_early:
                    logger.info(f"callback stopped unlearning after step {step} of {len(plan)}")
                    break
        bar.close()
        return {
            "steps": len(losses), "losses": losses, "forget_losses": forget_losses,
            "retain_losses": retain_losses, "tokens": tokens, "stopped_early": stopped_early,
        }
