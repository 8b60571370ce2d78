"""SAU as an llmcompressor recipe stage: :class:`SparsityAwareUnlearningModifier`.

llmcompressor 0.14 has no training entry point (only ``oneshot``) and runs every modifier's ``on_initialize``
before any pruning happens. The modifier is lifecycle glue: it builds the :class:`UnlearnConfig` from its
recipe fields, gets its data once (handed down by the caller through :meth:`assign`, or loaded from its
``forget``/``retain`` fields at ``on_initialize``, failing before an expensive pruning stage), and at
``on_calibration_start`` (after the earlier stages pruned) calls :func:`sau_compress.unlearn.unlearn`, which
owns the masks, the selection and the pattern check. The result goes to the job's ``results``.

Importing :mod:`sau_compress` registers this class (and
:class:`~sau_compress.magnitude.OneShotMagnitudePruningModifier`) with llmcompressor's ``ModifierFactory`` the
moment llmcompressor is imported, so YAML recipes can name them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import types
from typing import Annotated, Any

import torch

# Importing llmcompressor replaces every loguru sink with one on ``sys.stdout`` (and logs a warning at once
# on a machine without an accelerator). Import it with stdout pointing at stderr, so that its logs and ours
# stay on stderr, loguru's default, and stdout stays clean for program output (``--json``).
with contextlib.redirect_stdout(sys.stderr):
    import llmcompressor  # noqa: F401

from llmcompressor.core import Event, State, active_session
from llmcompressor.modifiers import Modifier, ModifierFactory
from loguru import logger
from pydantic import BeforeValidator, Field, PrivateAttr, create_model, field_validator, model_validator
from torch import nn

from sau_compress.data import PromptFormat, QASetSpec
from sau_compress.errors import UserError
from sau_compress.export.metadata import (
    CONFIG_RECORD_KEY,
    forget_set_hash,
    unlearning_record,
    write_config_record,
)
from sau_compress.offload import onloaded, quantization_disabled
from sau_compress.unlearn import UnlearnConfig, UnlearnJob, UnlearnResult, unlearn

__all__ = ["SparsityAwareUnlearningModifier"]


# Every UnlearnConfig field becomes a recipe field of the modifier with the same type and default, so the
# two cannot drift; the modifier then builds an UnlearnConfig, whose validators run at recipe load and name
# the bad field (constraints and case-insensitive choices travel with each field's annotation).
_UNLEARN_FIELDS = dict(UnlearnConfig.model_fields)
_CLASHES = sorted(set(_UNLEARN_FIELDS) & set(Modifier.model_fields))
if _CLASHES:  # pragma: no cover - guards a future UnlearnConfig change
    raise TypeError(f"UnlearnConfig fields {_CLASHES} clash with llmcompressor Modifier fields")
_UnlearnFieldsBase = create_model(  # type: ignore[call-overload]
    "_UnlearnFieldsBase",
    __base__=Modifier,
    **{name: (info.annotation, info) for name, info in _UNLEARN_FIELDS.items()},
)


def _lower(value: Any) -> Any:
    """Choice fields read case-insensitively (as UnlearnConfig's)."""
    return value.strip().lower() if isinstance(value, str) else value


class SparsityAwareUnlearningModifier(_UnlearnFieldsBase):
    """Sparsity-Aware Unlearning (SAU) of a pruned model, as a stage of an llmcompressor recipe.

    After a pruning stage (SparseGPT, Wanda, magnitude) the stage unlearns the forget set with the chosen
    method and mode: saliency F of the forget loss (pruned positions included), the top ``topk_ratio``
    survivors G, their updates scaled by W (the saliency mass pruning removed, redistributed); pruned weights
    stay exactly zero and the pattern is verified at the end. See ``docs/design.md`` and arXiv 2602.00577.

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
              mode: masked  # the default (docs/results.md); sau is the paper's SAU
              topk_ratio: 0.3
              alpha: 0.1
              learning_rate: 1.0e-4
              max_steps: 40
              ignore: ["re:.*lm_head"]

    The reverse order (this stage first, then the pruning stage: "unlearn then sparsify") also runs; on
    the still dense layers ρ = 0 and W = 1, so ``sau`` is its top-k selection there.

    Lifecycle:

    - on_initialize
        - note the pruning stages after this one; refuse a quantization stage before it, and mode
          ``unmasked`` with no pruning stage after it
        - unless a caller assigned a job (:meth:`assign`): load the forget/retain sets
          (:meth:`~sau_compress.data.QASetSpec.load`) and tokenize them (:meth:`UnlearnJob.from_records`)
    - on_calibration_start (the earlier stages have pruned by now)
        - :func:`~sau_compress.offload.onloaded`: undo the pipeline's offloading while training
        - :func:`~sau_compress.offload.quantization_disabled`: a later stage's fake quantization stays off
        - :func:`sau_compress.unlearn.unlearn`: masks M, saliency, G, W, the optimizer loop, the pattern check
          (on the GPU when present; the model goes back where it was); its result joins the job's ``results``
    - on_finalize
        - a job the stage loaded itself drops its tokenized sets; :attr:`result` stays

    :param forget: the set to unlearn (a path string or a :class:`~sau_compress.data.QASetSpec` mapping);
        required unless a caller assigns a job
    :param retain: the set to keep (methods with a retain term need it)
    :param tokenizer: tokenizer folder or name; default: the model's own folder (``config.name_or_path``)
    :param max_length: token budget per QA item (prompt + answer + EOS)
    :param prompt_format: ``auto`` (default: the tokenizer's chat template when it has one, else ``plain``),
        ``plain`` (``Question: ...\nAnswer:``) or ``chat`` (the chat template; an error without one); see
        :func:`sau_compress.data.resolve_prompt_format`. The old ``chat_template: true/false`` still reads as
        ``chat``/``plain``, with a deprecation warning
    :param method, mode, topk_ratio, alpha, max_scale, optimizer, learning_rate, allow_dense, ...: every field
        of :class:`sau_compress.unlearn.UnlearnConfig`, same names, types and defaults. ``allow_dense`` is
        implied when a pruning stage follows this one
    """

    requires_calibration_data: bool = False

    forget: QASetSpec | None = None
    retain: QASetSpec | None = None
    tokenizer: str | None = None
    max_length: int = Field(default=256, ge=2)
    prompt_format: Annotated[PromptFormat, BeforeValidator(_lower)] = "auto"

    _config: UnlearnConfig | None = PrivateAttr(default=None)
    _job: UnlearnJob | None = PrivateAttr(default=None)
    _owns_job: bool = PrivateAttr(default=False)
    _pruning_after: list[str] = PrivateAttr(default_factory=list)
    _forget_hash: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _chat_template_alias(cls, data: Any) -> Any:
        """The deprecated ``chat_template: true/false`` becomes ``prompt_format: chat/plain``."""
        if not isinstance(data, dict) or "chat_template" not in data:
            return data
        data = dict(data)
        value = data.pop("chat_template")
        if not isinstance(value, bool):
            raise ValueError(f"chat_template is deprecated: use prompt_format: auto | plain | chat (got {value!r})")
        mapped = "chat" if value else "plain"
        given = data.get("prompt_format")
        if given is not None and _lower(given) != mapped:
            raise ValueError(
                f"chat_template: {str(value).lower()} contradicts prompt_format: {given}; "
                "drop chat_template (deprecated) and keep prompt_format"
            )
        logger.warning(
            f"SparsityAwareUnlearningModifier: chat_template: {str(value).lower()} is deprecated; "
            f"it reads as prompt_format: {mapped} (write that instead)"
        )
        data["prompt_format"] = mapped
        return data

    @field_validator("forget", "retain", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value}
        return value

    @model_validator(mode="after")
    def _build_config(self) -> SparsityAwareUnlearningModifier:
        # the fields carry UnlearnConfig's own constraints, so they are valid here already
        self._config = UnlearnConfig(**{name: getattr(self, name) for name in _UNLEARN_FIELDS})
        return self

    @property
    def config(self) -> UnlearnConfig:
        """The validated :class:`~sau_compress.unlearn.UnlearnConfig` built from the recipe fields."""
        return self._config  # type: ignore[return-value]  # set by the model validator

    @property
    def result(self) -> UnlearnResult | None:
        """What the last unlearning run reported (``None`` before ``on_calibration_start``)."""
        return self._job.results[-1] if self._job is not None and self._job.results else None

    def assign(self, job: UnlearnJob, forget: list[Any] | None = None) -> None:
        """Hand the stage its data, loaded and tokenized once by the caller; the stage then reads no file and
        appends its result to ``job.results``.

        :param forget: the forget set's QA records, hashed into the record the stage leaves on the model
            (default: the tokenized items are hashed)
        """
        self._job = job
        self._owns_job = False
        self._forget_hash = forget_set_hash(forget) if forget is not None else None

    # ------------------------------------------------------------------------------------------ lifecycle

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        """Locate this stage among the recipe's stages; load the data unless a job was assigned."""
        if state.model is None:
            raise ValueError("SparsityAwareUnlearningModifier needs a model in the llmcompressor state")
        self._locate_stages()
        if self._job is None:
            if self.forget is None:
                raise UserError(
                    "SparsityAwareUnlearningModifier has no forget set: set `forget:` in the recipe "
                    "(or pass --forget to sau-compress run)"
                )
            records = self.forget.load()
            self._job = UnlearnJob.from_records(
                self._load_tokenizer(state.model),
                records,
                self.retain.load() if self.retain is not None else None,
                self.max_length,
                self.prompt_format,
            )
            self._owns_job = True
            self._forget_hash = forget_set_hash(records)
        job = self._job
        logger.info(
            f"SAU: {len(job.forget)} forget items, "
            + (f"{len(job.retain)} retain items" if job.retain is not None else "no retain set")
        )
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        """Unlearn (masks, selection, training and the pattern check all happen in ``unlearn``)."""
        config = self.config
        if self._pruning_after:
            logger.info(f"SAU runs before {self._pruning_after}: unlearn then sparsify")
            config = config.model_copy(update={"allow_dense": True})
        model, job = state.model, self._job
        with onloaded(model), quantization_disabled(model):
            if job.on_start is not None:
                job.on_start(model)
            with torch.enable_grad():
                result = unlearn(model, job.forget, job.retain, config, job.pad_token_id, job.callback)
        job.results.append(result)
        self._leave_record(model, config, result)
        rhos = [layer["rho"] for layer in result.layers.values() if layer.get("rho") is not None]
        logger.info(
            f"SAU done ({result.mode}, {result.method}): {result.steps} steps in {result.seconds:.1f}s on "
            f"{result.device}" + (f", mean rho {sum(rhos) / len(rhos):.4f}" if rhos else "")
            + (" (stopped early)" if result.stopped_early else "")
        )

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        """Release the tokenized sets of a job the stage loaded itself; :attr:`result` stays."""
        if self._owns_job and self._job is not None:
            self._job.forget, self._job.retain = [], None
        return True

    # ------------------------------------------------------------------------------------------- helpers

    def _leave_record(self, model: nn.Module, config: UnlearnConfig, result: UnlearnResult) -> None:
        """Put the unlearning record on ``model.config`` (key :data:`CONFIG_RECORD_KEY`): whoever saves the
        model, llmcompressor's ``oneshot(output_dir=...)`` or ``save_pretrained`` included, writes it into
        ``config.json``, and ``sau-compress export`` moves it into the sidecar. A later stage replaces it."""
        hf_config = getattr(model, "config", None)
        if hf_config is None:
            return
        job = self._job
        record = unlearning_record(config, job.forget, result=result, prompt_format=job.prompt_format)
        if self._forget_hash is not None:
            record["forget_set_hash"] = self._forget_hash
        setattr(hf_config, CONFIG_RECORD_KEY, {"unlearning": record})
        _record_on_save(model)

    def _locate_stages(self) -> None:
        """Note the pruning stages after this one; refuse a quantization stage before it."""
        try:
            modifiers = list(active_session().lifecycle.recipe.modifiers or [])
        except AttributeError:  # initialized outside a session (direct call in a test)
            modifiers = []
        position = next((i for i, m in enumerate(modifiers) if m is self), None)
        if position is None:
            self._pruning_after = []
            return
        from llmcompressor.modifiers.quantization import QuantizationMixin

        earlier, later = modifiers[:position], modifiers[position + 1 :]
        self._pruning_after = [type(m).__name__ for m in later if is_pruning(m)]
        if self.mode == "unmasked" and not self._pruning_after:
            raise UserError(
                "SparsityAwareUnlearningModifier with mode 'unmasked' leaves the pruned weights non-zero and no "
                "pruning stage follows it: put the pruner again after it (naive-reprune) or use mode 'naive'"
            )
        quantization_before = [type(m).__name__ for m in earlier if isinstance(m, QuantizationMixin)]
        if quantization_before:
            raise UserError(
                f"SparsityAwareUnlearningModifier comes after {quantization_before} in the recipe; "
                "unlearning would invalidate the calibrated quantization: put the quantization stage after it"
            )

    def _load_tokenizer(self, model: nn.Module) -> Any:
        from transformers import AutoTokenizer

        source = self.tokenizer or getattr(getattr(model, "config", None), "name_or_path", None)
        if not source:
            raise UserError(
                "SparsityAwareUnlearningModifier cannot find a tokenizer: set `tokenizer:` in the recipe "
                "(the model has no config.name_or_path)"
            )
        try:
            return AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError) as err:
            raise UserError(f"SparsityAwareUnlearningModifier: cannot load tokenizer from '{source}': {err}") from err


def _record_on_save(model: nn.Module) -> None:
    """Wrap ``model.save_pretrained`` (llmcompressor's compressed-save wrapper, when oneshot installed one) so
    the saved ``config.json`` carries the record: llmcompressor rewrites that file from the original model's
    config after saving, which drops any key it does not know. Wrapped once per model."""
    current = model.save_pretrained
    if getattr(current, "_sau_record", False):
        return

    @functools.wraps(current)
    def save_pretrained(self: nn.Module, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        out = current(save_directory, *args, **kwargs)
        record = getattr(self.config, CONFIG_RECORD_KEY, None)
        if isinstance(record, dict) and os.path.isfile(os.path.join(save_directory, "config.json")):
            write_config_record(save_directory, record)
        return out

    save_pretrained._sau_record = True  # type: ignore[attr-defined]
    # llmcompressor re-wraps only what it has not wrapped itself
    save_pretrained._overridden = getattr(current, "_overridden", False)  # type: ignore[attr-defined]
    model.save_pretrained = types.MethodType(save_pretrained, model)


def is_pruning(modifier: Modifier) -> bool:
    """Whether ``modifier`` is one of llmcompressor's (or our magnitude) pruning modifiers."""
    from llmcompressor.modifiers.pruning import MagnitudePruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase

    from sau_compress.magnitude import OneShotMagnitudePruningModifier

    return isinstance(
        modifier, (SparsityModifierBase, MagnitudePruningModifier, OneShotMagnitudePruningModifier)
    )


ModifierFactory.register("SparsityAwareUnlearningModifier", SparsityAwareUnlearningModifier)
