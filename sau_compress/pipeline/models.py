"""Models as the front doors name them: a folder (plain HF, compressed-tensors, or our exports) or one of the
toy world's names, a packaged model's name, a .gguf file or a hub id (:mod:`sau_compress.models`), loaded with
their tokenizer onto a device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sau_compress.errors import UserError
from sau_compress.models import resolve_model_path as resolve_model
from sau_compress.worlds import TOY_ALIASES

__all__ = [
    "TOKENIZER_FILES", "TOY_MODELS", "load_model_and_tokenizer", "load_tokenizer", "pick_device", "resolve_model",
]

#: Model names that mean the embedded toy world's memorizer and its retain model (shipped in the package).
TOY_MODELS = tuple(TOY_ALIASES)


def pick_device(device: str | None) -> str:
    """``device``, or ``cuda`` when available else ``cpu``.

    :raises UserError: not ``cpu``/``cuda``/``cuda:N``, or CUDA asked for on a machine without it
    """
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: not a device sau-compress runs on; use cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use cpu")
    return device


#: files one of which a model folder's tokenizer is saved in (fast, SentencePiece, BPE vocab, WordPiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt")


def load_tokenizer(path: Path) -> Any:
    """The tokenizer saved in a model folder.

    :raises UserError: the folder holds no tokenizer files, or transformers cannot build one from them
    """
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"model folder '{path}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the "
                        "model's tokenizer into it (tokenizer.save_pretrained)")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:  # transformers' ways of saying the files do not make a tokenizer
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model folder '{path}': cannot load its tokenizer ({first})") from err


def load_model_and_tokenizer(path: Path, device: str | None = None) -> tuple[Any, Any]:
    """Load a model folder (any format :func:`sau_compress.export.load_model` reads) and its tokenizer, the
    model on ``device`` (:func:`pick_device`) in eval mode. The device and the tokenizer are checked before
    the weights are read."""
    from sau_compress.export import load_model

    target = pick_device(device)
    tokenizer = load_tokenizer(path)
    model = load_model(path)
    return model.to(target).eval(), tokenizer
