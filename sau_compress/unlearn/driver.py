"""The unlearning loop's entry point: SAU and its baselines on the target layers of a (pruned) causal LM.

Modes (``docs/design.md``; what they differ in: :mod:`~sau_compress.unlearn.modes`):

- ``sau``: saliency F over the forget set, G = top ``topk_ratio`` of survivors, update scaled by G ⊙ W.
- ``topk``: as ``sau`` with W = 1 (the selection alone).
- ``masked``: G = all survivors, W = 1 (gradient masking; full-size optimizer state).
- ``dense``: the base method as a standard trainer runs it (``torch.optim.AdamW``/``SGD`` on every entry
  of the target layers), then the frozen mask is re-applied after each step.

:func:`unlearn` owns every step of a run: it checks the data and settings, picks the device and prepares the
model (and puts it back as it was, also after an error); its :class:`~sau_compress.unlearn.runner.Runner`
captures the frozen masks once, refuses an unpruned model unless told otherwise, builds G and W, trains, and
verifies once at the end that the pattern is bit-identical. The optimizer of every mode has one interface
(:mod:`sau_compress.optim`), so the training loop does not branch on the mode. A step's losses:
:mod:`~sau_compress.unlearn.steps`.

Memory: the frozen masks are held as bits (:class:`~sau_compress.masking.PackedMask`), the saliency as F on the
surviving entries only (:class:`~sau_compress.saliency.CompactFisher`), selection indices as int32, and the
step runs one layer at a time. The peak is measured (:class:`~sau_compress.memory.PeakMemory`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from torch import nn

from sau_compress.errors import UserError
from sau_compress.losses import get_loss
from sau_compress.masking import resolve_targets
from sau_compress.memory import PeakMemory, limit_heap_retention, model_bytes
from sau_compress.unlearn.batching import check_items
from sau_compress.unlearn.config import UnlearnConfig, UnlearnResult
from sau_compress.unlearn.modes import SELECTING_MODES
from sau_compress.unlearn.runner import Runner

if TYPE_CHECKING:
    from sau_compress.unlearn.shard import ShardContext

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
    contrastive = config.saliency == "contrastive" and config.mode in SELECTING_MODES
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
            runner = Runner(model, layers, forget, retain, config, device, pad_token_id, use_retain, callback,
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
