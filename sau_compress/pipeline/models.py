"""Models as the front doors name them: a folder (plain HF, compressed-tensors, or our exports) or one of the
toy world's names, loaded with their tokenizer onto a device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sau_compress.errors import UserError
from sau_compress.worlds import TOY_ALIASES
from sau_compress.worlds import resolve_model_path as resolve_model

__all__ = ["TOY_MODELS", "load_model_and_tokenizer", "pick_device", "resolve_model"]

#: Model names that mean the embedded toy world's memorizer and its retain model (built on first use).
TOY_MODELS = tuple(TOY_ALIASES)


def pick_device(device: str | None) -> str:
    """``device``, or ``cuda`` when available else ``cpu``.

    :raises UserError: CUDA asked for on a machine without it
    """
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use cpu")
    return device


def load_model_and_tokenizer(path: Path, device: str | None = None) -> tuple[Any, Any]:
    """Load a model folder (any format :func:`sau_compress.export.load_model` reads) and its tokenizer, the
    model on ``device`` (:func:`pick_device`) in eval mode."""
    from transformers import AutoTokenizer

    from sau_compress.export import load_model

    model = load_model(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model.to(pick_device(device)).eval(), tokenizer
