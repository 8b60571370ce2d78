"""State dicts as a checkpoint stores them: tied tensors once, llmcompressor-quantized modules in their
compressed form, and the names of the Linear layers and of the ``sparse-24-bitmask`` tensor triples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from loguru import logger
from torch import nn

from sau_compress.errors import UserError
from sau_compress.export.config import QUANT_METHOD

__all__ = [
    "COMPRESSED_SUFFIXES",
    "checkpoint_names",
    "compressed_prefixes",
    "dedup_state_dict",
    "linear_names",
    "linear_names_from_config",
    "quantized_state",
]

# the tensors that stand for one sparse-24-bitmask weight ``P.weight``: ``P.compressed``, ``P.bitmask``, ``P.shape``
COMPRESSED_SUFFIXES = ("compressed", "bitmask", "shape")


def dedup_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the second name of tied tensors (what save_pretrained stores).

    :param state: the model's tensors gathered elsewhere (a sharded model's, as copies): a tied target is then
        dropped when it equals its source
    """
    tied_targets: set[str] = set()
    tied = getattr(model, "_tied_weights_keys", None)
    if isinstance(tied, (dict, list, tuple, set)):  # 5.x: {target: source}; 4.x: [target, ...]
        tied_targets = set(tied)
    if state is not None:
        sources = tied if isinstance(tied, dict) else {}
        return {name: t for name, t in state.items()
                if not (name in sources and sources[name] in state and torch.equal(state[sources[name]], t))}
    state = model.state_dict()
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    names = sorted(state, key=lambda n: n in tied_targets)  # keep the source of a tie, drop the target
    out: dict[str, torch.Tensor] = {}
    for name in names:
        tensor = state[name]
        key = (tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor),
               tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            logger.debug(f"{name} shares memory with {seen[key]}: stored once")
            continue
        seen[key] = name
        out[name] = tensor
    return {name: out[name] for name in state if name in out}


def checkpoint_names(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` under the names ``save_pretrained`` writes, and the module names that changed.

    transformers 5 renames some weights in memory and back on save (GPT-NeoX's head is ``lm_head`` in memory,
    ``embed_out.weight`` in every checkpoint); a checkpoint under the in-memory names fails in transformers
    4.x and in readers of the hub's layout. Renamings only: when transformers would also merge or split
    tensors on save, ``state`` is returned as it is.

    :return: the renamed state dict (the same tensors) and ``{in-memory module name: checkpoint module name}``
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4.x keeps one set of names
        return state, {}
    reverted = revert_weight_conversion(model, dict(state))
    source = {id(tensor): name for name, tensor in state.items()}
    if len(reverted) != len(state) or any(id(t) not in source for t in reverted.values()):
        logger.warning(f"{type(model).__name__}: transformers converts tensors on save; the checkpoint keeps "
                       "the in-memory tensor names")
        return state, {}
    renamed: dict[str, str] = {}
    for new_name, tensor in reverted.items():
        old_name = source[id(tensor)]
        if old_name != new_name:
            old_module, _, old_param = old_name.rpartition(".")
            new_module, _, new_param = new_name.rpartition(".")
            if old_param == new_param:
                renamed[old_module] = new_module
    if renamed:
        logger.debug(f"checkpoint names: {renamed}")
    order = {name: i for i, name in enumerate(state)}
    return dict(sorted(reverted.items(), key=lambda kv: order[source[id(kv[1])]])), renamed


def linear_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model``, in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def linear_names_from_config(config: dict[str, Any]) -> list[str] | None:
    """Names of the nn.Linear modules of the model a config describes (built on the meta device), as its
    checkpoints name them (:func:`checkpoint_names`).

    :return: the names, or None when transformers cannot build the architecture
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in config.items() if k != "quantization_config"}
    try:
        model_type = cfg["model_type"]
        hf_config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k != "model_type"})
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except Exception as err:  # noqa: BLE001 - any architecture transformers cannot build: fall back on names
        logger.warning(f"cannot build the model from its config ({err}); treating 2-D '*.weight' tensors "
                       "of the decoder layers as Linear layers")
        return None
    _, renamed = checkpoint_names(model, dedup_state_dict(model))  # the checkpoint's names (GPT-NeoX: embed_out)
    return [renamed.get(name, name) for name in linear_names(model)]


def quantized_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Compressed state dict and ``quantization_config`` of a model quantized by llmcompressor, else None.

    Uses the installed compressed-tensors' own compressors per module (the model is not modified), so the
    result is what llmcompressor's ``save_pretrained`` writes, minus any sparsity targets.

    :raises UserError: a module is already in its compressed form
    """
    quantized = [(n, m) for n, m in model.named_modules() if getattr(m, "quantization_scheme", None) is not None]
    if not quantized:
        return None
    import compressed_tensors
    from compressed_tensors.compressors import BaseCompressor, ModelCompressor
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.utils import get_direct_state_dict

    mc = ModelCompressor.from_pretrained_model(model)  # also infers and sets each scheme's format
    state = dedup_state_dict(model)
    for prefix, module in quantized:
        if getattr(module, "quantization_status", None) == QuantizationStatus.COMPRESSED:
            raise UserError(f"module '{prefix}' is already compressed; save the model before compressing it")
        scheme = module.quantization_scheme
        fmt = CompressionFormat(scheme.format or CompressionFormat.dense)
        compressor = BaseCompressor.get_value_from_registry(fmt.value)
        local = {k: v.detach() for k, v in get_direct_state_dict(module).items() if v is not None}
        compressed = compressor.compress(local, scheme)
        for key in local:
            state.pop(f"{prefix}.{key}", None)
        for key, value in compressed.items():
            state[f"{prefix}.{key}"] = value
    qc: dict[str, Any] = {}
    if mc.quantization_config is not None:
        qconf = mc.quantization_config
        if qconf.format != CompressionFormat.dense.value:
            qconf.quantization_status = QuantizationStatus.COMPRESSED
        qc = qconf.model_dump(mode="json", exclude={"quant_method"})
    return state, {"version": compressed_tensors.__version__, "quant_method": QUANT_METHOD, "sparsity_config": {},
                   "transform_config": {}, **qc}


def compressed_prefixes(names: Iterable[str]) -> list[str]:
    """Module prefixes that carry a ``.compressed`` tensor (the sparse-24-bitmask layers)."""
    return sorted(n[: -len(".compressed")] for n in names if n.endswith(".compressed"))
