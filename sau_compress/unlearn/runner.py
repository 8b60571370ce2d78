"""One run of :func:`~sau_compress.unlearn.driver.unlearn`, phase by phase (:class:`Runner`): the frozen masks
(captured once, as bits), the step plan, the reference passes, the selection of G and W
(:mod:`~sau_compress.unlearn.modes`), the optimizer, the training loop, the pattern check (once, at the end) and
the result.

Each step runs its micro-batches (:class:`~sau_compress.unlearn.steps.StepLosses`); then the gradients are
checked, optionally clipped, and the step is taken at the scheduled learning rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from torch import nn
from tqdm.auto import tqdm

from sau_compress.data import pair_forget_retain
from sau_compress.errors import UserError
from sau_compress.logs import progress_disabled
from sau_compress.losses import get_loss
from sau_compress.masking import PackedMask, all_2of4, capture_packed_masks, mean_sparsity, verify_masks
from sau_compress.memory import PeakMemory, model_bytes, release_free_memory
from sau_compress.optim import UnlearningOptimizer
from sau_compress.schedule import lr_multiplier
from sau_compress.selection import selection_stats
from sau_compress.unlearn.batching import Batcher
from sau_compress.unlearn.config import UnlearnConfig, UnlearnResult
from sau_compress.unlearn.modes import SELECTING_MODES, Selection, mode_optimizer
from sau_compress.unlearn.steps import StepLosses, reference_logprobs, reference_nll, stop

if TYPE_CHECKING:
    from sau_compress.unlearn.shard import ShardContext

__all__ = ["RELEASE_EVERY", "Runner"]

#: seconds between two hand-backs of the CPU heap's free pages (see :class:`_HeapRelease`)
RELEASE_EVERY = 1.0


def _refuse_dense(sparsities: dict[str, float]) -> None:
    listed = ", ".join(f"{n} (sparsity {s:.3f})" for n, s in list(sparsities.items())[:8])
    more = f" and {len(sparsities) - 8} more" if len(sparsities) > 8 else ""
    raise UserError(
        f"none of the {len(sparsities)} target layers has pruned weights: {listed}{more}. SAU unlearns pruned "
        "models: put a pruning stage before it (SparseGPTModifier, WandaPruningModifier, "
        "OneShotMagnitudePruningModifier; llmcompressor's MagnitudePruningModifier does not prune inside oneshot), "
        "start from a pruned checkpoint, or set allow_dense: true"
    )


class _HeapRelease:
    """``release(force=True)``: on the CPU, give the heap's free pages back (see
    :func:`sau_compress.memory.release_free_memory`): after a forward pass, glibc keeps the freed activations of
    every checkpointed layer resident, and the backward pass then peaks on top of them. CUDA's caching allocator
    needs nothing. Unless forced, a release waits :data:`RELEASE_EVERY` seconds after the last one: the pages
    given back are faulted in again by the next allocations, which costs more than the release itself on small
    models (a toy run's steps take milliseconds; a 350M model's forward pass takes seconds)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._released = time.perf_counter()

    def __call__(self, force: bool = True) -> None:
        if self.device.type != "cpu":
            return
        if force or time.perf_counter() - self._released >= RELEASE_EVERY:
            release_free_memory()
            self._released = time.perf_counter()


class Runner:
    """State of one :func:`~sau_compress.unlearn.driver.unlearn` call (split out so that ``unlearn`` can always
    clean up)."""

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
        memory: PeakMemory,
        shard: ShardContext | None = None,
    ) -> None:
        self.model = model
        self.params = {name: layer.weight for name, layer in layers.items()}
        self.forget = forget
        self.retain = retain
        self.config = config
        self.device = device
        self.use_retain = use_retain
        self.callback = callback
        self.memory = memory
        self.shard = shard
        self.spec = get_loss(config.method)
        self.io = Batcher(model, device, pad_token_id, config.autocast)
        self.opt: UnlearningOptimizer | None = None
        self._release = _HeapRelease(device)
        self.selection = Selection(self.params, forget, retain, config, device, self.io, memory, self._release, shard)

    def close(self) -> None:
        if self.opt is not None:
            self.opt.detach()
            self.opt.zero_grad()

    # ---- phases

    def run(self) -> UnlearnResult:
        cfg = self.config
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        masks = capture_packed_masks(self.model, cfg.targets, cfg.ignore)
        if self.shard is None:
            sparsities = {name: m.sparsity for name, m in masks.items()}
            pattern_2of4 = all_2of4(m.unpack() for m in masks.values())
            overall = mean_sparsity(masks)
        else:  # this process holds some rows of each layer; the figures are the whole layers'
            sparsities, pattern_2of4, overall = self.shard.mask_stats(masks)
        if not cfg.allow_dense and all(s == 0.0 for s in sparsities.values()):
            _refuse_dense(sparsities)
        logger.info(
            f"frozen masks captured: {len(masks)} layers, sparsity {overall:.3f}, 2:4 pattern: {pattern_2of4} "
            f"({sum(m.nbytes for m in masks.values()) / 2**20:.1f} MiB as bits)"
        )

        generator = torch.Generator().manual_seed(cfg.seed)
        accum = cfg.grad_accum_steps
        micro = pair_forget_retain(
            len(self.forget), len(self.retain) if self.use_retain else 0, cfg.batch_size, generator,
            cfg.epochs, cfg.max_steps * accum if cfg.max_steps is not None else None,
        )
        plan = [micro[i:i + accum] for i in range(0, len(micro), accum)]

        t_ref = time.perf_counter()
        self.model.eval()
        ref_nll = reference_nll(self.io, self.forget, cfg.batch_size) if self.spec.needs_reference_nll else None
        ref_logprobs = (reference_logprobs(self.io, self.retain, micro, cfg.batch_size, self.device)
                        if self.use_retain and cfg.retain_loss == "kl" else None)
        reference_seconds = time.perf_counter() - t_ref

        t_sal = time.perf_counter()
        # with gradient checkpointing the saliency pass runs in training mode, where Hugging Face models
        # checkpoint
        self.model.train(cfg.gradient_checkpointing)
        layer_info, scales = self.selection.select(masks, sparsities)
        saliency_seconds = time.perf_counter() - t_sal
        self.memory.sample()
        self._release()

        self.opt = mode_optimizer(cfg, self.params, masks, scales)
        if self.shard is not None:  # the gradient norm and the finiteness check cover every process's rows
            self.opt.reduce = self.shard.all_sum
        del scales
        self.opt.attach()
        self.model.train()
        losses = StepLosses(self.opt, cfg, self.spec, self.io, self.forget, self.retain, self.use_retain, self.memory,
                            self._release, ref_nll, ref_logprobs)
        t_train = time.perf_counter()
        out = self._train(plan, losses, masks)
        train_seconds = time.perf_counter() - t_train
        if out["refreshes"]:
            layer_info = out["layer_info"]

        if cfg.mode == "naive":
            self._apply_masks(masks)
        preserved = cfg.mode != "unmasked"
        if preserved:
            verify_masks(self.model, masks)
        else:
            moved = sum(int(((p.detach() != 0) & ~masks[name].unpack(p.device)).sum())
                        for name, p in self.params.items())
            logger.warning(
                f"mode 'unmasked': {moved} pruned entries are now non-zero; run the pruner again (naive-reprune) "
                "before exporting"
            )
        master = {}
        if cfg.return_master:
            master = {name: m.detach().cpu().clone() for name in self.params
                      if (m := self.opt.master(name)) is not None}
        return UnlearnResult(
            steps=out["steps"],
            losses=out["losses"],
            forget_losses=out["forget_losses"],
            retain_losses=out["retain_losses"],
            seconds=0.0,
            saliency_seconds=saliency_seconds,
            peak_memory_bytes=0,
            device=str(self.device),
            layers=layer_info,
            pattern_preserved=preserved,
            stopped_early=out["stopped_early"],
            mode=cfg.mode,
            method=cfg.method,
            reference_seconds=reference_seconds,
            train_seconds=train_seconds,
            tokens=out["tokens"],
            tokens_per_second=out["tokens"] / train_seconds if train_seconds > 0 else 0.0,
            optimizer_state_bytes=self.opt.state_bytes(),
            pattern_2of4=pattern_2of4,
            extra={
                "planned_steps": len(plan), "beta": cfg.effective_beta(), "gamma": cfg.effective_gamma(),
                "mean_sparsity": overall, "selection_stats": selection_stats(layer_info),
                "saliency_refreshes": out["refreshes"],
                "saliency_seconds_total": saliency_seconds + out["refresh_seconds"],
                "learning_rates": out["learning_rates"], "weight_dtype": str(next(iter(self.params.values())).dtype),
                "mask_bytes": sum(m.nbytes for m in masks.values()), "model_bytes": model_bytes(self.model),
                **({"shard": self.shard.describe()} if self.shard is not None else {}),
            },
            selected=self.selection.selected,
            masks={name: m.to("cpu") for name, m in masks.items()},
            master=master,
        )

    @torch.no_grad()
    def _apply_masks(self, masks: dict[str, PackedMask]) -> None:
        """Set every pruned entry of the target layers to exactly +0.0 (mode ``naive``'s final re-masking)."""
        for name, p in self.params.items():
            p.masked_fill_(~masks[name].unpack(p.device), 0.0)

    def _call_back(self, step: int, masks: dict[str, PackedMask]) -> bool:
        """Run the step callback on the model as the mode delivers it: in ``naive`` mode with the frozen mask
        applied (the pruned entries' current values are put back afterwards, so training goes on unchanged)."""
        if self.config.mode != "naive":
            return bool(self.callback(step, self.model))
        with torch.no_grad():
            moved = {}
            for name, p in self.params.items():
                pruned = ~masks[name].unpack(p.device)
                moved[name] = (pruned, p[pruned].clone())
                p.masked_fill_(pruned, 0.0)
        try:
            return bool(self.callback(step, self.model))
        finally:
            with torch.no_grad():
                for name, (pruned, values) in moved.items():
                    self.params[name][pruned] = values

    def _train(
        self,
        plan: list[list[tuple[list[int], list[int]]]],
        step_losses: StepLosses,
        masks: dict[str, PackedMask],
    ) -> dict[str, Any]:
        cfg = self.config
        opt = self.opt
        losses: list[float] = []
        forget_losses: list[float] = []
        retain_losses: list[float] = []
        rates: list[float] = []
        tokens = 0
        stopped_early = False
        bar = tqdm(total=len(plan), desc=f"unlearning ({cfg.mode}, {cfg.method})", unit="step",
                   disable=progress_disabled(not cfg.progress), leave=False)
        refresh = cfg.saliency_refresh_steps if cfg.mode in SELECTING_MODES else 0
        refreshes, refresh_seconds, layer_info = 0, 0.0, None
        for step, micro in enumerate(plan, start=1):
            if refresh and step > 1 and (step - 1) % refresh == 0:
                t_sal = time.perf_counter()
                layer_info = self._refresh(masks)
                refreshes += 1
                refresh_seconds += time.perf_counter() - t_sal
            lr = cfg.learning_rate * lr_multiplier(cfg.lr_scheduler, step - 1, len(plan), cfg.warmup_steps)
            opt.set_lr(lr)
            rates.append(lr)
            f_sum = r_sum = 0.0
            for f_idx, r_idx in micro:
                f_val, r_val, n_tokens = step_losses.backward(step, f_idx, r_idx, 1.0 / len(micro))
                f_sum += f_val
                r_sum += r_val
                tokens += n_tokens
            f_val, r_val = f_sum / len(micro), r_sum / len(micro)
            if not opt.grads_finite():
                stop(opt, step, "gradient", math.nan)
            if cfg.max_grad_norm is not None:
                opt.clip_grad_norm_(cfg.max_grad_norm)
            opt.step()
            self.memory.sample()
            opt.zero_grad()
            self._release(force=False)
            total = cfg.effective_gamma() * f_val + (cfg.retain_weight * r_val if self.use_retain else 0.0)
            losses.append(total)
            forget_losses.append(f_val)
            if self.use_retain:
                retain_losses.append(r_val)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}", forget=f"{f_val:.4f}")
            if self.callback is not None and self._call_back(step, masks):
                stopped_early = step < len(plan)
                if stopped_early:
                    logger.info(f"callback stopped unlearning after step {step} of {len(plan)}")
                    break
        bar.close()
        return {
            "steps": len(losses), "losses": losses, "forget_losses": forget_losses,
            "retain_losses": retain_losses, "tokens": tokens, "stopped_early": stopped_early,
            "learning_rates": rates, "refreshes": refreshes, "refresh_seconds": refresh_seconds,
            "layer_info": layer_info,
        }

    def _refresh(self, masks: dict[str, PackedMask]) -> dict[str, dict[str, Any]]:
        """Recompute the saliency, G and W from the current weights and move the optimizer onto them
        (``saliency_refresh_steps``); return the new per-layer records."""
        self.opt.detach()  # the saliency pass's gradients are not training gradients
        self.model.train(self.config.gradient_checkpointing)
        layer_info, scales = self.selection.select(masks, {name: m.sparsity for name, m in masks.items()})
        self.opt.reselect(scales)
        del scales
        self.opt.attach()
        self.model.train()
        self._release()
        return layer_info
