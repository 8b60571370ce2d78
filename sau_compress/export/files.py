"""Files of a checkpoint folder: safetensors (checked headers, tensor reading, sharded writing) and JSON.

Headers are parsed and checked here before safetensors reads anything, so a truncated or corrupt file
fails with a message naming the file and the tensor instead of a bare Rust error.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sau_compress.errors import CorruptCheckpointError, InputNotFoundError

__all__ = [
    "DTYPE_BYTES",
    "INDEX_NAME",
    "SINGLE_NAME",
    "TensorInfo",
    "checkpoint_files",
    "read_header",
    "read_json",
    "read_tensors",
    "tensor_index",
    "write_tensors",
]

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
    "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
TORCH_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what its header says."""

    name: str
    file: Path
    dtype: str  # safetensors code: F32, BF16, U8, ...
    shape: tuple[int, ...]
    nbytes: int

    @property
    def torch_dtype(self) -> str:
        """The torch dtype name (``bfloat16``, ``uint8`` ...) or the raw code when unknown."""
        return TORCH_DTYPE_NAMES.get(self.dtype, self.dtype)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file of a checkpoint folder (``config.json``, the sidecar).

    :raises CorruptCheckpointError: not valid JSON (the message names the file)
    """
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({err})") from err


def read_header(path: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Parse and check one safetensors file's header against the file's size.

    :param path: a ``.safetensors`` file
    :return: tensor name -> :class:`TensorInfo`
    :raises CorruptCheckpointError: truncated file, bad header, or a tensor whose bytes are missing or do not
        match its dtype and shape (the message names the file and the tensor)
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CorruptCheckpointError(
                f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size} bytes)"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(f"{path}: tensor '{name}': corrupt header entry {entry!r}") from err
        if end > data_size:
            raise CorruptCheckpointError(
                f"{path}: truncated: tensor '{name}' needs bytes {begin}..{end} of the data section, "
                f"the file holds {data_size}"
            )
        width = DTYPE_BYTES.get(dtype)
        if width is not None and (end - begin) != width * math.prod(shape):
            raise CorruptCheckpointError(
                f"{path}: tensor '{name}': {end - begin} bytes do not match dtype {dtype} and shape {list(shape)}"
            )
        out[name] = TensorInfo(name, path, dtype, shape, int(end - begin))
    return out


def checkpoint_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint folder (from the index when sharded).

    :raises InputNotFoundError: no ``model.safetensors`` nor index in ``folder``
    :raises CorruptCheckpointError: the index names a missing file
    """
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(f"{index}: not a safetensors index ({err})") from err
        files = [folder / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CorruptCheckpointError(f"{index}: names '{f.name}', which is missing")
        return files
    single = folder / SINGLE_NAME
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise InputNotFoundError(f"no safetensors weights in '{folder}' (expected {SINGLE_NAME} or {INDEX_NAME})")


def tensor_index(folder: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint folder, checked (see :func:`read_header`).

    :raises CorruptCheckpointError: a tensor appears in two files, or a file is corrupt
    """
    out: dict[str, TensorInfo] = {}
    for f in checkpoint_files(folder):
        for name, info in read_header(f).items():
            if name in out:
                raise CorruptCheckpointError(f"{f}: tensor '{name}' also stored in {out[name].file}")
            out[name] = info
    return out


def read_tensors(infos: dict[str, TensorInfo], names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for ``names`` (default all), one file open at a time, on the CPU.

    :param infos: from :func:`tensor_index`
    :param names: which tensors
    """
    wanted = list(infos) if names is None else names
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(infos[name].file, []).append(name)
    for file, file_names in by_file.items():
        try:
            with safe_open(str(file), framework="pt", device="cpu") as fh:
                for name in file_names:
                    yield name, fh.get_tensor(name)
        except CorruptCheckpointError:
            raise
        except Exception as err:  # safetensors raises its own Rust-side error types
            raise CorruptCheckpointError(f"{file}: cannot read tensors ({err})") from err


def write_tensors(
    tensors: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = 5 * 1024**3
) -> dict[str, str]:
    """Write ``tensors`` as ``model.safetensors`` or as shards with an index, in insertion order.

    :param tensors: name -> contiguous CPU tensor (no two sharing memory)
    :param folder: destination folder (exists)
    :param max_shard_bytes: start a new shard past this size
    :return: tensor name -> file name
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append({})
            used = 0
        shards[-1][name] = tensor.detach().cpu().contiguous()
        used += nbytes
    weight_map: dict[str, str] = {}
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE_NAME), metadata={"format": "pt"})
        return dict.fromkeys(shards[0], SINGLE_NAME)
    total = 0
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = fname
            total += tensor.numel() * tensor.element_size()
    (folder / INDEX_NAME).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n"
    )
    return weight_map
