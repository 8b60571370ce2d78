"""Evaluation reports: ``eval.json`` + ``report.md`` for one model, and the comparison of several runs.

``eval.json`` holds ``{"format", "name", "model", "suite", "settings", "seconds", "summary", "metrics"}``:
``summary`` maps each metric to its ``agg_value`` and ``metrics`` holds the full results (``value_by_index``
included), so a later run can read a retain model's forget truth ratios from it. A flat
``{metric: {"agg_value", ...}}`` file (open-unlearning's ``TOFU_EVAL.json``) is read as well.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.evaluation.metrics import MetricResult
from sau_compress.io import atomic_output_dir

__all__ = [
    "EVAL_FILE",
    "EVAL_FORMAT",
    "HEADLINE_METRICS",
    "build_record",
    "compare_rows",
    "load_eval",
    "load_metrics",
    "render_compare",
    "render_report",
    "write_compare",
    "write_eval",
]

EVAL_FILE = "eval.json"
REPORT_FILE = "report.md"
EVAL_FORMAT = "sau-compress-eval/1"

#: The columns of reports and comparisons, in order: (metric, direction of better, meaning).
HEADLINE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("forget_quality", "↑", "KS p-value of forget truth ratios vs the retain model"),
    ("model_utility", "↑", "harmonic mean of retain (and real-world) probability, ROUGE, truth ratio"),
    ("forget_Q_A_Prob", "↓", "probability of the forget answers"),
    ("forget_Q_A_ROUGE", "↓", "ROUGE-L recall of greedy forget answers"),
    ("forget_truth_ratio", "↑", "mean min(TR, 1/TR) on the forget set"),
    ("extraction_strength", "↓", "how early teacher forcing reproduces forget answers"),
    ("mia_min_k", "→0.5", "min-k% MIA AUC, forget vs holdout"),
    ("privleak", "→0", "relative MIA gap to the retain model, %"),
    ("retain_Q_A_Prob", "↑", "probability of the retain answers"),
    ("retain_Q_A_ROUGE", "↑", "ROUGE-L recall of greedy retain answers"),
    ("retain_Truth_Ratio", "↑", "mean max(0, 1 - TR) on the retain set"),
    ("retain_perplexity", "↓", "perplexity of the retain answers"),
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def build_record(
    metrics: Mapping[str, MetricResult],
    name: str,
    model: str,
    suite: str,
    settings: Mapping[str, Any] | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Assemble the content of ``eval.json``.

    :param metrics: results of :func:`sau_compress.evaluation.evaluate`
    :param name: the run's label in comparisons
    :param model: where the model came from
    :param suite: the suite's name
    :param settings: how it was evaluated (data, limit, reference, ...)
    :param seconds: wall time of the evaluation
    """
    return _jsonable(
        {
            "format": EVAL_FORMAT,
            "name": name,
            "model": model,
            "suite": suite,
            "settings": dict(settings or {}),
            "seconds": seconds,
            "summary": {k: v.get("agg_value") for k, v in metrics.items()},
            "metrics": dict(metrics),
        }
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def render_report(record: Mapping[str, Any]) -> str:
    """``report.md``: headline metrics with their meaning, then every metric, then the settings."""
    summary = record.get("summary", {})
    lines = [
        f"# Evaluation of {record.get('name', '?')}",
        "",
        f"- model: `{record.get('model', '?')}`",
        f"- suite: {record.get('suite', '?')}",
    ]
    if record.get("seconds") is not None:
        lines.append(f"- time: {record['seconds']:.1f} s")
    lines += ["", "## Headline", "", "| metric | better | value | meaning |", "|---|---|---|---|"]
    for metric, better, meaning in HEADLINE_METRICS:
        if metric in summary:
            lines.append(f"| {metric} | {better} | {_fmt(summary[metric])} | {meaning} |")
    lines += ["", "## All metrics", "", "| metric | value |", "|---|---|"]
    for metric, value in summary.items():
        lines.append(f"| {metric} | {_fmt(value)} |")
    settings = record.get("settings") or {}
    if settings:
        lines += ["", "## Settings", ""]
        lines += [f"- {k}: `{v}`" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def write_eval(output: str | os.PathLike[str], record: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write ``eval.json`` and ``report.md`` into the folder ``output``, atomically.

    :raises sau_compress.io.OutputExistsError: ``output`` exists and ``overwrite`` is false
    """
    with atomic_output_dir(output, overwrite) as tmp:
        (tmp / EVAL_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        (tmp / REPORT_FILE).write_text(render_report(record), encoding="utf-8")
    out = Path(output).expanduser().absolute()
    logger.info(f"wrote {out / EVAL_FILE} and {out / REPORT_FILE}")
    return out


def load_eval(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an ``eval.json`` (or a folder holding one) as a record; a flat metrics file gets wrapped.

    :raises FileNotFoundError: no such file, or a folder without ``eval.json``
    :raises ValueError: not a JSON object of metric results
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / EVAL_FILE).is_file():
            raise InputNotFoundError(f"'{p}' holds no {EVAL_FILE}")
        p = p / EVAL_FILE
    if not p.is_file():
        raise InputNotFoundError(f"eval file '{path}' not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{p}: not valid JSON ({err.msg})") from err
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a JSON object, got a JSON {type(data).__name__}")
    if "metrics" not in data:
        if not all(isinstance(v, dict) and "agg_value" in v for v in data.values()):
            raise UserError(f"{p}: neither a sau-compress eval.json nor a flat {{metric: {{agg_value}}}} file")
        name = p.parent.name if p.name == EVAL_FILE else p.stem
        data = {"format": "flat", "name": name, "model": str(p), "suite": "?", "metrics": data,
                "summary": {k: v.get("agg_value") for k, v in data.items()}}
    data.setdefault("name", p.parent.name)
    data["path"] = str(p)
    return data


def load_metrics(path: str | os.PathLike[str]) -> dict[str, MetricResult]:
    """The metric results stored in an ``eval.json`` (or a folder holding one)."""
    return load_eval(path)["metrics"]


def compare_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: its name and the headline metrics it has (``None`` where absent)."""
    rows = []
    for rec in records:
        summary = rec.get("summary", {})
        row = {"name": rec.get("name", "?")}
        row.update({metric: summary.get(metric) for metric, _, _ in HEADLINE_METRICS})
        rows.append(row)
    return rows


def render_compare(rows: Sequence[Mapping[str, Any]], chart: str | None = None) -> str:
    """A Markdown table of the headline metrics of several runs (columns absent everywhere are dropped)."""
    metrics = [(m, b) for m, b, _ in HEADLINE_METRICS if any(r.get(m) is not None for r in rows)]
    header = "| run | " + " | ".join(f"{m} {b}" for m, b in metrics) + " |"
    lines = ["# Comparison", "", header, "|---|" + "---|" * len(metrics)]
    for row in rows:
        lines.append(f"| {row['name']} | " + " | ".join(_fmt(row.get(m)) for m, _ in metrics) + " |")
    if chart:
        lines += ["", f"![forget quality vs model utility]({chart})"]
    return "\n".join(lines) + "\n"


def write_compare(
    records: Sequence[Mapping[str, Any]], output: str | os.PathLike[str], overwrite: bool = False
) -> dict[str, Any]:
    """Write ``compare.md`` and ``compare.png`` (forget quality vs model utility) into ``output``, atomically.

    :return: ``{"output", "markdown", "chart", "rows"}`` (``chart`` is ``None`` when no run has both numbers)
    """
    from sau_compress.evaluation.plots import plot_tradeoff

    rows = compare_rows(records)
    with atomic_output_dir(output, overwrite) as tmp:
        drawn = plot_tradeoff(rows, tmp / "compare.png")
        (tmp / "compare.md").write_text(render_compare(rows, "compare.png" if drawn else None), encoding="utf-8")
    out = Path(output).expanduser().absolute()
    return {
        "output": str(out),
        "markdown": str(out / "compare.md"),
        "chart": str(out / "compare.png") if drawn else None,
        "rows": rows,
    }
