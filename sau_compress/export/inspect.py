"""``inspect``: what a checkpoint folder holds, layer by layer, and which vLLM can serve it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sau_compress.errors import CorruptCheckpointError
from sau_compress.export.bitmask import unpack_24_bitmask
from sau_compress.export.config import (
    SPARSE_FORMAT,
    has_quantization,
    quantization_format,
    read_config,
    sparsity_format,
)
from sau_compress.export.convert import fused_mismatches, is_two_four, zero_fraction
from sau_compress.export.files import read_tensors, tensor_index
from sau_compress.export.metadata import read_sidecar, vllm_support
from sau_compress.export.state import COMPRESSED_SUFFIXES, compressed_prefixes, linear_names_from_config

__all__ = ["inspect_checkpoint"]


def inspect_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a model folder: format, per-layer shape/sparsity/2:4 validity/bytes, totals, serving.

    Every weight is read (and decompressed) once to count its zeros; the files are only read.

    :param path: model folder
    :return: JSON-able dict with ``format``, ``quantization``, ``layers`` (list of per-layer dicts), ``totals``,
        ``vllm`` (one line per version range), ``warnings`` and the sidecar's ``unlearning`` record if any
    :raises CorruptCheckpointError: a corrupt file or tensor (named)
    """
    folder = Path(path).expanduser()
    config = read_config(folder)
    infos = tensor_index(folder)
    sparse_fmt = sparsity_format(config)
    sc = (config.get("quantization_config") or {}).get("sparsity_config") or {}
    fmt = SPARSE_FORMAT if sparse_fmt == SPARSE_FORMAT else "dense"
    quant = quantization_format(config)
    linear = linear_names_from_config(config)
    prefixes = compressed_prefixes(infos)
    if linear is None:
        linear = sorted({n[: -len(".weight")] for n, i in infos.items() if n.endswith(".weight") and len(i.shape) == 2}
                        | set(prefixes))
    layers: list[dict[str, Any]] = []
    stored_bytes = 0
    dense_bytes = 0
    for name in linear:
        if name in prefixes:
            parts = {s: infos[f"{name}.{s}"] for s in COMPRESSED_SUFFIXES if f"{name}.{s}" in infos}
            if len(parts) != 3:
                raise CorruptCheckpointError(f"{infos[name + '.compressed'].file}: '{name}' lacks bitmask or shape")
            tensors = dict(read_tensors(infos, [f"{name}.{s}" for s in COMPRESSED_SUFFIXES]))
            weight = unpack_24_bitmask(tensors[f"{name}.compressed"], tensors[f"{name}.bitmask"],
                                       tensors[f"{name}.shape"], f"{parts['compressed'].file}: {name}")
            nbytes = sum(p.nbytes for p in parts.values())
            stored = SPARSE_FORMAT
            dtype = parts["compressed"].torch_dtype
        elif f"{name}.weight" in infos:
            info = infos[f"{name}.weight"]
            weight = dict(read_tensors(infos, [info.name]))[info.name]
            nbytes = info.nbytes
            stored = quant or "dense"
            dtype = info.torch_dtype
        else:
            continue  # tied to another tensor, or packed by a quantization format (weight_packed)
        full = weight.numel() * weight.element_size()
        stored_bytes += nbytes
        dense_bytes += full
        layers.append({
            "name": name,
            "shape": list(weight.shape),
            "dtype": dtype,
            "stored": stored,
            "sparsity": zero_fraction(weight),
            "is_2of4": is_two_four(weight),
            "bytes": nbytes,
            "dense_bytes": full,
        })
    total_bytes = sum(i.nbytes for i in infos.values())
    weight_count = sum(layer["dense_bytes"] for layer in layers)
    zeros = sum(layer["sparsity"] * layer["dense_bytes"] for layer in layers)
    warnings = []
    if fmt == SPARSE_FORMAT:
        compressed = {layer["name"] for layer in layers if layer["stored"] == SPARSE_FORMAT}
        warnings += [f"vLLM needs fused layers to share a scheme: {line}"
                     for line in fused_mismatches(compressed, {layer["name"] for layer in layers})]
    sidecar = None
    try:
        sidecar = read_sidecar(folder)
    except CorruptCheckpointError as err:
        warnings.append(str(err))
    return {
        "path": str(folder.absolute()),
        "format": fmt,
        "quantization": quant,
        "sparsity_config": sc or None,
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "layers": layers,
        "totals": {
            "tensors": len(infos),
            "weight_bytes": total_bytes,
            "file_bytes": sum(f.stat().st_size for f in {i.file for i in infos.values()}),
            "linear_bytes": stored_bytes,
            "linear_dense_bytes": dense_bytes,
            "linear_ratio": stored_bytes / dense_bytes if dense_bytes else 1.0,
            "linear_sparsity": zeros / weight_count if weight_count else 0.0,
            "layers": len(layers),
            "layers_2of4": sum(layer["is_2of4"] for layer in layers),
            "layers_compressed": sum(layer["stored"] == SPARSE_FORMAT for layer in layers),
        },
        "vllm": vllm_support(fmt, quant, sparsity_targets=bool(sc.get("targets")) and fmt == "dense"),
        "warnings": warnings,
        "unlearning": (sidecar or {}).get("unlearning"),
        "has_sidecar": sidecar is not None,
        "quantized": has_quantization(config),
    }

