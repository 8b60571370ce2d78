"""The sidecar ``sau_compress.json`` and what it records: per-layer sparsity, serving, the unlearning record.

Current vLLM refuses sparsity metadata in ``quantization_config``, so the 2:4 structure, the recipe and the
unlearning record (method, mode, hyperparameters, a hash of the forget set, before/after metrics) live in
this file next to the weights, in every export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.export.files import read_json

__all__ = [
    "CONFIG_RECORD_KEY",
    "SIDECAR_NAME",
    "build_sidecar",
    "forget_set_hash",
    "jsonable",
    "pop_config_record",
    "read_metadata_file",
    "read_sidecar",
    "unlearning_record",
    "vllm_support",
    "write_config_record",
]

SIDECAR_NAME = "sau_compress.json"
SIDECAR_SCHEMA = 1
#: the ``config.json`` key under which the modifier leaves its record on the model it unlearned, so a model
#: saved through llmcompressor's own path (``oneshot(output_dir=...)``, ``save_pretrained``) still carries it;
#: our exports move it into the sidecar
CONFIG_RECORD_KEY = "sau_compress"


def jsonable(value: Any, where: str = "value") -> Any:
    """A JSON-able copy of ``value`` (pydantic models, dataclasses, paths, tensors and numbers converted).

    :param value: the object
    :param where: its name in errors
    :raises TypeError: something that has no JSON form, naming where it sits
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), where)
    if hasattr(value, "tolist") and callable(value.tolist):  # torch / numpy scalars and small arrays
        return jsonable(value.tolist(), where)
    raise TypeError(f"{where}: a {type(value).__name__} cannot be written to JSON; pass numbers, strings, lists, dicts")


def read_metadata_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a file of extras for the sidecar (``sau-compress export --metadata``).

    :raises InputNotFoundError: no such file
    :raises UserError: a file that cannot be read, is not valid JSON, or holds no JSON object
    """
    file = Path(path)
    try:
        extra = json.loads(file.read_text())
    except FileNotFoundError as err:
        raise InputNotFoundError(f"metadata file '{file}' does not exist") from err
    except OSError as err:  # a folder, no permission ...
        raise UserError(f"metadata file {file}: cannot be read ({err.strerror or err})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"metadata file {file}: not valid JSON ({err})") from err
    if not isinstance(extra, dict):
        raise UserError(f"metadata file {file}: expected a JSON object")
    return extra


def pop_config_record(config: dict[str, Any]) -> dict[str, Any] | None:
    """Take the modifier's record (:data:`CONFIG_RECORD_KEY`) out of a ``config.json`` dict.

    :return: the record (``{"unlearning": ...}``), or None when the config has none
    """
    record = config.pop(CONFIG_RECORD_KEY, None)
    return record if isinstance(record, dict) else None


def write_config_record(folder: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Add the modifier's record (:data:`CONFIG_RECORD_KEY`) to the ``config.json`` of a saved model folder
    (replacing the file in one rename), keeping every other key as the saver wrote it.

    :raises InputNotFoundError: the folder has no ``config.json``
    """
    file = Path(folder) / "config.json"
    if not file.is_file():
        raise InputNotFoundError(f"'{folder}' has no config.json to record the unlearning in")
    config = read_json(file)
    config[CONFIG_RECORD_KEY] = jsonable(record, CONFIG_RECORD_KEY)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, file)


def read_sidecar(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of a model folder, or None when it has none.

    :raises CorruptCheckpointError: the sidecar is not valid JSON
    """
    file = Path(folder) / SIDECAR_NAME
    return read_json(file) if file.is_file() else None


def forget_set_hash(records: Sequence[dict[str, Any]]) -> str:
    """SHA-256 of a forget set, independent of key order: of the (question, answer) pairs when the records
    have them, else of the whole records (e.g. tokenized items).

    :param records: QA records or tokenized items
    :return: ``"sha256:<hex>"``
    """
    items = []
    for i, record in enumerate(records):
        if "question" in record and "answer" in record:
            items.append([record["question"], record["answer"]])
        else:
            items.append(jsonable({k: v for k, v in record.items() if k != "index"}, f"records[{i}]"))
    payload = json.dumps(items, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def unlearning_record(
    config: Any,
    forget: Sequence[dict[str, Any]],
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    result: Any = None,
    prompt_format: str | None = None,
    pruned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``unlearning`` entry of the sidecar.

    :param config: the unlearning config (an ``UnlearnConfig`` or a dict with ``method`` and ``mode``)
    :param forget: the forget records (hashed, not stored)
    :param before: metrics before unlearning (e.g. ``evaluation.summarize``'s dict)
    :param after: metrics after unlearning
    :param result: the ``UnlearnResult`` (steps, losses, timings, pattern check) or its dict
    :param prompt_format: the resolved prompt format the forget set was tokenized and evaluated in
        (``plain`` | ``chat``); recorded when given
    :param pruned: metrics of the model right after pruning, right before unlearning (recorded when given)
    :return: JSON-able dict
    """
    hyper = jsonable(config, "config")
    if not isinstance(hyper, dict):
        raise TypeError(f"config must be an UnlearnConfig or a dict, got {type(config).__name__}")
    record: dict[str, Any] = {
        "method": hyper.get("method"),
        "mode": hyper.get("mode"),
        "hyperparameters": hyper,
        "forget_set_hash": forget_set_hash(forget),
        "forget_set_size": len(forget),
        "metrics": {"before": jsonable(before, "before"),
                    **({"pruned": jsonable(pruned, "pruned")} if pruned is not None else {}),
                    "after": jsonable(after, "after")},
    }
    if prompt_format is not None:
        record["prompt_format"] = prompt_format
    if result is not None:
        data = result.to_dict() if hasattr(result, "to_dict") else result
        data = jsonable(data, "result")
        record["result"] = {k: v for k, v in data.items() if k not in ("losses", "forget_losses", "retain_losses")}
    return record


def vllm_support(fmt: str, quantization: str | None, sparsity_targets: bool = False) -> list[str]:
    """Which vLLM versions can serve a checkpoint (as ``docs/ecosystem.md`` records them, November 2026).

    :param fmt: ``sparse-24-bitmask`` or ``dense``
    :param quantization: the compressed-tensors quantization format, or None
    :param sparsity_targets: ``quantization_config.sparsity_config`` names targets (format dense)
    :return: one line per version range
    """
    if fmt == "sparse-24-bitmask":
        quant = "" if quantization is None else f"; quantized ({quantization}) only for W8A8 int8/fp8"
        return [
            f"vLLM <= 0.18.1: serves it with 2:4 sparse CUTLASS kernels (Hopper, compute capability 9.0){quant}",
            ("vLLM >= 0.19: cannot (2:4 support removed in 0.19; 0.22+ refuses sparsity targets); "
             "export with --format dense"),
        ]
    if sparsity_targets:
        return ["vLLM <= 0.18.1: serves it (2:4 kernels on Hopper when the layers are 2:4)",
                "vLLM >= 0.22: refuses it (sparsity targets in quantization_config); re-export with --format dense"]
    what = "dense" if quantization is None else f"dense, quantized ({quantization})"
    scheme = "" if quantization is None else " and scheme"
    return [(f"any vLLM that supports the architecture{scheme}, current (0.33) included: {what}, no sparsity "
             "targets; 2:4 zeros are stored as zeros (no sparse kernels)")]


def build_sidecar(
    fmt: str,
    layers: dict[str, dict[str, Any]],
    compressed: list[str],
    quantization: str | None,
    weight_bytes: int,
    metadata: dict[str, Any] | None,
    source: str | None,
    created: str,
    version: str,
) -> dict[str, Any]:
    """Assemble the sidecar dict (see the module docstring and ``docs/export.md``)."""
    metadata = dict(metadata or {})
    total = sum(_numel(s["shape"]) for s in layers.values())
    zeros = sum(s["sparsity"] * _numel(s["shape"]) for s in layers.values())
    structures = {s["structure"] for s in layers.values()}
    return {
        "schema": SIDECAR_SCHEMA,
        "sau_compress_version": version,
        "created": created,
        "source": source,
        "format": fmt,
        "quantization": quantization,
        "weight_bytes": weight_bytes,
        "sparsity": {
            "linear_sparsity": zeros / total if total else 0.0,
            "structure": "2:4" if structures == {"2:4"} else ("mixed" if len(structures) > 1 else
                                                            next(iter(structures), "none")),
            "compressed_layers": list(compressed),
            "layers": layers,
        },
        "serving": vllm_support(fmt, quantization),
        "recipe": metadata.pop("recipe", None),
        "unlearning": metadata.pop("unlearning", None),
        **({"unlearning_history": history} if (history := metadata.pop("unlearning_history", None)) else {}),
        "metadata": metadata,
    }


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
