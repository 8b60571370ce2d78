"""From a plain state dict and its HF config to what an export format stores: tensors, config, layer records.

No files are touched here; :mod:`sau_compress.export.write` writes and verifies the result.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from loguru import logger
from tqdm import tqdm

from sau_compress.errors import UserError
from sau_compress.export.bitmask import pack_24_bitmask
from sau_compress.export.config import (
    CT_FORMAT_VERSION,
    QUANT_METHOD,
    SPARSE_FORMAT,
    compat_config,
    has_quantization,
    quantization_format,
)
from sau_compress.masking import all_2of4, nonzero_mask

__all__ = ["Converted", "convert", "fused_mismatches", "is_two_four", "layer_sparsity_record", "zero_fraction"]

# the layer groups vLLM fuses into one kernel, which must therefore share one scheme
_FUSED = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})


class Converted(NamedTuple):
    """What :func:`convert` returns."""

    tensors: dict[str, torch.Tensor]  # to write, in order
    config: dict[str, Any]  # the config.json to write
    layers: dict[str, dict[str, Any]]  # Linear layer name -> :func:`layer_sparsity_record`
    compressed: list[str]  # the layers stored as sparse-24-bitmask


def zero_fraction(weight: torch.Tensor) -> float:
    """Fraction of the entries of ``weight`` that are zero (:func:`sau_compress.masking.nonzero_mask`; 0.0 when
    empty)."""
    if not weight.numel():
        return 0.0
    return 1.0 - int(nonzero_mask(weight).sum()) / weight.numel()


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether one weight is 2:4 sparse (:func:`sau_compress.masking.all_2of4`): a shape that cannot hold the
    pattern (not 2-D, ``in % 4 != 0``) is ``False``, not an error."""
    return all_2of4([weight])


def layer_sparsity_record(weight: torch.Tensor) -> dict[str, Any]:
    """The sidecar's record of one Linear weight: shape, dtype, fraction of zeros, 2:4 validity and structure
    (``2:4``, ``unstructured`` or ``dense``)."""
    sparsity = zero_fraction(weight)
    two_four = is_two_four(weight)
    if two_four and sparsity > 0:
        structure = "2:4"
    elif sparsity > 0:
        structure = "unstructured"
    else:
        structure = "dense"
    return {"shape": list(weight.shape), "dtype": str(weight.dtype).removeprefix("torch."),
            "sparsity": sparsity, "is_2of4": two_four, "structure": structure}


def fused_mismatches(compressed: set[str], layers: set[str]) -> list[str]:
    """Groups vLLM fuses (q/k/v, gate/up) whose members are not all compressed or all dense."""
    out = []
    parents = {name.rpartition(".")[0] for name in layers}
    for parent in sorted(parents):
        for group in _FUSED:
            members = {f"{parent}.{m}" for m in group} & layers
            if len(members) > 1 and 0 < len(members & compressed) < len(members):
                out.append(f"{parent}: {', '.join(sorted(m.rpartition('.')[2] for m in members & compressed))} "
                           f"2:4 but {', '.join(sorted(m.rpartition('.')[2] for m in members - compressed))} not")
    return out


def convert(state: dict[str, torch.Tensor], config: dict[str, Any], linear: list[str] | None, fmt: str) -> Converted:
    """Turn a plain (possibly quantized) state dict + config into the tensors and config of ``fmt``.

    ``sparse-24-bitmask`` stores every 2:4 Linear weight as ``compressed``/``bitmask``/``shape`` and lists the
    other Linear layers in ``sparsity_config.ignore``; ``dense`` keeps the tensors and any quantization, with no
    sparsity targets.

    :param state: name -> CPU tensor
    :param config: the HF config dict (with the ``quantization_config`` of a quantized state)
    :param linear: the Linear layer names; None = the 2-D ``*.weight`` tensors inside decoder layers
    :param fmt: a checked format name (:func:`sau_compress.export.config.check_format`)
    :raises UserError: ``sparse-24-bitmask`` of a quantized state, or of a state with no 2:4 Linear layer
    """
    if linear is None:  # unknown architecture: 2-D weights inside decoder layers
        linear = [n[: -len(".weight")] for n, t in state.items()
                  if n.endswith(".weight") and t.dim() == 2 and ".layers." in n]
    present = [name for name in linear if f"{name}.weight" in state]
    records = {name: layer_sparsity_record(state[f"{name}.weight"]) for name in present}
    qc = dict(config.get("quantization_config") or {})
    quantized = has_quantization(config)
    out_config = compat_config({k: v for k, v in config.items() if k != "quantization_config"})

    if fmt == "dense":
        if quantized:
            qc["sparsity_config"] = {}  # keep the quantization, drop the sparsity targets current vLLM refuses
            out_config["quantization_config"] = qc
        return Converted(dict(state), out_config, records, [])

    if quantized:
        raise UserError(
            f"format '{SPARSE_FORMAT}' of a quantized checkpoint ({quantization_format(config)}) is not supported; "
            "export it with format 'dense' (the quantization is kept)"
        )
    compressed_layers = [name for name in present if records[name]["is_2of4"]]
    if not compressed_layers:
        raise UserError(
            f"no Linear layer is 2:4 sparse (checked {len(present)}), so '{SPARSE_FORMAT}' would store nothing "
            "compressed; prune with a 2:4 recipe or export with format 'dense'"
        )
    compressed_set = set(compressed_layers)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in tqdm(state.items(), desc="packing 2:4 layers", unit="tensor", leave=False):
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix in compressed_set:
            values, bitmask, shape = pack_24_bitmask(tensor, name=name)
            tensors[f"{prefix}.bitmask"] = bitmask
            tensors[f"{prefix}.compressed"] = values
            tensors[f"{prefix}.shape"] = shape
        else:
            tensors[name] = tensor
    ignore = sorted(set(linear) - compressed_set)
    floating = [t for t in state.values() if t.is_floating_point()]
    total = sum(t.numel() for t in floating)
    zeros = sum(t.numel() - int(nonzero_mask(t).sum()) for t in floating)
    out_config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "version": CT_FORMAT_VERSION,
        "sparsity_config": {
            "format": SPARSE_FORMAT,
            "global_sparsity": zeros / total if total else 0.0,
            "sparsity_structure": "2:4",
            "targets": ["Linear"],
            "ignore": ignore,
            "registry_requires_subclass": False,
        },
        "transform_config": {},
    }
    for line in fused_mismatches(compressed_set, set(present)):
        logger.warning(f"vLLM fuses these layers and needs one scheme for all of them: {line}")
    return Converted(tensors, out_config, records, compressed_layers)
