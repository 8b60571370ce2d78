"""The quick before/after summary of a run: ROUGE-L recall, answer NLL, and what the greedy answers say
(contain the fact, empty, looping), with a few sample answers."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from sau_compress.errors import UserError
from sau_compress.evaluation.answers import reference_of
from sau_compress.evaluation.context import EvalContext
from sau_compress.evaluation.metrics import get_metric

__all__ = ["SUMMARY_KEYS", "kept_facts", "summarize"]

#: what :func:`summarize` reports for each set (``forget_rouge``, ``retain_loops``, ...)
SUMMARY_KEYS = ("rouge", "nll", "contains", "empty", "loops")


def summarize(
    model: nn.Module,
    tokenizer: Any,
    forget: list[dict[str, Any]],
    retain: list[dict[str, Any]],
    batch_size: int = 16,
    max_new_tokens: int = 64,
    prompt_format: str = "auto",
    samples: int = 0,
    verdicts: bool = False,
) -> dict[str, Any]:
    """The quick before/after numbers of each set: mean ROUGE-L recall of greedy answers, mean answer NLL, and
    the shares of greedy answers that contain the reference, are empty or loop
    (:mod:`sau_compress.evaluation.answers`).

    One ``generate`` pass and one forward pass per set.

    :param forget: QA records (``question``, ``answer``, optionally ``short_answer``) of the forget set
    :param retain: QA records of the retain set
    :param prompt_format: ``auto`` | ``plain`` | ``chat`` (:func:`sau_compress.data.resolve_prompt_format`)
    :param samples: also return the first ``samples`` questions of each set with their greedy answers
        (key ``samples``: ``{"forget": [{"question", "reference", "answer"}, ...], "retain": [...]}``)
    :param verdicts: also return, per set and in record order, whether each answer contains its reference
        (key ``contained``: ``{"forget": [bool, ...], "retain": [...]}``), so that two evaluations of the same
        sets can be compared fact by fact (:func:`kept_facts`)
    :return: ``{"<set>_rouge", "<set>_nll", "<set>_contains", "<set>_empty", "<set>_loops"}`` for ``forget``
        and ``retain`` (floats), and ``samples`` / ``contained`` when asked
    :raises UserError: an empty set
    """
    for name, recs in (("forget", forget), ("retain", retain)):
        if not recs:
            raise UserError(f"summarize needs a non-empty {name} set")
    ctx = EvalContext(model, tokenizer, {"forget": list(forget), "retain": list(retain)}, batch_size=batch_size,
                      max_new_tokens=max_new_tokens, prompt_format=prompt_format)
    out: dict[str, Any] = {}
    contained: dict[str, list[bool]] = {}
    for name in ("forget", "retain"):
        out[f"{name}_rouge"] = float(get_metric("rouge")(ctx, data=name)["agg_value"])
        out[f"{name}_nll"] = float(np.mean([options[0].avg_loss for options in ctx.scores(name)]))
        for key, metric in (("contains", "contains"), ("empty", "empty_answers"), ("loops", "looping_answers")):
            result = get_metric(metric)(ctx, data=name)
            out[f"{name}_{key}"] = float(result["agg_value"])
            if key == "contains":
                contained[name] = [bool(v["contains"]) for v in result["value_by_index"].values()]
    if samples > 0:
        out["samples"] = {
            name: [{"question": rec["question"], "reference": reference_of(rec), "answer": gen}
                   for rec, gen in zip(ctx.records(name)[:samples], ctx.generations(name)[:samples], strict=True)]
            for name in ("forget", "retain")
        }
    if verdicts:
        out["contained"] = contained
    return out


def kept_facts(start: dict[str, Any], end: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per set, of the facts ``start`` states (its ``contained`` verdicts), how many ``end`` still states.

    :param start: a :func:`summarize` result with ``contained`` (e.g. the model right after pruning)
    :param end: one of the same sets with ``contained`` (e.g. the unlearned model)
    :return: ``{"forget": {"stated": n, "still": k, "share": k / n or None}, "retain": {...}}``
    """
    out = {}
    for name, first in start["contained"].items():
        last = end["contained"][name]
        still = sum(a and b for a, b in zip(first, last, strict=True))
        stated = sum(first)
        out[name] = {"stated": stated, "still": still, "share": still / stated if stated else None}
    return out
