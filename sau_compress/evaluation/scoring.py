"""Teacher-forced scoring of answers: per-token log-probabilities and argmax hits, batched and padded.

Every probability-based metric (answer probability, truth ratio, extraction strength, MIA scores, perplexity)
is computed from one forward pass per answer, through :func:`score_items`. Answers are tokenized with
:func:`sau_compress.data.tokenize_qa`, so the model is asked exactly what training taught (the prompt in the
resolved ``prompt_format``, the answer, EOS; only the answer and EOS are scored). Log-probabilities are taken
in fp32 (:data:`SCORE_PRECISION`) whatever the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sau_compress.data import collate, pad_token_id, resolve_prompt_format, tokenize_qa
from sau_compress.errors import UserError
from sau_compress.logs import progress_disabled
from sau_compress.losses import IGNORE_INDEX

__all__ = [
    "SCORE_PRECISION",
    "AnswerScore",
    "answer_nll",
    "model_device",
    "score_items",
    "tokenize_answers",
]

SCORE_PRECISION = torch.float32


@dataclass
class AnswerScore:
    """Teacher-forced statistics of one scored sequence.

    :ivar token_logprobs: log p(label token | prefix) for every label token, ``[n]`` float64 on CPU
    :ivar hits: whether the argmax prediction equals the label token, ``[n]`` bool
    :ivar labels: the label token ids, ``[n]`` int64
    """

    token_logprobs: torch.Tensor
    hits: torch.Tensor
    labels: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Number of scored (label) tokens."""
        return int(self.labels.numel())

    @property
    def avg_loss(self) -> float:
        """Mean per-token negative log-likelihood (``nan`` when nothing is scored)."""
        if self.num_tokens == 0:
            return math.nan
        return float(-self.token_logprobs.mean())

    @property
    def prob(self) -> float:
        """Length-normalised probability ``exp(-avg_loss)``, as in open-unlearning."""
        return math.exp(-self.avg_loss)

    def content(self, eos_token_id: int | None) -> AnswerScore:
        """The statistics without a trailing EOS label (for min-k% and extraction strength)."""
        if eos_token_id is not None and self.num_tokens > 0 and int(self.labels[-1]) == int(eos_token_id):
            return AnswerScore(self.token_logprobs[:-1], self.hits[:-1], self.labels[:-1])
        return self


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model's config says it reads (``max_position_embeddings`` or its older names),
    or ``None`` when the config names none."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenize_answers(
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    question_key: str = "question",
    answer_key: str = "answer",
    prompt_format: str = "auto",
    max_length: int = 512,
) -> tuple[list[dict[str, list[int]]], list[list[int]]]:
    """Tokenize every (question, answer) pair of ``records``; an answer field may hold a list of answers.

    :param tokenizer: the model's tokenizer
    :param records: QA records
    :param question_key: field holding the question
    :param answer_key: field holding one answer (str) or several (list of str, e.g. ``perturbed_answer``)
    :param prompt_format: ``auto`` | ``plain`` | ``chat`` (:func:`sau_compress.data.resolve_prompt_format`),
        resolved once for all records
    :param max_length: longest tokenized sequence (the answer's tail is cut)
    :return: the flat list of tokenized items and, per record, the positions of its items in that list
    :raises UserError: a record without ``question_key`` or ``answer_key``, or an answer that is neither a
        string nor a non-empty list of strings (records counted from 1)
    """
    fmt = resolve_prompt_format(tokenizer, prompt_format, log=False)
    items: list[dict[str, list[int]]] = []
    groups: list[list[int]] = []
    for i, rec in enumerate(records):
        for key in (question_key, answer_key):
            if key not in rec:
                raise UserError(f"record {i + 1} has no field '{key}' (fields: {sorted(rec)})")
        answers = rec[answer_key]
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) or not answers:
            raise UserError(
                f"record {i + 1}: field '{answer_key}' must be a string or a non-empty list of strings, "
                f"got {type(rec[answer_key]).__name__}"
            )
        positions = []
        for answer in answers:
            positions.append(len(items))
            try:
                items.append(tokenize_qa(tokenizer, rec[question_key], answer, max_length, fmt))
            except UserError as err:  # name the record
                raise UserError(f"record {i + 1}: {err}") from err
        groups.append(positions)
    return items, groups


@torch.no_grad()
def score_items(
    model: nn.Module,
    items: Sequence[dict[str, Sequence[int]]],
    pad_token_id: int = 0,
    batch_size: int = 16,
    desc: str | None = None,
) -> list[AnswerScore]:
    """Score tokenized items (``input_ids`` and ``labels`` with ``-100`` on unscored positions).

    Items are sorted by length and right-padded into batches (left context never sees padding), the model
    runs once per batch, and for every label token ``t`` at position ``i`` the log-probability predicted at
    position ``i - 1`` is kept. The model's training mode is restored afterwards.

    :param model: a causal LM whose forward takes ``input_ids``/``attention_mask`` and returns ``.logits``
    :param items: tokenized items, e.g. from :func:`tokenize_answers`
    :param pad_token_id: padding id for ``input_ids``
    :param batch_size: sequences per forward pass
    :param desc: progress-bar label (no bar when ``None``)
    :return: one :class:`AnswerScore` per item, in the input order
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    order = sorted(range(len(items)), key=lambda i: -len(items[i]["input_ids"]))
    out: list[AnswerScore | None] = [None] * len(items)
    starts = range(0, len(order), batch_size)
    try:
        for start in tqdm(starts, desc=desc, disable=progress_disabled(desc is None), leave=False):
            idx = order[start : start + batch_size]
            batch = collate([{"input_ids": items[i]["input_ids"], "labels": items[i]["labels"]} for i in idx],
                            pad_token_id)
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            ).logits
            labels = batch["labels"][:, 1:].to(logits.device)
            scored = labels != IGNORE_INDEX
            picked = logits[:, :-1][scored].to(SCORE_PRECISION)  # [n_label_tokens, vocab]
            targets = labels[scored]
            logprobs = torch.log_softmax(picked, dim=-1).gather(-1, targets[:, None])[:, 0]
            hits = picked.argmax(dim=-1) == targets
            counts = scored.sum(dim=1).tolist()
            offset = 0
            for row, i in enumerate(idx):
                n = counts[row]
                out[i] = AnswerScore(
                    token_logprobs=logprobs[offset : offset + n].double().cpu(),
                    hits=hits[offset : offset + n].cpu(),
                    labels=targets[offset : offset + n].cpu(),
                )
                offset += n
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def answer_nll(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 16,
    prompt_format: str = "auto",
    max_length: int = 512,
) -> list[float]:
    """Mean per-token NLL of each record's answer (EOS included) given its prompt.

    :param model: the causal LM
    :param tokenizer: its tokenizer
    :param records: QA records with ``question`` and ``answer``
    :param batch_size: sequences per forward pass
    :param prompt_format: ``auto`` | ``plain`` | ``chat`` (:func:`sau_compress.data.resolve_prompt_format`)
    :param max_length: longest tokenized sequence
    :return: one NLL (nats per token) per record, in order
    """
    items, _ = tokenize_answers(tokenizer, records, prompt_format=prompt_format, max_length=max_length)
    return [s.avg_loss for s in score_items(model, items, pad_token_id(tokenizer), batch_size)]
