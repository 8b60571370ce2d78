"""Every metric of the registry against hand-computed values.

Model-based metrics run on a stub LM whose next-token distribution is the same fixed one at every position
(probabilities that are powers of two), with a whitespace tokenizer, so every answer's probability is a
closed-form number: with L = ln 2, p(a) = 1/2, p(b) = 1/4, p(</s>) = 1/8, p(c) = 1/32.
"""

from __future__ import annotations

import math
from math import comb
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sau_compress.evaluation import EvalContext
from sau_compress.evaluation.metrics import (
    METRICS,
    aggregate_truth_ratio,
    auc_score,
    extraction_strength_of,
    get_metric,
    harmonic_mean,
    ks_pvalue,
    min_k_score,
    privleak_from_auc,
    rouge_l_recall,
    rouge_scores,
    truth_ratio_of,
    unlearning_metric,
    zlib_score,
)

L = math.log(2.0)
VOCAB = ["<pad>", "<s>", "</s>", "a", "b", "c", "<unk>"]
#                 pad    <s>    </s>   a     b     c      <unk>
PROBS = torch.tensor([1 / 32, 1 / 32, 1 / 8, 1 / 2, 1 / 4, 1 / 32, 1 / 32], dtype=torch.float64)


class WordTokenizer:
    """Whitespace tokenizer over :data:`VOCAB`; unknown words map to ``<unk>``; BOS on request."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [VOCAB.index(w) if w in VOCAB else VOCAB.index("<unk>") for w in text.split()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(VOCAB[i] for i in ids if not (skip_special_tokens and i < 3))


class FixedLM(nn.Module):
    """Predicts :data:`PROBS` at every position, whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.log_probs = nn.Parameter(PROBS.log().float(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object):
        return SimpleNamespace(logits=self.log_probs.expand(*input_ids.shape, -1))


def ctx_for(**datasets: list[dict]) -> EvalContext:
    for rows in datasets.values():
        for i, row in enumerate(rows):
            row.setdefault("index", i)
            row.setdefault("question", "q")
    return EvalContext(FixedLM(), WordTokenizer(), datasets, batch_size=2)


# ---------------------------------------------------------------------------------------------------------
# pure functions


def test_rouge_l_recall_known_pairs():
    # LCS of "the cat on the mat" = 5 of the reference's 6 tokens
    assert rouge_l_recall("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6, abs=1e-12)
    assert rouge_l_recall("Mira Okafor was born in Port Elmwood.", "Mira Okafor was born in Port Elmwood.") == 1.0
    assert rouge_l_recall("nothing alike here", "Mira Okafor") == 0.0
    # stemming (as open-unlearning): cats -> cat, running/runs -> run
    assert rouge_l_recall("cats running", "cat runs") == 1.0
    # order matters for ROUGE-L, not for ROUGE-1
    scores = rouge_scores("d c b a", "a b c d")
    assert scores["rougeL_recall"] == 0.25
    assert scores["rouge1_recall"] == 1.0
    # recall ignores extra words in the prediction; F1 does not
    extra = rouge_scores("a b c d e f g h", "a b c d")
    assert extra["rougeL_recall"] == 1.0 and extra["rougeL_f1"] == pytest.approx(2 * 0.5 / 1.5, abs=1e-12)


def test_truth_ratio_of_and_aggregators():
    # p(wrong) = exp(-mean(3L, 1L)) = 1/4, p(correct) = exp(-L) = 1/2 -> TR = 1/2
    assert truth_ratio_of(L, [3 * L, L]) == pytest.approx(0.5, abs=1e-9)
    ratios = [0.5, 4.0, 1.0]
    assert aggregate_truth_ratio(ratios, "closer_to_1_better") == pytest.approx((0.5 + 0.25 + 1.0) / 3, abs=1e-9)
    assert aggregate_truth_ratio(ratios, "true_better") == pytest.approx((0.5 + 0.0 + 0.0) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="closer_to_1_better"):
        aggregate_truth_ratio(ratios, "mean")


def test_ks_pvalue_identical_and_separated():
    assert ks_pvalue([0.1, 0.5, 0.9, 2.0], [0.1, 0.5, 0.9, 2.0]) == 1.0
    # fully separated samples of 10: exact two-sided p-value = 2 / C(20, 10)
    assert ks_pvalue(range(10), range(10, 20)) == pytest.approx(2 / comb(20, 10), rel=1e-9)
    with pytest.raises(ValueError, match="non-empty"):
        ks_pvalue([], [1.0])


def test_harmonic_mean():
    assert harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7, abs=1e-12)
    assert harmonic_mean([0.4]) == pytest.approx(0.4, abs=1e-15)
    assert harmonic_mean([0.9, 0.0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        harmonic_mean([0.5, -0.1])


def test_auc_score_separable_identical_and_ties():
    assert auc_score([0.1, 0.2, 0.3], [0.7, 0.8]) == 1.0
    assert auc_score([0.7, 0.8], [0.1, 0.2, 0.3]) == 0.0
    assert auc_score([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == 0.5
    # pairs (pos > neg): 1.5>1, 3>1, 3>2 of 4; no ties
    assert auc_score([1.0, 2.0], [1.5, 3.0]) == 0.75
    # one tie counts one half: (1 + 0.5) / 2
    assert auc_score([1.0, 2.0], [2.0]) == 0.75


def test_privleak_from_auc():
    assert privleak_from_auc(0.5, 0.5) == 0.0
    assert privleak_from_auc(1.0, 0.5) == pytest.approx(-100.0, abs=1e-6)
    assert privleak_from_auc(0.25, 0.5) == pytest.approx(50.0, abs=1e-6)


def test_extraction_strength_of():
    assert extraction_strength_of([True, True, True]) == 1.0
    assert extraction_strength_of([False, True, True]) == pytest.approx(2 / 3, abs=1e-15)
    assert extraction_strength_of([True, False, True]) == pytest.approx(1 / 3, abs=1e-15)
    assert extraction_strength_of([True, True, False]) == 0.0
    assert extraction_strength_of([]) == 0.0


def test_min_k_and_zlib_scores():
    # lowest 40% of 5 log-probs = the two lowest: -(-5 - 4) / 2
    assert min_k_score([-1.0, -2.0, -3.0, -4.0, -5.0], k=0.4) == 4.5
    assert min_k_score([-1.0, -3.0], k=0.4) == 3.0  # at least one token
    with pytest.raises(ValueError, match="k must be"):
        min_k_score([-1.0], k=0.0)
    # zlib stream of one byte: 2 header + 3 deflate + 4 adler32 = 9 bytes
    assert zlib_score(1.8, "a") == pytest.approx(0.2, abs=1e-15)


# ---------------------------------------------------------------------------------------------------------
# the registry


def test_registry_names_and_errors():
    assert set(METRICS) == {
        "probability", "probability_w_options", "rouge", "truth_ratio", "ks_test", "hm_aggregate",
        "extraction_strength", "exact_memorization", "mia_loss", "mia_zlib", "mia_min_k", "privleak",
        "perplexity", "contains", "empty_answers", "looping_answers",
    }
    with pytest.raises(ValueError, match="unknown metric 'nope'.*probability"):
        get_metric("nope")
    with pytest.raises(ValueError, match="already registered"):
        unlearning_metric("rouge")(lambda ctx: {})


def test_probability_on_fixed_lm():
    ctx = ctx_for(forget=[{"answer": "a b"}, {"answer": "c"}, {"answer": "b b"}])
    out = get_metric("probability")(ctx, data="forget")
    # a b </s>: (L + 2L + 3L) / 3 = 2L -> 1/4;  c </s>: (5L + 3L) / 2 = 4L -> 1/16;  b b </s>: 7L/3
    expected = {"0": 1 / 4, "1": 1 / 16, "2": 2 ** (-7 / 3)}
    for idx, p in expected.items():
        assert out["value_by_index"][idx]["prob"] == pytest.approx(p, rel=1e-6)
    assert out["value_by_index"]["1"]["avg_loss"] == pytest.approx(4 * L, rel=1e-6)
    assert out["agg_value"] == pytest.approx(sum(expected.values()) / 3, rel=1e-6)


def test_probability_of_answer_lists_and_truth_ratio():
    rows = [
        {"answer": "a", "paraphrased_answer": "a b", "perturbed_answer": ["c", "a"]},
        {"answer": "a", "paraphrased_answer": "c", "perturbed_answer": ["a b", "a"]},
    ]
    ctx = ctx_for(forget=rows)
    para = get_metric("probability")(ctx, data="forget", answer_key="paraphrased_answer")
    pert = get_metric("probability")(ctx, data="forget", answer_key="perturbed_answer")
    assert pert["value_by_index"]["0"]["prob"] == pytest.approx([1 / 16, 1 / 4], rel=1e-6)
    assert pert["agg_value"] == pytest.approx(((1 / 16 + 1 / 4) / 2 + 1 / 4) / 2, rel=1e-6)
    # TR0 = exp(-(4L + 2L)/2) / exp(-2L) = 1/2;  TR1 = exp(-2L) / exp(-4L) = 4
    tr = get_metric("truth_ratio")(ctx, correct=para, wrong=pert, aggregator="closer_to_1_better")
    assert tr["value_by_index"]["0"]["score"] == pytest.approx(0.5, rel=1e-6)
    assert tr["value_by_index"]["1"]["score"] == pytest.approx(4.0, rel=1e-6)
    assert tr["agg_value"] == pytest.approx((0.5 + 0.25) / 2, rel=1e-6)
    tr_retain = get_metric("truth_ratio")(ctx, correct=para, wrong=pert, aggregator="true_better")
    assert tr_retain["agg_value"] == pytest.approx((0.5 + 0.0) / 2, rel=1e-6)


def test_probability_w_options():
    rows = [{"answer": "a b", "perturbed_answer": ["c", "a"]}, {"answer": "c", "perturbed_answer": ["a b", "a"]}]
    ctx = ctx_for(real_authors=rows)
    correct = get_metric("probability")(ctx, data="real_authors")
    wrong = get_metric("probability")(ctx, data="real_authors", answer_key="perturbed_answer")
    out = get_metric("probability_w_options")(ctx, correct=correct, wrong=wrong)
    # (1/4) / (1/4 + 1/16 + 1/4) = 4/9;  (1/16) / (1/16 + 1/4 + 1/4) = 1/9
    assert out["value_by_index"]["0"]["prob"] == pytest.approx(4 / 9, rel=1e-6)
    assert out["value_by_index"]["1"]["prob"] == pytest.approx(1 / 9, rel=1e-6)
    assert out["agg_value"] == pytest.approx(5 / 18, rel=1e-6)


def test_ks_test_forget_quality():
    forget = {"agg_value": 0.3, "value_by_index": {str(i): {"score": s} for i, s in enumerate([0.2, 0.9, 1.5])}}
    same = get_metric("ks_test")(None, forget=forget, reference=forget)
    assert same["agg_value"] == 1.0
    far = {"agg_value": 0.0, "value_by_index": {str(i): {"score": 10.0 + i} for i in range(3)}}
    # 3 vs 3 fully separated: 2 / C(6, 3)
    assert get_metric("ks_test")(None, forget=forget, reference=far)["agg_value"] == pytest.approx(0.1, rel=1e-9)
    assert get_metric("ks_test")(None, forget=forget, reference=None)["agg_value"] is None


def test_hm_aggregate_model_utility():
    out = get_metric("hm_aggregate")(
        None, retain_Q_A_Prob={"agg_value": 1.0}, retain_Q_A_ROUGE={"agg_value": 0.5},
        retain_Truth_Ratio={"agg_value": 0.25}, ra_Q_A_ROUGE={"agg_value": None},
    )
    assert out["agg_value"] == pytest.approx(3 / 7, abs=1e-12)
    assert set(out["components"]) == {"retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio"}
    assert get_metric("hm_aggregate")(None, x={"agg_value": None})["agg_value"] is None


def test_extraction_strength_and_exact_memorization():
    # the argmax is always "a": EOS excluded, "a a a" is extracted from the start, "b a a" after 1 token,
    # "a b" never (its last content token is wrong)
    ctx = ctx_for(forget=[{"answer": "a a a"}, {"answer": "b a a"}, {"answer": "a b"}])
    es = get_metric("extraction_strength")(ctx, data="forget")
    assert [es["value_by_index"][i]["score"] for i in "012"] == pytest.approx([1.0, 2 / 3, 0.0], abs=1e-15)
    assert es["agg_value"] == pytest.approx(5 / 9, abs=1e-12)
    em = get_metric("exact_memorization")(ctx, data="forget")
    assert [em["value_by_index"][i]["score"] for i in "012"] == pytest.approx([1.0, 2 / 3, 0.5], abs=1e-12)


def _mia_sets(separable: bool) -> EvalContext:
    forget = [{"answer": "a"}, {"answer": "a b"}]
    holdout = [{"answer": "c"}, {"answer": "c c"}] if separable else [{"answer": "a"}, {"answer": "a b"}]
    return ctx_for(forget=forget, holdout=holdout)


@pytest.mark.parametrize("metric", ["mia_loss", "mia_zlib", "mia_min_k"])
def test_mia_auc_separable_and_identical(metric):
    # forget answers are likelier (lower loss) than the holdout ones: every attack separates them
    assert get_metric(metric)(_mia_sets(True))["agg_value"] == 1.0
    assert get_metric(metric)(_mia_sets(False))["agg_value"] == 0.5


def test_mia_scores_by_hand():
    ctx = _mia_sets(True)
    loss = get_metric("mia_loss")(ctx)
    assert loss["value_by_index"]["holdout"]["1"]["score"] == pytest.approx(13 * L / 3, rel=1e-6)
    mink = get_metric("mia_min_k")(ctx, k=0.4)
    # "a b" without EOS: log-probs [-L, -2L]; lowest 40% of 2 -> one token -> 2L
    assert mink["value_by_index"]["forget"]["1"]["score"] == pytest.approx(2 * L, rel=1e-6)
    zl = get_metric("mia_zlib")(ctx)
    assert zl["value_by_index"]["forget"]["0"]["score"] == pytest.approx(2 * L / 9, rel=1e-6)


def test_privleak_handler():
    mia = {"agg_value": 1.0, "value_by_index": {}}
    assert get_metric("privleak")(None, mia=mia)["agg_value"] == pytest.approx(-100.0, abs=1e-6)
    ref = {"agg_value": 0.75, "value_by_index": {}}
    # ((1 - 0.5) - (1 - 0.75)) / (1 - 0.75) * 100
    out = get_metric("privleak")(None, mia={"agg_value": 0.5}, reference=ref)
    assert out["agg_value"] == pytest.approx(100.0, abs=1e-6) and out["reference_auc"] == 0.75


def test_perplexity_of_texts_and_answers():
    ctx = ctx_for(text=[{"text": "a b"}, {"text": "c"}], retain=[{"answer": "a b"}, {"answer": "a"}])
    out = get_metric("perplexity")(ctx, data="text")
    # "<s> a b": a, b scored -> mean 1.5L -> 2^1.5; "<s> c": c -> 2^5; corpus: exp((3L + 5L) / 3)
    assert out["value_by_index"]["0"]["ppl"] == pytest.approx(2**1.5, rel=1e-6)
    assert out["value_by_index"]["1"]["ppl"] == pytest.approx(32.0, rel=1e-6)
    assert out["agg_value"] == pytest.approx(2 ** (8 / 3), rel=1e-6)
    qa = get_metric("perplexity")(ctx, data="retain")
    # answers with EOS: (L + 2L + 3L) + (L + 3L) over 5 tokens
    assert qa["agg_value"] == pytest.approx(2 ** (10 / 5), rel=1e-6)
