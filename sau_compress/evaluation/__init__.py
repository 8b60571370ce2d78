"""Evaluation of unlearning: the TOFU metric suite (open-unlearning's definitions), reports and charts.

- :func:`evaluate` runs a suite (``tofu`` or ``toy``) and returns ``{metric: {agg_value, value_by_index}}``;
- :func:`summarize` gives the quick before/after numbers used by ``run``, ``demo`` and the toy builder;
- :func:`generate_answers`, :func:`answer_nll`, :func:`rouge_l_recall` are the building blocks;
- :data:`METRICS` is the registry of metric handlers (:func:`unlearning_metric` adds one);
- :func:`write_eval` / :func:`load_eval` / :func:`write_compare` write and read reports.
"""

from __future__ import annotations

from sau_compress.evaluation import answers as answers  # registers contains, empty_answers, looping_answers
from sau_compress.evaluation.context import EvalContext, TokenizedSets
from sau_compress.evaluation.generation import generate_answers
from sau_compress.evaluation.metrics import (
    METRICS,
    MetricResult,
    auc_score,
    get_metric,
    harmonic_mean,
    ks_pvalue,
    rouge_l_recall,
    unlearning_metric,
)
from sau_compress.evaluation.report import build_record, load_eval, load_metrics, write_compare, write_eval
from sau_compress.evaluation.scoring import answer_nll, score_items
from sau_compress.evaluation.suite import (
    SUITES,
    MetricSpec,
    evaluate,
    load_suite_data,
    suite_specs,
)
from sau_compress.evaluation.summary import SUMMARY_KEYS, kept_facts, summarize

__all__ = [
    "METRICS",
    "SUITES",
    "SUMMARY_KEYS",
    "EvalContext",
    "MetricResult",
    "MetricSpec",
    "TokenizedSets",
    "answer_nll",
    "auc_score",
    "build_record",
    "evaluate",
    "generate_answers",
    "get_metric",
    "harmonic_mean",
    "kept_facts",
    "ks_pvalue",
    "load_eval",
    "load_metrics",
    "load_suite_data",
    "rouge_l_recall",
    "score_items",
    "suite_specs",
    "summarize",
    "unlearning_metric",
    "write_compare",
    "write_eval",
]
