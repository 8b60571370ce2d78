"""Writing checkpoints: ``sparse-24-bitmask`` (compressed-tensors <= 0.14.0.1) and ``dense``.

Both writers work on a plain state dict (what ``save_pretrained`` would store) plus the HF config dict, so a
model in memory (:func:`save_model`) and a folder on disk (:func:`export_checkpoint`) go through the same
code (:func:`sau_compress.export.convert.convert`). Every output is written into a temporary folder, re-read
and compared with its source bit for bit, then renamed into place (:func:`sau_compress.io.atomic_output_dir`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from torch import nn

from sau_compress import __version__
from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.export.bitmask import bits_equal
from sau_compress.export.config import (
    check_format,
    compat_tokenizer_config,
    has_quantization,
    quantization_format,
    read_config,
    source_format,
)
from sau_compress.export.convert import convert
from sau_compress.export.files import INDEX_NAME, checkpoint_files, read_json, write_tensors
from sau_compress.export.metadata import (
    SIDECAR_NAME,
    build_sidecar,
    jsonable,
    pop_config_record,
    read_metadata_file,
    read_sidecar,
)
from sau_compress.export.read import read_state_dict
from sau_compress.export.state import (
    checkpoint_names,
    dedup_state_dict,
    linear_names,
    linear_names_from_config,
    quantized_state,
)
from sau_compress.io import atomic_output_dir

__all__ = ["export_checkpoint", "export_model", "save_model"]

# files of a model folder that the writer produces itself (never copied from a source folder)
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_REWRITTEN = {"config.json", INDEX_NAME, SIDECAR_NAME, "pytorch_model.bin.index.json"}


def _verify(folder: Path, expected: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Re-read ``folder`` and compare every tensor with ``expected`` bit for bit (zeros as +0.0)."""
    written = json.loads((folder / "config.json").read_text())
    if written != json.loads(json.dumps(config)):
        raise RuntimeError(f"verification failed: {folder / 'config.json'} does not hold the config written")
    back = read_state_dict(folder)
    missing = sorted(set(expected) - set(back))
    extra = sorted(set(back) - set(expected))
    if missing or extra:
        raise RuntimeError(f"verification failed in {folder}: missing tensors {missing[:5]}, extra {extra[:5]}")
    for name, tensor in expected.items():
        if not bits_equal(back[name], tensor.detach().cpu()):
            raise RuntimeError(f"verification failed in {folder}: tensor '{name}' differs after the round trip")


def _write(
    tmp: Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    linear: list[str] | None,
    fmt: str,
    metadata: dict[str, Any] | None,
    source: str | None,
    max_shard_bytes: int,
) -> dict[str, Any]:
    """Convert, write and verify the weights and ``config.json`` into ``tmp``, then write the sidecar.

    :return: the sidecar dict
    """
    started = time.perf_counter()
    if not config.get("dtype") and not config.get("torch_dtype"):
        floats = [t.dtype for t in state.values() if t.is_floating_point()]
        if floats:
            config = {**config, "dtype": str(floats[0]).removeprefix("torch.")}
    out = convert(state, config, linear, fmt)
    weight_map = write_tensors(out.tensors, tmp, max_shard_bytes=max_shard_bytes)
    (tmp / "config.json").write_text(json.dumps(out.config, indent=2, sort_keys=True) + "\n")
    _verify(tmp, state, out.config)
    files = sorted(set(weight_map.values()))
    sidecar = build_sidecar(
        fmt=fmt,
        layers=out.layers,
        compressed=out.compressed,
        quantization=quantization_format(out.config),
        weight_bytes=sum((tmp / f).stat().st_size for f in files),
        metadata=metadata,
        source=source,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        version=__version__,
    )
    (tmp / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    logger.info(f"wrote {fmt} checkpoint: {len(out.compressed)} layer(s) compressed, {len(files)} file(s), "
                f"{sidecar['weight_bytes'] / 1e6:.2f} MB, verified in {time.perf_counter() - started:.1f}s")
    return sidecar


def save_model(
    model: nn.Module,
    tokenizer: Any,
    output: str | os.PathLike[str],
    format: str = "sparse-24-bitmask",
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 1024**3,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a transformers model (and tokenizer) as a ``sparse-24-bitmask`` or ``dense`` checkpoint.

    ``sparse-24-bitmask`` stores every 2:4 Linear weight as ``compressed``/``bitmask``/``shape`` and lists
    the other Linear layers in ``sparsity_config.ignore``; all other tensors are stored unchanged.
    ``dense`` stores plain safetensors (a model quantized by llmcompressor in its compressed-tensors
    quantized format) with no sparsity targets in ``quantization_config``. Both write the sidecar
    ``sau_compress.json`` (per-layer sparsity and structure, and ``metadata``: recipe, unlearning record).

    :param model: a transformers ``PreTrainedModel`` (any device; read, never modified)
    :param tokenizer: saved next to the weights when not None
    :param output: the folder to create
    :param format: ``sparse-24-bitmask`` or ``dense``
    :param metadata: JSON-able extras for the sidecar (``recipe``, ``unlearning``, anything else)
    :param overwrite: replace an existing ``output``
    :param max_shard_bytes: shard the weights past this size
    :param state: the model's tensors when the model does not hold them whole (a sharded model's, gathered
        to one process), under the model's own names; default: the model's state dict
    :return: the output folder
    :raises UserError: unknown format; sparse-24-bitmask of a quantized model or of a model with no 2:4 layer
    :raises sau_compress.errors.OutputExistsError: ``output`` exists and ``overwrite`` is false
    :raises TypeError: ``model`` is not a transformers model; ``metadata`` is not JSON-able
    """
    check_format(format)
    if not hasattr(model, "config"):
        raise TypeError(f"save_model needs a transformers model with a config, got {type(model).__name__}")
    metadata = jsonable(metadata or {}, "metadata")
    quantized = quantized_state(model) if state is None else None
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("quantization_config", None)
    left = pop_config_record(config)  # the modifier's record moves into the sidecar
    if left is not None and left.get("unlearning") is not None:
        metadata.setdefault("unlearning", left["unlearning"])
    if isinstance(getattr(model, "dtype", None), torch.dtype):
        config["dtype"] = str(model.dtype).removeprefix("torch.")  # as save_pretrained records it
    if quantized is not None:
        state, qc = quantized
        config["quantization_config"] = qc
    else:
        state = dedup_state_dict(model, state)
    state, renamed = checkpoint_names(model, state)
    state = {k: v.detach().cpu() for k, v in state.items()}
    linear = [renamed.get(name, name) for name in linear_names(model)]
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        _write(tmp, state, config, linear, format, metadata,
               source=getattr(model, "name_or_path", None) or None, max_shard_bytes=max_shard_bytes)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            compat_tokenizer_config(tmp)  # transformers 4.57 (the sparse format's readers) loads it too
    out = Path(output).expanduser().absolute()
    logger.info(f"saved {format} model to {out}")
    return out


def export_checkpoint(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str = "sparse-24-bitmask",
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Convert a model folder (plain HF, compressed-tensors quantized, or ours) into ``format``.

    Works on the files: tensors keep their bits and dtype; tokenizer, generation config and other files
    are copied; an existing sidecar's ``recipe``/``unlearning`` record is kept unless ``metadata`` replaces
    it. The source folder is only read.

    :param source: model folder
    :param output: folder to create (must differ from ``source``)
    :param format: ``sparse-24-bitmask`` or ``dense``
    :param metadata: JSON-able extras for the sidecar
    :param overwrite: replace an existing ``output``
    :param max_shard_bytes: shard the weights past this size
    :return: the output folder
    :raises InputNotFoundError: no ``source`` folder, or one without ``config.json`` or safetensors weights
    :raises sau_compress.errors.CorruptCheckpointError: a corrupt file or tensor of ``source`` (named)
    :raises UserError: unknown format, a source format we cannot read, ``output`` inside ``source``, or a
        state that ``format`` cannot store (see :func:`save_model`)
    :raises sau_compress.errors.OutputExistsError: ``output`` exists and ``overwrite`` is false
    """
    check_format(format)
    src = Path(source).expanduser().absolute()
    dst = Path(output).expanduser().absolute()
    if not src.is_dir():
        raise InputNotFoundError(f"source model folder '{src}' does not exist")
    if dst == src or src in dst.parents:
        raise UserError(f"output '{dst}' must not be the source folder '{src}' or inside it")
    config = read_config(src)
    fmt = source_format(config, src)
    checkpoint_files(src)  # a clear error for a folder without safetensors weights
    state = read_state_dict(src)
    if fmt is not None and not has_quantization(config):
        config = {k: v for k, v in config.items() if k != "quantization_config"}
    extra = jsonable(metadata or {}, "metadata")
    previous = read_sidecar(src)
    if previous is not None:
        for key in ("recipe", "unlearning", "unlearning_history"):
            if previous.get(key) is not None and key not in extra:
                extra[key] = previous[key]
        for key, value in (previous.get("metadata") or {}).items():
            extra.setdefault(key, value)
    # a folder saved by llmcompressor's own path carries the modifier's record in config.json instead
    left = pop_config_record(config)
    if left is not None and left.get("unlearning") is not None:
        extra.setdefault("unlearning", left["unlearning"])
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        _write(tmp, state, config, linear_names_from_config(config), format, extra, source=str(src),
               max_shard_bytes=max_shard_bytes)
        for item in sorted(src.iterdir()):
            if item.name in _REWRITTEN or item.name.endswith(_WEIGHT_FILE_SUFFIXES) or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        compat_tokenizer_config(tmp)
    logger.info(f"exported {src} -> {dst} ({format})")
    return dst


def export_model(source: str | os.PathLike[str], output: str | os.PathLike[str], *, format: str = "sparse-24-bitmask",
                 metadata: Mapping[str, Any] | str | os.PathLike[str] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Export a model folder (:func:`export_checkpoint`) and describe the result: what ``sau-compress export``
    prints.

    :param source: model folder (a name such as ``toy`` is resolved by the caller)
    :param output: folder to create
    :param format: ``sparse-24-bitmask`` or ``dense``
    :param metadata: extras for the sidecar: a dict, or the path of a JSON file holding one object
    :param overwrite: replace an existing ``output``
    :return: the sidecar written (:data:`SIDECAR_NAME`), with ``output`` (the folder, absolute) added
    :raises UserError: as :func:`export_checkpoint`, and a metadata file that is missing or not a JSON object
    """
    check_format(format)
    extra = read_metadata_file(metadata) if isinstance(metadata, (str, os.PathLike)) else metadata
    out = export_checkpoint(source, output, format=format, metadata=None if extra is None else dict(extra),
                            overwrite=overwrite)
    result = read_json(out / SIDECAR_NAME)
    result["output"] = str(out)
    return result
