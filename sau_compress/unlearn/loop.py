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
the mode. One optimizer step = ``grad_accum_steps`` micro-batches, each a forget batch (+ a retain batch for
methods with a retain term). The forget loss is computed, checked (NaN/inf stops before anything is applied)
and back-propagated before the retain batch runs, so each layer's full gradient lives only until the
optimizer has gathered it (the gradient of ``gamma * forget + retain_weight * retain`` is the sum of the
two); then the gradients are checked, optionally clipped, and the step is taken at the scheduled learning
rate.

Memory: the frozen masks are held as bits (:class:`~sau_compress.masking.PackedMask`), the saliency as F on the
surviving entries only (:class:`~sau_compress.saliency.CompactFisher`), selection indices as int32, and the
step runs one layer at a time. The peak is measured (:class:`~sau_compress.memory.PeakMemory`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from torch import nn
from tqdm.auto import tqdm

from sau_compress.data import pair_forget_retain, sequential_batches, spread_batches
from sau_compress.errors import NonFiniteLossError, UserError
from sau_compress.logs import progress_disabled
from sau_compress.losses import answer_logprobs, get_loss, kl_to_reference, retain_nll, sequence_nll
from sau_compress.masking import (
    PackedMask,
    all_2of4,
    capture_packed_masks,
    mean_sparsity,
    resolve_targets,
    verify_masks,
)
from sau_compress.memory import PeakMemory, limit_heap_retention, model_bytes, release_free_memory
from sau_compress.optim import ParamScale, UnlearningOptimizer, make_optimizer, nbytes
from sau_compress.saliency import CompactFisher, compute_fisher
from sau_compress.schedule import lr_multiplier
from sau_compress.selection import (
    build_selection_compact,
    build_selection_sharded,
    contrastive_score,
    selection_stats,
)
from sau_compress.unlearn.batching import Batcher, check_items
from sau_compress.unlearn.config import UnlearnConfig, UnlearnResult

if TYPE_CHECKING:
    from sau_compress.unlearn.shard import ShardContext

__all__ = ["unlearn"]

#: modes that select G from the saliency (the others skip the saliency pass)
_SELECTING_MODES = ("sau", "topk")
#: modes whose optimizer leaves the pruned entries free during training
_UNMASKED_MODES = ("naive", "unmasked")
#: seconds between two hand-backs of the CPU heap's free pages (see ``_Runner._release``)
RELEASE_EVERY = 1.0


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
    shard: ShardContext | None = None,
) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` in place, keeping its sparsity pattern bit-identical.

    :param model: a causal LM (``model(input_ids, attention_mask).logits``), pruned unless ``allow_dense``
    :param forget: tokenized items (:func:`sau_compress.data.tokenize_records`: ``input_ids``, ``labels``)
    :param retain: tokenized retain items (needed by methods with a retain term unless ``retain_weight`` is 0)
    :param config: the run's settings
    :param pad_token_id: padding id for batches
    :param callback: ``callback(step, model)`` after every step (1-based); returning ``True`` stops early
    :param shard: this process's part in a sharded run (:class:`~sau_compress.unlearn.shard.ShardContext`;
        the model already sharded with :meth:`~sau_compress.unlearn.shard.ShardContext.shard_model`, and
        every process calling with the same data and config). Masks, saliency, G, W and the optimizer state
        then cover this process's rows only; ``selected`` holds its entries as flat indices of the whole
        layer; ``masks`` and ``master`` its rows. ``None``: one process, the whole model
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
    contrastive = config.saliency == "contrastive" and config.mode in _SELECTING_MODES
    if contrastive and not retain:
        raise UserError("saliency 'contrastive' needs a retain set (its Fisher is the denominator)")
    if not use_retain and retain and not contrastive:
        logger.info(f"method '{config.method}' with retain_weight={config.retain_weight} ignores the retain set")
        retain = []
    check_items(retain, "retain")

    layers = resolve_targets(model, config.targets, config.ignore)
    for name, layer in layers.items():
        if not layer.weight.is_floating_point():
            raise UserError(f"target layer '{name}' has a {layer.weight.dtype} weight; only float weights train")
    if shard is not None and config.mode not in ("sau", "topk", "masked"):
        raise UserError(f"mode '{config.mode}' runs on one process only (its torch optimizer is not sharded): use "
                        "mode sau, topk or masked, or run without --nproc")
    if shard is not None and (config.saliency_refresh_steps or config.saliency == "contrastive"):
        raise UserError("saliency_refresh_steps and saliency: contrastive run on one process only (not implemented "
                        "for sharded runs; the contrastive score's ε is relative to the whole layer's mean): leave "
                        "them unset, or run without --nproc")
    device = shard.device if shard is not None else _pick_device(config.device)
    start_device = next(model.parameters()).device
    logger.info(
        f"unlearning on {device}: mode={config.mode} method={config.method} optimizer={config.optimizer} "
        f"{len(layers)} target layers, {len(forget)} forget / {len(retain)} retain items"
        + (" (bf16 autocast)" if device.type == "cuda" and config.autocast else "")
    )
    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    checkpointing = _enable_checkpointing(model) if config.gradient_checkpointing else False
    devices = [device.index] if device.type == "cuda" else []
    if device.type == "cpu" and limit_heap_retention():
        logger.debug("CPU run: allocations of 1 MiB and more are memory-mapped (sau_compress.memory)")
    runner = None
    try:
        with PeakMemory(device, base_bytes=model_bytes(model)) as memory:
            if shard is None:  # a sharded model already lives on its device
                model.to(device)
            runner = _Runner(model, layers, forget, retain, config, device, pad_token_id, use_retain, callback,
                             memory, shard)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(config.seed)
                result = runner.run()
    finally:
        if runner is not None:
            runner.close()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
        if checkpointing:
            model.gradient_checkpointing_disable()
        if shard is None:
            model.to(start_device)
        model.train(was_training)
    result.peak_memory_bytes = memory.peak_bytes
    result.memory_measure = memory.measure
    result.seconds = time.perf_counter() - t_start
    logger.info(
        f"unlearning done: {result.steps} steps in {result.seconds:.1f}s (saliency {result.saliency_seconds:.1f}s), "
        f"{result.tokens_per_second:.0f} tokens/s, peak memory {result.peak_memory_bytes / 2**20:.1f} MiB "
        f"({result.memory_measure}), pattern preserved in {len(result.masks)} layers"
    )
    return result


def _enable_checkpointing(model: nn.Module) -> bool:
    """Turn on gradient checkpointing; ``True`` when this call turned it on (and must turn it off)."""
    if getattr(model, "is_gradient_checkpointing", False):
        return False
    if not getattr(model, "supports_gradient_checkpointing", False) or not hasattr(
        model, "gradient_checkpointing_enable"
    ):
        raise UserError(
            f"gradient_checkpointing: {type(model).__name__} does not support it (a Hugging Face model with "
            "supports_gradient_checkpointing is needed); set gradient_checkpointing: false"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return True


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
        self.selected: dict[str, torch.Tensor] = {}
        self._released = time.perf_counter()

    def _release(self, force: bool = True) -> None:
        """On the CPU, give the heap's free pages back (see :func:`sau_compress.memory.release_free_memory`):
        after a forward pass, glibc keeps the freed activations of every checkpointed layer resident, and
        the backward pass then peaks on top of them. CUDA's caching allocator needs nothing. Unless forced,
        a release waits :data:`RELEASE_EVERY` seconds after the last one: the pages given back are faulted in
        again by the next allocations, which costs more than the release itself on small models (a toy run's
        steps take milliseconds; a 350M model's forward pass takes seconds)."""
        if self.device.type != "cpu":
            return
        if force or time.perf_counter() - self._released >= RELEASE_EVERY:
            release_free_memory()
            self._released = time.perf_counter()

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
        ref_nll = self._reference_nll() if self.spec.needs_reference_nll else None
        ref_logprobs = self._reference_logprobs(micro) if self.use_retain and cfg.retain_loss == "kl" else None
        reference_seconds = time.perf_counter() - t_ref

        t_sal = time.perf_counter()
        # with gradient checkpointing the saliency pass runs in training mode, where Hugging Face models
        # checkpoint
        self.model.train(cfg.gradient_checkpointing)
        layer_info, scales = self._select(masks, sparsities)
        saliency_seconds = time.perf_counter() - t_sal
        self.memory.sample()
        self._release()

        self.opt = self._make_optimizer(masks, scales)
        if self.shard is not None:  # the gradient norm and the finiteness check cover every process's rows
            self.opt.reduce = self.shard.all_sum
        del scales
        self.opt.attach()
        self.model.train()
        t_train = time.perf_counter()
        out = self._train(plan, ref_nll, ref_logprobs, masks)
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
            selected=self.selected,
            masks={name: m.to("cpu") for name, m in masks.items()},
            master=master,
        )

    @torch.no_grad()
    def _reference_nll(self) -> torch.Tensor:
        """NPO's reference: summed answer NLL of every forget item under the starting model (CPU fp32)."""
        out = torch.empty(len(self.forget), dtype=torch.float32)
        for idx in sequential_batches(len(self.forget), self.config.batch_size):
            batch = self.io.batch([self.forget[i] for i in idx])
            nll, _ = sequence_nll(*self.io.scored(batch))
            out[idx] = nll.float().cpu()
        if not torch.isfinite(out).all():
            raise NonFiniteLossError("the starting model gives a non-finite NLL on the forget set")
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
            for j, lp in zip(idx, answer_logprobs(*self.io.scored(batch)), strict=True):
                out[j] = lp.to(dtype).cpu()
        size = sum(nbytes(t) for t in out.values())
        logger.info(f"reference log-probs for {len(out)} retain items: {size / 2**20:.1f} MiB on CPU")
        return out

    def _select(
        self, masks: dict[str, PackedMask], sparsities: dict[str, float]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, ParamScale]]:
        """Per-layer G and W (modes ``sau``/``topk``) or the full-layout scales (``masked``)."""
        cfg = self.config
        info: dict[str, dict[str, Any]] = {}
        scales: dict[str, ParamScale] = {}
        if cfg.mode not in _SELECTING_MODES:
            for name, mask in masks.items():
                n_sel = mask.n_surviving if cfg.mode == "masked" else mask.numel()
                info[name] = {
                    "sparsity": sparsities[name], "rho": None,
                    "selected_fraction": n_sel / mask.numel(), "n_selected": n_sel,
                }
                if cfg.mode == "masked":
                    scales[name] = ParamScale(indices=None, scale=mask.unpack(self.device))
            return info, scales
        def fisher_of(items: list[dict[str, Any]], batches: list[list[int]], desc: str) -> dict[str, CompactFisher]:
            def nll(idx: list[int]) -> torch.Tensor:
                batch = self.io.batch([items[i] for i in idx])
                loss = retain_nll(*sequence_nll(*self.io.scored(batch)))
                self.memory.sample()
                self._release(force=False)  # before the backward pass (see _release)
                return loss

            out = compute_fisher(self.params, batches, nll, total=len(batches), desc=desc, progress=cfg.progress,
                                 masks=masks)
            self.memory.sample()
            return out

        size = cfg.saliency_batch_size or cfg.batch_size
        forget_batches = sequential_batches(len(self.forget), size, cfg.saliency_batches)
        fisher = fisher_of(self.forget, forget_batches, "saliency")
        retain_fisher = None
        if cfg.saliency == "contrastive":  # as many retain batches as forget batches, spread over the retain set
            retain_fisher = fisher_of(self.retain, spread_batches(len(self.retain), size, len(forget_batches)),
                                      "saliency (retain)")
        for name in list(fisher):
            f = fisher.pop(name)
            score = None
            if retain_fisher is not None:
                score = contrastive_score(f.surviving, retain_fisher.pop(name).surviving, cfg.contrastive_eps)
            # on a dense layer rho = 0, so W = 1: SAU is exactly its top-k selection there
            args = (f.surviving, f.pruned_total, masks[name].unpack(self.device), cfg.topk_ratio, cfg.alpha,
                    cfg.max_scale, cfg.mode == "sau")
            if self.shard is None:
                sel = build_selection_compact(*args, score=score)
                info[name] = sel.summary()
            else:  # this process's rows; the selection is the whole layer's (exact top-k across processes)
                sel, info[name] = build_selection_sharded(*args, comm=self.shard, score=score)
            del f, score
            self.selected[name] = (sel.indices.cpu() if self.shard is None  # flat indices of the whole layer
                                   else sel.indices.cpu().long() + self.shard.flat_offset(self.params[name]))
            scales[name] = ParamScale(indices=sel.indices, scale=sel.scale)
            logger.debug(
                f"{name}: sparsity {info[name]['sparsity']:.3f} rho {sel.rho:.4g} |G| {info[name]['n_selected']} "
                f"W mean {info[name]['w_mean']:.3f} max {info[name]['w_max']:.3f} clipped {info[name]['n_clipped']}"
            )
        return info, scales

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

    def _make_optimizer(self, masks: dict[str, PackedMask], scales: dict[str, ParamScale]) -> UnlearningOptimizer:
        cfg = self.config
        hyper = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "betas": cfg.adam_betas,
                 "eps": cfg.adam_eps, "momentum": cfg.momentum}
        if cfg.mode == "dense":  # a standard torch step, then the frozen mask re-applied
            return make_optimizer(cfg.optimizer, self.params, keep=masks, **hyper)
        if cfg.mode in _UNMASKED_MODES:  # a standard torch step, pruned entries free to move
            return make_optimizer(cfg.optimizer, self.params, keep={}, **hyper)
        return make_optimizer(cfg.optimizer, self.params, scales, **hyper)

    def _fail(self, step: int, what: str, value: float) -> None:
        self.opt.zero_grad()
        raise NonFiniteLossError(
            f"step {step}: the {what} is {value}; stopped, and the model is as it was before this step. "
            "Lower learning_rate, set max_grad_norm, or check the data"
        )

    def _checked_backward(self, step: int, what: str, loss: torch.Tensor, scale: float) -> float:
        """Check a loss value (NaN/inf stops before anything is applied), then back-propagate ``scale * loss``
        with the forward pass's freed memory handed back first; return the value."""
        value = float(loss.detach())
        if not math.isfinite(value):
            self._fail(step, what, value)
        self.memory.sample()
        self._release(force=False)
        (loss * scale).backward()
        self.memory.sample()
        return value

    def _backward(
        self, step: int, f_idx: list[int], r_idx: list[int], weight: float, ref_nll: torch.Tensor | None,
        ref_logprobs: dict[int, torch.Tensor] | None,
    ) -> tuple[float, float, int]:
        """One micro-batch: the forget loss backward, then the retain loss backward (each scaled by ``weight``
        = 1 / micro-batches of the step); return the loss values and the tokens read."""
        cfg = self.config
        batch = self.io.batch([self.forget[i] for i in f_idx])
        tokens = batch["n_tokens"]
        nll, n_tok = sequence_nll(*self.io.scored(batch))
        ref = ref_nll[f_idx].to(self.device) if ref_nll is not None else None
        f_loss = self.spec.forget(nll, n_tok, reference_nll=ref, beta=cfg.effective_beta(), delta=cfg.delta)
        del nll, batch
        f_val = self._checked_backward(step, "forget loss", f_loss, cfg.effective_gamma() * weight)
        del f_loss
        r_val = 0.0
        if self.use_retain:
            self._release(force=False)
            batch = self.io.batch([self.retain[j] for j in r_idx])
            tokens += batch["n_tokens"]
            logits, labels = self.io.scored(batch)
            if cfg.retain_loss == "kl":
                r_loss = kl_to_reference(logits, labels, [ref_logprobs[j] for j in r_idx])
            else:
                r_loss = retain_nll(*sequence_nll(logits, labels))
            del logits, labels
            r_val = self._checked_backward(step, "retain loss", r_loss, cfg.retain_weight * weight)
        return f_val, r_val, tokens

    def _train(
        self,
        plan: list[list[tuple[list[int], list[int]]]],
        ref_nll: torch.Tensor | None,
        ref_logprobs: dict[int, torch.Tensor] | None,
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
        refresh = cfg.saliency_refresh_steps if cfg.mode in _SELECTING_MODES else 0
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
                f_val, r_val, n_tokens = self._backward(step, f_idx, r_idx, 1.0 / len(micro), ref_nll, ref_logprobs)
                f_sum += f_val
                r_sum += r_val
                tokens += n_tokens
            f_val, r_val = f_sum / len(micro), r_sum / len(micro)
            if not opt.grads_finite():
                self._fail(step, "gradient", math.nan)
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
        layer_info, scales = self._select(masks, {name: m.sparsity for name, m in masks.items()})
        self.opt.reselect(scales)
        del scales
        self.opt.attach()
        self.model.train()
        self._release()
        return layer_info
