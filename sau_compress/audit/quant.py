"""Round-to-nearest fake quantization with compressed-tensors' definitions, in plain torch.

An audit asks what a served, quantized copy of an unlearned model still knows. The schemes are the presets
llmcompressor's ``QuantizationModifier`` applies (compressed-tensors 0.19 ``preset_name_to_scheme``):

- ``W4A16``: int4 weights, symmetric, one scale per group of 128 input columns (``strategy: group``);
- ``W8A16``: int8 weights, symmetric, one scale per group of 128 input columns (``strategy: group``);
- ``FP8_DYNAMIC``: float8 e4m3 weights with one scale per output channel, and float8 e4m3 activations with
  one scale per token, computed on the fly (``dynamic: true``).

As in compressed-tensors (``calculate_qparams``, ``fake_quantize``): ``scale = max|w| / (range / 2)`` over
the scale's group, with ``range = q_max - q_min`` (int4: 15, int8: 255, fp8 e4m3: 896); the code is
``clamp(w / scale, q_min, q_max)`` rounded to the type (``torch.round`` for ints, a cast to
``float8_e4m3fn`` for fp8) and the weight seen by the model is ``code * scale``. So an int4 group holds at
most 16 distinct values and an int8 group at most 256. A last group narrower than 128 columns (a layer
whose width is not a multiple of 128) gets its own scale; compressed-tensors itself needs the width to be a
multiple of the group size. Nothing here imports llmcompressor; the tests
check these values against compressed-tensors' own ``fake_quantize`` where it is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "QUANT_SCHEMES",
    "QuantScheme",
    "fake_quantize_tokens",
    "fake_quantize_weight",
    "quant_range",
]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448


@dataclass(frozen=True)
class QuantScheme:
    """One weight (and optional activation) quantization scheme.

    :ivar name: compressed-tensors' preset name
    :ivar num_bits: bits per weight code
    :ivar kind: ``int`` or ``float``
    :ivar group_size: columns per scale (``None``: one scale per output channel)
    :ivar dynamic_activations: also fake-quantize every target layer's input per token, in the same type
    """

    name: str
    num_bits: int
    kind: str
    group_size: int | None = None
    dynamic_activations: bool = False


#: attack name -> scheme
QUANT_SCHEMES: dict[str, QuantScheme] = {
    "quant-fp8": QuantScheme("FP8_DYNAMIC", 8, "float", None, dynamic_activations=True),
    "quant-int8": QuantScheme("W8A16", 8, "int", 128),
    "quant-int4": QuantScheme("W4A16", 4, "int", 128),
}


def quant_range(num_bits: int, kind: str) -> tuple[float, float]:
    """``(q_min, q_max)`` of a code type: ints ``[-2^(b-1), 2^(b-1) - 1]``, fp8 e4m3 ``[-448, 448]``."""
    if kind == "float":
        if num_bits != 8:
            raise ValueError(f"only 8-bit floats (e4m3) are supported, got {num_bits} bits")
        return -FP8_MAX, FP8_MAX
    if kind != "int":
        raise ValueError(f"kind must be 'int' or 'float', got {kind!r}")
    return float(-(2 ** (num_bits - 1))), float(2 ** (num_bits - 1) - 1)


def _round(codes: torch.Tensor, kind: str) -> torch.Tensor:
    return codes.to(FP8_DTYPE).to(codes.dtype) if kind == "float" else torch.round(codes)


def _scales(absmax: torch.Tensor, num_bits: int, kind: str) -> torch.Tensor:
    q_min, q_max = quant_range(num_bits, kind)
    scales = absmax / ((q_max - q_min) / 2)
    return torch.where(scales == 0, torch.finfo(scales.dtype).eps, scales)  # an all-zero group: no division by 0


def fake_quantize_weight(weight: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a ``[out, in]`` weight to ``scheme`` and back (symmetric round-to-nearest).

    :return: the dequantized weight (``weight``'s dtype) and the scales, ``[out, groups]`` (``groups`` = 1
        per channel); column ``j`` of the weight uses scale column ``j // group_size``
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    out_f, in_f = w.shape
    group = scheme.group_size or in_f
    q_min, q_max = quant_range(scheme.num_bits, scheme.kind)
    pieces, scales = [], []
    for start in range(0, in_f, group):
        part = w[:, start : start + group]
        scale = _scales(part.abs().amax(dim=1, keepdim=True), scheme.num_bits, scheme.kind)
        codes = _round((part / scale).clamp(q_min, q_max), scheme.kind)
        pieces.append(codes * scale)
        scales.append(scale)
    return torch.cat(pieces, dim=1).to(weight.dtype), torch.cat(scales, dim=1)


def fake_quantize_tokens(x: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Dynamic per-token fake quantization of activations ``[..., features]`` (one scale per token)."""
    q_min, q_max = quant_range(scheme.num_bits, scheme.kind)
    xf = x.float()
    scale = _scales(xf.abs().amax(dim=-1, keepdim=True), scheme.num_bits, scheme.kind)
    return (_round((xf / scale).clamp(q_min, q_max), scheme.kind) * scale).to(x.dtype)
