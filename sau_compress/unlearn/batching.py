"""Batches for the unlearning loop: checked tokenized items, collated onto the device, run through the model."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sau_compress.data import collate
from sau_compress.errors import UserError
from sau_compress.losses import IGNORE_INDEX

__all__ = ["Batcher", "check_items"]


def check_items(items: Sequence[dict[str, Any]], what: str) -> None:
    """Check tokenized items as :func:`sau_compress.data.tokenize_records` makes them.

    :raises TypeError: an item is not a dict (a programming error)
    :raises KeyError: an item lacks ``input_ids`` or ``labels`` (a programming error)
    :raises UserError: lengths differ, or an item has no answer token left to score
    """
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TypeError(f"{what} item {i} must be a dict from tokenize_records, got {type(item).__name__}")
        for key in ("input_ids", "labels"):
            if key not in item:
                raise KeyError(f"{what} item {i} has no '{key}' (fields: {sorted(item)}); use tokenize_records")
        if len(item["input_ids"]) != len(item["labels"]):
            raise UserError(f"{what} item {i}: input_ids and labels differ in length")
        if all(label == IGNORE_INDEX for label in item["labels"][1:]):
            raise UserError(f"{what} item {i} has no answer token to score")


class Batcher:
    """Collate items to device tensors and run the model (bf16 autocast on CUDA when asked).

    Only the positions that predict a label need logits. When the model takes ``logits_to_keep`` (Hugging
    Face causal LMs do), :meth:`scored` asks for the logits from the first labelled position of the batch
    on, so the prompts' logits (``[batch, prompt, vocab]``, 0.5 GB for a batch of 4 x 256 tokens at a
    128k vocabulary in fp32) are never made.
    """

    def __init__(self, model: nn.Module, device: torch.device, pad_token_id: int, autocast: bool) -> None:
        self.model = model
        self.device = device
        self.pad = pad_token_id
        self.autocast = autocast and device.type == "cuda"
        forward = getattr(model, "forward", None)
        self.trims = forward is not None and "logits_to_keep" in inspect.signature(forward).parameters

    def batch(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Collated tensors on the device, plus ``n_tokens`` (non-padding tokens) and ``first_label`` (the
        first position any row labels), both counted on the CPU."""
        b = collate(items, self.pad)
        out: dict[str, Any] = {
            k: b[k].to(self.device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")
        }
        out["n_tokens"] = int(b["attention_mask"].sum())
        labelled = (b["labels"] != IGNORE_INDEX).any(dim=0)
        out["first_label"] = int(labelled.int().argmax()) if bool(labelled.any()) else 0
        return out

    def scored(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels cut to the positions from the one before the first label on (the causal shift
        still pairs logit ``t`` with label ``t + 1``); the whole sequence when the model cannot cut."""
        length = batch["labels"].shape[1]
        keep = length - batch["first_label"] + 1
        trim = self.trims and 0 < keep < length
        kwargs = {"logits_to_keep": keep} if trim else {}
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with ctx:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                             **kwargs)
        labels = batch["labels"][:, length - keep:] if trim else batch["labels"]
        return out.logits, labels
