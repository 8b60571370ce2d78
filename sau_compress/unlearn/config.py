"""What an unlearning run is told (:class:`UnlearnConfig`) and what it reports (:class:`UnlearnResult`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from torch import nn

from sau_compress.data import QARecord, check_disjoint, pad_token_id, resolve_prompt_format, tokenize_records
from sau_compress.losses import LOSSES, get_loss
from sau_compress.masking import PackedMask

__all__ = ["MODES", "UnlearnConfig", "UnlearnJob", "UnlearnResult"]

MODES = ("sau", "dense", "masked", "topk", "naive", "unmasked")

_Finite = Field(allow_inf_nan=False)
#: choice fields are read case-insensitively (the annotation carries it, so the modifier's copy does too)
_Choice = BeforeValidator(lambda value: value.strip().lower() if isinstance(value, str) else value)


def _registered_loss(name: str) -> str:
    get_loss(name)  # a registry name; the error lists the choices
    return name

_Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class UnlearnConfig(BaseModel):
    """Everything :func:`~sau_compress.unlearn.unlearn` needs besides the model and data. Unknown fields are an
    error; choice fields are read case-insensitively.

    :param method: base unlearning method, a name in :data:`sau_compress.losses.LOSSES` (default ``npo``: on
        a real pretrained model, SmolLM2-135M-Instruct pruned 50%, it forgot the forget facts in 20-30 steps
        with less damage than ``grad_diff``; ``docs/pretrained.md``)
    :param mode: ``masked`` | ``sau`` | ``dense`` | ``topk`` | ``naive`` | ``unmasked`` (``docs/sau.md``).
        The default ``masked`` updates every surviving weight and keeps pruned ones at zero: it follows the same
        path as ``dense``, the configuration that won the benchmark (``docs/results.md``), runs sharded too, and
        under clipping spends no clip budget on pruned positions; ``sau`` is the paper's method. ``naive`` trains
        every entry with no mask, pruned ones included, and re-applies the frozen mask once at the end (what a
        standard trainer plus a final re-masking gives); ``unmasked`` does not re-apply it
        (pruned entries end non-zero: the first half of *naive-reprune*, whose recipe runs the pruner again
        after the SAU stage)
    :param topk_ratio: fraction of each layer's surviving entries in G, in (0, 1]
    :param alpha: redistribution strength α (W's mean over G is 1 + α·ρ before clipping)
    :param max_scale: clip of W (≥ 1)
    :param optimizer: ``adamw`` | ``sgd``
    :param learning_rate: step size (> 0; default 5e-5: on SmolLM2-135M-Instruct pruned 50% NPO at 5e-5 forgot
        the forget facts and, through the retain term, undid most of the pruning damage (retain answers that loop
        21% -> 2%); at open-unlearning's 1e-5 it forgot as well but the loops stayed; ``docs/pretrained.md``)
    :param weight_decay: weight decay (decoupled for AdamW, L2 for SGD), scaled like the rest of the update
    :param max_steps: exact number of optimizer steps (overrides ``epochs``)
    :param epochs: passes over the forget set (default 10, as open-unlearning's TOFU runs)
    :param batch_size: forget (and retain) items per micro-batch
    :param grad_accum_steps: micro-batches whose gradients add up to one optimizer step (the losses are
        averaged over them); the effective batch is ``batch_size * grad_accum_steps``
    :param lr_scheduler: ``constant`` | ``linear`` | ``cosine`` (transformers' schedules of the same names,
        decaying to 0 at the last step)
    :param warmup_steps: optimizer steps of linear warmup from 0 before the schedule
    :param gradient_checkpointing: recompute activations in the backward pass (Hugging Face models'
        ``gradient_checkpointing_enable``): less activation memory, about a third more compute. The saliency
        pass then runs in training mode too (dropout, if the model has any, is active)
    :param gamma: weight of the forget term (``None``: the method's default, 0.125 for ``simnpo`` as in
        open-unlearning, else 1)
    :param retain_weight: weight of the retain term (open-unlearning's ``alpha``; default 15: on SmolLM2 pruned
        2:4, NPO at 5e-5 kept 6 of the 9 retain facts the pruned model stated with 5 and all 9 with 15, and on 50%
        15 of 18 with 5 and 16 of 18 with 15, forgetting as much; ``docs/pretrained.md``)
    :param retain_loss: ``nll`` | ``kl`` (KL to the starting model on the retain answers)
    :param beta: NPO/SimNPO β (``None``: the method's default, 0.1 / 4.5)
    :param delta: SimNPO δ
    :param saliency: what ranks the surviving entries for G (modes ``sau``/``topk``): ``forget`` (the forget
        Fisher F, as the paper defines SAU) or ``contrastive`` (``F / (F_retain + ε·mean F_retain)``, the forget
        Fisher relative to the retain set's, so that G avoids entries the retain set needs; ρ and W still come
        from F). ``contrastive`` needs a retain set
    :param contrastive_eps: ε of ``contrastive`` (> 0), relative to the layer's mean retain Fisher over its
        surviving entries
    :param saliency_batches: batches for the saliency pass (``None``: the whole forget set once). ``contrastive``
        reads as many retain batches as the forget pass has, spread evenly over the retain set
        (:func:`sau_compress.data.spread_batches`)
    :param saliency_refresh_steps: recompute the saliency, G and W every this many optimizer steps, from the
        weights as they are then (``0``: once, before the first step; modes ``sau``/``topk``). The optimizer
        state of entries that stay in G is carried over; entries that join G start from zero state
    :param saliency_batch_size: items per saliency batch (``None``: ``batch_size``). F averages the squared
        gradients of each batch's mean loss, so 1 gives the per-example (empirical) Fisher
    :param targets: see :func:`sau_compress.masking.resolve_targets` (``None``: decoder-block Linear layers)
    :param ignore: see :func:`sau_compress.masking.resolve_targets` (``None``: ``["re:.*lm_head"]``)
    :param seed: seed of the data order (and of dropout, if the model has any)
    :param device: ``cpu``, ``cuda``, ``cuda:N`` (``None``: CUDA when available)
    :param max_grad_norm: clip the norm of the used gradient entries (default 1.0, as transformers' Trainer that
        open-unlearning uses; ``None``: no clipping)
    :param adam_betas: AdamW (β1, β2), each in [0, 1)
    :param adam_eps: AdamW epsilon
    :param momentum: SGD momentum, in [0, 1)
    :param autocast: bf16 autocast for forward/backward on CUDA (saliency, losses and optimizer math stay fp32;
        weights stored in bf16/fp16 are updated through an fp32 master, see :mod:`sau_compress.optim`)
    :param return_master: hand back the fp32 masters of weights stored in a lower precision
        (:attr:`UnlearnResult.master`, CPU), e.g. to check or resume a bf16 run
    :param allow_dense: unlearn a model whose target layers have no pruned entry at all (otherwise an error:
        SAU is for pruned models). On dense layers ρ = 0 and W = 1, so ``sau`` is its top-k selection there
    :param progress: show tqdm progress bars
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Annotated[str, _Choice, AfterValidator(_registered_loss)] = "npo"
    mode: Annotated[Literal["sau", "dense", "masked", "topk", "naive", "unmasked"], _Choice] = "masked"
    topk_ratio: float = Field(0.3, gt=0.0, le=1.0)
    alpha: Annotated[float, Field(ge=0.0), _Finite] = 0.1
    max_scale: float = Field(10.0, ge=1.0)
    optimizer: Annotated[Literal["adamw", "sgd"], _Choice] = "adamw"
    learning_rate: Annotated[float, Field(gt=0.0), _Finite] = 5e-5
    weight_decay: Annotated[float, Field(ge=0.0), _Finite] = 0.01
    max_steps: int | None = Field(None, ge=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    lr_scheduler: Annotated[Literal["constant", "linear", "cosine"], _Choice] = "constant"
    warmup_steps: int = Field(0, ge=0)
    gradient_checkpointing: bool = False
    gamma: Annotated[float, Field(ge=0.0), _Finite] | None = None
    retain_weight: Annotated[float, Field(ge=0.0), _Finite] = 15.0
    retain_loss: Annotated[Literal["nll", "kl"], _Choice] = "nll"
    beta: Annotated[float, Field(gt=0.0), _Finite] | None = None
    delta: Annotated[float, _Finite] = 0.0
    saliency: Annotated[Literal["forget", "contrastive"], _Choice] = "forget"
    contrastive_eps: Annotated[float, Field(gt=0.0), _Finite] = 0.1
    saliency_batches: int | None = Field(None, ge=1)
    saliency_batch_size: int | None = Field(None, ge=1)
    saliency_refresh_steps: int = Field(0, ge=0)
    targets: list[str] | None = None
    ignore: list[str] | None = None
    seed: int = 0
    device: str | None = None
    max_grad_norm: Annotated[float, Field(gt=0.0), _Finite] | None = 1.0
    # a list, not a tuple: recipes written back by llmcompressor (recipe.yaml) must stay plain YAML
    adam_betas: Annotated[list[_Beta], Field(min_length=2, max_length=2)] = [0.9, 0.999]
    adam_eps: Annotated[float, Field(gt=0.0), _Finite] = 1e-8
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    autocast: bool = True
    return_master: bool = False
    allow_dense: bool = False
    progress: bool = True

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            dev = torch.device(value)
        except RuntimeError as err:
            raise ValueError(f"device '{value}' is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from err
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device '{value}' is not supported; use 'cpu', 'cuda' or 'cuda:N'")
        return str(dev)

    def effective_gamma(self) -> float:
        """γ used by the method: ``gamma`` or the method's default."""
        return self.gamma if self.gamma is not None else LOSSES[self.method].default_gamma

    def effective_beta(self) -> float | None:
        """β used by the method: ``beta`` or the method's default."""
        return self.beta if self.beta is not None else LOSSES[self.method].default_beta


@dataclass
class UnlearnResult:
    """What a run did and cost.

    ``peak_memory_bytes`` is measured (:class:`sau_compress.memory.PeakMemory`): on CUDA
    ``torch.cuda.max_memory_allocated`` over the run (model, activations, gradients, optimizer state,
    temporaries: everything); on CPU the model's bytes plus the peak rise of the process's resident memory
    during the run. ``memory_measure`` says which.
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
    memory_measure: str = "cpu_rss_peak"
    reference_seconds: float = 0.0
    train_seconds: float = 0.0
    tokens: int = 0
    tokens_per_second: float = 0.0
    optimizer_state_bytes: int = 0
    pattern_2of4: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: G per layer as ascending flat indices (``sau``/``topk`` only; CPU int64); not part of :meth:`to_dict`
    selected: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    #: the frozen masks M the run kept (``{layer name: PackedMask}``, CPU; ``.unpack()`` gives the bool
    #: ``[out, in]`` mask); not part of :meth:`to_dict`
    masks: dict[str, PackedMask] = field(default_factory=dict, repr=False)
    #: fp32 masters of lower-precision weights (``[|G|]`` in ``sau``/``topk``, full otherwise; CPU), only with
    #: ``return_master``; not part of :meth:`to_dict`
    master: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (plain floats, ints, strings, lists, dicts); ``selected``, ``masks`` and ``master``
        are left out."""
        return {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in fields(self) if f.name not in ("selected", "masks", "master")
        }


@dataclass
class UnlearnJob:
    """The data one unlearning stage works on, loaded and tokenized once by whoever runs it, and what the
    stage reports back. The pipeline builds one and hands it to the modifier; the modifier builds its own
    only when used on its own (a Python ``oneshot`` with a recipe that names the sets).

    :param forget: tokenized forget items (:func:`sau_compress.data.tokenize_records`)
    :param retain: tokenized retain items, or ``None``
    :param pad_token_id: padding id for batches
    :param callback: ``callback(step, model)`` after every step; ``True`` stops early (see ``unlearn``)
    :param results: one :class:`UnlearnResult` per run, appended by the stage
    :param prompt_format: the resolved format the items were tokenized in (``plain`` | ``chat``), when known
    :param on_start: ``on_start(model)`` right before the stage unlearns (the model as the earlier stages left
        it: pruned); the pipeline evaluates the pruned model there
    """

    forget: list[dict[str, Any]]
    retain: list[dict[str, Any]] | None
    pad_token_id: int
    callback: Callable[[int, nn.Module], bool] | None = None
    results: list[UnlearnResult] = field(default_factory=list)
    prompt_format: str | None = None
    on_start: Callable[[nn.Module], None] | None = None

    @classmethod
    def from_records(
        cls,
        tokenizer: Any,
        forget: Sequence[QARecord],
        retain: Sequence[QARecord] | None,
        max_length: int = 256,
        prompt_format: str = "auto",
        callback: Callable[[int, nn.Module], bool] | None = None,
        names: tuple[str, str] = ("the forget set", "the retain set"),
    ) -> UnlearnJob:
        """Tokenize QA records into a job (padding: :func:`sau_compress.data.pad_token_id`).

        :param prompt_format: ``auto`` | ``plain`` | ``chat``, resolved once for both sets
            (:func:`sau_compress.data.resolve_prompt_format`); saliency and training see these tokens
        :param names: the sets as messages name them (``the forget set 'forget.jsonl'``)
        :raises UserError: the sets share a QA pair (:func:`sau_compress.data.check_disjoint`)
        """
        fmt = resolve_prompt_format(tokenizer, prompt_format)
        if retain is not None:
            check_disjoint(forget, retain, *names)
        return cls(
            forget=tokenize_records(tokenizer, forget, max_length, fmt, what=names[0]),
            retain=tokenize_records(tokenizer, retain, max_length, fmt, what=names[1]) if retain is not None else None,
            pad_token_id=pad_token_id(tokenizer),
            callback=callback,
            prompt_format=fmt,
        )
