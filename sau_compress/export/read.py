"""Reading checkpoints: every tensor of a folder (``sparse-24-bitmask`` layers decompressed), or a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sau_compress.errors import CorruptCheckpointError
from sau_compress.export.bitmask import unpack_24_bitmask
from sau_compress.export.config import has_quantization, read_config, source_format
from sau_compress.export.files import read_tensors, tensor_index
from sau_compress.export.state import COMPRESSED_SUFFIXES, compressed_prefixes

__all__ = ["load_model", "read_state_dict"]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, sparse-24-bitmask layers decompressed to ``P.weight``.

    :param path: model folder
    :return: name -> tensor, in the files' order, on the CPU
    :raises CorruptCheckpointError: a corrupt file, an incomplete ``compressed/bitmask/shape`` triple, or a
        triple that does not decompress (each error names the file and the tensor)
    """
    infos = tensor_index(path)
    prefixes = set(compressed_prefixes(infos))
    for name in infos:
        stem, _, suffix = name.rpartition(".")
        if suffix == "bitmask" and stem not in prefixes:
            raise CorruptCheckpointError(f"{infos[name].file}: tensor '{name}' has no '{stem}.compressed'")
    for prefix in prefixes:
        for suffix in ("bitmask", "shape"):
            if f"{prefix}.{suffix}" not in infos:
                raise CorruptCheckpointError(
                    f"{infos[prefix + '.compressed'].file}: tensor '{prefix}.compressed' has no '{prefix}.{suffix}'"
                )
        if f"{prefix}.weight" in infos:
            raise CorruptCheckpointError(
                f"{infos[prefix + '.weight'].file}: '{prefix}' is stored both dense and compressed"
            )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in read_tensors(infos):
        stem, _, suffix = name.rpartition(".")
        if stem in prefixes and suffix in COMPRESSED_SUFFIXES:
            group = parts.setdefault(stem, {})
            group[suffix] = tensor
            if len(group) == 3:
                where = f"{infos[stem + '.compressed'].file}: {stem}"
                out[f"{stem}.weight"] = unpack_24_bitmask(group["compressed"], group["bitmask"], group["shape"], where)
                del parts[stem]
        else:
            out[name] = tensor
    return out


def _causal_lm_class(config: Any) -> type:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


def load_model(path: str | os.PathLike[str], torch_dtype: torch.dtype | str | None = None) -> nn.Module:
    """Load a model folder into a transformers model: plain HF, compressed-tensors quantized, or ours.

    ``sparse-24-bitmask`` folders are decompressed here (bit-exact; today's compressed-tensors can no longer
    read them); a ``quantization_config`` holding only sparsity metadata is dropped before transformers sees
    it (transformers 5 fails on it). The model comes back in eval mode on the CPU.

    :param path: model folder
    :param torch_dtype: dtype to load in; None keeps the stored dtype
    :return: the model
    :raises InputNotFoundError: no weights file (``model.safetensors``, an index, or ``pytorch_model*.bin``)
    :raises CorruptCheckpointError: a corrupt file, tensor or a shape that does not match the config
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path).expanduser()
    raw = read_config(folder)
    fmt = source_format(raw, folder)
    if not any(folder.glob("pytorch_model*.bin")):  # safetensors: headers checked before transformers reads them
        tensor_index(folder)
    dtype: Any = torch_dtype if torch_dtype is not None else "auto"
    if fmt is None or has_quantization(raw):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        return model.eval()
    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if fmt == "dense":
        return AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype).eval()
    state = read_state_dict(folder)
    if torch_dtype is None:
        floats = [t.dtype for t in state.values() if t.is_floating_point()]
        dtype = floats[0] if floats else torch.float32
    cls = _causal_lm_class(config)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    infos = tensor_index(folder)
    for name, shape in expected.items():
        if name in state and tuple(state[name].shape) != shape:
            info = infos.get(name) or infos.get(name.removesuffix(".weight") + ".compressed")
            raise CorruptCheckpointError(
                f"{info.file if info else folder}: tensor '{name}' has shape {list(state[name].shape)}, the model "
                f"config ({folder / 'config.json'}) expects {list(shape)}"
            )
    model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CorruptCheckpointError(f"{folder}: tensors missing from the checkpoint: {missing[:8]}")
    # built from a state dict, the model would otherwise be named None (llmcompressor then asks the hub for it)
    model.config.name_or_path = str(folder)
    model.name_or_path = str(folder)
    return model.eval()
