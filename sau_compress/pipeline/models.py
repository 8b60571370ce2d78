"""Models as the front doors name them: a folder (plain HF, compressed-tensors, or our exports) or one of the
toy world's names, loaded with their tokenizer onto a device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sau_compress.errors import InputNotFoundError, UserError

__all__ = ["TOY_MODELS", "load_model_and_tokenizer", "pick_device", "resolve_model"]

#: Model names that mean the embedded toy world's memorizer and its retain model (built on first use).
TOY_MODELS = ("toy", "toy-retain")


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The folder of a model: ``toy`` / ``toy-retain`` (building the toy world on first use) or a folder.

    :raises InputNotFoundError: neither a toy name nor an existing folder
    """
    text = str(name_or_path)
    if text in TOY_MODELS:
        from sau_compress.worlds import resolve_model_path

        return resolve_model_path(text)
    path = Path(text).expanduser()
    if not path.is_dir():
        what = "is a file, not a model folder" if path.is_file() else "not found"
        raise InputNotFoundError(f"model '{text}' {what}: expected a model folder or one of {list(TOY_MODELS)}")
    return path


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
