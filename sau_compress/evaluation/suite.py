"""Evaluation suites (TOFU and the toy world) and their data (the quick before/after summary: :mod:`.summary`).

A suite is a list of :class:`MetricSpec` (metric name, handler, parameters, the earlier metrics it is built
from, the retain model's metrics it compares against), the Python counterpart of open-unlearning's
``configs/eval/tofu_metrics/*.yaml``; metric names follow open-unlearning so numbers can be compared.

- ``tofu``: the TOFU files as they are (``forget10_perturbed``, ``retain_perturbed``,
  ``real_authors_perturbed``, ``world_facts_perturbed``, ``holdout10``; forget split 01/05/10), read from a
  local folder (``data_dir``, else ``$SAU_COMPRESS_TOFU_DIR``) or the hub dataset ``locuslab/TOFU``.
- ``toy``: a toy-world folder with ``forget.jsonl``, ``retain.jsonl``, ``holdout.jsonl`` in TOFU's schema,
  passed as ``data_dir`` (the caller builds the world, e.g. ``sau_compress.worlds.build_toy_world().data_dir``;
  evaluation never builds one). No real-authors/world-facts sets; a world built with prior knowledge also has
  ``prior.jsonl`` (facts learnt before the world's people and never in a forget or retain set), scored like
  TOFU's real authors (normalised probability, ROUGE, truth ratio against the wrong answers). Model utility is
  the harmonic mean over the retain set's probability, ROUGE and truth ratio, and the prior set's three
  figures when there is one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger
from torch import nn

from sau_compress.data import load_qa, resolve_prompt_format, tofu_data_dir
from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.evaluation.context import EvalContext, TokenizedSets
from sau_compress.evaluation.metrics import MetricResult, get_metric

__all__ = [
    "FORGET_SPLITS",
    "SUITES",
    "MetricSpec",
    "evaluate",
    "load_suite_data",
    "load_text_set",
    "required_metrics",
    "run_specs",
    "suite_specs",
]

SUITES = ("toy", "tofu")
FORGET_SPLITS = ("forget01", "forget05", "forget10")
TOFU_HUB = "locuslab/TOFU"


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a suite.

    :ivar name: the metric's name in the results (open-unlearning's name where there is one)
    :ivar handler: the registered handler (:data:`sau_compress.evaluation.metrics.METRICS`)
    :ivar params: keyword parameters for the handler
    :ivar pre_compute: handler keyword -> name of an earlier metric of the same run whose result it takes
    :ivar reference: handler keyword -> name of a metric in the retain model's results
    :ivar needs: (set, field) pairs every record must have, else the metric is skipped
    :ivar partial: run with the ``pre_compute`` results that exist (model utility over the sets available)
    :ivar optional: a metric of a set that only some data has (the toy world's prior knowledge): skipped
        without a warning when its set is absent
    """

    name: str
    handler: str
    params: Mapping[str, Any] = field(default_factory=dict)
    pre_compute: Mapping[str, str] = field(default_factory=dict)
    reference: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[tuple[str, str], ...] = ()
    partial: bool = False
    optional: bool = False


def _qa_block(prefix: str, data: str, forget: bool) -> list[MetricSpec]:
    """Probability (answer, paraphrased, perturbed), truth ratio and ROUGE on one QA set with paraphrases."""
    tr_name = "forget_truth_ratio" if forget else f"{prefix}_Truth_Ratio"
    return [
        MetricSpec(f"{prefix}_Q_A_Prob", "probability", {"data": data}, needs=((data, "answer"),)),
        MetricSpec(f"{prefix}_Q_A_PARA_Prob", "probability", {"data": data, "answer_key": "paraphrased_answer"},
                   needs=((data, "paraphrased_answer"),)),
        MetricSpec(f"{prefix}_Q_A_PERT_Prob", "probability", {"data": data, "answer_key": "perturbed_answer"},
                   needs=((data, "perturbed_answer"),)),
        MetricSpec(tr_name, "truth_ratio", {"aggregator": "closer_to_1_better" if forget else "true_better"},
                   pre_compute={"correct": f"{prefix}_Q_A_PARA_Prob", "wrong": f"{prefix}_Q_A_PERT_Prob"}),
        MetricSpec(f"{prefix}_Q_A_ROUGE", "rouge", {"data": data}, needs=((data, "answer"),)),
    ]


def _options_block(prefix: str, data: str, optional: bool = False) -> list[MetricSpec]:
    """Real authors / world facts: answer vs perturbed options (no paraphrase), open-unlearning style."""
    options = {"correct": f"{prefix}_Q_A_Prob", "wrong": f"{prefix}_Q_A_PERT_Prob"}
    return [
        MetricSpec(f"{prefix}_Q_A_Prob", "probability", {"data": data}, needs=((data, "answer"),), optional=optional),
        MetricSpec(f"{prefix}_Q_A_PERT_Prob", "probability", {"data": data, "answer_key": "perturbed_answer"},
                   needs=((data, "perturbed_answer"),), optional=optional),
        MetricSpec(f"{prefix}_Q_A_Prob_normalised", "probability_w_options", pre_compute=options, optional=optional),
        MetricSpec(f"{prefix}_Truth_Ratio", "truth_ratio", {"aggregator": "true_better"}, pre_compute=options,
                   optional=optional),
        MetricSpec(f"{prefix}_Q_A_ROUGE", "rouge", {"data": data}, needs=((data, "answer"),), optional=optional),
    ]


def suite_specs(suite: str = "toy", text_set: bool = False) -> list[MetricSpec]:
    """The metrics of a suite, in dependency order.

    :param suite: ``toy`` or ``tofu``
    :param text_set: add ``text_perplexity`` on the ``text`` set
    :raises ValueError: unknown suite
    """
    if suite not in SUITES:
        raise UserError(f"unknown suite '{suite}'; choose from {list(SUITES)}")
    specs = _qa_block("forget", "forget", forget=True)
    specs += [
        MetricSpec("forget_quality", "ks_test", pre_compute={"forget": "forget_truth_ratio"},
                   reference={"reference": "forget_truth_ratio"}),
        MetricSpec("extraction_strength", "extraction_strength", {"data": "forget"}, needs=(("forget", "answer"),)),
        MetricSpec("exact_memorization", "exact_memorization", {"data": "forget"}, needs=(("forget", "answer"),)),
    ]
    mia_needs = (("forget", "answer"), ("holdout", "answer"))
    specs += [
        MetricSpec("mia_loss", "mia_loss", needs=mia_needs),
        MetricSpec("mia_zlib", "mia_zlib", needs=mia_needs),
        MetricSpec("mia_min_k", "mia_min_k", {"k": 0.4}, needs=mia_needs),
        MetricSpec("privleak", "privleak", {"ref_value": 0.5}, pre_compute={"mia": "mia_min_k"},
                   reference={"reference": "mia_min_k"}),
    ]
    specs += _qa_block("retain", "retain", forget=False)
    utility = {"retain_Q_A_Prob": "retain_Q_A_Prob", "retain_Q_A_ROUGE": "retain_Q_A_ROUGE",
               "retain_Truth_Ratio": "retain_Truth_Ratio"}
    blocks = [("ra", "real_authors", False), ("wf", "world_facts", False)] if suite == "tofu" else [
        ("prior", "prior", True)]
    for prefix, data, optional in blocks:
        specs += _options_block(prefix, data, optional)
        for part in ("Q_A_Prob_normalised", "Q_A_ROUGE", "Truth_Ratio"):
            utility[f"{prefix}_{part}"] = f"{prefix}_{part}"
    specs.append(MetricSpec("model_utility", "hm_aggregate", pre_compute=utility, partial=True))
    specs.append(MetricSpec("retain_perplexity", "perplexity", {"data": "retain"}, needs=(("retain", "answer"),)))
    if text_set:
        specs.append(MetricSpec("text_perplexity", "perplexity", {"data": "text"}, needs=(("text", "text"),)))
    return specs


def required_metrics(specs: Sequence[MetricSpec], names: Sequence[str]) -> list[MetricSpec]:
    """``specs`` restricted to ``names`` and everything they are computed from (order kept).

    :raises ValueError: a name that is not in ``specs``
    """
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown} for this suite; choose from {list(by_name)}")
    keep: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        stack.extend(by_name[name].pre_compute.values())
    return [s for s in specs if s.name in keep]


def _missing_field(datasets: Mapping[str, list[dict[str, Any]]], needs: Sequence[tuple[str, str]]) -> str | None:
    for data, key in needs:
        if data not in datasets:
            return f"no '{data}' set"
        if not all(key in rec for rec in datasets[data]):
            return f"'{data}' records lack '{key}'"
    return None


def run_specs(
    ctx: EvalContext,
    specs: Sequence[MetricSpec],
    reference: Mapping[str, MetricResult] | None = None,
) -> dict[str, MetricResult]:
    """Compute ``specs`` in order on ``ctx``; skip (with a warning) those whose data or inputs are missing.

    :param ctx: model, tokenizer and data
    :param specs: metrics in dependency order
    :param reference: the retain model's results (metric name -> result), or ``None``
    :return: metric name -> ``{"agg_value", "value_by_index"}``
    """
    results: dict[str, MetricResult] = {}
    for spec in specs:
        skip = logger.debug if spec.optional else logger.warning
        missing = _missing_field(ctx.datasets, spec.needs)
        if missing:
            skip(f"skipping {spec.name}: {missing}")
            continue
        pre = {arg: results[name] for arg, name in spec.pre_compute.items() if name in results}
        if len(pre) < len(spec.pre_compute) and not (spec.partial and pre):
            absent = sorted(set(spec.pre_compute.values()) - set(results))
            skip(f"skipping {spec.name}: needs {absent}")
            continue
        ref = {arg: (reference or {}).get(name) for arg, name in spec.reference.items()}
        start = time.perf_counter()
        results[spec.name] = get_metric(spec.handler)(ctx, **spec.params, **pre, **ref)
        value = results[spec.name]["agg_value"]
        shown = f"{value:.4g}" if isinstance(value, float) else value
        logger.info(f"{spec.name} = {shown} ({time.perf_counter() - start:.1f}s)")
    return results


# ---------------------------------------------------------------------------------------------------------
# data


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in (".jsonl", ".json", ".parquet"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def load_text_set(path: str | os.PathLike[str], limit: int | None = None) -> list[dict[str, Any]]:
    """A text set for perplexity: a ``.txt`` file (one text per non-empty line) or JSON/JSONL with ``text``.

    :raises FileNotFoundError: no such file
    :raises KeyError: a JSON record without ``text``
    :raises ValueError: an empty set or another file type
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputNotFoundError(f"text set '{path}' not found")
    if p.suffix == ".txt":
        texts = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [{"text": t} for t in texts]
    elif p.suffix in (".json", ".jsonl"):
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "text" not in row:
                raise UserError(f"{path}: record {i} has no field 'text'")
    else:
        raise UserError(f"{path}: unsupported text-set type '{p.suffix}'; use .txt, .json or .jsonl")
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        raise UserError(f"text set '{path}' is empty")
    return [dict(row, index=row.get("index", i)) for i, row in enumerate(rows)]


def load_suite_data(
    suite: str = "toy",
    data_dir: str | os.PathLike[str] | None = None,
    forget: str | os.PathLike[str] | None = None,
    retain: str | os.PathLike[str] | None = None,
    holdout: str | os.PathLike[str] | None = None,
    forget_split: str = "forget10",
    limit: int | None = None,
    text_set: str | os.PathLike[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Load the QA sets of a suite, by name (``forget``, ``retain``, ``holdout``, and for TOFU
    ``real_authors``, ``world_facts``; ``text`` with a text set).

    :param suite: ``toy`` or ``tofu``
    :param data_dir: folder holding the suite's files; the toy suite needs one unless ``forget``, ``retain``
        and ``holdout`` are all given (a toy world's ``data_dir``); TOFU default: ``$SAU_COMPRESS_TOFU_DIR``,
        else the hub dataset ``locuslab/TOFU``
    :param forget: a file replacing the forget set (same for ``retain``, ``holdout``)
    :param forget_split: TOFU forget split (``forget01``, ``forget05``, ``forget10``); selects the holdout too
    :param limit: keep the first ``limit`` records of every set
    :param text_set: a text set for ``text_perplexity`` (see :func:`load_text_set`)
    :raises ValueError: unknown suite or forget split
    :raises UserError: the toy suite without ``data_dir`` and without all three set files
    :raises FileNotFoundError: a file of the suite is missing from ``data_dir``
    """
    if suite not in SUITES:
        raise UserError(f"unknown suite '{suite}'; choose from {list(SUITES)}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    overrides = {"forget": forget, "retain": retain, "holdout": holdout}
    if suite == "tofu":
        if forget_split not in FORGET_SPLITS:
            raise UserError(f"unknown forget split '{forget_split}'; choose from {list(FORGET_SPLITS)}")
        files = {
            "forget": f"{forget_split}_perturbed",
            "retain": "retain_perturbed",
            "holdout": f"holdout{forget_split[-2:]}",
            "real_authors": "real_authors_perturbed",
            "world_facts": "world_facts_perturbed",
        }
        folder = tofu_data_dir(data_dir)
    else:
        files = {"forget": "forget", "retain": "retain", "holdout": "holdout"}
        folder = data_dir
        if folder is not None and _find_file(Path(folder).expanduser(), "prior") is not None:
            files["prior"] = "prior"  # a world built with prior knowledge
        missing = [name for name, path in overrides.items() if path is None]
        if folder is None and missing:
            raise UserError(
                f"toy suite: no data folder (data_dir) for the {', '.join(missing)} set(s): pass a folder with "
                "forget.jsonl, retain.jsonl and holdout.jsonl (a toy world's data_dir) or a file for each set"
            )
    sets: dict[str, list[dict[str, Any]]] = {}
    for name, stem in files.items():
        if overrides.get(name) is not None:
            source: str | Path = Path(overrides[name]).expanduser()  # type: ignore[arg-type]
        elif folder is not None:
            found = _find_file(Path(folder).expanduser(), stem)
            if found is None:
                raise InputNotFoundError(f"{suite} suite: no {stem}.jsonl/.json/.parquet in '{folder}'")
            source = found
        else:
            source = f"{TOFU_HUB}:{stem}"
        sets[name] = load_qa(source, limit=limit)
        logger.debug(f"{suite} {name}: {len(sets[name])} records from {source}")
    if text_set is not None:
        sets["text"] = load_text_set(text_set, limit)
    return sets


# ---------------------------------------------------------------------------------------------------------
# entry points


def _reference_results(
    reference: Mapping[str, MetricResult] | str | os.PathLike[str] | None,
) -> dict[str, MetricResult] | None:
    if reference is None:
        return None
    if isinstance(reference, Mapping):
        return dict(reference)
    from sau_compress.evaluation.report import load_metrics

    return load_metrics(reference)


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    suite: str = "toy",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    forget: str | os.PathLike[str] | None = None,
    retain: str | os.PathLike[str] | None = None,
    holdout: str | os.PathLike[str] | None = None,
    forget_split: str = "forget10",
    limit: int | None = None,
    text_set: str | os.PathLike[str] | None = None,
    datasets: Mapping[str, list[dict[str, Any]]] | None = None,
    metrics: Sequence[str] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    prompt_format: str = "auto",
    max_length: int = 512,
    retain_model: nn.Module | None = None,
    retain_tokenizer: Any = None,
    reference: Mapping[str, MetricResult] | str | os.PathLike[str] | None = None,
    tokens: TokenizedSets | None = None,
) -> dict[str, MetricResult]:
    """Run a suite on ``model``.

    Forget quality and privleak compare against a retain model: pass it (``retain_model``, evaluated here on
    the same data) or its results (``reference``: a metrics dict, an ``eval.json`` or a folder holding one).
    Without either, forget quality is ``None`` and privleak uses the reference AUC 0.5.

    :param model: the causal LM to evaluate (evaluated on its current device)
    :param tokenizer: its tokenizer
    :param suite: ``toy`` or ``tofu``
    :param data_dir: see :func:`load_suite_data` (also ``forget``/``retain``/``holdout``/``forget_split``/
        ``limit``/``text_set``)
    :param datasets: already loaded sets by name (replaces loading)
    :param metrics: compute only these metrics (and what they are built from)
    :param batch_size: sequences per forward pass / ``generate`` call
    :param max_new_tokens: longest generated answer
    :param prompt_format: ``auto`` | ``plain`` | ``chat``, resolved once for ``tokenizer``
        (:func:`sau_compress.data.resolve_prompt_format`); generation prompts and scored answers use it
    :param max_length: longest tokenized prompt + answer
    :param retain_model: the reference model trained without the forget set
    :param retain_tokenizer: its tokenizer (default: ``tokenizer``)
    :param reference: the retain model's saved results instead of the model
    :param tokens: tokenized sets kept across evaluations of the same ``datasets`` lists (a model evaluated
        every few steps); ``None`` tokenizes here
    :return: metric name -> ``{"agg_value", "value_by_index"}``
    :raises ValueError: both ``retain_model`` and ``reference`` given, or an unknown suite/metric
    """
    if retain_model is not None and reference is not None:
        raise ValueError("pass either retain_model or reference (its saved results), not both")
    fmt = resolve_prompt_format(tokenizer, prompt_format)
    sets = dict(datasets) if datasets is not None else load_suite_data(
        suite, data_dir, forget, retain, holdout, forget_split, limit, text_set
    )
    specs = suite_specs(suite, text_set="text" in sets)
    if metrics is not None:
        specs = required_metrics(specs, metrics)
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "max_length": max_length,
                "tokens": tokens}
    ref = _reference_results(reference)
    if retain_model is not None:
        wanted = sorted({name for s in specs for name in s.reference.values()})
        if wanted:
            logger.info(f"evaluating the retain model for {wanted}")
            ref_tokenizer = retain_tokenizer if retain_tokenizer is not None else tokenizer
            ref_fmt = fmt if ref_tokenizer is tokenizer else resolve_prompt_format(ref_tokenizer, prompt_format)
            if ref_fmt != fmt:
                logger.warning(f"the retain model is prompted in the {ref_fmt} format and the model in {fmt}: their "
                               f"tokenizers resolve prompt_format {prompt_format!r} differently")
            ref_ctx = EvalContext(retain_model, ref_tokenizer, sets, prompt_format=ref_fmt, **settings)
            ref = run_specs(ref_ctx, required_metrics(suite_specs(suite, "text" in sets), wanted))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    logger.info(f"{suite} suite: {len(specs)} metrics on {sizes}")
    return run_specs(EvalContext(model, tokenizer, sets, prompt_format=fmt, **settings), specs, ref)
