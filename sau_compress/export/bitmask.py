"""The ``sparse-24-bitmask`` tensor layout of compressed-tensors (<= 0.14.0.1): pack and unpack one weight.

Pure tensor math (torch only; what counts as zero is :func:`sau_compress.masking.nonzero_mask`). A weight
``[rows, cols]`` whose groups of 4 consecutive entries along the input (column) dimension hold at most 2
non-zeros is stored as

- ``compressed``: ``[rows, cols / 2]``, the 2 kept values of every group in row-major order, in the weight's
  dtype (float8 weights are gathered through an int8 view of their bytes);
- ``bitmask``: ``uint8 [rows, ceil(cols / 8)]``, one bit per entry, packed little-endian along each row
  (bit ``j`` of byte ``k`` is column ``8k + j``; numpy ``packbits(bitorder="little")``), exactly 2 bits set
  per group;
- ``shape``: ``int64 [2, 1]`` holding ``[rows, cols]``.

A group with fewer than 2 non-zeros stores explicit zeros: its non-zeros first, then its lowest-index zeros.
Decompression puts the stored values back and ``+0.0`` elsewhere, so every value is reproduced bit for bit;
a ``-0.0`` at a position that is not stored comes back as ``+0.0`` (equal as a number, no effect on matmul).
"""

from __future__ import annotations

import torch

from sau_compress.errors import CorruptCheckpointError
from sau_compress.masking import FP8_DTYPES, nonzero_mask

__all__ = [
    "BITMASK_DTYPE",
    "SHAPE_DTYPE",
    "bits_equal",
    "canonical_zeros",
    "pack_24_bitmask",
    "unpack_24_bitmask",
]

BITMASK_DTYPE = torch.uint8
SHAPE_DTYPE = torch.int64


def _int_view(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``tensor`` as a signed integer tensor of the same element size."""
    size = tensor.element_size()
    return tensor.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size])


def canonical_zeros(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with every ``-0.0`` replaced by ``+0.0`` (what a round trip through the format returns)."""
    if weight.dtype.is_floating_point and weight.dtype not in FP8_DTYPES:
        return torch.where(weight == 0, torch.zeros((), dtype=weight.dtype, device=weight.device), weight)
    if weight.dtype in FP8_DTYPES:
        raw = weight.view(torch.int8)
        return torch.where(raw == -128, torch.zeros((), dtype=torch.int8, device=raw.device), raw).view(weight.dtype)
    return weight


def _group_codes(weight: torch.Tensor, name: str) -> torch.Tensor:
    """4-bit code of each group of 4 along the input dim (bit ``j`` set = column ``4g + j`` is non-zero).

    :return: int32 ``[rows, cols / 4]``
    :raises ValueError: the weight is not 2-D or ``cols % 4 != 0``
    """
    if weight.dim() != 2:
        raise ValueError(f"{name}: sparse-24-bitmask needs a 2-D weight, got shape {list(weight.shape)}")
    rows, cols = weight.shape
    if cols % 4 != 0:
        raise ValueError(f"{name}: sparse-24-bitmask needs cols % 4 == 0, got shape {[rows, cols]}")
    # the 4 bool bytes of a group read as one little-endian int32: byte j holds column j's flag
    v = nonzero_mask(weight).contiguous().view(torch.uint8).view(torch.int32).view(rows, cols // 4)
    return (v & 1) | ((v >> 7) & 2) | ((v >> 14) & 4) | ((v >> 21) & 8)


def _tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lookup tables: over the 16 group codes (popcount, code kept on write, kept column indices) and over
    the 256 bitmask bytes (the byte's 8 flags as 8 bool bytes in one int64, bits set per nibble)."""
    popcount = torch.tensor([c.bit_count() for c in range(16)], dtype=torch.uint8)
    keep = torch.zeros(16, dtype=torch.uint8)
    for code in range(16):
        bits = [(code >> j) & 1 for j in range(4)]
        need = 2 - sum(bits)
        for j in range(4):  # fill up to 2 with the lowest-index zeros (codes with > 2 bits are rejected first)
            if need > 0 and not bits[j]:
                bits[j], need = 1, need - 1
        keep[code] = sum(b << j for j, b in enumerate(bits))
    index = torch.zeros(16, 2, dtype=torch.int64)
    for code in range(16):
        cols = [j for j in range(4) if (code >> j) & 1]
        if len(cols) == 2:
            index[code] = torch.tensor(cols)
    flags = torch.tensor([[(byte >> j) & 1 for j in range(8)] for byte in range(256)], dtype=torch.uint8)
    byte_flags = flags.view(torch.int64).view(256)
    nibble_bits = torch.stack([popcount[torch.arange(256) & 15], popcount[torch.arange(256) >> 4]], dim=-1)
    return popcount, keep, index, byte_flags, nibble_bits


_POPCOUNT, _KEEP, _INDEX, _BYTE_FLAGS, _NIBBLE_BITS = _tables()


def pack_24_bitmask(weight: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compress a 2:4 sparse weight into ``(compressed, bitmask, shape)``.

    :param weight: ``[rows, cols]``, ``cols % 4 == 0``, at most 2 non-zeros per group of 4 columns
    :param name: tensor name used in errors
    :return: ``compressed [rows, cols/2]`` (weight dtype), ``bitmask uint8 [rows, ceil(cols/8)]``,
        ``shape int64 [2, 1]``; all on the CPU
    :raises ValueError: the weight is not 2-D, ``cols % 4 != 0`` or a group holds more than 2 non-zeros
    """
    weight = weight.detach().cpu().contiguous()
    codes = _group_codes(weight, name)
    rows, groups = codes.shape
    bad = _POPCOUNT[codes] > 2
    if bool(bad.any()):
        row, group = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: not 2:4 sparse, {int(bad.sum())} group(s) of 4 hold more than 2 non-zeros "
            f"(first at row {row}, columns {4 * group}..{4 * group + 3}); export it with format 'dense'"
        )
    keep = _KEEP[codes]  # the non-zeros, then each group's lowest-index zeros, exactly 2 per group
    raw = weight.view(torch.int8) if weight.dtype in FP8_DTYPES else weight
    compressed = torch.gather(raw.view(rows, groups, 4), -1, _INDEX[keep.long()]).view(rows, groups * 2)
    if weight.dtype in FP8_DTYPES:
        compressed = compressed.view(weight.dtype)
    # two groups per byte, little-endian: group 2k in bits 0..3, group 2k+1 in bits 4..7
    if groups % 2:
        keep = torch.nn.functional.pad(keep, (0, 1))
    pairs = keep.view(rows, -1, 2)
    bitmask = (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()
    shape = torch.tensor([[rows], [groups * 4]], dtype=SHAPE_DTYPE)
    return compressed, bitmask, shape


def _shape_from_tensor(shape: torch.Tensor | list[int] | tuple[int, ...], where: str) -> tuple[int, int]:
    if isinstance(shape, torch.Tensor):
        if shape.is_floating_point() or shape.numel() != 2:
            raise CorruptCheckpointError(
                f"{where}.shape: expected 2 integers [rows, cols], got dtype {shape.dtype} "
                f"with {shape.numel()} element(s)"
            )
        values = [int(v) for v in shape.flatten().tolist()]
    else:
        values = [int(v) for v in shape]
        if len(values) != 2:
            raise CorruptCheckpointError(f"{where}.shape: expected [rows, cols], got {values}")
    rows, cols = values
    if rows <= 0 or cols <= 0 or cols % 4 != 0:
        raise CorruptCheckpointError(
            f"{where}.shape: [{rows}, {cols}] is not a valid 2:4 weight shape (positive, cols % 4 == 0)"
        )
    return rows, cols


def unpack_24_bitmask(
    compressed: torch.Tensor,
    bitmask: torch.Tensor,
    shape: torch.Tensor | list[int] | tuple[int, ...],
    where: str = "weight",
) -> torch.Tensor:
    """Decompress ``(compressed, bitmask, shape)`` back to the dense ``[rows, cols]`` weight.

    Every input is checked, so a corrupt file fails with a message naming ``where`` rather than a wrong
    model: shapes and dtypes, exactly 2 bits per group of 4, no stray bits past ``cols``.

    :param compressed: ``[rows, cols/2]`` kept values
    :param bitmask: ``uint8 [rows, ceil(cols/8)]`` packed little-endian along rows
    :param shape: ``[rows, cols]`` as a tensor (any integer shape holding 2 values) or a sequence
    :param where: ``file: tensor prefix`` named in errors
    :return: the dense weight, dtype of ``compressed``, on the CPU
    :raises CorruptCheckpointError: the three tensors do not form a valid 2:4 weight
    """
    rows, cols = _shape_from_tensor(shape, where)
    if bitmask.dtype != BITMASK_DTYPE:
        raise CorruptCheckpointError(f"{where}.bitmask: expected dtype uint8, got {bitmask.dtype}")
    packed_cols = (cols + 7) // 8
    if tuple(bitmask.shape) != (rows, packed_cols):
        raise CorruptCheckpointError(
            f"{where}.bitmask: shape {list(bitmask.shape)} does not match shape [{rows}, {cols}] "
            f"(expected [{rows}, {packed_cols}])"
        )
    if tuple(compressed.shape) != (rows, cols // 2):
        raise CorruptCheckpointError(
            f"{where}.compressed: shape {list(compressed.shape)} does not match shape [{rows}, {cols}] "
            f"(expected [{rows}, {cols // 2}])"
        )
    packed = bitmask.detach().cpu().contiguous()
    groups = cols // 4
    as_index = packed.long()
    per_nibble = _NIBBLE_BITS[as_index].view(rows, -1)  # bits set in group 2k, 2k+1 of each byte
    if groups % 2:
        stray = per_nibble[:, -1] != 0
        if bool(stray.any()):
            row = int(stray.nonzero()[0])
            raise CorruptCheckpointError(f"{where}.bitmask: row {row} has bits set past column {cols - 1}")
        per_nibble = per_nibble[:, :groups]
    bad = per_nibble != 2
    if bool(bad.any()):
        row, group = (int(i) for i in bad.nonzero()[0])
        raise CorruptCheckpointError(
            f"{where}.bitmask: {int(bad.sum())} group(s) of 4 do not have exactly 2 bits set (first at row "
            f"{row}, columns {4 * group}..{4 * group + 3}: {int(per_nibble[row, group])} bits)"
        )
    keep = _BYTE_FLAGS[as_index].view(torch.uint8).view(torch.bool).view(rows, -1)  # [rows, 8 * ceil(cols/8)]
    values = compressed.detach().cpu().contiguous()
    fp8 = values.dtype in FP8_DTYPES
    raw = values.view(torch.int8) if fp8 else values
    dense = torch.zeros(keep.shape, dtype=raw.dtype)
    dense.masked_scatter_(keep, raw)
    if keep.shape[1] != cols:
        dense = dense[:, :cols].contiguous()
    return dense.view(values.dtype) if fp8 else dense


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` have the same shape, dtype and bits, zeros compared as ``+0.0``."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.bool or not (a.dtype.is_floating_point or a.dtype in FP8_DTYPES):
        return torch.equal(a, b)
    return torch.equal(_int_view(canonical_zeros(a)), _int_view(canonical_zeros(b)))
