"""Audit reports: ``audit.json``, ``audit.md`` and ``audit.png`` in an output folder, and the short summary
recorded in an export's ``sau_compress.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from sau_compress.evaluation.report import _jsonable  # the eval.json conversion: NaN -> null, scalars
from sau_compress.io import atomic_output_dir

__all__ = ["AUDIT_FILE", "AUDIT_FORMAT", "audit_summary", "plot_audit", "render_audit", "write_audit"]

AUDIT_FILE = "audit.json"
AUDIT_REPORT = "audit.md"
AUDIT_CHART = "audit.png"
AUDIT_FORMAT = "sau-compress-audit/1"

_SCORE_LABEL = {"forget_rouge": "forget ROUGE-L recall", "mia_auc": "membership AUC (forget vs holdout)"}


def audit_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The short form kept in a checkpoint's sidecar: per attack its verdict, score, value and threshold."""
    return {
        "format": AUDIT_FORMAT,
        "holds": record["holds"],
        "reference": record["reference"],
        "attacks": [{k: a.get(k) for k in ("name", "holds", "score", "value", "level", "threshold")}
                    for a in record["attacks"]],
    }


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def render_audit(record: Mapping[str, Any]) -> str:
    """The Markdown report: one row per attack, then the scores before and after each attack."""
    level = "retain model under the same attack" if record["reference"] == "retain_model" else \
        "the attacked model on the holdout set"
    lines = [
        f"# Audit of {record.get('model', '?')}",
        "",
        f"Verdict: **{'every attack holds' if record['holds'] else 'forgetting does not hold'}**. "
        f"An attack holds when the attacked model's forget score is at most the reference level ({level}) "
        "plus the margin.",
        "",
        "| attack | holds | forget score | before | after | level | threshold | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in record["attacks"]:
        before = (a.get("before") or {}).get(a["score"])
        lines.append(f"| {a['name']} | {'yes' if a['holds'] else 'NO' if a['holds'] is False else 'n/a'} | "
                     f"{_SCORE_LABEL.get(a['score'], a['score'])} | {_fmt(before)} | {_fmt(a['value'])} | "
                     f"{_fmt(a['level'])} | {_fmt(a['threshold'])} | {a.get('seconds') or 0:.0f} |")
    keys = ("forget_rouge", "forget_prob", "forget_truth_ratio", "forget_quality", "model_utility", "holdout_rouge")
    lines += ["", "## Scores of the model before and after each attack", "",
              "| attack | " + " | ".join(f"{k} before / after" for k in keys) + " |",
              "|---" * (len(keys) + 1) + "|"]
    for a in record["attacks"]:
        b, f = a.get("before") or {}, a.get("after") or {}
        lines.append(f"| {a['name']} | " + " | ".join(f"{_fmt(b.get(k))} / {_fmt(f.get(k))}" for k in keys) + " |")
    if any(a["name"] == "relearn" and a.get("control") for a in record["attacks"]):
        a = next(a for a in record["attacks"] if a["name"] == "relearn")
        lines += ["", f"Relearn: {a['steps']} steps at learning rate {a['learning_rate']} on {a['train_records']} "
                  f"forget records, measured on the other {a['test_records']} (other people). Control (the same "
                  f"steps on {a['control_records']} retain records): forget ROUGE-L "
                  f"{_fmt(a['control']['forget_rouge'])}."]
    lines += ["", "## Settings", ""] + [f"- {k}: `{v}`" for k, v in record["settings"].items()]
    return "\n".join(lines) + "\n"


def plot_audit(record: Mapping[str, Any], path: str | os.PathLike[str]) -> bool:
    """Bars of each attack's forget score before and after it, the reference level drawn as a line.

    :return: whether a chart was written (``False`` when no attack has a score)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [a for a in record["attacks"] if a.get("value") is not None]
    if not rows:
        return False
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.38
    label = "retain model level" if record["reference"] == "retain_model" else "holdout level"
    for i, a in enumerate(rows):
        before = (a.get("before") or {}).get(a["score"]) or 0.0
        ax.bar(i - width / 2, before, width, color="#9ab", label="before" if i == 0 else None)
        ax.bar(i + width / 2, a["value"], width, color="#2a7" if a["holds"] else "#c33",
               label="after (holds)" if a["holds"] and "after (holds)" not in ax.get_legend_handles_labels()[1]
               else "after (fails)" if not a["holds"] and "after (fails)" not in ax.get_legend_handles_labels()[1]
               else None)
        if a.get("level") is not None:
            ax.hlines(a["level"], i - 0.48, i + 0.48, colors="black", linewidth=1.6,
                      label=label if i == 0 else None)
            ax.hlines(a["threshold"], i - 0.48, i + 0.48, colors="black", linestyles=":", linewidth=1,
                      label="threshold (level + margin)" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [a["name"] + ("\n(AUC)" if a["score"] == "mia_auc" else "") for a in rows],
                  fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("forget score (ROUGE-L recall; mia: AUC)")
    ax.set_title(f"Audit of {Path(str(record.get('model', '?'))).name}: forget score per attack")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(path))
    return True


def write_audit(output: str | os.PathLike[str], record: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write ``audit.json``, ``audit.md`` and ``audit.png`` into the folder ``output``, atomically.

    :raises sau_compress.io.OutputExistsError: ``output`` exists and ``overwrite`` is false
    """
    with atomic_output_dir(output, overwrite) as tmp:
        (tmp / AUDIT_FILE).write_text(json.dumps(_jsonable(record), indent=1) + "\n", encoding="utf-8")
        (tmp / AUDIT_REPORT).write_text(render_audit(record), encoding="utf-8")
        plot_audit(record, tmp / AUDIT_CHART)
    out = Path(output).expanduser().absolute()
    logger.info(f"wrote {out / AUDIT_FILE}, {AUDIT_REPORT} and {AUDIT_CHART}")
    return out
