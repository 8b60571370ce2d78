"""Batched, deterministic greedy decoding of answers to questions.

Prompts are built with :func:`sau_compress.data.prompt_ids` (the same tokens that precede an answer in
training), left-padded into batches, and decoded greedily with ``model.generate`` under an explicit
:class:`~transformers.GenerationConfig` (``do_sample=False``, one beam), so a checkpoint's own sampling
defaults never leak in. Each answer stops at the first EOS. Prompts are sorted by length before batching;
the answers do not depend on the batch size beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from loguru import logger
from torch import nn
from tqdm.auto import tqdm

from sau_compress.data import pad_token_id, prompt_ids, resolve_prompt_format
from sau_compress.evaluation.scoring import context_length, model_device
from sau_compress.logs import progress_disabled

__all__ = ["generate_answers", "stop_token_ids"]


def stop_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS and the model's generation-config EOS ids.

    :raises ValueError: neither defines an EOS token
    """
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if isinstance(extra, int):
        extra = [extra]
    for value in extra or []:
        if int(value) not in ids:
            ids.append(int(value))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token")
    return ids


def _cut_at_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for pos, tok in enumerate(tokens):
        if tok in stops:
            return tokens[:pos]
    return tokens


def _fit_context(prompts: list[list[int]], context: int | None, max_new_tokens: int,
                 desc: str | None) -> list[list[int]]:
    """Cut prompts longer than the model's context leaves room for (``context - max_new_tokens`` tokens, at
    least half the context) to their last tokens, the ones right before the answer, with one warning."""
    if context is None:
        return prompts
    budget = max(context - max_new_tokens, context // 2, 1)
    long = [i for i, p in enumerate(prompts) if len(p) > budget]
    if long:
        longest = max(len(prompts[i]) for i in long)
        logger.warning(
            f"{desc or 'generation'}: {len(long)} of {len(prompts)} prompts are longer than the model's context "
            f"allows ({context} tokens, {max_new_tokens} kept for the answer; longest {longest} tokens, records "
            f"{[i + 1 for i in long[:5]]}); each keeps its last {budget} tokens"
        )
    return [p[-budget:] if len(p) > budget else p for p in prompts]


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    prompt_format: str = "auto",
    desc: str | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """Answer each question by greedy decoding.

    :param model: a causal LM with ``generate`` (a transformers model)
    :param tokenizer: its tokenizer
    :param questions: the questions, in order
    :param max_new_tokens: longest answer, in tokens
    :param batch_size: prompts per ``generate`` call
    :param prompt_format: ``auto`` | ``plain`` | ``chat`` (:func:`sau_compress.data.resolve_prompt_format`);
        the prompts are :func:`sau_compress.data.prompt_ids`, what precedes the answer in training
    :param desc: progress-bar label (no bar when ``None``)
    :param prompts: the questions' prompt token ids, already made with :func:`sau_compress.data.prompt_ids` in
        the resolved ``prompt_format`` (e.g. by :class:`~sau_compress.evaluation.context.TokenizedSets`); one
        per question

    Prompts longer than the model's context (:func:`~sau_compress.evaluation.scoring.context_length`) minus
    ``max_new_tokens`` keep their last tokens, with a warning.

    :return: the decoded answers (special tokens skipped, whitespace stripped), in the input order
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not hasattr(model, "generate"):
        raise TypeError(f"{type(model).__name__} has no generate(); pass a transformers causal LM")
    stops = stop_token_ids(model, tokenizer)
    pad = pad_token_id(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stops,
        pad_token_id=pad,
    )
    fmt = resolve_prompt_format(tokenizer, prompt_format, log=False)
    if prompts is None:
        prompts = [prompt_ids(tokenizer, q, fmt) for q in questions]
    elif len(prompts) != len(questions):
        raise ValueError(f"{len(prompts)} prompts for {len(questions)} questions")
    prompts = _fit_context([list(p) for p in prompts], context_length(model), max_new_tokens, desc)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    device = model_device(model)
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=progress_disabled(desc is None),
                          leave=False):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                k = len(prompts[i])
                input_ids[row, width - k :] = torch.tensor(prompts[i], dtype=torch.long)
                attention[row, width - k :] = 1
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
            )
            new = out[:, width:].tolist()
            for row, i in enumerate(idx):
                tokens = _cut_at_stop(new[row], set(stops))
                answers[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    logger.debug(f"generated {len(answers)} answers (max_new_tokens={max_new_tokens}, batch_size={batch_size})")
    return answers
