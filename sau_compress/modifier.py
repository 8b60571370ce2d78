"""SAU as an llmcompressor recipe stage: :class:`SparsityAwareUnlearningModifier`.

llmcompressor 0.14 has no training entrypoint (only ``oneshot``) and runs every modifier's ``on_initialize``
before any pruning happens, so the modifier loads its forget/retain sets in ``on_initialize`` (failing early,
before an expensive pruning stage) and captures the frozen mask, unlearns and verifies the pattern in
``on_calibration_start``, when the earlier stages have pruned. The math lives in :mod:`sau_compress.unlearn`
and :mod:`sau_compress.masking`; this module holds configuration and lifecycle only.

Also here: :class:`OneShotMagnitudePruningModifier`. llmcompressor's own ``MagnitudePruningModifier`` only
fills mask buffers that its (training-time) optimizer events would apply; inside ``oneshot`` no such event
fires and the weights stay dense, so magnitude recipes use this one-shot version instead.

Importing :mod:`sau_compress` registers both classes with llmcompressor's ``ModifierFactory``, so YAML recipes
can name them.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Importing llmcompressor replaces every loguru sink with one on ``sys.stdout`` (and logs a warning at once
# on a machine without an accelerator). Import it with stdout pointing at stderr, so that its logs and ours
# stay on stderr, loguru's default, and stdout stays clean for program output (``--json``).
with contextlib.redirect_stdout(sys.stderr):
    import llmcompressor  # noqa: F401

from compressed_tensors.offload import update_offload_parameter
from compressed_tensors.offload.cache import OffloadCache
from compressed_tensors.offload.module import offload_module, remove_module_offload
from llmcompressor.core import Event, State, active_session
from llmcompressor.modifiers import Modifier, ModifierFactory
from loguru import logger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from torch import nn

from sau_compress.data import load_qa, tokenize_records
from sau_compress.masking import capture_masks, resolve_targets, sparsity, verify_masks
from sau_compress.unlearn import UnlearnConfig, UnlearnResult, unlearn

__all__ = [
    "OneShotMagnitudePruningModifier",
    "QASetSpec",
    "SparsityAwareUnlearningModifier",
    "magnitude_mask",
    "onloaded",
    "parse_mask_structure",
    "quantization_disabled",
]


class QASetSpec(BaseModel):
    """Where a forget or retain set comes from (any source :func:`sau_compress.data.load_qa` reads).

    In YAML either a plain string (the path) or a mapping::

        forget: {path: data/forget10.jsonl, question_key: question, answer_key: answer, limit: 40}
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1, description="JSON/JSONL/parquet file, saved datasets folder, or hub org/name"
    )
    question_key: str = "question"
    answer_key: str = "answer"
    split: str | None = None
    limit: int | None = Field(default=None, ge=1)

    def load(self) -> list[dict[str, Any]]:
        """Read the records (standard ``question``/``answer`` fields added, ``index`` kept)."""
        return load_qa(self.path, self.question_key, self.answer_key, self.split, self.limit)


# Every UnlearnConfig field becomes a recipe field of the modifier with the same type and default, so the
# two cannot drift; the modifier then builds an UnlearnConfig, whose validators (cross-field rules
# included) run at recipe load and name the bad field.
_UNLEARN_FIELDS = dict(UnlearnConfig.model_fields)
_CLASHES = sorted(set(_UNLEARN_FIELDS) & set(Modifier.model_fields))
if _CLASHES:  # pragma: no cover - guards a future UnlearnConfig change
    raise TypeError(f"UnlearnConfig fields {_CLASHES} clash with llmcompressor Modifier fields")
_UnlearnFieldsBase = create_model(  # type: ignore[call-overload]
    "_UnlearnFieldsBase",
    __base__=Modifier,
    **{name: (info.annotation, info) for name, info in _UNLEARN_FIELDS.items()},
)


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
    :raises ValueError: a module is offloaded to disk (too large to train in memory)
    """
    saved = []
    for name, module in model.named_modules():
        params = module._parameters
        if isinstance(params, OffloadCache):
            if params.offload_device == "disk":
                raise ValueError(
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


class SparsityAwareUnlearningModifier(_UnlearnFieldsBase):
    """Sparsity-Aware Unlearning (SAU) of a pruned model, as a stage of an llmcompressor recipe.

    After a pruning stage (SparseGPT, Wanda, magnitude) the modifier captures each target layer's frozen
    mask M, estimates the forget-set saliency F (pruned positions included), picks the top ``topk_ratio``
    survivors G, scales their updates by W (redistributing the saliency mass that pruning removed) and
    unlearns with the chosen method; pruned weights stay exactly zero and the pattern is verified at the end.
    See DESIGN.md ("SAU, precisely") and arXiv 2602.00577.

    Sample yaml::

        sparsity_stage:
          sparsity_modifiers:
            SparseGPTModifier:
              sparsity: 0.5
              mask_structure: "2:4"
              ignore: ["re:.*lm_head"]
        unlearn_stage:
          unlearn_modifiers:
            SparsityAwareUnlearningModifier:
              forget: data/forget.jsonl
              retain: {path: data/retain.jsonl, limit: 400}
              method: grad_diff
              mode: sau
              topk_ratio: 0.3
              alpha: 0.1
              learning_rate: 1.0e-4
              max_steps: 40
              ignore: ["re:.*lm_head"]

    The reverse order (this stage first, then the pruning stage: "unlearn then sparsify") also runs; on
    the still dense layers ρ = 0 and W = 1.

    Lifecycle:

    - on_initialize
        - note the pruning stages before/after this one in the recipe; refuse a quantization stage before it
        - load the forget/retain sets (:meth:`QASetSpec.load`) and tokenize them
          (:func:`sau_compress.data.tokenize_records`)
    - on_calibration_start (the earlier stages have pruned by now)
        - :func:`onloaded`: undo the pipeline's offloading while training
        - :func:`quantization_disabled`: a later quantization stage's fake quantization stays off
        - :func:`sau_compress.masking.capture_masks`: frozen masks M
        - :func:`sau_compress.unlearn.unlearn`: saliency, G, W, the optimizer loop (on the GPU when present;
          the model goes back where it was)
        - :func:`sau_compress.masking.verify_masks`: the pattern is bit-identical, else an error
    - on_finalize
        - nothing to undo; :attr:`result` keeps the run's numbers

    :param forget: the set to unlearn (a path string or a :class:`QASetSpec` mapping); required at run time
    :param retain: the set to keep (methods with a retain term need it)
    :param tokenizer: tokenizer folder or name; default: the model's own folder (``config.name_or_path``)
    :param max_length: token budget per QA item (prompt + answer + EOS)
    :param chat_template: format prompts with the tokenizer's chat template
    :param allow_dense: run on a model whose target layers have no pruned weights even when no pruning
        stage follows in the recipe (otherwise that is an error: SAU is meant for pruned models)
    :param method, mode, topk_ratio, alpha, max_scale, optimizer, learning_rate, ...: every field of
        :class:`sau_compress.unlearn.UnlearnConfig`, same names, types and defaults
    """

    requires_calibration_data: bool = False

    forget: QASetSpec | None = None
    retain: QASetSpec | None = None
    tokenizer: str | None = None
    max_length: int = Field(default=256, ge=2)
    chat_template: bool = False
    allow_dense: bool = False

    _config: UnlearnConfig | None = PrivateAttr(default=None)
    _forget_items: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _retain_items: list[dict[str, Any]] | None = PrivateAttr(default=None)
    _pad_token_id: int = PrivateAttr(default=0)
    _pruning_before: list[str] = PrivateAttr(default_factory=list)
    _pruning_after: list[str] = PrivateAttr(default_factory=list)
    _quantization_before: list[str] = PrivateAttr(default_factory=list)
    _masks: dict[str, torch.Tensor] = PrivateAttr(default_factory=dict)
    _result: UnlearnResult | None = PrivateAttr(default=None)

    @field_validator("forget", "retain", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value}
        return value

    @model_validator(mode="after")
    def _build_config(self) -> SparsityAwareUnlearningModifier:
        try:
            self._config = UnlearnConfig(**{name: getattr(self, name) for name in _UNLEARN_FIELDS})
        except ValidationError as err:
            raise ValueError(
                "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                    for e in err.errors()
                )
            ) from None
        return self

    @property
    def config(self) -> UnlearnConfig:
        """The validated :class:`~sau_compress.unlearn.UnlearnConfig` built from the recipe fields."""
        return self._config  # type: ignore[return-value]  # set by the model validator

    @property
    def result(self) -> UnlearnResult | None:
        """What the unlearning run reported (``None`` before ``on_calibration_start``)."""
        return self._result

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The frozen masks captured before unlearning (``{layer name: bool [out, in]}``, on the CPU)."""
        return self._masks

    # ------------------------------------------------------------------------------------------ lifecycle

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        """Locate this stage among the recipe's pruning stages; load and tokenize the forget/retain sets."""
        if state.model is None:
            raise ValueError("SparsityAwareUnlearningModifier needs a model in the llmcompressor state")
        if self.forget is None:
            raise ValueError(
                "SparsityAwareUnlearningModifier has no forget set: set `forget:` in the recipe "
                "(or pass --forget to sau-compress run)"
            )
        self._locate_pruning_stages()
        if self._quantization_before:
            raise ValueError(
                f"SparsityAwareUnlearningModifier comes after {self._quantization_before} in the recipe; "
                "unlearning would invalidate the calibrated quantization: put the quantization stage after it"
            )
        tokenizer = self._load_tokenizer(state.model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_token_id = int(pad) if pad is not None else 0
        forget_records = self.forget.load()
        self._forget_items = tokenize_records(tokenizer, forget_records, self.max_length, self.chat_template)
        if self.retain is not None:
            retain_records = self.retain.load()
            self._retain_items = tokenize_records(
                tokenizer, retain_records, self.max_length, self.chat_template
            )
        logger.info(
            f"SAU: {len(self._forget_items)} forget items from {self.forget.path}, "
            + (
                f"{len(self._retain_items)} retain items from {self.retain.path}"
                if self.retain
                else "no retain set"
            )
        )
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        """Capture the frozen masks, unlearn, verify the pattern."""
        model = state.model
        with onloaded(model), quantization_disabled(model):
            masks = {name: m.cpu() for name, m in capture_masks(model, self.targets, self.ignore).items()}
            self._check_pruned(masks)
            self._masks = masks
            logger.info(
                f"SAU: {self.config.mode} {self.config.method} on {len(masks)} layers "
                f"(mean sparsity {_mean_sparsity(masks):.3f})"
            )
            config = self.config
            if config.mode == "sau" and all(bool(m.all()) for m in masks.values()):
                # every target layer is dense (unlearn before sparsify): rho = 0, so W = 1 and SAU is
                # exactly its top-k selection G; run it as such (unlearn's mode 'sau' demands a pruned model)
                logger.info(
                    "SAU on dense layers: rho = 0 and W = 1, running SAU's top-k selection (mode topk)"
                )
                config = config.model_copy(update={"mode": "topk"})
            with torch.enable_grad():
                result = unlearn(model, self._forget_items, self._retain_items, config, self._pad_token_id)
            verify_masks(model, masks)
        self._result = result
        rhos = [layer["rho"] for layer in result.layers.values() if layer.get("rho") is not None]
        logger.info(
            f"SAU done ({result.mode}): {result.steps} steps in {result.seconds:.1f}s on {result.device}, "
            f"pattern preserved in {len(masks)} layers"
            + (f", mean rho {sum(rhos) / len(rhos):.4f}" if rhos else "")
            + (" (stopped early)" if result.stopped_early else "")
        )

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        """Release the tokenized sets; :attr:`result` and :attr:`masks` stay."""
        self._forget_items = []
        self._retain_items = None
        return True

    # ------------------------------------------------------------------------------------------- helpers

    def _locate_pruning_stages(self) -> None:
        try:
            modifiers = list(active_session().lifecycle.recipe.modifiers or [])
        except AttributeError:  # initialized outside a session (direct call in a test)
            modifiers = []
        position = next((i for i, m in enumerate(modifiers) if m is self), None)
        if position is None:
            self._pruning_before, self._pruning_after, self._quantization_before = [], [], []
            return
        from llmcompressor.modifiers.quantization import QuantizationMixin

        earlier, later = modifiers[:position], modifiers[position + 1 :]
        self._pruning_before = [type(m).__name__ for m in earlier if _is_pruning(m)]
        self._pruning_after = [type(m).__name__ for m in later if _is_pruning(m)]
        self._quantization_before = [type(m).__name__ for m in earlier if isinstance(m, QuantizationMixin)]

    def _load_tokenizer(self, model: nn.Module) -> Any:
        from transformers import AutoTokenizer

        source = self.tokenizer or getattr(getattr(model, "config", None), "name_or_path", None)
        if not source:
            raise ValueError(
                "SparsityAwareUnlearningModifier cannot find a tokenizer: set `tokenizer:` in the recipe "
                "(the model has no config.name_or_path)"
            )
        try:
            return AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError) as err:
            raise ValueError(
                f"SparsityAwareUnlearningModifier: cannot load tokenizer from '{source}': {err}"
            ) from err

    def _check_pruned(self, masks: dict[str, torch.Tensor]) -> None:
        if any(not bool(m.all()) for m in masks.values()) or self.allow_dense or self._pruning_after:
            if self._pruning_after:
                logger.info(f"SAU runs before {self._pruning_after}: unlearn then sparsify")
            return
        hint = ""
        if "MagnitudePruningModifier" in self._pruning_before:
            hint = (
                " (llmcompressor's MagnitudePruningModifier does not prune inside oneshot; "
                "use OneShotMagnitudePruningModifier)"
            )
        raise ValueError(
            f"SparsityAwareUnlearningModifier: none of the {len(masks)} target layers has pruned weights "
            f"(sparsity 0){hint}. SAU unlearns pruned models: put a pruning stage (SparseGPTModifier, "
            "WandaPruningModifier, OneShotMagnitudePruningModifier) before it, start from a pruned "
            "checkpoint, or set allow_dense: true"
        )


def _mean_sparsity(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return sum(sparsity(m) * m.numel() for m in masks.values()) / total if total else 0.0


def _is_pruning(modifier: Modifier) -> bool:
    from llmcompressor.modifiers.pruning import MagnitudePruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase

    return isinstance(
        modifier, (SparsityModifierBase, MagnitudePruningModifier, OneShotMagnitudePruningModifier)
    )


# ------------------------------------------------------------------------------------ magnitude pruning

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_mask_structure(mask_structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"N:M"`` -> ``(N, M)`` (N kept of every M along the input dim).

    :raises ValueError: anything else, or not ``0 < N < M``
    """
    if mask_structure == "unstructured":
        return None
    match = _NM.match(mask_structure)
    if match is None:
        raise ValueError(
            f"mask_structure must be 'unstructured' or 'N:M' (e.g. '2:4'), got {mask_structure!r}"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"mask_structure '{mask_structure}' needs 0 < N < M")
    return n, m


def magnitude_mask(
    weight: torch.Tensor, sparsity: float, mask_structure: str = "unstructured"
) -> torch.Tensor:
    """Keep-mask of magnitude pruning: ``True`` on the entries that survive.

    Unstructured: the ``round(sparsity * numel)`` entries of smallest ``|w|`` are pruned (ties: the lower
    row-major index is pruned first). ``N:M``: in every group of M consecutive entries along the input
    (last) dim the N largest ``|w|`` survive (ties: the lower index survives); ``sparsity`` must then be
    ``1 - N/M``.

    :param weight: ``[out, in]`` (any float dtype; ranked in fp32)
    :param sparsity: fraction to prune, in [0, 1)
    :param mask_structure: ``"unstructured"`` or ``"N:M"`` with ``in % M == 0``
    :return: bool ``[out, in]``
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    score = weight.detach().abs().float()
    nm = parse_mask_structure(mask_structure)
    if nm is None:
        k = round(sparsity * score.numel())
        keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
        if k:
            order = torch.sort(score.reshape(-1), stable=True).indices
            keep[order[:k]] = False
        return keep.reshape(score.shape)
    n, m = nm
    if not math.isclose(sparsity, 1 - n / m, abs_tol=1e-9):
        raise ValueError(
            f"mask_structure '{mask_structure}' means sparsity {1 - n / m}, got sparsity {sparsity}"
        )
    if score.dim() != 2 or score.shape[1] % m:
        raise ValueError(
            f"mask_structure '{mask_structure}' needs a 2-D weight with in % {m} == 0, "
            f"got shape {tuple(score.shape)}"
        )
    groups = score.reshape(score.shape[0], -1, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(score.shape)


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
        nm = parse_mask_structure(self.mask_structure)
        if nm is not None and not math.isclose(self.sparsity, 1 - nm[0] / nm[1], abs_tol=1e-9):
            raise ValueError(
                f"mask_structure '{self.mask_structure}' means sparsity {1 - nm[0] / nm[1]}, "
                f"got sparsity {self.sparsity}"
            )
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


ModifierFactory.register("SparsityAwareUnlearningModifier", SparsityAwareUnlearningModifier)
ModifierFactory.register("OneShotMagnitudePruningModifier", OneShotMagnitudePruningModifier)
