"""What ``sau-compress run`` does: load a model, evaluate, ``oneshot`` a recipe (prune -> SAU -> quantize),
evaluate again, export.

The input model folder is only read: ``oneshot`` works on the in-memory model and the result is written
into a new output folder (atomically; an existing one only with ``overwrite``). Recipes are llmcompressor
YAML; the bundled ones live in :mod:`sau_compress.recipes` and are named without their ``.yaml``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from loguru import logger

__all__ = [
    "SAU_MODIFIER",
    "apply_overrides",
    "list_recipes",
    "load_recipe",
    "parse_overrides",
    "read_recipe",
    "resolve_recipe",
    "run",
]

#: The class name recipes use for SAU; ``--set key=value`` without a class prefix addresses it.
SAU_MODIFIER = "SparsityAwareUnlearningModifier"
RECIPES_PACKAGE = "sau_compress.recipes"
EXPORT_FORMATS = ("auto", "sparse-24-bitmask", "dense")
_TOY_MODELS = ("toy", "toy-retain")


# ---------------------------------------------------------------------------------------------- recipes


def _bundled() -> dict[str, Any]:
    folder = resources.files(RECIPES_PACKAGE)
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def list_recipes() -> list[dict[str, str]]:
    """The bundled recipes, sorted by name.

    :return: ``[{"name", "description", "path"}]``; the description is the file's first ``#`` line
    """
    out = []
    for name, path in sorted(_bundled().items()):
        first = path.read_text(encoding="utf-8").splitlines()[0] if path.read_text(encoding="utf-8") else ""
        out.append({"name": name, "description": first.lstrip("#").strip(), "path": str(path)})
    return out


def resolve_recipe(name_or_path: str | os.PathLike[str]) -> Path:
    """A bundled recipe name (``sparsegpt-2of4-sau-graddiff``, ``.yaml`` optional) or a recipe file path.

    :raises FileNotFoundError: neither a bundled name nor an existing file (the error lists the names)
    """
    text = str(name_or_path)
    bundled = _bundled()
    key = text.removesuffix(".yaml")
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if key in bundled:
        return Path(str(bundled[key]))
    raise FileNotFoundError(
        f"recipe '{text}' is neither a file nor a bundled recipe; bundled: {sorted(bundled)}"
    )


def read_recipe(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a recipe file (YAML or JSON) into llmcompressor's nested dict (stages -> groups -> modifiers)."""
    path = resolve_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {path}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or not any(k.endswith("_stage") for k in data):
        raise ValueError(
            f"recipe {path}: expected a mapping of '<name>_stage' entries (llmcompressor's schema)"
        )
    return data


def _modifier_entries(recipe: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(class name, args dict)`` of every modifier, in recipe order (the dicts are the recipe's own)."""
    out = []
    for stage_key, stage in recipe.items():
        if not (stage_key.endswith("_stage") and isinstance(stage, dict)):
            continue
        for group_key, group in stage.items():
            if not (group_key.endswith("_modifiers") and isinstance(group, dict)):
                continue
            for mod_type in list(group):
                if group[mod_type] is None:
                    group[mod_type] = {}
                out.append((mod_type, group[mod_type]))
    return out


def parse_overrides(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Parse ``--set`` entries: ``key=value`` (a field of the SAU modifier) or ``Class.key=value``.

    Values are read as YAML scalars/lists (``20`` -> int, ``1e-4`` stays a string that pydantic reads as a
    float, ``[a, b]`` -> list, ``null`` -> None).

    :return: ``{modifier class name: {field: value}}``
    :raises ValueError: an entry without ``=`` or with an empty key
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(
                f"--set expects key=value (e.g. max_steps=20 or SparseGPTModifier.sparsity=0.6), got {item!r}"
            )
        cls, dot, field = key.rpartition(".")
        cls = cls if dot else SAU_MODIFIER
        if not field:
            raise ValueError(f"--set entry {item!r} has an empty field name")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.setdefault(cls, {})[field] = value
    return out


def apply_overrides(recipe: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Set fields of the recipe's modifiers in place (validation happens when the recipe is built).

    :param recipe: the dict from :func:`read_recipe`
    :param overrides: ``{class name: {field: value}}`` (see :func:`parse_overrides`)
    :return: ``recipe``
    :raises ValueError: an override names a modifier the recipe does not have
    """
    entries = _modifier_entries(recipe)
    for cls, fields in overrides.items():
        targets = [args for name, args in entries if name == cls]
        if not targets:
            have = [name for name, _ in entries]
            raise ValueError(f"the recipe has no {cls} to set {sorted(fields)} on; its modifiers: {have}")
        for args in targets:
            args.update(fields)
    return recipe


def load_recipe(recipe: Mapping[str, Any]) -> Any:
    """Build llmcompressor's ``Recipe`` from a recipe dict; modifiers validate here (a typo names the field).

    :return: ``llmcompressor.recipe.Recipe`` with fresh modifier instances
    """
    from llmcompressor.recipe import Recipe

    import sau_compress.modifier  # noqa: F401 - registers SparsityAwareUnlearningModifier

    return Recipe.from_dict(dict(recipe))


# ------------------------------------------------------------------------------------------------- run


def _check_output(model_path: Path, output: Path, overwrite: bool) -> None:
    from sau_compress.io import OutputExistsError

    src, dst = model_path.resolve(), output.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(
            f"--output '{output}' overlaps the input model folder '{model_path}'; the input is never "
            "modified: choose another output folder"
        )
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output folder '{output}' already exists; pass --overwrite to replace it")


def _calibration_dataset(
    records: list[dict[str, Any]], tokenizer: Any, n: int, max_length: int, seed: int
) -> Any:
    from datasets import Dataset

    from sau_compress.data import tokenize_records

    if len(records) > n:
        chosen = sorted(random.Random(seed).sample(range(len(records)), n))
        records = [records[i] for i in chosen]
    items = tokenize_records(tokenizer, records, max_length=max_length)
    return Dataset.from_dict(
        {
            "input_ids": [it["input_ids"] for it in items],
            "attention_mask": [[1] * len(it["input_ids"]) for it in items],
        }
    )


def _layer_stats(model: torch.nn.Module, names: Sequence[str]) -> dict[str, Any]:
    from sau_compress.masking import count_2of4_violations, sparsity

    modules = dict(model.named_modules())
    total = zeros = 0
    two_four = bool(names)
    for name in names:
        weight = modules[name].weight.detach()
        total += weight.numel()
        zeros += round(sparsity(weight) * weight.numel())
        if weight.dim() != 2 or weight.shape[1] % 4 or count_2of4_violations(weight):
            two_four = False
    return {"sparsity": zeros / total if total else 0.0, "two_four": two_four, "layers": len(names)}


def _evaluate(
    model: Any,
    tokenizer: Any,
    forget: list[dict],
    retain: list[dict],
    batch_size: int,
    max_new_tokens: int,
    chat_template: bool,
) -> dict[str, float]:
    from sau_compress.evaluation import summarize

    model.eval()
    with torch.no_grad():
        return summarize(
            model,
            tokenizer,
            forget,
            retain,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
        )


def run(
    model: str | os.PathLike[str],
    recipe: str | os.PathLike[str],
    output: str | os.PathLike[str],
    forget: str | None = None,
    retain: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
    calibration: str | None = None,
    num_calibration_samples: int = 512,
    max_seq_length: int = 256,
    export_format: str = "auto",
    overwrite: bool = False,
    evaluate: bool = True,
    eval_limit: int | None = None,
    eval_batch_size: int = 16,
    max_new_tokens: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Prune, unlearn (and optionally quantize) a model with an llmcompressor recipe, evaluate, export.

    :param model: a model folder, or ``toy`` (the toy memorizer, built on first use)
    :param recipe: a bundled recipe name or a recipe file
    :param output: the folder to write (must not exist unless ``overwrite``; never the input folder)
    :param forget: forget set (any source :func:`sau_compress.data.load_qa` reads); overrides the recipe's.
        With ``toy`` and no forget set anywhere, the toy world's ``forget.jsonl``
    :param retain: retain set, likewise (toy default ``retain.jsonl``)
    :param overrides: ``{class: {field: value}}`` or ``--set`` strings (:func:`parse_overrides`)
    :param calibration: QA set whose prompt+answer texts calibrate SparseGPT/Wanda; default: the retain set
    :param num_calibration_samples: calibration rows (a seeded random subset when the set is larger)
    :param max_seq_length: token budget per calibration row
    :param export_format: ``auto`` (``sparse-24-bitmask`` when every target layer is 2:4, else ``dense``),
        ``sparse-24-bitmask`` or ``dense``
    :param overwrite: replace an existing output folder
    :param evaluate: compute the before/after summary (ROUGE-L recall and answer NLL on forget and retain)
    :param eval_limit: evaluate on the first ``eval_limit`` records of each set (default: all)
    :param eval_batch_size: prompts per generation batch
    :param max_new_tokens: longest generated answer
    :param device: where to evaluate and unlearn (default: ``cuda`` when available, else ``cpu``); also the
        SAU stage's ``device`` unless the recipe or ``overrides`` set one. llmcompressor's own stages
        (SparseGPT, Wanda, quantization) use its choice: the accelerator when there is one
    :return: ``output``, ``before``/``after`` (``forget_rouge``, ``retain_rouge``, ``forget_nll``,
        ``retain_nll``; ``None`` without ``evaluate``), ``sparsity``, ``two_four``, ``pattern_preserved``,
        ``format``, ``seconds``, ``timings``, ``unlearn`` (the SAU result), ``recipe``, ``modifiers``
    """
    from llmcompressor import oneshot
    from transformers import AutoTokenizer

    from sau_compress.modifier import SparsityAwareUnlearningModifier
    from sau_compress.toy import resolve_model_path, toy_data_file

    start = time.perf_counter()
    timings: dict[str, float] = {}
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format '{export_format}'; choose from {list(EXPORT_FORMATS)}")
    if num_calibration_samples < 1:
        raise ValueError(f"num_calibration_samples must be at least 1, got {num_calibration_samples}")
    output = Path(output).expanduser().absolute()
    model_name = str(model)
    if model_name not in _TOY_MODELS and not Path(model_name).expanduser().is_dir():
        raise FileNotFoundError(
            f"model '{model_name}' not found: expected a model folder or one of {list(_TOY_MODELS)}"
        )
    if model_name not in _TOY_MODELS:
        _check_output(Path(model_name).expanduser(), output, overwrite)

    # recipe: read, apply dataset flags and --set overrides, validate (before any model is loaded)
    recipe_dict = read_recipe(recipe)
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    sau_updates: dict[str, Any] = {}
    if forget is not None:
        sau_updates["forget"] = forget
    if retain is not None:
        sau_updates["retain"] = retain
    merged: dict[str, dict[str, Any]] = {cls: dict(v) for cls, v in (overrides or {}).items()}
    if sau_updates:
        merged.setdefault(SAU_MODIFIER, {}).update(sau_updates)
    apply_overrides(recipe_dict, merged)
    sau_args = [args for name, args in _modifier_entries(recipe_dict) if name == SAU_MODIFIER]
    if not sau_args:
        raise ValueError(f"recipe '{recipe}' has no {SAU_MODIFIER} stage")
    if model_name in _TOY_MODELS:
        for args in sau_args:
            if args.get("forget") is None:
                args["forget"] = str(toy_data_file("forget"))
            if args.get("retain") is None:
                args["retain"] = str(toy_data_file("retain"))
    model_path = resolve_model_path(model_name)
    _check_output(model_path, output, overwrite)
    for args in sau_args:
        args.setdefault("tokenizer", str(model_path))
        if device is not None:
            args.setdefault("device", device)  # an explicit --device also places the unlearning
    built = load_recipe(recipe_dict)
    sau = next(m for m in built.modifiers if isinstance(m, SparsityAwareUnlearningModifier))
    if sau.forget is None:
        raise ValueError(f"no forget set: pass --forget or set `forget:` in the {SAU_MODIFIER} stage")

    # model, tokenizer, data
    t = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from sau_compress.export import load_model

    net = load_model(model_path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    net.to(device)
    forget_records = sau.forget.load()
    retain_records = sau.retain.load() if sau.retain is not None else []
    timings["load"] = time.perf_counter() - t

    before = after = None
    if eval_limit is not None and eval_limit < 1:
        raise ValueError(f"eval_limit must be at least 1, got {eval_limit}")
    eval_forget, eval_retain = forget_records[:eval_limit], retain_records[:eval_limit]
    if evaluate and not eval_retain:
        raise ValueError("evaluation needs a retain set: pass --retain (or --no-eval)")
    if evaluate:
        t = time.perf_counter()
        before = _evaluate(
            net, tokenizer, eval_forget, eval_retain, eval_batch_size, max_new_tokens, sau.chat_template
        )
        timings["evaluate_before"] = time.perf_counter() - t
        logger.info(f"before: {before}")

    # oneshot
    dataset = None
    if any(m.requires_calibration_data for m in built.modifiers):
        if calibration is not None:
            from sau_compress.data import load_qa

            calib_records = load_qa(calibration)
        else:
            calib_records = retain_records
        if not calib_records:
            raise ValueError(
                "the recipe's pruning stage needs calibration data: pass --calibration or a retain set"
            )
        dataset = _calibration_dataset(
            calib_records, tokenizer, num_calibration_samples, max_seq_length, sau.config.seed
        )
    t = time.perf_counter()
    oneshot(
        model=net,
        processor=tokenizer,
        recipe=built,
        dataset=dataset,
        num_calibration_samples=len(dataset) if dataset is not None else num_calibration_samples,
        max_seq_length=max_seq_length,
        shuffle_calibration_samples=False,
        pipeline="independent",
    )
    timings["oneshot"] = time.perf_counter() - t
    from compressed_tensors.offload import remove_dispatch

    remove_dispatch(net)
    saus = [m for m in built.modifiers if isinstance(m, SparsityAwareUnlearningModifier)]
    results = [m.result for m in saus]
    if any(r is None for r in results):
        raise RuntimeError(f"{SAU_MODIFIER} did not run (no calibration-start event from the pipeline)")
    stats = _layer_stats(net, list(saus[-1].masks))
    if evaluate:
        t = time.perf_counter()
        after = _evaluate(
            net, tokenizer, eval_forget, eval_retain, eval_batch_size, max_new_tokens, sau.chat_template
        )
        timings["evaluate_after"] = time.perf_counter() - t
        logger.info(f"after: {after}")

    quantized = any(getattr(m, "quantization_scheme", None) is not None for m in net.modules())
    fmt = export_format
    if fmt == "auto":
        fmt = (
            "sparse-24-bitmask" if stats["two_four"] and stats["sparsity"] > 0 and not quantized else "dense"
        )
    summary: dict[str, Any] = {
        "output": str(output),
        "model": str(model_path),
        "recipe": str(recipe),
        "modifiers": [type(m).__name__ for m in built.modifiers],
        "format": fmt,
        "before": before,
        "after": after,
        "sparsity": stats["sparsity"],
        "two_four": stats["two_four"],
        "quantized": quantized,
        "pattern_preserved": all(bool(r.pattern_preserved) for r in results),
        "unlearn": results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results],
        "eval_records": {"forget": len(eval_forget), "retain": len(eval_retain)} if evaluate else None,
    }
    t = time.perf_counter()
    from sau_compress.export import save_model, unlearning_record

    metadata = {
        "recipe": yaml.safe_dump(recipe_dict, sort_keys=False),
        "unlearning": unlearning_record(sau.config, forget_records, before, after, results[0]),
        "run": json.loads(json.dumps({k: v for k, v in summary.items() if k != "unlearn"}, default=str)),
    }
    save_model(net, tokenizer, output, format=fmt, metadata=metadata, overwrite=overwrite)
    timings["save"] = time.perf_counter() - t
    summary["timings"] = timings
    summary["seconds"] = time.perf_counter() - start
    logger.info(f"run done in {summary['seconds']:.1f}s -> {output} ({fmt})")
    return summary
