"""Metric registry and the unlearning metrics of TOFU, as defined by open-unlearning.

Every metric is a handler registered by name with :func:`unlearning_metric`; it takes the
:class:`~sau_compress.evaluation.context.EvalContext` and keyword parameters, and returns
``{"agg_value": float | None, "value_by_index": {index: ...}}`` (index = the record's ``index`` as a string,
so a result survives a JSON round trip unchanged). Derived metrics (truth ratio, forget quality, model
utility, privleak) take other metrics' results as parameters, like open-unlearning's ``pre_compute``.

Definitions (open-unlearning ``src/evals/metrics``, ``configs/eval/tofu_metrics``):

- answer probability: ``exp(-mean token NLL)`` of the answer (EOS included) given the prompt;
- ROUGE-L recall of the greedy answer against the reference (``rouge-score``, ``use_stemmer=True``);
- truth ratio ``TR = p(perturbed) / p(paraphrased)``, each a length-normalised probability, the perturbed one
  as ``exp(-mean over perturbations of mean token NLL)``; aggregated as ``mean(min(TR, 1/TR))`` on the forget
  set and ``mean(max(0, 1 - TR))`` elsewhere;
- forget quality: KS-test p-value between the forget truth ratios of the model and of a retain model;
- model utility: harmonic mean of the utility metrics available;
- extraction strength: ``1 - k/n`` with ``k`` the shortest answer prefix after which teacher-forced argmax
  decoding reproduces the rest of the answer (``n`` answer tokens, EOS excluded; ``k = n`` if never);
- MIA AUC of forget (members) against holdout (non-members) with the loss, zlib and min-k% scores
  (higher score = less likely member): ``P(holdout score > forget score)``, ties counting one half;
- privleak: ``((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100`` with the retain model's AUC (default 0.5).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from loguru import logger

from sau_compress.data import pad_token_id
from sau_compress.errors import UserError
from sau_compress.evaluation.context import EvalContext
from sau_compress.evaluation.scoring import AnswerScore, score_items

__all__ = [
    "METRICS",
    "TRUTH_RATIO_AGGREGATORS",
    "MetricResult",
    "aggregate_truth_ratio",
    "auc_score",
    "extraction_strength_of",
    "get_metric",
    "harmonic_mean",
    "ks_pvalue",
    "min_k_score",
    "privleak_from_auc",
    "rouge_l_recall",
    "rouge_scores",
    "truth_ratio_of",
    "unlearning_metric",
    "zlib_score",
]

MetricResult = dict[str, Any]
MetricHandler = Callable[..., MetricResult]

METRICS: dict[str, MetricHandler] = {}

#: Added to denominators, as in open-unlearning, so a zero probability gives a finite ratio.
EPS = 1e-10


def unlearning_metric(name: str) -> Callable[[MetricHandler], MetricHandler]:
    """Register a metric handler under ``name``.

    :raises ValueError: ``name`` is already registered
    """

    def register(fn: MetricHandler) -> MetricHandler:
        if name in METRICS:
            raise ValueError(f"metric '{name}' is already registered")
        METRICS[name] = fn
        return fn

    return register


def get_metric(name: str) -> MetricHandler:
    """The handler registered as ``name``.

    :raises ValueError: unknown name (lists the registered ones)
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric '{name}'; choose from {sorted(METRICS)}")
    return METRICS[name]


# ---------------------------------------------------------------------------------------------------------
# pure functions


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    import logging

    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)
    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


@functools.lru_cache(maxsize=1 << 16)
def _rouge_triple(prediction: str, reference: str) -> tuple[float, float, float]:
    # memoized: stemming makes a score cost about 1 ms, and repeated evaluations (a forgetting check every few
    # steps) mostly meet answers they have scored before
    s = _rouge_scorer().score(reference, prediction)
    return float(s["rouge1"].recall), float(s["rougeL"].recall), float(s["rougeL"].fmeasure)


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 recall, ROUGE-L recall and ROUGE-L F1 of ``prediction`` against ``reference`` (stemmed).

    :return: ``{"rouge1_recall", "rougeL_recall", "rougeL_f1"}``
    """
    r1, rl, f1 = _rouge_triple(prediction, reference)
    return {"rouge1_recall": r1, "rougeL_recall": rl, "rougeL_f1": f1}


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall: longest common token subsequence over the reference's token count (stemmed)."""
    return rouge_scores(prediction, reference)["rougeL_recall"]


def truth_ratio_of(correct_avg_loss: float | Sequence[float], wrong_avg_loss: float | Sequence[float]) -> float:
    """``p(wrong) / p(correct)`` with ``p = exp(-mean of the mean token NLLs)`` over the answer options."""
    correct = float(np.mean(correct_avg_loss))
    wrong = float(np.mean(wrong_avg_loss))
    return math.exp(-wrong) / (math.exp(-correct) + EPS)


TRUTH_RATIO_AGGREGATORS: dict[str, Callable[[np.ndarray], float]] = {
    # forget set: best when true and false answers are equally likely (TR near 1)
    "closer_to_1_better": lambda tr: float(np.mean(np.minimum(tr, 1.0 / (tr + EPS)))),
    # other sets: best when the true answer is the more likely (TR small)
    "true_better": lambda tr: float(np.mean(np.maximum(0.0, 1.0 - tr))),
}


def aggregate_truth_ratio(ratios: Sequence[float], aggregator: str) -> float:
    """Aggregate per-item truth ratios (``closer_to_1_better`` or ``true_better``).

    :raises ValueError: unknown aggregator, or no ratios
    """
    if aggregator not in TRUTH_RATIO_AGGREGATORS:
        raise ValueError(
            f"unknown truth-ratio aggregator '{aggregator}'; choose from {sorted(TRUTH_RATIO_AGGREGATORS)}"
        )
    if len(ratios) == 0:
        raise ValueError("cannot aggregate an empty list of truth ratios")
    return TRUTH_RATIO_AGGREGATORS[aggregator](np.asarray(ratios, dtype=np.float64))


def ks_pvalue(sample: Sequence[float], reference: Sequence[float]) -> float:
    """Two-sided two-sample Kolmogorov-Smirnov p-value (``scipy.stats.ks_2samp``)."""
    from scipy.stats import ks_2samp

    if len(sample) == 0 or len(reference) == 0:
        raise ValueError(f"KS test needs two non-empty samples, got sizes {len(sample)} and {len(reference)}")
    return float(ks_2samp(np.asarray(sample, float), np.asarray(reference, float)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative values (0 if any is 0).

    :raises ValueError: empty, negative or non-finite values
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("harmonic mean of no values")
    if any(v < 0 or not math.isfinite(v) for v in vals):
        raise ValueError(f"harmonic mean needs finite non-negative values, got {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def auc_score(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """Area under the ROC curve of a score separating ``positives`` (high) from ``negatives`` (low).

    Equals ``P(positive > negative) + P(tie) / 2`` (Mann-Whitney U over ``n_pos * n_neg``).
    """
    from scipy.stats import rankdata

    neg = np.asarray(negatives, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"AUC needs both classes, got {neg.size} negatives and {pos.size} positives")
    ranks = rankdata(np.concatenate([neg, pos]))
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def privleak_from_auc(auc: float, reference_auc: float) -> float:
    """open-unlearning's privleak: relative gap of ``1 - AUC`` to the retain model's, in percent."""
    return ((1.0 - auc) - (1.0 - reference_auc)) / (1.0 - reference_auc + EPS) * 100.0


def extraction_strength_of(hits: Sequence[bool]) -> float:
    """``1 - k/n``: ``k`` = shortest prefix after which every teacher-forced argmax matches the answer."""
    h = [bool(x) for x in hits]
    n = len(h)
    if n == 0:
        return 0.0
    misses = [i for i, x in enumerate(h) if not x]
    k = misses[-1] + 1 if misses else 0
    return 1.0 - k / n


def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-k% score: minus the mean of the lowest ``k`` fraction of token log-probs (at least one token)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    lp = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    if lp.size == 0:
        return 0.0
    count = max(1, int(lp.size * k))
    return float(-lp[:count].mean())


def zlib_score(avg_loss: float, text: str) -> float:
    """zlib score: mean token NLL over the zlib-compressed byte length of the text."""
    return avg_loss / max(1, len(zlib.compress(text.encode("utf-8"))))


# ---------------------------------------------------------------------------------------------------------
# handlers on the model


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


@unlearning_metric("probability")
def probability(
    ctx: EvalContext, data: str = "forget", question_key: str = "question", answer_key: str = "answer"
) -> MetricResult:
    """Length-normalised answer probability; a list-valued answer field gives a list per index."""
    records = ctx.records(data)
    by_index: dict[str, Any] = {}
    per_item = []
    for pos, (rec, options) in enumerate(zip(records, ctx.scores(data, question_key, answer_key), strict=True)):
        probs = [s.prob for s in options]
        losses = [s.avg_loss for s in options]
        many = isinstance(rec[answer_key], list)
        by_index[ctx.index_of(rec, pos)] = {
            "prob": probs if many else probs[0],
            "avg_loss": losses if many else losses[0],
        }
        per_item.append(float(np.mean(probs)))
    return {"agg_value": _mean_or_none(per_item), "value_by_index": by_index}


@unlearning_metric("rouge")
def rouge(
    ctx: EvalContext, data: str = "forget", question_key: str = "question", answer_key: str = "answer"
) -> MetricResult:
    """ROUGE-L recall of greedy answers against ``answer_key``; also keeps ROUGE-1 recall and the texts."""
    records = ctx.records(data)
    generations = ctx.generations(data, question_key)
    by_index: dict[str, Any] = {}
    values = []
    for pos, (rec, gen) in enumerate(zip(records, generations, strict=True)):
        reference = rec.get(answer_key)
        if not isinstance(reference, str):
            raise UserError(f"{data}: record {pos} field '{answer_key}' must be a string for ROUGE")
        scores = rouge_scores(gen, reference)
        by_index[ctx.index_of(rec, pos)] = {**scores, "generation": gen, "ground_truth": reference}
        values.append(scores["rougeL_recall"])
    return {"agg_value": _mean_or_none(values), "value_by_index": by_index}


def _content_scores(ctx: EvalContext, data: str) -> list[tuple[str, AnswerScore]]:
    eos = getattr(ctx.tokenizer, "eos_token_id", None)
    records = ctx.records(data)
    return [
        (ctx.index_of(rec, pos), options[0].content(eos))
        for pos, (rec, options) in enumerate(zip(records, ctx.scores(data), strict=True))
    ]


@unlearning_metric("extraction_strength")
def extraction_strength(ctx: EvalContext, data: str = "forget") -> MetricResult:
    """Extraction strength of each answer (EOS excluded) under teacher forcing."""
    by_index = {idx: {"score": extraction_strength_of(s.hits.tolist())} for idx, s in _content_scores(ctx, data)}
    return {"agg_value": _mean_or_none([v["score"] for v in by_index.values()]), "value_by_index": by_index}


@unlearning_metric("exact_memorization")
def exact_memorization(ctx: EvalContext, data: str = "forget") -> MetricResult:
    """Fraction of answer tokens (EOS excluded) that are the teacher-forced argmax."""
    by_index = {
        idx: {"score": float(s.hits.double().mean()) if s.num_tokens else 0.0}
        for idx, s in _content_scores(ctx, data)
    }
    return {"agg_value": _mean_or_none([v["score"] for v in by_index.values()]), "value_by_index": by_index}


def _mia(ctx: EvalContext, forget: str, holdout: str, score: Callable[[dict[str, Any], AnswerScore], float]):
    sides = {}
    for name in (forget, holdout):
        records = ctx.records(name)
        sides[name] = {
            ctx.index_of(rec, pos): {"score": score(rec, options[0])}
            for pos, (rec, options) in enumerate(zip(records, ctx.scores(name), strict=True))
        }
    auc = auc_score([v["score"] for v in sides[forget].values()], [v["score"] for v in sides[holdout].values()])
    return {"agg_value": auc, "value_by_index": {"forget": sides[forget], "holdout": sides[holdout]}}


@unlearning_metric("mia_loss")
def mia_loss(ctx: EvalContext, forget: str = "forget", holdout: str = "holdout") -> MetricResult:
    """MIA AUC with the mean answer NLL as score."""
    return _mia(ctx, forget, holdout, lambda rec, s: s.avg_loss)


@unlearning_metric("mia_zlib")
def mia_zlib(ctx: EvalContext, forget: str = "forget", holdout: str = "holdout") -> MetricResult:
    """MIA AUC with the mean answer NLL over the answer's zlib-compressed length as score."""
    return _mia(ctx, forget, holdout, lambda rec, s: zlib_score(s.avg_loss, rec["answer"]))


@unlearning_metric("mia_min_k")
def mia_min_k(ctx: EvalContext, forget: str = "forget", holdout: str = "holdout", k: float = 0.4) -> MetricResult:
    """MIA AUC with the min-k% score of the answer tokens (EOS excluded); ``k`` 0.4 as in TOFU."""
    eos = getattr(ctx.tokenizer, "eos_token_id", None)
    return _mia(ctx, forget, holdout, lambda rec, s: min_k_score(s.content(eos).token_logprobs.tolist(), k))


@unlearning_metric("perplexity")
def perplexity(ctx: EvalContext, data: str = "retain", text_key: str = "text") -> MetricResult:
    """Perplexity ``exp(total NLL / total tokens)`` of a text set; per index, each text's own perplexity.

    Records holding ``text_key`` are scored as plain text (every token after the first); QA records without
    it are scored on their answer tokens given the prompt (what training taught).
    """
    records = ctx.records(data)
    if all(text_key in rec for rec in records):
        items = []
        for pos, rec in enumerate(records):
            ids = list(ctx.tokenizer(rec[text_key], add_special_tokens=True)["input_ids"])[: ctx.max_length]
            if len(ids) < 2:
                raise UserError(f"{data}: text {pos} has fewer than 2 tokens; nothing to score")
            items.append({"input_ids": ids, "labels": ids})
        scores = score_items(ctx.model, items, pad_token_id(ctx.tokenizer), ctx.batch_size, desc=f"perplexity {data}")
    else:
        scores = [options[0] for options in ctx.scores(data)]
    by_index = {}
    total_nll, total_tokens = 0.0, 0
    for pos, (rec, s) in enumerate(zip(records, scores, strict=True)):
        by_index[ctx.index_of(rec, pos)] = {"ppl": math.exp(s.avg_loss), "tokens": s.num_tokens}
        total_nll += float(-s.token_logprobs.sum())
        total_tokens += s.num_tokens
    agg = math.exp(total_nll / total_tokens) if total_tokens else None
    return {"agg_value": agg, "value_by_index": by_index}


# ---------------------------------------------------------------------------------------------------------
# handlers on other metrics' results


def _avg_losses(result: MetricResult) -> dict[str, Any]:
    return {idx: v["avg_loss"] for idx, v in result["value_by_index"].items() if v is not None}


@unlearning_metric("truth_ratio")
def truth_ratio(
    ctx: EvalContext | None, correct: MetricResult, wrong: MetricResult, aggregator: str = "closer_to_1_better"
) -> MetricResult:
    """Per-index ``p(wrong) / p(correct)`` from two ``probability`` results, aggregated by ``aggregator``."""
    c, w = _avg_losses(correct), _avg_losses(wrong)
    if set(c) != set(w):
        raise ValueError(f"truth ratio needs the same indices in both results ({len(c)} vs {len(w)})")
    by_index = {idx: {"score": truth_ratio_of(c[idx], w[idx])} for idx in c}
    agg = aggregate_truth_ratio([v["score"] for v in by_index.values()], aggregator) if by_index else None
    return {"agg_value": agg, "value_by_index": by_index}


@unlearning_metric("probability_w_options")
def probability_w_options(ctx: EvalContext | None, correct: MetricResult, wrong: MetricResult) -> MetricResult:
    """Probability of the correct answer normalised over the options: ``p_c / (p_c + sum p_wrong)``."""
    by_index = {}
    for idx, v in correct["value_by_index"].items():
        pc = float(np.mean(v["prob"]))
        pw = float(np.sum(wrong["value_by_index"][idx]["prob"]))
        by_index[idx] = {"prob": pc / (pc + pw + EPS)}
    return {"agg_value": _mean_or_none([v["prob"] for v in by_index.values()]), "value_by_index": by_index}


def _scores_of(result: MetricResult) -> list[float]:
    return [float(v["score"]) for v in result["value_by_index"].values() if v is not None]


@unlearning_metric("ks_test")
def ks_test(ctx: EvalContext | None, forget: MetricResult, reference: MetricResult | None = None) -> MetricResult:
    """Forget quality: KS p-value between the model's and the retain model's forget truth ratios.

    ``agg_value`` is ``None`` without a reference (a warning is logged).
    """
    if reference is None:
        logger.warning("forget quality needs a retain model (or its eval.json); reported as None")
        return {"agg_value": None, "value_by_index": {}}
    return {"agg_value": ks_pvalue(_scores_of(forget), _scores_of(reference)), "value_by_index": {}}


@unlearning_metric("hm_aggregate")
def hm_aggregate(ctx: EvalContext | None, **components: MetricResult) -> MetricResult:
    """Model utility: harmonic mean of the ``agg_value`` of every component given (``None`` ones skipped)."""
    values = {name: r["agg_value"] for name, r in components.items() if r is not None and r["agg_value"] is not None}
    if not values:
        return {"agg_value": None, "value_by_index": {}}
    return {"agg_value": harmonic_mean(list(values.values())), "value_by_index": {}, "components": values}


@unlearning_metric("privleak")
def privleak(
    ctx: EvalContext | None, mia: MetricResult, reference: MetricResult | None = None, ref_value: float = 0.5
) -> MetricResult:
    """privleak of an MIA AUC against the retain model's AUC on the same sets (``ref_value`` without one)."""
    ref = reference["agg_value"] if reference is not None and reference.get("agg_value") is not None else ref_value
    return {"agg_value": privleak_from_auc(float(mia["agg_value"]), float(ref)), "value_by_index": {},
            "reference_auc": float(ref)}

