"""Unlearning losses on per-sequence NLLs, with open-unlearning's semantics (locuslab/open-unlearning).

The model is never called here: the loop computes logits, :func:`sequence_nll` turns them into per-sequence
summed NLLs of the answer tokens, and a registry entry (:data:`LOSSES`) turns those into the forget term.
The loop combines ``gamma * forget + retain_weight * retain`` for methods that use a retain set, with the
retain term either the token-mean NLL (:func:`retain_nll`) or the KL to the starting model on the answer
tokens (:func:`kl_to_reference`). Reference quantities (NPO's NLLs, KL's log-probabilities) are computed
once before training, so no second model is held in memory.

| name | forget term (per batch of B sequences) | retain | β default | γ default |
|---|---|---|---|---|
| ``grad_ascent`` | ``-Σ nll / Σ tokens`` (minus the token-mean NLL) | no | — | 1 |
| ``grad_diff`` | as ``grad_ascent`` | yes | — | 1 |
| ``npo`` | ``-(2/β) · mean_b log σ(β (nll_b - nll_ref_b))`` (nll = summed over the answer) | yes | 0.1 | 1 |
| ``simnpo`` | ``-(2/β) · mean_b log σ(β (nll_b / tokens_b - δ))`` | yes | 4.5 | 0.125 |

γ weighs the forget term against the retain term (weight ``retain_weight``); the defaults are
open-unlearning's trainer defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "LOSS_PRECISION",
    "RETAIN_LOSSES",
    "UnlearningLoss",
    "answer_logprobs",
    "get_loss",
    "grad_ascent_loss",
    "kl_to_reference",
    "npo_loss",
    "register_loss",
    "retain_nll",
    "sequence_nll",
    "simnpo_loss",
]

#: Label of a position that is not scored (prompt, padding): PyTorch's ``cross_entropy`` default.
IGNORE_INDEX = -100
LOSS_PRECISION = torch.float32
RETAIN_LOSSES = ("nll", "kl")


def _answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted targets and the (row, position) mask of the logits that predict an answer token."""
    targets = labels[:, 1:]
    return targets, targets != IGNORE_INDEX


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL of the labelled tokens (causal shift), in fp32.

    Only the positions that predict a label are upcast and scored, so long prompts cost nothing extra.

    :param logits: ``[B, T, V]``
    :param labels: ``[B, T]`` with ``-100`` on prompt and padding
    :return: ``(nll_sum [B], n_tokens [B])``; ``n_tokens`` as float
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [B, T]")
    targets, keep = _answer_positions(labels)
    rows = keep.nonzero()[:, 0]
    scores = logits[:, :-1][keep].to(LOSS_PRECISION)
    token_nll = F.cross_entropy(scores, targets[keep], reduction="none")
    nll = torch.zeros(labels.shape[0], dtype=LOSS_PRECISION, device=logits.device).index_add(0, rows, token_nll)
    return nll, keep.sum(dim=1).to(LOSS_PRECISION)


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Log-probabilities over the vocabulary at the positions that predict an answer token, per sequence.

    :param logits: ``[B, T, V]``
    :param labels: ``[B, T]``
    :return: B tensors ``[n_tokens_b, V]`` (fp32), in position order
    """
    _, keep = _answer_positions(labels)
    return [F.log_softmax(logits[b, :-1][keep[b]].to(LOSS_PRECISION), dim=-1) for b in range(labels.shape[0])]


def kl_to_reference(logits: torch.Tensor, labels: torch.Tensor, reference: list[torch.Tensor]) -> torch.Tensor:
    """Token-mean KL(reference ‖ model) over the answer positions (open-unlearning's retain KL, on answers).

    :param logits: the current model's ``[B, T, V]``
    :param labels: ``[B, T]``
    :param reference: per sequence ``[n_tokens_b, V]`` reference log-probabilities (:func:`answer_logprobs`)
    :return: scalar
    """
    _, keep = _answer_positions(labels)
    current = F.log_softmax(logits[:, :-1][keep].to(LOSS_PRECISION), dim=-1)
    ref = torch.cat([r.to(device=current.device, dtype=LOSS_PRECISION) for r in reference])
    if ref.shape != current.shape:
        raise ValueError(f"reference log-probs {tuple(ref.shape)} do not match the batch's {tuple(current.shape)}")
    return F.kl_div(current, ref, reduction="sum", log_target=True) / max(1, current.shape[0])


def retain_nll(nll: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL over the batch (what ``model(**batch).loss`` gives)."""
    return nll.sum() / n_tokens.sum().clamp(min=1)


def grad_ascent_loss(
    nll: torch.Tensor, n_tokens: torch.Tensor, reference_nll: torch.Tensor | None = None,
    beta: float | None = None, delta: float = 0.0,
) -> torch.Tensor:
    """Gradient ascent: minus the token-mean NLL of the forget batch."""
    return -retain_nll(nll, n_tokens)


def npo_loss(
    nll: torch.Tensor, n_tokens: torch.Tensor, reference_nll: torch.Tensor | None = None,
    beta: float | None = 0.1, delta: float = 0.0,
) -> torch.Tensor:
    """NPO (Zhang et al. 2024): ``-(2/β) · mean log σ(β (nll - nll_ref))`` on summed sequence NLLs."""
    if reference_nll is None:
        raise ValueError("npo needs the reference NLLs of the forget batch (computed before training)")
    beta = 0.1 if beta is None else beta
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - reference_nll.to(nll))).mean()


def simnpo_loss(
    nll: torch.Tensor, n_tokens: torch.Tensor, reference_nll: torch.Tensor | None = None,
    beta: float | None = 4.5, delta: float = 0.0,
) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): ``-(2/β) · mean log σ(β (nll / tokens - δ))``, no reference model."""
    beta = 4.5 if beta is None else beta
    return -(2.0 / beta) * F.logsigmoid(beta * (nll / n_tokens.clamp(min=1) - delta)).mean()


@dataclass(frozen=True)
class UnlearningLoss:
    """A registered method: its forget term and what it needs."""

    name: str
    forget: Callable[..., torch.Tensor]
    uses_retain: bool
    needs_reference_nll: bool = False
    default_beta: float | None = None
    default_gamma: float = 1.0


LOSSES: dict[str, UnlearningLoss] = {}


def register_loss(entry: UnlearningLoss) -> UnlearningLoss:
    """Add a method to :data:`LOSSES` (a duplicate name is an error)."""
    if entry.name in LOSSES:
        raise ValueError(f"loss '{entry.name}' is already registered")
    LOSSES[entry.name] = entry
    return entry


register_loss(UnlearningLoss("grad_ascent", grad_ascent_loss, uses_retain=False))
register_loss(UnlearningLoss("grad_diff", grad_ascent_loss, uses_retain=True))
register_loss(UnlearningLoss("npo", npo_loss, uses_retain=True, needs_reference_nll=True, default_beta=0.1))
register_loss(UnlearningLoss("simnpo", simnpo_loss, uses_retain=True, default_beta=4.5, default_gamma=0.125))


def get_loss(name: str) -> UnlearningLoss:
    """Look a method up in :data:`LOSSES`.

    :raises ValueError: unknown name (the error lists the choices)
    """
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss '{name}'; choose from {sorted(LOSSES)}") from None
