"""Writing and reading checkpoints: ``sparse-24-bitmask`` (compressed-tensors <= 0.14.0.1) and ``dense``.

Both writers work on a plain state dict (what ``save_pretrained`` would store) plus the HF config dict, so a
model in memory (:func:`save_model`) and a folder on disk (:func:`export_checkpoint`) go through the same
code. Every output is written into a temporary folder, re-read and compared with its source bit for bit,
then renamed into place (:func:`sau_compress.io.atomic_output_dir`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from torch import nn
from tqdm import tqdm

from sau_compress import __version__
from sau_compress.errors import CorruptCheckpointError
from sau_compress.export.bitmask import bits_equal, pack_24_bitmask, unpack_24_bitmask
from sau_compress.export.files import INDEX_NAME, checkpoint_files, read_tensors, tensor_index, write_tensors
from sau_compress.export.metadata import SIDECAR_NAME, build_sidecar, jsonable
from sau_compress.io import atomic_output_dir
from sau_compress.masking import is_2of4, nonzero_mask

__all__ = [
    "CT_FORMAT_VERSION",
    "FORMATS",
    "compressed_prefixes",
    "export_checkpoint",
    "load_model",
    "read_config",
    "read_state_dict",
    "save_model",
    "sparsity_format",
]

FORMATS = ("sparse-24-bitmask", "dense")
SPARSE_FORMAT = "sparse-24-bitmask"
# the compressed-tensors release whose format we write (the last one that has the sparse-24-bitmask compressor)
CT_FORMAT_VERSION = "0.14.0.1"
QUANT_METHOD = "compressed-tensors"
COMPRESSED_SUFFIXES = ("compressed", "bitmask", "shape")
# files of a model folder that the writer produces itself (never copied from a source folder)
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_REWRITTEN = {"config.json", INDEX_NAME, SIDECAR_NAME, "pytorch_model.bin.index.json"}
# quantization_config keys that are metadata, not a quantization scheme
_QC_META_KEYS = {"quant_method", "version", "sparsity_config", "transform_config", "format",
                 "quantization_status", "global_compression_ratio", "ignore"}


# ----------------------------------------------------------------------------------------------- config helpers


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a model folder as a dict.

    :raises FileNotFoundError: no ``config.json``
    :raises CorruptCheckpointError: not valid JSON
    """
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"'{path}' is not a model folder: no config.json")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(f"{file}: not valid JSON ({err})") from err


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


def _compat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Add the keys transformers 4.x reads next to the 5.x ones, so both versions load the same config.

    transformers 5 writes ``dtype`` and ``rope_parameters``; 4.57 (the compressed-tensors 0.14 reader's
    transformers, and vLLM <= 0.18.1's) reads ``torch_dtype``, ``rope_theta`` and ``rope_scaling`` and would
    silently fall back to defaults (rope_theta 10000) without them.
    """
    out = dict(config)
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        out.setdefault("rope_theta", rope["rope_theta"])
        if "rope_scaling" not in out:
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            extra = {k: v for k, v in rope.items() if k != "rope_theta"}
            out["rope_scaling"] = None if rope_type == "default" and len(extra) <= 1 else extra
    return out


# ------------------------------------------------------------------------------------------- state-dict helpers


def _dedup_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the second name of tied tensors (what save_pretrained stores)."""
    tied_targets: set[str] = set()
    tied = getattr(model, "_tied_weights_keys", None)
    if isinstance(tied, (dict, list, tuple, set)):  # 5.x: {target: source}; 4.x: [target, ...]
        tied_targets = set(tied)
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


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _linear_names_from_config(config: dict[str, Any]) -> list[str] | None:
    """Names of the nn.Linear modules of the model a config describes (built on the meta device)."""
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
    return _linear_names(model)


def _quantized_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Compressed state dict and ``quantization_config`` of a model quantized by llmcompressor, else None.

    Uses the installed compressed-tensors' own compressors per module (the model is not modified), so the
    result is what llmcompressor's ``save_pretrained`` writes, minus any sparsity targets.
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
    state = _dedup_state_dict(model)
    for prefix, module in quantized:
        if getattr(module, "quantization_status", None) == QuantizationStatus.COMPRESSED:
            raise ValueError(f"module '{prefix}' is already compressed; save the model before compressing it")
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


# ------------------------------------------------------------------------------------------------------ writing


def _layer_stats(name: str, weight: torch.Tensor) -> dict[str, Any]:
    nz = int(nonzero_mask(weight).sum()) if weight.numel() else 0
    sparsity = 1.0 - nz / weight.numel() if weight.numel() else 0.0
    two_four = is_2of4(weight)
    if two_four and sparsity > 0:
        structure = "2:4"
    elif sparsity > 0:
        structure = "unstructured"
    else:
        structure = "dense"
    return {"shape": list(weight.shape), "dtype": str(weight.dtype).removeprefix("torch."),
            "sparsity": sparsity, "is_2of4": two_four, "structure": structure}


def _convert(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    linear: list[str] | None,
    fmt: str,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """Turn a plain (possibly quantized) state dict + config into the tensors and config of ``fmt``.

    :return: tensors to write, config to write, per-layer stats, the compressed layer prefixes
    """
    if linear is None:  # unknown architecture: 2-D weights inside decoder layers
        linear = [n[: -len(".weight")] for n, t in state.items()
                  if n.endswith(".weight") and t.dim() == 2 and ".layers." in n]
    present = [name for name in linear if f"{name}.weight" in state]
    stats = {name: _layer_stats(name, state[f"{name}.weight"]) for name in present}
    qc = dict(config.get("quantization_config") or {})
    quantized = has_quantization(config)
    out_config = _compat_config({k: v for k, v in config.items() if k != "quantization_config"})

    if fmt == "dense":
        if quantized:
            qc["sparsity_config"] = {}  # keep the quantization, drop the sparsity targets current vLLM refuses
            out_config["quantization_config"] = qc
        return dict(state), out_config, stats, []

    if quantized:
        raise ValueError(
            f"format '{SPARSE_FORMAT}' of a quantized checkpoint ({quantization_format(config)}) is not supported; "
            "export it with format 'dense' (the quantization is kept)"
        )
    compressed_layers = [name for name in present if stats[name]["is_2of4"]]
    if not compressed_layers:
        raise ValueError(
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
    _warn_fused(compressed_set, set(present))
    return tensors, out_config, stats, compressed_layers


_FUSED = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})


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


def _warn_fused(compressed: set[str], layers: set[str]) -> None:
    for line in fused_mismatches(compressed, layers):
        logger.warning(f"vLLM fuses these layers and needs one scheme for all of them: {line}")


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
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose from {list(FORMATS)}")
    started = time.perf_counter()
    if not config.get("dtype") and not config.get("torch_dtype"):
        floats = [t.dtype for t in state.values() if t.is_floating_point()]
        if floats:
            config = {**config, "dtype": str(floats[0]).removeprefix("torch.")}
    tensors, out_config, stats, compressed = _convert(state, config, linear, fmt)
    weight_map = write_tensors(tensors, tmp, max_shard_bytes=max_shard_bytes)
    (tmp / "config.json").write_text(json.dumps(out_config, indent=2, sort_keys=True) + "\n")
    _verify(tmp, state, out_config)
    files = sorted(set(weight_map.values()))
    sidecar = build_sidecar(
        fmt=fmt,
        layers=stats,
        compressed=compressed,
        quantization=quantization_format(out_config),
        weight_bytes=sum((tmp / f).stat().st_size for f in files),
        metadata=metadata,
        source=source,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        version=__version__,
    )
    (tmp / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    logger.info(f"wrote {fmt} checkpoint: {len(compressed)} layer(s) compressed, {len(files)} file(s), "
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
    :return: the output folder
    :raises ValueError: unknown format; sparse-24-bitmask of a quantized model or of a model with no 2:4 layer
    :raises sau_compress.io.OutputExistsError: ``output`` exists and ``overwrite`` is false
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format '{format}'; choose from {list(FORMATS)}")
    if not hasattr(model, "config"):
        raise TypeError(f"save_model needs a transformers model with a config, got {type(model).__name__}")
    metadata = jsonable(metadata or {}, "metadata")
    quantized = _quantized_state(model)
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("quantization_config", None)
    if isinstance(getattr(model, "dtype", None), torch.dtype):
        config["dtype"] = str(model.dtype).removeprefix("torch.")  # as save_pretrained records it
    if quantized is not None:
        state, qc = quantized
        config["quantization_config"] = qc
    else:
        state = _dedup_state_dict(model)
    state = {k: v.detach().cpu() for k, v in state.items()}
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        _write(tmp, state, config, _linear_names(model), format, metadata,
               source=getattr(model, "name_or_path", None) or None, max_shard_bytes=max_shard_bytes)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
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
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format '{format}'; choose from {list(FORMATS)}")
    src = Path(source).expanduser().absolute()
    dst = Path(output).expanduser().absolute()
    if not src.is_dir():
        raise FileNotFoundError(f"source model folder '{src}' does not exist")
    if dst == src or src in dst.parents:
        raise ValueError(f"output '{dst}' must not be the source folder '{src}' or inside it")
    config = read_config(src)
    if sparsity_format(config) not in (None, "dense", SPARSE_FORMAT):
        raise ValueError(f"{src / 'config.json'}: sparsity format '{sparsity_format(config)}' is not supported; "
                         f"supported: dense, {SPARSE_FORMAT}")
    if sparsity_format(config) == SPARSE_FORMAT and has_quantization(config):
        raise ValueError(f"{src}: quantized sparse-24-bitmask checkpoints are not supported")
    checkpoint_files(src)  # a clear error for a folder without safetensors weights
    state = read_state_dict(src)
    if sparsity_format(config) is not None and not has_quantization(config):
        config = {k: v for k, v in config.items() if k != "quantization_config"}
    extra = jsonable(metadata or {}, "metadata")
    old = src / SIDECAR_NAME
    if old.is_file():
        try:
            previous = json.loads(old.read_text())
        except json.JSONDecodeError as err:
            raise CorruptCheckpointError(f"{old}: not valid JSON ({err})") from err
        for key in ("recipe", "unlearning"):
            if key in previous and key not in extra:
                extra[key] = previous[key]
        for key, value in (previous.get("metadata") or {}).items():
            extra.setdefault(key, value)
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        _write(tmp, state, config, _linear_names_from_config(config), format, extra, source=str(src),
               max_shard_bytes=max_shard_bytes)
        for item in sorted(src.iterdir()):
            if item.name in _REWRITTEN or item.name.endswith(_WEIGHT_FILE_SUFFIXES) or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
    logger.info(f"exported {src} -> {dst} ({format})")
    return dst


# ------------------------------------------------------------------------------------------------------ reading


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
    :raises CorruptCheckpointError: a corrupt file, tensor or a shape that does not match the config
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path).expanduser()
    raw = read_config(folder)
    fmt = sparsity_format(raw)
    if fmt not in (None, "dense", SPARSE_FORMAT):
        raise ValueError(f"{folder / 'config.json'}: sparsity format '{fmt}' is not supported; "
                         f"supported: dense, {SPARSE_FORMAT}")
    dtype: Any = torch_dtype if torch_dtype is not None else "auto"
    if fmt is None or has_quantization(raw):
        if fmt == SPARSE_FORMAT:
            raise ValueError(f"{folder}: quantized sparse-24-bitmask checkpoints are not supported")
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
    return model.eval()
