"""One-shot magnitude pruning as an llmcompressor modifier (:class:`OneShotMagnitudePruningModifier`).

llmcompressor 0.14's own ``MagnitudePruningModifier`` only fills mask buffers that its training-time optimizer
events would apply; inside ``oneshot`` no such event fires and the weights stay dense, so magnitude recipes
use this one-shot version. The mask math is :func:`sau_compress.masking.magnitude_mask`.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

with contextlib.redirect_stdout(sys.stderr):  # llmcompressor binds its log sink to stdout when imported
    import llmcompressor  # noqa: F401

from compressed_tensors.offload import update_offload_parameter
from llmcompressor.core import Event, State
from llmcompressor.modifiers import Modifier, ModifierFactory
from loguru import logger
from pydantic import Field, PrivateAttr, field_validator, model_validator

from sau_compress.masking import check_structure_sparsity, magnitude_mask, resolve_targets, sparsity

__all__ = ["OneShotMagnitudePruningModifier"]


class OneShotMagnitudePruningModifier(Modifier):
    """Magnitude pruning that actually prunes inside ``oneshot`` (data-free, one shot).

    llmcompressor 0.14's ``MagnitudePruningModifier`` is a training-time modifier: inside ``oneshot`` it
    only fills mask buffers and the weights stay dense. This one zeroes the smallest-magnitude weights of
    each target layer once, in ``on_calibration_start`` (:func:`magnitude_mask`).

    Sample yaml::

        sparsity_stage:
          sparsity_modifiers:
            OneShotMagnitudePruningModifier:
              sparsity: 0.5
              mask_structure: unstructured
              ignore: ["re:.*lm_head"]

    Lifecycle:

    - on_initialize: nothing (validation happened at load)
    - on_calibration_start: per target layer, :func:`magnitude_mask` then ``weight * mask``
    - on_finalize: nothing

    :param sparsity: fraction of each layer's weights set to zero, in [0, 1)
    :param mask_structure: ``"unstructured"`` (per layer) or ``"N:M"`` (N kept per M along the input dim)
    :param targets: llmcompressor-style entries (class names or ``re:`` patterns); default: every Linear
        inside a decoder block (:func:`sau_compress.masking.resolve_targets`)
    :param ignore: entries to skip; default ``["re:.*lm_head"]``
    """

    requires_calibration_data: bool = False

    sparsity: float = Field(ge=0.0, lt=1.0)
    mask_structure: str = "unstructured"
    targets: list[str] | None = None
    ignore: list[str] | None = None

    _pruned: dict[str, float] = PrivateAttr(default_factory=dict)

    @field_validator("targets", "ignore", mode="before")
    @classmethod
    def _one_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_structure(self) -> OneShotMagnitudePruningModifier:
        check_structure_sparsity(self.mask_structure, self.sparsity)
        return self

    @property
    def pruned(self) -> dict[str, float]:
        """``{layer name: resulting sparsity}`` after the run."""
        return self._pruned

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        """Nothing to prepare: pruning happens at calibration start, after the earlier stages."""
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        """Zero the smallest-magnitude weights of every target layer."""
        layers = resolve_targets(state.model, self.targets, self.ignore)
        with torch.no_grad():
            for name, layer in layers.items():
                weight = layer.weight
                keep = magnitude_mask(weight, self.sparsity, self.mask_structure)
                update_offload_parameter(layer, "weight", weight * keep.to(weight.dtype))
                self._pruned[name] = sparsity(keep)
        logger.info(
            f"magnitude pruning: {len(layers)} layers to sparsity {self.sparsity} ({self.mask_structure})"
        )


ModifierFactory.register("OneShotMagnitudePruningModifier", OneShotMagnitudePruningModifier)
