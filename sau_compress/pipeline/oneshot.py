"""One way to run llmcompressor's ``oneshot`` on an in-memory model, shared by ``run`` and the benchmarks."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from torch import nn

from sau_compress.data import QARecord, tokenize_records
from sau_compress.errors import UserError

__all__ = ["calibration_dataset", "run_oneshot"]


def calibration_dataset(
    records: Sequence[QARecord], tokenizer: Any, n: int, max_length: int, seed: int, prompt_format: str = "auto"
) -> Any:
    """Calibration rows for SparseGPT/Wanda: prompt + answer tokens of ``n`` records (a seeded random subset,
    in record order, when there are more), in ``prompt_format`` (:func:`sau_compress.data.tokenize_qa`).

    :return: a ``datasets.Dataset`` with ``input_ids`` and ``attention_mask``
    """
    from datasets import Dataset

    if n < 1:
        raise UserError(f"num_calibration_samples must be at least 1, got {n}")
    records = list(records)
    if len(records) > n:
        chosen = sorted(random.Random(seed).sample(range(len(records)), n))
        records = [records[i] for i in chosen]
    items = tokenize_records(tokenizer, records, max_length=max_length, prompt_format=prompt_format)
    return Dataset.from_dict(
        {
            "input_ids": [it["input_ids"] for it in items],
            "attention_mask": [[1] * len(it["input_ids"]) for it in items],
        }
    )


def run_oneshot(
    model: nn.Module,
    tokenizer: Any,
    recipe: Any,
    calibration: Sequence[QARecord] | None = None,
    num_calibration_samples: int = 512,
    max_seq_length: int = 256,
    seed: int = 0,
    prompt_format: str = "auto",
) -> None:
    """Apply a recipe to ``model`` in place with ``oneshot`` (the ``independent`` pipeline), then remove the
    dispatch hooks oneshot leaves, so the model is a plain module again.

    :param model: the model (it must carry a ``name_or_path`` oneshot can re-read)
    :param tokenizer: its tokenizer
    :param recipe: an llmcompressor ``Recipe`` or a list of modifier instances
    :param calibration: QA records whose prompt+answer texts calibrate the stages that need data
    :param num_calibration_samples: calibration rows (a seeded subset of ``calibration`` when larger)
    :param max_seq_length: token budget per calibration row
    :param seed: seed of the calibration subset
    :param prompt_format: how calibration rows are formatted (``auto`` | ``plain`` | ``chat``)
    :raises UserError: a stage needs calibration data and none was given
    """
    from compressed_tensors.offload import remove_dispatch
    from llmcompressor import oneshot

    modifiers = recipe if isinstance(recipe, list) else list(recipe.modifiers)
    dataset = None
    if any(m.requires_calibration_data for m in modifiers):
        if not calibration:
            names = [type(m).__name__ for m in modifiers if m.requires_calibration_data]
            raise UserError(f"{names} need calibration data: pass --calibration or a retain set")
        dataset = calibration_dataset(calibration, tokenizer, num_calibration_samples, max_seq_length, seed,
                                      prompt_format)
    oneshot(
        model=model,
        processor=tokenizer,
        recipe=recipe,
        dataset=dataset,
        num_calibration_samples=len(dataset) if dataset is not None else num_calibration_samples,
        max_seq_length=max_seq_length,
        shuffle_calibration_samples=False,
        pipeline="independent",
    )
    remove_dispatch(model)
