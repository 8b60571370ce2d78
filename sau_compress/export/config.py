"""A model folder's ``config.json``: reading it, what its ``quantization_config`` says, the export formats.

The format names are checked here once (:func:`check_format` for an export format, :func:`source_format` for
the sparsity format of a folder to read), and :func:`compat_config` adds the keys transformers 4.x reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.export.files import read_json

__all__ = [
    "CT_FORMAT_VERSION",
    "FORMATS",
    "QUANT_METHOD",
    "SPARSE_FORMAT",
    "check_format",
    "compat_config",
    "compat_tokenizer_config",
    "has_quantization",
    "quantization_format",
    "read_config",
    "source_format",
    "sparsity_format",
]

FORMATS = ("sparse-24-bitmask", "dense")
SPARSE_FORMAT = "sparse-24-bitmask"
# the compressed-tensors release whose format we write (the last one that has the sparse-24-bitmask compressor)
CT_FORMAT_VERSION = "0.14.0.1"
QUANT_METHOD = "compressed-tensors"


def check_format(fmt: str, allowed: Sequence[str] = FORMATS) -> str:
    """Check an export format name.

    :param fmt: the name given
    :param allowed: the names accepted (default :data:`FORMATS`; a caller with its own choice, such as
        ``auto``, passes it with them)
    :return: ``fmt``
    :raises UserError: ``fmt`` is not one of ``allowed`` (the message lists them)
    """
    if fmt not in allowed:
        raise UserError(f"unknown export format '{fmt}'; choose from {list(allowed)}")
    return fmt


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a model folder as a dict.

    :raises InputNotFoundError: no ``config.json``
    :raises CorruptCheckpointError: not valid JSON
    """
    file = Path(path) / "config.json"
    if not file.is_file():
        raise InputNotFoundError(f"'{path}' is not a model folder: no config.json")
    return read_json(file)


def sparsity_format(config: dict[str, Any]) -> str | None:
    """The ``sparsity_config.format`` of a config dict's ``quantization_config`` (None when absent or empty)."""
    qc = config.get("quantization_config") or {}
    sc = qc.get("sparsity_config") or {}
    return sc.get("format") or None


def has_quantization(config: dict[str, Any]) -> bool:
    """True when ``quantization_config`` describes quantized weights or activations (not only sparsity)."""
    qc = config.get("quantization_config") or {}
    if qc and qc.get("quant_method", QUANT_METHOD) != QUANT_METHOD:
        return True  # another library's quantization (gptq, awq, bnb ...)
    return bool(qc.get("config_groups") or qc.get("kv_cache_scheme"))


def quantization_format(config: dict[str, Any]) -> str | None:
    """The compressed-tensors quantization format (``float-quantized``, ``int-quantized`` ...) or None."""
    if not has_quantization(config):
        return None
    qc = config["quantization_config"]
    return qc.get("format") or qc.get("quant_method")


def source_format(config: dict[str, Any], folder: Path) -> str | None:
    """The sparsity format of a folder to read, checked: None, ``dense``, or ``sparse-24-bitmask`` unquantized.

    :param config: the folder's config dict (:func:`read_config`)
    :param folder: the folder, named in errors
    :return: :func:`sparsity_format` of ``config``
    :raises UserError: another sparsity format, or a quantized ``sparse-24-bitmask`` folder
    """
    fmt = sparsity_format(config)
    if fmt not in (None, "dense", SPARSE_FORMAT):
        raise UserError(f"{folder / 'config.json'}: sparsity format '{fmt}' is not supported; "
                         f"supported: dense, {SPARSE_FORMAT}")
    if fmt == SPARSE_FORMAT and has_quantization(config):
        raise UserError(f"{folder}: quantized sparse-24-bitmask checkpoints are not supported")
    return fmt


#: keys transformers 4.57 reads at the top level of ``config.json`` under another name than 5.x's, per model type
_V4_NAMES = {"gpt_neox": {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"}}
#: the only ``rope_scaling`` fields transformers 4.57's config of a model type accepts (Phi-3 validates them)
_V4_SCALING_FIELDS = {"phi3": ("short_factor", "long_factor")}


def _v4_rope(out: dict[str, Any], rope: dict[str, Any], model_type: str | None) -> None:
    """Write one flat ``rope_parameters`` dict as 4.57's top-level ``rope_theta``, ``partial_rotary_factor``
    (each under its 4.57 name) and ``rope_scaling`` (``None`` for plain RoPE); keys already there win."""
    names = _V4_NAMES.get(model_type or "", {})
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in rope:
            out.setdefault(names.get(key, key), rope[key])
    if "rope_scaling" in out:
        return
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
    scaling["rope_type"] = rope_type
    if rope_type == "default" and len(scaling) == 1:
        out["rope_scaling"] = None
    elif model_type in _V4_SCALING_FIELDS:
        fields = _V4_SCALING_FIELDS[model_type]
        out["rope_scaling"] = {"type": rope_type, **{k: scaling[k] for k in fields if k in scaling}}
    else:
        out["rope_scaling"] = scaling


def compat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Add the keys transformers 4.x reads next to the 5.x ones, so both versions load the same config.

    transformers 5 writes ``dtype`` and ``rope_parameters``; 4.57 (the compressed-tensors 0.14 reader's
    transformers, and vLLM <= 0.18.1's) reads ``torch_dtype``, ``rope_theta``, ``partial_rotary_factor`` and
    ``rope_scaling`` (GPT-NeoX: ``rotary_emb_base`` and ``rotary_pct``; Phi-3: a ``rope_scaling`` of only
    ``type``/``short_factor``/``long_factor``) and would silently fall back to defaults (rope_theta 10000)
    without them. Gemma 3's per-attention-type ``rope_parameters`` become 4.57's ``rope_theta`` and
    ``rope_scaling`` (full attention) and ``rope_local_base_freq`` (sliding attention). transformers 5 reads
    the result back to the same ``rope_parameters``.
    """
    out = dict(config)
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    rope = out.get("rope_parameters")
    model_type = out.get("model_type")
    if isinstance(rope, dict) and "rope_theta" in rope:
        _v4_rope(out, rope, model_type)
    elif isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):  # Gemma 3
        _v4_rope(out, rope["full_attention"], model_type)
        local = rope.get("sliding_attention")
        if isinstance(local, dict) and "rope_theta" in local:
            out.setdefault("rope_local_base_freq", local["rope_theta"])
    return out


#: tokenizer classes transformers 5 writes that 4.x does not know, and the 4.x class that loads the same files
#: (``tokenizer.json`` through the ``tokenizers`` library); transformers 5 reads the 4.x name as the same class
_V5_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def compat_tokenizer_config(folder: str | os.PathLike[str]) -> bool:
    """Rewrite ``tokenizer_config.json`` in ``folder`` so transformers 4.57 loads it too: transformers 5 names
    a generic fast tokenizer ``TokenizersBackend``, a class 4.x does not have ("Tokenizer class
    TokenizersBackend does not exist"); 4.x's ``PreTrainedTokenizerFast`` reads the same ``tokenizer.json``.

    :return: whether the file was changed (no file, or a class both versions know: unchanged)
    """
    file = Path(folder) / "tokenizer_config.json"
    if not file.is_file():
        return False
    config = read_json(file)
    old = config.get("tokenizer_class") if isinstance(config, dict) else None
    if old not in _V5_TOKENIZER_CLASSES or not (Path(folder) / "tokenizer.json").is_file():
        return False
    config["tokenizer_class"] = _V5_TOKENIZER_CLASSES[old]
    file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return True
