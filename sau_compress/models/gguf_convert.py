"""A local GGUF file -> a plain Hugging Face model folder (fp32 safetensors, tokenizer, generation config).

transformers reads GGUF files (``from_pretrained(dir, gguf_file=...)``, with the ``gguf`` package) and
dequantizes their weights, but the object it returns refuses ``save_pretrained`` (it is marked as quantized
with GGUF) and its tokenizer takes BOS for EOS on chat models (SmolLM2's converted tokenizer says
``eos_token: <|im_start|>``, where the file and the generation config say ``<|im_end|>``). This module copies
the weights into a plain model of the same config and sets the tokenizer's special tokens from the GGUF file's
own ``tokenizer.ggml.*_token_id`` fields, so the folder behaves like the original checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path
from typing import Any

from loguru import logger

from sau_compress.errors import UserError

__all__ = ["GGUF_SPECIAL_TOKENS", "convert_gguf", "file_sha256", "gguf_metadata"]

#: GGUF metadata field -> the tokenizer attribute it sets
GGUF_SPECIAL_TOKENS = {
    "tokenizer.ggml.bos_token_id": "bos_token",
    "tokenizer.ggml.eos_token_id": "eos_token",
    "tokenizer.ggml.padding_token_id": "pad_token",
    "tokenizer.ggml.unknown_token_id": "unk_token",
}


def file_sha256(path: Path) -> str:
    """SHA-256 of one file, read in 1 MiB chunks (64 hex digits)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading a .gguf file needs the 'gguf' package: pip install gguf")


def _scalar(field: Any) -> Any:
    """The value of a scalar or string GGUF field (``None`` for arrays)."""
    if len(field.data) != 1:
        return None
    part = field.parts[field.data[0]]
    if part.dtype.kind == "u" and part.dtype.itemsize == 1 and len(part) != 1:  # a string: its bytes
        return bytes(part).decode("utf-8", errors="replace")
    value = part.tolist()
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string metadata of a GGUF file (``general.*``, ``tokenizer.ggml.*_token_id``, ...);
    arrays (the vocabulary, merges) are left out.

    :raises UserError: not a GGUF file
    """
    _require_gguf()
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as err:
        raise UserError(f"'{path}' is not a readable GGUF file ({err})") from err
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = _scalar(field)
        if value is not None:
            out[key] = value
    return out


def _fix_special_tokens(tokenizer: Any, meta: dict[str, Any]) -> dict[str, str]:
    """Set the tokenizer's BOS/EOS/PAD/UNK to the tokens the GGUF file names; return those that changed."""
    changed = {}
    for key, attr in GGUF_SPECIAL_TOKENS.items():
        token_id = meta.get(key)
        if not isinstance(token_id, int) or not 0 <= token_id < len(tokenizer):
            continue
        token = tokenizer.convert_ids_to_tokens(token_id)
        if getattr(tokenizer, attr, None) != token:
            changed[attr] = f"{getattr(tokenizer, attr, None)!r} -> {token!r}"
            setattr(tokenizer, attr, token)
    return changed


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``gguf_path`` as a plain model folder into ``out_dir`` (an existing, empty folder: the caller makes
    it atomically): fp32 ``model.safetensors``, ``config.json`` without a quantization config, the tokenizer
    with the GGUF file's special tokens, ``generation_config.json``.

    :param gguf_path: a ``.gguf`` file of an architecture transformers reads (llama, qwen2, mistral, ...)
    :param out_dir: where to write
    :return: ``architecture``, ``parameters``, ``license`` and ``name`` (from the file's metadata when there),
        ``eos_token``, ``special_tokens_fixed`` (what changed against transformers' conversion), ``seconds``
    :raises UserError: the ``gguf`` package is missing, or transformers cannot read the file
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    meta = gguf_metadata(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info(f"converting {gguf_path} ({meta.get('general.architecture', '?')}) to a plain fp32 model folder")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, OSError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"transformers cannot read '{gguf_path}' ({first})") from err
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    generation = loaded.generation_config
    del loaded
    fixed = _fix_special_tokens(tokenizer, meta)
    if fixed:
        logger.info(f"tokenizer special tokens set from the GGUF file: {fixed}")
    if tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id
        config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    plain.generation_config = generation
    plain.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    parameters = sum(p.numel() for p in plain.parameters())
    del plain
    return {
        "architecture": meta.get("general.architecture"),
        "name": meta.get("general.name"),
        "license": meta.get("general.license"),
        "parameters": int(parameters),
        "eos_token": tokenizer.eos_token,
        "special_tokens_fixed": fixed,
        "seconds": time.perf_counter() - start,
    }
