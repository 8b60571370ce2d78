"""Glue between a training loop and llmcompressor's pipelines: undo compressed-tensors offloading while
training, and keep a later stage's fake quantization off meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from compressed_tensors.offload.cache import OffloadCache
from compressed_tensors.offload.module import offload_module, remove_module_offload
from loguru import logger
from torch import nn

from sau_compress.errors import UserError

__all__ = ["onloaded", "quantization_disabled"]


@contextmanager
def onloaded(model: nn.Module) -> Iterator[None]:
    """Undo compressed-tensors offloading for a training loop, and put it back afterwards.

    llmcompressor's pipelines wrap every module's parameters in an ``OffloadCache`` (``set_onload_device``):
    each access returns a fresh copy on the onload device (a GPU when present), so gradients and optimizer
    steps would land on throw-away copies, and ``model.to(...)`` would not move anything. Inside this
    context every module holds its real parameters again, on its offload device (the CPU, typically); the
    training loop may move the model wherever it likes as long as it moves it back, as
    :func:`sau_compress.unlearn.unlearn` does. On exit each module gets its original offloading back, so the
    next stage finds the model as the pipeline left it.

    :param model: the model, offloaded or not
    :raises UserError: a module is offloaded to disk (too large to train in memory)
    """
    saved = []
    for name, module in model.named_modules():
        params = module._parameters
        if isinstance(params, OffloadCache):
            if params.offload_device == "disk":
                raise UserError(
                    f"module '{name}' is offloaded to disk; SparsityAwareUnlearningModifier trains the whole "
                    "model in memory: load the model without disk offloading"
                )
            saved.append((module, params.onload_device, params.offload_device))
    for module, _, _ in saved:
        remove_module_offload(module, onload_tensors=False)
    if saved:
        logger.debug(f"removed offloading from {len(saved)} modules for training")
    try:
        yield
    finally:
        for module, onload_device, offload_device in saved:
            offload_module(module, onload_device, offload_device)


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[None]:
    """Turn compressed-tensors fake quantization off for the duration, then restore each module's flag.

    A later ``QuantizationModifier`` attaches its schemes to the modules at recipe initialization, and the
    sequential pipeline of an earlier pruning stage switches them on when it ends; with scales that are not
    calibrated yet, a forward pass would quantize with garbage (NaN losses). Unlearning trains the full
    precision weights; the quantization stage calibrates on the result.
    """
    saved = {m: m.quantization_enabled for m in model.modules() if hasattr(m, "quantization_enabled")}
    for module in saved:
        module.quantization_enabled = False
    try:
        yield
    finally:
        for module, flag in saved.items():
            module.quantization_enabled = flag
