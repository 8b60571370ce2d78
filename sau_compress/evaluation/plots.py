"""Charts of evaluation results (matplotlib's Agg canvas, no display and no global backend switch)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

__all__ = ["FORGET_QUALITY_FLOOR", "SIGNIFICANCE", "plot_tradeoff"]

#: Forget quality is drawn on a log axis; p-values below this are drawn at it.
FORGET_QUALITY_FLOOR = 1e-30
#: The usual threshold: below it, the forget truth ratios differ from the retain model's.
SIGNIFICANCE = 0.05


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str | None = None) -> bool:
    """Scatter forget quality (log scale, up = forgot like the retain model) against model utility.

    :param rows: one mapping per run with ``name``, ``forget_quality``, ``model_utility``
    :param path: the PNG to write
    :param title: the chart's title
    :return: whether a chart was written (``False`` when no run has both numbers)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = []
    for row in rows:
        fq, mu = row.get("forget_quality"), row.get("model_utility")
        if fq is None or mu is None or not math.isfinite(fq) or not math.isfinite(mu):
            logger.warning(f"{row.get('name')}: no forget quality or model utility; left out of the chart")
            continue
        points.append((str(row.get("name")), float(mu), float(fq)))
    if not points:
        return False
    fig = Figure(figsize=(7.0, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = [max(fq, FORGET_QUALITY_FLOOR) for _, _, fq in points]
    for (name, mu, fq), y in zip(points, ys, strict=True):
        ax.scatter([mu], [y], s=60, zorder=3)
        ax.annotate(f"{name}\nFQ={fq:.2g}, MU={mu:.3f}", (mu, y), textcoords="offset points", xytext=(8, 4),
                    fontsize=8)
    ax.axhline(SIGNIFICANCE, color="grey", linestyle="--", linewidth=1)
    ax.text(0.01, SIGNIFICANCE, f" p = {SIGNIFICANCE}", transform=ax.get_yaxis_transform(), va="bottom",
            fontsize=8, color="grey")
    ax.set_yscale("log")
    low = min(min(ys), SIGNIFICANCE) / 10
    ax.set_ylim(low, 5.0)  # headroom above p = 1 for the labels
    mus = [mu for _, mu, _ in points]
    span = max(mus) - min(mus)
    pad = max(0.05, 0.15 * span)
    ax.set_xlim(max(0.0, min(mus) - pad), min(1.0, max(mus) + pad) + 0.25 * pad)
    ax.set_xlabel("model utility (higher is better)")
    ax.set_ylabel("forget quality, KS p-value (higher is better)")
    ax.set_title(title or "Forget quality vs model utility")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    logger.info(f"wrote chart {out}")
    return True
