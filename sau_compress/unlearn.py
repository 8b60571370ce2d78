"""The unlearning loop: SAU and its baselines on the target layers of a (pruned) causal LM.

Modes (DESIGN.md, "SAU, precisely"):

- ``sau``: saliency F over the forget set, G = top ``topk_ratio`` of survivors, update scaled by G ⊙ W.
- ``topk``: as ``sau`` with W = 1 (the selection alone).
- ``masked``: G = all survivors, W = 1 (gradient masking; full-size optimizer state).
- ``dense``: the base method as a standard trainer runs it (``torch.optim.AdamW``/``SGD`` on every entry
  of the target layers), then the frozen mask is re-applied after each step.

One step = one forget batch (+ one retain batch for methods with a retain term): forwards, loss values
checked (NaN/inf stops before anything is applied), one backward of ``gamma * forget + retain_weight *
retain``, gradients checked, optional clipping, optimizer step. The frozen pattern is verified
bit-identical at the end. See ``docs/sau.md``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from loguru import logger
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn
from tqdm.auto import tqdm

from sau_compress.data import collate, pair_forget_retain, sequential_batches
from sau_compress.errors import NonFiniteLossError
from sau_compress.losses import (
    LOSSES,
    RETAIN_LOSSES,
    answer_logprobs,
    get_loss,
    kl_to_reference,
    retain_nll,
    sequence_nll,
)
from sau_compress.masking import (
    build_selection,
    capture_masks,
    is_2of4,
    resolve_targets,
    sparsity,
    verify_masks,
)
from sau_compress.optim import OPTIMIZERS, ParamScale, ScaledOptimizer, make_optimizer
from sau_compress.saliency import compute_fisher

__all__ = ["MODES", "NonFiniteLossError", "UnlearnConfig", "UnlearnResult", "unlearn"]

MODES = ("sau", "dense", "masked", "topk")


def _one_of(field: str, value: str, choices: Sequence[str]) -> str:
    """Normalise ``value`` (strip, lower case) and check it is one of ``choices``, naming ``field``."""
    value = value.strip().lower()
    if value not in choices:
        raise ValueError(f"unknown {field} '{value}'; choose from {list(choices)}")
    return value


class UnlearnConfig(BaseModel):
    """Everything :func:`unlearn` needs besides the model and data. Unknown fields are an error.

    :param method: base unlearning method, a name in :data:`sau_compress.losses.LOSSES`
    :param mode: ``sau`` | ``dense`` | ``masked`` | ``topk``
    :param topk_ratio: fraction of each layer's surviving entries in G, in (0, 1]
    :param alpha: redistribution strength α (W's mean over G is 1 + α·ρ before clipping)
    :param max_scale: clip of W
    :param optimizer: ``adamw`` | ``sgd``
    :param max_steps: exact number of steps (overrides ``epochs``)
    :param epochs: passes over the forget set
    :param batch_size: forget (and retain) items per step
    :param gamma: weight of the forget term
    :param retain_weight: weight of the retain term (open-unlearning's ``alpha``)
    :param retain_loss: ``nll`` | ``kl`` (KL to the starting model on the retain answers)
    :param beta: NPO/SimNPO β (``None``: the method's default, 0.1 / 4.5)
    :param delta: SimNPO δ
    :param saliency_batches: forget batches for the saliency pass (``None``: the whole forget set once)
    :param targets: see :func:`sau_compress.masking.resolve_targets` (``None``: decoder-block Linear layers)
    :param ignore: see :func:`sau_compress.masking.resolve_targets` (``None``: ``["re:.*lm_head"]``)
    :param seed: seed of the data order (and of dropout, if the model has any)
    :param device: ``cpu``, ``cuda``, ``cuda:N`` (``None``: CUDA when available)
    :param max_grad_norm: clip the norm of the used gradient entries (``None``: no clipping)
    :param adam_betas: AdamW (β1, β2)
    :param adam_eps: AdamW epsilon
    :param momentum: SGD momentum
    :param autocast: bf16 autocast for forward/backward on CUDA (master weights, saliency and optimizer
        math stay fp32)
    :param progress: show tqdm progress bars
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: str = "grad_diff"
    mode: str = "sau"
    topk_ratio: float = 0.3
    alpha: float = 0.1
    max_scale: float = 10.0
    optimizer: str = "adamw"
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 4
    gamma: float = 1.0
    retain_weight: float = 1.0
    retain_loss: str = "nll"
    beta: float | None = None
    delta: float = 0.0
    saliency_batches: int | None = None
    targets: list[str] | None = None
    ignore: list[str] | None = None
    seed: int = 0
    device: str | None = None
    max_grad_norm: float | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    momentum: float = 0.9
    autocast: bool = True
    progress: bool = True

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        v = v.strip().lower()
        get_loss(v)
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        return _one_of("mode", v, MODES)

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        return _one_of("optimizer", v, OPTIMIZERS)

    @field_validator("retain_loss")
    @classmethod
    def _retain_loss(cls, v: str) -> str:
        return _one_of("retain_loss", v, RETAIN_LOSSES)

    @field_validator("topk_ratio")
    @classmethod
    def _topk_ratio(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"topk_ratio must be in (0, 1], got {v}")
        return v

    @field_validator("alpha", "weight_decay", "gamma", "retain_weight", "momentum")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if not v >= 0.0 or math.isinf(v):
            raise ValueError(f"must be a finite number >= 0, got {v}")
        return v

    @field_validator("max_scale")
    @classmethod
    def _max_scale(cls, v: float) -> float:
        if not v >= 1.0:
            raise ValueError(f"max_scale must be >= 1, got {v}")
        return v

    @field_validator("learning_rate", "adam_eps")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0.0 or math.isinf(v):
            raise ValueError(f"must be a finite number > 0, got {v}")
        return v

    @field_validator("beta", "max_grad_norm")
    @classmethod
    def _positive_or_none(cls, v: float | None) -> float | None:
        if v is not None and (not v > 0.0 or math.isinf(v)):
            raise ValueError(f"must be a finite number > 0 or None, got {v}")
        return v

    @field_validator("epochs", "batch_size")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("max_steps", "saliency_batches")
    @classmethod
    def _at_least_one_or_none(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be at least 1 or None, got {v}")
        return v

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"adam_betas must both be in [0, 1), got {v}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            dev = torch.device(v)
        except RuntimeError as err:
            raise ValueError(f"device '{v}' is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from err
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device '{v}' is not supported; use 'cpu', 'cuda' or 'cuda:N'")
        return str(dev)

    def effective_beta(self) -> float | None:
        """β used by the method: ``beta`` or the method's default."""
        return self.beta if self.beta is not None else LOSSES[self.method].default_beta


@dataclass
class UnlearnResult:
    """What a run did and cost.

    ``peak_memory_bytes`` is ``torch.cuda.max_memory_allocated`` over the run on CUDA (model, activations,
    gradients, optimizer state: everything) and, on CPU, the peak of the training state this loop holds
    (saliency buffers, gradients, optimizer state, masks, reference values; not the model and not
    activations): see ``memory_measure``.
    """

    steps: int
    losses: list[float]
    forget_losses: list[float]
    retain_losses: list[float]
    seconds: float
    saliency_seconds: float
    peak_memory_bytes: int
    device: str
    layers: dict[str, dict[str, Any]]
    pattern_preserved: bool
    stopped_early: bool
    mode: str = "sau"
    method: str = "grad_diff"
    memory_measure: str = "cpu_training_state"
    reference_seconds: float = 0.0
    train_seconds: float = 0.0
    tokens: int = 0
    tokens_per_second: float = 0.0
    optimizer_state_bytes: int = 0
    pattern_2of4: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: G per layer as ascending flat indices (``sau``/``topk`` only; CPU int64); not part of :meth:`to_dict`
    selected: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (plain floats, ints, strings, lists, dicts); ``selected`` is left out."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "selected"}


# ------------------------------------------------------------------------------------------------ helpers


def _pick_device(requested: str | None) -> torch.device:
    if requested is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{requested}' requested but CUDA is not available; use 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _check_items(items: Sequence[dict[str, Any]], what: str) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TypeError(f"{what} item {i} must be a dict from tokenize_records, got {type(item).__name__}")
        for key in ("input_ids", "labels"):
            if key not in item:
                raise KeyError(f"{what} item {i} has no '{key}' (fields: {sorted(item)}); use tokenize_records")
        if len(item["input_ids"]) != len(item["labels"]):
            raise ValueError(f"{what} item {i}: input_ids and labels differ in length")
        if all(label == -100 for label in item["labels"][1:]):
            raise ValueError(f"{what} item {i} has no answer token to score")


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


class _Batcher:
    """Collate items to device tensors and run the model (autocast on CUDA)."""

    def __init__(self, model: nn.Module, device: torch.device, pad_token_id: int, autocast: bool) -> None:
        self.model = model
        self.device = device
        self.pad = pad_token_id
        self.autocast = autocast and device.type == "cuda"

    def batch(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Collated tensors on the device, plus ``n_tokens`` (non-padding tokens, counted on the CPU)."""
        b = collate(items, self.pad)
        out = {k: b[k].to(self.device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")}
        out["n_tokens"] = int(b["attention_mask"].sum())
        return out

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with ctx:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return out.logits


# ------------------------------------------------------------------------------------------------ the loop


def unlearn(
    model: nn.Module,
    forget: Sequence[dict[str, Any]],
    retain: Sequence[dict[str, Any]] | None,
    config: UnlearnConfig,
    pad_token_id: int = 0,
    callback: Callable[[int, nn.Module], bool] | None = None,
) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` in place, keeping its sparsity pattern bit-identical.

    :param model: a causal LM (``model(input_ids, attention_mask).logits``), pruned for ``sau``
    :param forget: tokenized items (:func:`sau_compress.data.tokenize_records`: ``input_ids``, ``labels``)
    :param retain: tokenized retain items (needed by methods with a retain term unless ``retain_weight`` is 0)
    :param config: the run's settings
    :param pad_token_id: padding id for batches
    :param callback: ``callback(step, model)`` after every step (1-based); returning ``True`` stops early
    :return: an :class:`UnlearnResult`; the model ends on the device (and dtype) it started on
    :raises ValueError: empty forget set, missing retain set, a dense model in ``sau`` mode, bad items
    :raises NonFiniteLossError: a NaN/inf loss or gradient (the model is as before that step)
    :raises sau_compress.masking.MaskViolationError: the sparsity pattern changed (a bug)
    """
    if not isinstance(config, UnlearnConfig):
        raise TypeError(f"config must be an UnlearnConfig, got {type(config).__name__}")
    t_start = time.perf_counter()
    forget = list(forget)
    if not forget:
        raise ValueError("the forget set is empty; nothing to unlearn")
    _check_items(forget, "forget")
    spec = get_loss(config.method)
    retain = list(retain or [])
    use_retain = spec.uses_retain and config.retain_weight > 0
    if use_retain and not retain:
        raise ValueError(f"method '{config.method}' needs a retain set (or set retain_weight=0)")
    if not use_retain and retain:
        logger.info(f"method '{config.method}' with retain_weight={config.retain_weight} ignores the retain set")
        retain = []
    _check_items(retain, "retain")

    layers = resolve_targets(model, config.targets, config.ignore)
    for name, layer in layers.items():
        if not layer.weight.is_floating_point():
            raise TypeError(f"target layer '{name}' has a {layer.weight.dtype} weight; only float weights train")
    device = _pick_device(config.device)
    start_param = next(model.parameters())
    start_device = start_param.device
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
        f"({result.memory_measure}), pattern preserved"
    )
    return result


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
        self.layers = layers
        self.params = {name: layer.weight for name, layer in layers.items()}
        self.forget = forget
        self.retain = retain
        self.config = config
        self.device = device
        self.use_retain = use_retain
        self.callback = callback
        self.spec = get_loss(config.method)
        self.io = _Batcher(model, device, pad_token_id, config.autocast)
        self.scaled: ScaledOptimizer | None = None
        self.torch_opt: torch.optim.Optimizer | None = None
        self.peak_state = 0
        self.fixed_bytes = 0  # masks + reference values
        self.selected: dict[str, torch.Tensor] = {}

    def close(self) -> None:
        if self.scaled is not None:
            self.scaled.detach()
            self.scaled.zero_grad()

    # ---- memory accounting (CPU measure)

    def _note(self, extra: int = 0) -> None:
        held = self.fixed_bytes + extra
        if self.scaled is not None:
            held += self.scaled.state_bytes() + self.scaled.grad_bytes()
            if any(s.compact for s in self.scaled.slots):
                # one full gradient exists at a time before the hook gathers it
                held += max(_nbytes(p) for p in self.params.values())
        if self.torch_opt is not None:
            held += sum(_nbytes(t) for st in self.torch_opt.state.values() for t in st.values() if torch.is_tensor(t))
            held += sum(_nbytes(p.grad) for p in self.params.values())
        self.peak_state = max(self.peak_state, held)

    # ---- phases

    def run(self) -> UnlearnResult:
        cfg = self.config
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        masks = capture_masks(self.model, cfg.targets, cfg.ignore)
        self.fixed_bytes = sum(_nbytes(m) for m in masks.values())
        sparsities = {name: sparsity(m) for name, m in masks.items()}
        if cfg.mode == "sau" and all(s == 0.0 for s in sparsities.values()):
            listed = ", ".join(f"{n} (sparsity {s:.3f})" for n, s in list(sparsities.items())[:8])
            more = f" and {len(sparsities) - 8} more" if len(sparsities) > 8 else ""
            raise ValueError(
                f"mode 'sau' needs a pruned model, but no target layer has a pruned (zero) entry: {listed}{more}. "
                "Prune first (a sparsity stage) or use mode 'dense'"
            )
        pattern_2of4 = all(m.dim() == 2 and m.shape[1] % 4 == 0 and is_2of4(m) for m in masks.values())
        mean_sparsity = sum(sparsities.values()) / len(sparsities)
        logger.info(f"frozen masks captured: mean sparsity {mean_sparsity:.3f}, 2:4 pattern: {pattern_2of4}")

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

        self._make_optimizer(scales)
        self.model.train()
        t_train = time.perf_counter()
        out = self._train(plan, masks, ref_nll, ref_logprobs)
        train_seconds = time.perf_counter() - t_train

        verify_masks(self.model, masks)
        state_bytes = self.scaled.state_bytes() if self.scaled is not None else sum(
            _nbytes(t) for st in self.torch_opt.state.values() for t in st.values() if torch.is_tensor(t)
        )
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
            optimizer_state_bytes=state_bytes,
            pattern_2of4=pattern_2of4,
            extra={"planned_steps": len(plan), "beta": cfg.effective_beta(), "mean_sparsity": mean_sparsity},
            selected=self.selected,
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
        self.fixed_bytes += _nbytes(out)
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
        size = sum(_nbytes(t) for t in out.values())
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
        self._note(extra=sum(_nbytes(f) for f in fisher.values()) + max(_nbytes(p) for p in self.params.values()))
        for name in list(fisher):
            f = fisher.pop(name)
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

    def _make_optimizer(self, scales: dict[str, ParamScale]) -> None:
        cfg = self.config
        if cfg.mode == "dense":
            params = list(self.params.values())
            if cfg.optimizer == "adamw":
                self.torch_opt = torch.optim.AdamW(
                    params, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps,
                    weight_decay=cfg.weight_decay,
                )
            else:
                self.torch_opt = torch.optim.SGD(
                    params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
                )
            return
        self.scaled = make_optimizer(
            cfg.optimizer, self.params, scales, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
            betas=cfg.adam_betas, eps=cfg.adam_eps, momentum=cfg.momentum,
        )
        self.scaled.attach()

    def _zero_grad(self) -> None:
        if self.scaled is not None:
            self.scaled.zero_grad()
        for p in self.params.values():
            p.grad = None

    def _grads_finite(self) -> bool:
        if self.scaled is not None:
            return self.scaled.grads_finite()
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True

    def _fail(self, step: int, what: str, value: float) -> None:
        self._zero_grad()
        raise NonFiniteLossError(
            f"step {step}: the {what} is {value}; stopped, and the model is as it was before this step. "
            "Lower learning_rate, set max_grad_norm, or check the data"
        )

    def _train(
        self,
        plan: list[tuple[list[int], list[int]]],
        masks: dict[str, torch.Tensor],
        ref_nll: torch.Tensor | None,
        ref_logprobs: dict[int, torch.Tensor] | None,
    ) -> dict[str, Any]:
        cfg = self.config
        beta = cfg.effective_beta()
        losses: list[float] = []
        forget_losses: list[float] = []
        retain_losses: list[float] = []
        tokens = 0
        stopped_early = False
        pruned = {name: ~m for name, m in masks.items()} if cfg.mode == "dense" else {}
        self.fixed_bytes += sum(_nbytes(m) for m in pruned.values())
        bar = tqdm(total=len(plan), desc=f"unlearning ({cfg.mode}, {cfg.method})", unit="step",
                   disable=not cfg.progress, leave=False)
        for step, (f_idx, r_idx) in enumerate(plan, start=1):
            batch = self.io.batch([self.forget[i] for i in f_idx])
            tokens += batch["n_tokens"]
            nll, n_tok = sequence_nll(self.io.logits(batch), batch["labels"])
            ref = ref_nll[f_idx].to(self.device) if ref_nll is not None else None
            f_loss = self.spec.forget(nll, n_tok, reference_nll=ref, beta=beta, delta=cfg.delta)
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
                del logits
            values = torch.stack(parts).tolist()  # one synchronisation for the loss values
            f_val = values[0]
            r_val = values[1] if self.use_retain else 0.0
            if not math.isfinite(f_val):
                self._fail(step, "forget loss", f_val)
            if not math.isfinite(r_val):
                self._fail(step, "retain loss", r_val)
            # one backward of gamma * forget + retain_weight * retain, as open-unlearning's trainers
            loss.backward()
            del loss, f_loss, nll, n_tok
            if not self._grads_finite():
                self._fail(step, "gradient", math.nan)
            if cfg.max_grad_norm is not None:
                if self.scaled is not None:
                    self.scaled.clip_grad_norm_(cfg.max_grad_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
            if self.scaled is not None:
                self.scaled.step()
                if step == 1:
                    self._note()  # gradients and state both held; their sizes are the same at every step
                self.scaled.zero_grad()
            else:
                self.torch_opt.step()  # torch creates its state lazily, in the first step
                if step == 1:
                    self._note()
                self.torch_opt.zero_grad(set_to_none=True)
                with torch.no_grad():  # re-apply the frozen mask: pruned entries back to exactly +0.0
                    for name, p in self.params.items():
                        p.masked_fill_(pruned[name], 0.0)
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
