"""Batches of tokenized items: collation into padded tensors, and the plans of which items each step reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sau_compress.errors import UserError
from sau_compress.losses import IGNORE_INDEX

__all__ = ["collate", "pair_forget_retain", "sequential_batches", "spread_batches"]


def collate(batch: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized items into ``input_ids``, ``attention_mask`` and ``labels`` tensors.

    Labels are ``-100`` on padding. ``index`` is carried through when present.
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    width = max(len(item["input_ids"]) for item in batch)
    n = len(batch)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for row, item in enumerate(batch):
        k = len(item["input_ids"])
        input_ids[row, :k] = torch.tensor(item["input_ids"], dtype=torch.long)
        labels[row, :k] = torch.tensor(item["labels"], dtype=torch.long)
        attention[row, :k] = 1
    out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if all("index" in item for item in batch):
        out["index"] = torch.tensor([int(item["index"]) for item in batch], dtype=torch.long)
    return out



def pair_forget_retain(
    n_forget: int,
    n_retain: int,
    batch_size: int,
    generator: torch.Generator,
    epochs: int = 1,
    max_steps: int | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Plan the unlearning steps: which forget and retain items each step sees (positions in the lists).

    As open-unlearning's ``ForgetRetainDataset`` (anchor ``forget``): every epoch visits the forget items in
    a fresh random order, ``batch_size`` per step (the last batch may be smaller), and pairs each forget
    item with a retain item drawn uniformly at random (with replacement). ``max_steps`` overrides
    ``epochs``: epochs repeat until that many steps are planned. Deterministic for a given ``generator``
    state.

    :param n_forget: number of forget items (at least 1)
    :param n_retain: number of retain items (0: every step gets an empty retain list)
    :param batch_size: forget items per step (at least 1)
    :param generator: CPU ``torch.Generator`` (seeded by the caller)
    :param epochs: passes over the forget set when ``max_steps`` is ``None``
    :param max_steps: exact number of steps
    :return: one ``(forget positions, retain positions)`` pair per step
    """
    if n_forget < 1:
        raise UserError("the forget set is empty")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    if max_steps is None and epochs < 1:
        raise UserError(f"epochs must be at least 1, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"max_steps must be at least 1, got {max_steps}")
    steps_per_epoch = -(-n_forget // batch_size)
    total = max_steps if max_steps is not None else epochs * steps_per_epoch
    plan: list[tuple[list[int], list[int]]] = []
    while len(plan) < total:
        order = torch.randperm(n_forget, generator=generator).tolist()
        for start in range(0, n_forget, batch_size):
            forget = order[start : start + batch_size]
            retain = torch.randint(n_retain, (len(forget),), generator=generator).tolist() if n_retain else []
            plan.append((forget, retain))
            if len(plan) == total:
                break
    return plan


def sequential_batches(n: int, batch_size: int, limit: int | None = None) -> list[list[int]]:
    """Positions ``0..n-1`` in order, ``batch_size`` at a time (the last may be smaller), at most ``limit`` batches."""
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    batches = [list(range(start, min(n, start + batch_size))) for start in range(0, n, batch_size)]
    return batches if limit is None else batches[:limit]


def spread_batches(n: int, batch_size: int, n_batches: int) -> list[list[int]]:
    """``n_batches`` batches of ``batch_size`` positions spread evenly over ``0..n-1`` (position ``i·n // m``
    for ``i < m = min(n, n_batches·batch_size)``, in order), so that every part of a set ordered by topic
    is represented; all positions when the set is smaller."""
    if batch_size < 1 or n_batches < 1:
        raise UserError(f"batch_size and n_batches must be at least 1, got {batch_size} and {n_batches}")
    m = min(n, n_batches * batch_size)
    picked = [i * n // m for i in range(m)]
    return [picked[start : start + batch_size] for start in range(0, m, batch_size)]
