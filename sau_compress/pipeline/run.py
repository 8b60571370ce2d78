"""What ``sau-compress run`` does: read and check a recipe, load the model and data once, evaluate, ``oneshot``
the recipe (prune -> SAU -> quantize), evaluate again, export.

The input model folder is only read: ``oneshot`` works on the in-memory model and the result is written into
a new output folder (atomically; an existing one only with ``overwrite``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from loguru import logger

from sau_compress.data import QARecord, QASetSpec, resolve_prompt_format
from sau_compress.errors import OutputExistsError, UserError
from sau_compress.export.config import FORMATS
from sau_compress.masking import all_2of4, mean_sparsity, resolve_targets
from sau_compress.pipeline.models import TOY_MODELS, load_model_and_tokenizer, pick_device, resolve_model
from sau_compress.pipeline.oneshot import run_oneshot
from sau_compress.pipeline.recipes import (
    SAU_MODIFIER,
    apply_overrides,
    load_recipe,
    modifier_entries,
    parse_overrides,
    read_recipe,
)

__all__ = ["EXPORT_FORMATS", "resolve_stage_format", "run"]

#: ``auto`` picks ``sparse-24-bitmask`` when every target layer is 2:4 (and nothing is quantized), else ``dense``
EXPORT_FORMATS = ("auto", *FORMATS)


def check_output(model_path: Path, output: Path, overwrite: bool) -> None:
    """The output must not overlap the input model folder, nor exist unless ``overwrite``.

    :raises UserError: overlap; :raises OutputExistsError: the folder exists
    """
    src, dst = model_path.resolve(), output.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise UserError(
            f"--output '{output}' overlaps the input model folder '{model_path}'; the input is never "
            "modified: choose another output folder"
        )
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output folder '{output}' already exists; pass --overwrite to replace it")


def _prepare_recipe(
    recipe: str | os.PathLike[str],
    model: str,
    model_path: Path,
    forget: str | None,
    retain: str | None,
    overrides: Mapping[str, Mapping[str, Any]] | Sequence[str] | None,
    device: str | None,
) -> tuple[dict[str, Any], Any, list[Any]]:
    """Read the recipe, apply ``--forget``/``--retain``/``--set``, build it (every field validated).

    ``forget``/``retain`` go to the SAU stages; a recipe without one (prune-only, prune + quantize) is run as
    it is, and the sets serve evaluation and calibration only.

    :return: the recipe dict as run, llmcompressor's ``Recipe``, and its SAU stages (possibly none)
    """
    from sau_compress.modifier import SparsityAwareUnlearningModifier

    recipe_dict = read_recipe(recipe)
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    merged: dict[str, dict[str, Any]] = {cls: dict(v) for cls, v in (overrides or {}).items()}
    data = {key: value for key, value in (("forget", forget), ("retain", retain)) if value is not None}
    has_sau = any(name == SAU_MODIFIER for name, _ in modifier_entries(recipe_dict))
    if data and has_sau:
        merged.setdefault(SAU_MODIFIER, {}).update(data)
    apply_overrides(recipe_dict, merged)
    sau_args = [args for name, args in modifier_entries(recipe_dict) if name == SAU_MODIFIER]
    for args in sau_args:
        if model in TOY_MODELS:  # the toy world's own sets, unless named
            from sau_compress.worlds import toy_data_file

            for split in ("forget", "retain"):
                if args.get(split) is None:
                    args[split] = str(toy_data_file(split))
        args.setdefault("tokenizer", str(model_path))
        if device is not None:
            args.setdefault("device", device)  # an explicit --device also places the unlearning
    built = load_recipe(recipe_dict)
    saus = [m for m in built.modifiers if isinstance(m, SparsityAwareUnlearningModifier)]
    if any(m.forget is None for m in saus):
        raise UserError(f"no forget set: pass --forget or set `forget:` in the {SAU_MODIFIER} stage")
    return recipe_dict, built, saus


def resolve_stage_format(saus: list[Any], tokenizer: Any) -> str:
    """The one prompt format of the run: every SAU stage's ``prompt_format`` resolved for the tokenizer
    (:func:`sau_compress.data.resolve_prompt_format`, logged once per setting).

    :return: ``plain`` or ``chat`` (``auto`` resolved when there is no SAU stage)
    :raises UserError: the stages resolve to different formats (unlearning and evaluation must share one)
    """
    if not saus:
        return resolve_prompt_format(tokenizer, "auto")
    resolved: dict[str, str] = {}
    for sau in saus:
        if sau.prompt_format not in resolved:
            resolved[sau.prompt_format] = resolve_prompt_format(tokenizer, sau.prompt_format)
    formats = sorted(set(resolved.values()))
    if len(formats) > 1:
        raise UserError(f"the {SAU_MODIFIER} stages ask for different prompt formats ({formats}); set one "
                        "prompt_format for all of them")
    return formats[0]


def _load_sets(saus: list[Any], tokenizer: Any, prompt_format: str) -> tuple[dict[str, list[QARecord] | None],
                                                                              list[Any]]:
    """Read each SAU stage's sets once (a set two stages share is read once too) and hand every stage its
    tokenized job, in the run's resolved ``prompt_format``.

    :return: the first stage's records (``forget``, ``retain``) for evaluation, and the jobs in stage order
    """
    from sau_compress.unlearn import UnlearnJob

    cache: dict[str, list[QARecord]] = {}

    def records(spec: QASetSpec | None) -> list[QARecord] | None:
        if spec is None:
            return None
        key = spec.model_dump_json()
        if key not in cache:
            cache[key] = spec.load()
        return cache[key]

    jobs = []
    for sau in saus:
        names = tuple(f"the {what} set '{spec.path}'" if spec is not None else f"the {what} set"
                      for what, spec in (("forget", sau.forget), ("retain", sau.retain)))
        jobs.append(UnlearnJob.from_records(
            tokenizer, records(sau.forget), records(sau.retain), sau.max_length, prompt_format, names=names
        ))
        sau.assign(jobs[-1], records(sau.forget))
    return {"forget": records(saus[0].forget), "retain": records(saus[0].retain)}, jobs


def _sets_without_sau(model: str, forget: str | None, retain: str | None) -> dict[str, list[QARecord] | None]:
    """The forget and retain sets of a recipe without a SAU stage: those named, else the toy world's for
    ``toy``; they serve evaluation and calibration."""
    from sau_compress.data import load_qa

    out: dict[str, list[QARecord] | None] = {}
    for split, source in (("forget", forget), ("retain", retain)):
        if source is None and model in TOY_MODELS:
            from sau_compress.worlds import toy_data_file

            source = str(toy_data_file(split))
        out[split] = load_qa(source) if source is not None else None
    return out


#: questions of each set whose greedy answers the before/after summary shows
SUMMARY_SAMPLES = 3


def _summarize(model: Any, tokenizer: Any, sets: dict[str, list[QARecord]], batch_size: int,
               max_new_tokens: int, prompt_format: str) -> dict[str, Any]:
    from sau_compress.evaluation import summarize

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return summarize(model, tokenizer, sets["forget"], sets["retain"], batch_size=batch_size,
                             max_new_tokens=max_new_tokens, prompt_format=prompt_format, samples=SUMMARY_SAMPLES,
                             verdicts=True)
    finally:
        model.train(was_training)


def eval_sets_for(records: Mapping[str, list[QARecord] | None], eval_limit: int | None,
                  evaluate: bool) -> dict[str, list[QARecord]]:
    """The first ``eval_limit`` records of each set, for the before/after summary.

    :raises UserError: ``evaluate`` without a forget or a retain set
    """
    sets = {name: (recs or [])[:eval_limit] for name, recs in records.items()}
    if evaluate and not (sets["retain"] and sets["forget"]):
        missing = "retain" if not sets["retain"] else "forget"
        raise UserError(f"evaluation needs a {missing} set: pass --{missing} (or --no-eval)")
    return sets


def timed_summary(model: Any, tokenizer: Any, sets: dict[str, list[QARecord]], batch_size: int,
                  max_new_tokens: int, prompt_format: str, timings: dict[str, float], when: str) -> dict[str, Any]:
    """The before/after summary (:func:`_summarize`), its seconds recorded as ``timings["evaluate_<when>"]``."""
    t = time.perf_counter()
    out = _summarize(model, tokenizer, sets, batch_size, max_new_tokens, prompt_format)
    timings[f"evaluate_{when}"] = time.perf_counter() - t
    logger.info(f"{when}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items() if isinstance(v, float)))
    return out


def prunes_before_unlearning(modifiers: Sequence[Any]) -> bool:
    """Whether a pruning stage comes before the recipe's first SAU stage (then the run also evaluates the
    model right after pruning, the baseline its unlearning is measured against)."""
    from sau_compress.modifier import SparsityAwareUnlearningModifier, is_pruning

    for modifier in modifiers:
        if isinstance(modifier, SparsityAwareUnlearningModifier):
            return False
        if is_pruning(modifier):
            return True
    return False


def target_layer_stats(model: torch.nn.Module, names: Sequence[str]) -> dict[str, Any]:
    """Sparsity (over all the layers, size-weighted) and whether all are 2:4, from the model's weights."""
    modules = dict(model.named_modules())
    return weight_stats({name: modules[name].weight.detach() for name in names})


def weight_stats(weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Sparsity (size-weighted) and whether all are 2:4, from ``{layer name: weight}``."""
    return {"sparsity": mean_sparsity(dict(weights)), "two_four": all_2of4(weights.values()), "layers": len(weights)}


def pick_export_format(export_format: str, stats: Mapping[str, Any], quantized: bool) -> str:
    """``auto`` -> ``sparse-24-bitmask`` when every target layer is 2:4 (and pruned) and nothing is
    quantized, else ``dense``; any other format as given."""
    if export_format != "auto":
        return export_format
    return "sparse-24-bitmask" if stats["two_four"] and stats["sparsity"] > 0 and not quantized else "dense"


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

    :param model: a model folder, or ``toy`` (the toy memorizer, shipped in the package)
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
    :param evaluate: compute the before/after summary (:func:`sau_compress.evaluation.summarize`)
    :param eval_limit: evaluate on the first ``eval_limit`` records of each set (default: all)
    :param eval_batch_size: prompts per generation batch
    :param max_new_tokens: longest generated answer
    :param device: where to evaluate and unlearn (default: ``cuda`` when available, else ``cpu``); also the
        SAU stage's ``device`` unless the recipe or ``overrides`` set one. llmcompressor's own stages
        (SparseGPT, Wanda, quantization) use its choice: the accelerator when there is one
    :return: ``output``, ``before``/``pruned``/``after`` (:func:`sau_compress.evaluation.summarize` of the
        input model, of the model right after pruning when a pruning stage precedes the SAU stage (else
        ``None``), and of the result: ROUGE-L recall, answer NLL, shares of answers that contain the reference,
        are empty or loop, per set, and a few sample answers; ``None`` without ``evaluate``), ``sparsity``,
        ``two_four``, ``pattern_preserved``,
        ``format``, ``prompt_format`` (the SAU stages' ``prompt_format`` resolved for the tokenizer: ``plain``
        or ``chat``; unlearning, saliency, calibration and evaluation all use it), ``kept`` (per set, of the
        facts the pruned model stated, how many the result still states; ``None`` without a ``pruned``
        summary), ``eos_token`` (what every
        labelled answer ends with), ``seconds``, ``timings``,
        ``unlearn`` (the SAU result), ``recipe``, ``modifiers``
    """
    from sau_compress.data import load_qa
    from sau_compress.export import check_format, save_model, unlearning_record

    start = time.perf_counter()
    timings: dict[str, float] = {}
    check_format(export_format, EXPORT_FORMATS)
    if num_calibration_samples < 1:
        raise UserError(f"num_calibration_samples must be at least 1, got {num_calibration_samples}")
    if eval_limit is not None and eval_limit < 1:
        raise UserError(f"eval_limit must be at least 1, got {eval_limit}")
    if device is not None:
        pick_device(device)  # a bad or missing device fails before anything is read
    output = Path(output).expanduser().absolute()
    model_name = str(model)
    model_path = resolve_model(model_name)
    check_output(model_path, output, overwrite)
    recipe_dict, built, saus = _prepare_recipe(recipe, model_name, model_path, forget, retain, overrides, device)

    t = time.perf_counter()
    net, tokenizer = load_model_and_tokenizer(model_path, device)
    prompt_format = resolve_stage_format(saus, tokenizer)
    if saus:
        sets, jobs = _load_sets(saus, tokenizer, prompt_format)
    else:
        sets, jobs = _sets_without_sau(model_name, forget, retain), []
    timings["load"] = time.perf_counter() - t

    eval_sets = eval_sets_for(sets, eval_limit, evaluate)
    before = pruned = after = None
    if evaluate:
        before = timed_summary(net, tokenizer, eval_sets, eval_batch_size, max_new_tokens, prompt_format, timings,
                               "before")
        if jobs and prunes_before_unlearning(built.modifiers):
            def on_start(model: torch.nn.Module) -> None:
                nonlocal pruned
                pruned = timed_summary(model, tokenizer, eval_sets, eval_batch_size, max_new_tokens, prompt_format,
                                       timings, "pruned")

            jobs[0].on_start = on_start

    t = time.perf_counter()
    calibration_records = load_qa(calibration) if calibration is not None else sets["retain"]
    run_oneshot(net, tokenizer, built, calibration_records, num_calibration_samples, max_seq_length,
                saus[0].config.seed if saus else 0, prompt_format)
    timings["oneshot"] = time.perf_counter() - t
    results = [r for job in jobs for r in job.results]
    if len(results) != len(saus):
        raise RuntimeError(f"{SAU_MODIFIER} did not run (no calibration-start event from the pipeline)")
    # the layers SAU worked on; without SAU, the decoder blocks' Linear layers (lm_head and embeddings aside)
    stats = target_layer_stats(net, list(results[-1].masks) if results else list(resolve_targets(net)))
    if evaluate:
        after = timed_summary(net, tokenizer, eval_sets, eval_batch_size, max_new_tokens, prompt_format, timings,
                              "after")

    kept = None
    if pruned is not None and after is not None:
        from sau_compress.evaluation import kept_facts

        kept = kept_facts(pruned, after)
    quantized = any(getattr(m, "quantization_scheme", None) is not None for m in net.modules())
    fmt = pick_export_format(export_format, stats, quantized)
    summary: dict[str, Any] = {
        "output": str(output),
        "model": str(model_path),
        "recipe": str(recipe),
        "modifiers": [type(m).__name__ for m in built.modifiers],
        "format": fmt,
        "prompt_format": prompt_format,
        "eos_token": tokenizer.eos_token,
        "before": before,
        "pruned": pruned,
        "after": after,
        # of the facts the pruned model still stated, how many the result states: what unlearning removed/kept
        "kept": kept,
        "sparsity": stats["sparsity"],
        "two_four": stats["two_four"],
        "quantized": quantized,
        "pattern_preserved": all(bool(r.pattern_preserved) for r in results) if results else None,
        "unlearn": (results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results]) if results
        else None,
        "eval_records": {name: len(recs) for name, recs in eval_sets.items()} if evaluate else None,
    }
    t = time.perf_counter()
    metadata = {
        "recipe": yaml.safe_dump(recipe_dict, sort_keys=False),
        "run": json.loads(json.dumps({k: v for k, v in summary.items() if k != "unlearn"}, default=str)),
    }
    if results:
        metadata["unlearning"] = unlearning_record(saus[0].config, sets["forget"], before, after, results[0],
                                                   prompt_format=prompt_format, pruned=pruned)
    save_model(net, tokenizer, output, format=fmt, metadata=metadata, overwrite=overwrite)
    timings["save"] = time.perf_counter() - t
    summary["timings"] = timings
    summary["seconds"] = time.perf_counter() - start
    logger.info(f"run done in {summary['seconds']:.1f}s -> {output} ({fmt})")
    return summary
