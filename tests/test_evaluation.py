"""Generation, scoring, suites, reports and the CLI on tiny Llamas (one trained to memorize four answers)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import QA, TOFU_DIR, make_tiny_llama
from sau_compress.data import prompt_ids, tokenize_records
from sau_compress.errors import UserError
from sau_compress.evaluation import (
    SUMMARY_KEYS,
    answer_nll,
    evaluate,
    generate_answers,
    get_metric,
    harmonic_mean,
    load_eval,
    summarize,
    write_compare,
    write_eval,
)
from sau_compress.evaluation.context import EvalContext
from sau_compress.evaluation.report import build_record
from sau_compress.evaluation.suite import load_suite_data, required_metrics, suite_specs

PARAPHRASES = [
    "Port Elmwood is where Mira Okafor was born.",
    "Mira Okafor is a glassblower by trade.",
    "Lake Varda is where Tomas Reyes was born.",
    "Tomas Reyes is a cartographer by trade.",
    "Grey Hollow is where Ines Halloran was born.",
    "Ines Halloran is a beekeeper by trade.",
]
PERTURBED = [
    ["Mira Okafor was born in Lake Varda.", "Mira Okafor was born in Grey Hollow."],
    ["Mira Okafor works as a beekeeper.", "Mira Okafor works as a cartographer."],
    ["Tomas Reyes was born in Port Elmwood.", "Tomas Reyes was born in Grey Hollow."],
    ["Tomas Reyes works as a glassblower.", "Tomas Reyes works as a beekeeper."],
    ["Ines Halloran was born in Lake Varda.", "Ines Halloran was born in Port Elmwood."],
    ["Ines Halloran works as a glassblower.", "Ines Halloran works as a cartographer."],
]


def _toy_sets() -> dict[str, list[dict]]:
    """Forget = person 1, retain = person 2 (both trained), holdout = person 3 (never trained)."""
    rows = [
        dict(r, paraphrased_answer=p, perturbed_answer=w)
        for r, p, w in zip(QA, PARAPHRASES, PERTURBED, strict=True)
    ]
    sets = {"forget": rows[0:2], "retain": rows[2:4], "holdout": rows[4:6]}
    return {name: [dict(r, index=i) for i, r in enumerate(recs)] for name, recs in sets.items()}


@pytest.fixture(scope="module")
def memorizer(tokenizer):
    """A tiny Llama trained (full batch, Adam) until it reproduces the forget and retain answers."""
    torch.manual_seed(0)
    model = make_tiny_llama(len(tokenizer), seed=0)
    sets = _toy_sets()
    from sau_compress.data import collate

    batch = collate(tokenize_records(tokenizer, sets["forget"] + sets["retain"]), tokenizer.pad_token_id)
    batch.pop("index")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    model.eval()
    assert loss.item() < 0.02, f"memorizer did not converge (loss {loss.item():.3f})"
    return model


# ---------------------------------------------------------------------------------------------------------
# generation and scoring


def test_generation_deterministic_and_batch_size_independent(tiny_model, tokenizer):
    questions = [r["question"] for r in QA] + ["Who?"]
    one = generate_answers(tiny_model, tokenizer, questions, max_new_tokens=8, batch_size=1)
    assert generate_answers(tiny_model, tokenizer, questions, max_new_tokens=8, batch_size=3) == one
    assert generate_answers(tiny_model, tokenizer, questions, max_new_tokens=8, batch_size=7) == one
    assert tiny_model.training is False
    # prompts tokenized beforehand (TokenizedSets) give the same answers; one per question
    prompts = [prompt_ids(tokenizer, q, "plain") for q in questions]
    assert generate_answers(tiny_model, tokenizer, questions, max_new_tokens=8, batch_size=3, prompts=prompts) == one
    with pytest.raises(ValueError, match=f"{len(questions) - 1} prompts for {len(questions)} questions"):
        generate_answers(tiny_model, tokenizer, questions, max_new_tokens=8, prompts=prompts[:-1])


def test_generation_stops_at_eos(memorizer, tokenizer):
    records = _toy_sets()["forget"] + _toy_sets()["retain"]
    answers = generate_answers(memorizer, tokenizer, [r["question"] for r in records], max_new_tokens=40,
                               batch_size=3)
    # 40 new tokens allowed, answers are ~10 tokens: anything after EOS would show up here
    assert answers == [r["answer"] for r in records]


def test_answer_nll_matches_unbatched_forward(tiny_model, tokenizer):
    nll = answer_nll(tiny_model, tokenizer, QA, batch_size=4)
    for rec, value in zip(QA, nll, strict=True):
        item = tokenize_records(tokenizer, [rec])[0]
        ids = torch.tensor([item["input_ids"]])
        labels = torch.tensor(item["labels"])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0, :-1].float(), -1)
        scored = labels[1:] != -100
        expected = -logp[scored].gather(-1, labels[1:][scored][:, None]).mean().item()
        # padding to the batch's longest sequence changes only float rounding
        assert value == pytest.approx(expected, abs=1e-5)


def test_rouge_metric_on_memorized_answers(memorizer, tokenizer):
    sets = _toy_sets()
    ctx = EvalContext(memorizer, tokenizer, sets, batch_size=4, max_new_tokens=32)
    out = get_metric("rouge")(ctx, data="forget")
    assert out["agg_value"] == 1.0
    assert out["value_by_index"]["1"]["generation"] == sets["forget"][1]["answer"]
    # the same generations against the paraphrase: ROUGE-L recall of the reordered sentence is partial
    para = get_metric("rouge")(ctx, data="forget", answer_key="paraphrased_answer")
    assert para["value_by_index"]["0"]["rougeL_recall"] < 1.0 and para["value_by_index"]["0"]["rouge1_recall"] > 0.5


def test_summarize_on_memorizer(memorizer, tokenizer):
    sets = _toy_sets()
    out = summarize(memorizer, tokenizer, sets["forget"], sets["retain"], batch_size=4, max_new_tokens=32,
                    samples=1)
    assert set(out) == {f"{s}_{k}" for s in ("forget", "retain") for k in SUMMARY_KEYS} | {"samples"}
    assert out["forget_rouge"] == 1.0 and out["retain_rouge"] == 1.0
    # the memorizer says each answer word for word: every answer contains its reference, none is empty or loops
    assert out["forget_contains"] == out["retain_contains"] == 1.0
    assert out["forget_empty"] == out["retain_empty"] == out["forget_loops"] == out["retain_loops"] == 0.0
    assert out["samples"] == {
        name: [{"question": sets[name][0]["question"], "reference": sets[name][0]["answer"],
                "answer": sets[name][0]["answer"]}] for name in ("forget", "retain")
    }
    assert out["forget_nll"] == pytest.approx(sum(answer_nll(memorizer, tokenizer, sets["forget"])) / 2, abs=1e-6)
    held = summarize(memorizer, tokenizer, sets["holdout"], sets["retain"], max_new_tokens=2)
    assert held["forget_nll"] > 10 * out["forget_nll"]
    assert held["forget_contains"] == 0.0 and "samples" not in held  # two tokens cannot hold a whole answer
    with pytest.raises(ValueError, match="non-empty retain"):
        summarize(memorizer, tokenizer, sets["forget"], [])


# ---------------------------------------------------------------------------------------------------------
# suites


def test_toy_suite_on_memorizer(memorizer, tokenizer):
    sets = _toy_sets()
    ref = evaluate(memorizer, tokenizer, "toy", datasets=sets, max_new_tokens=32)
    # without a prior-knowledge set its metrics are the only ones left out
    assert [s.name for s in suite_specs("toy") if not s.optional] == list(ref)
    assert {s.name for s in suite_specs("toy") if s.optional} == {
        "prior_Q_A_Prob", "prior_Q_A_PERT_Prob", "prior_Q_A_Prob_normalised", "prior_Truth_Ratio", "prior_Q_A_ROUGE"}
    assert ref["forget_quality"]["agg_value"] is None  # no retain model given
    assert ref["forget_Q_A_ROUGE"]["agg_value"] == 1.0 and ref["retain_Q_A_ROUGE"]["agg_value"] == 1.0
    assert ref["extraction_strength"]["agg_value"] == 1.0
    # memorized forget answers have a lower loss than unseen holdout answers: the attack separates them
    assert ref["mia_loss"]["agg_value"] == 1.0
    assert ref["privleak"]["agg_value"] == pytest.approx(-100.0, abs=1e-6)
    parts = [ref[m]["agg_value"] for m in ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio")]
    assert ref["model_utility"]["agg_value"] == pytest.approx(harmonic_mean(parts), abs=1e-12)
    assert set(ref["forget_truth_ratio"]["value_by_index"]) == {"0", "1"}
    # against its own results as the reference: identical truth ratios -> forget quality 1
    again = evaluate(memorizer, tokenizer, "toy", datasets=sets, reference=ref,
                     metrics=["forget_quality", "privleak"])
    assert set(again) == {"forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_truth_ratio", "forget_quality",
                          "mia_min_k", "privleak"}
    assert again["forget_quality"]["agg_value"] == 1.0
    assert again["privleak"]["agg_value"] == pytest.approx(0.0, abs=1e-6)


def test_shared_tokenized_sets_tokenize_each_set_once_and_change_nothing(memorizer, tiny_model, tokenizer,
                                                                          monkeypatch):
    import sau_compress.data as data_module
    import sau_compress.evaluation.context as context
    from sau_compress.evaluation import TokenizedSets

    sets = _toy_sets()
    wanted = ["model_utility", "forget_truth_ratio", "forget_Q_A_ROUGE"]
    plain = evaluate(memorizer, tokenizer, "toy", datasets=sets, max_new_tokens=32, metrics=wanted)
    calls = {"answers": 0, "prompts": 0}
    real_answers, real_prompt = context.tokenize_answers, data_module.prompt_ids

    def count_answers(*a, **kw):
        calls["answers"] += 1
        return real_answers(*a, **kw)

    def count_prompt(*a, **kw):
        calls["prompts"] += 1
        return real_prompt(*a, **kw)

    monkeypatch.setattr(context, "tokenize_answers", count_answers)
    monkeypatch.setattr(context, "prompt_ids", count_prompt)
    tokens = TokenizedSets()
    first = evaluate(memorizer, tokenizer, "toy", datasets=sets, max_new_tokens=32, metrics=wanted, tokens=tokens)
    once = dict(calls)
    # forget (paraphrased, perturbed) and retain (answer, paraphrased, perturbed) answers; a prompt per forget
    # and retain question (2 + 2)
    assert once == {"answers": 5, "prompts": 4} and len(tokens) == 7
    again = evaluate(tiny_model, tokenizer, "toy", datasets=sets, max_new_tokens=32, metrics=wanted, tokens=tokens)
    assert calls == once  # another model, the same sets: nothing tokenized again
    for name in wanted:
        assert first[name]["agg_value"] == plain[name]["agg_value"]
    assert again["forget_Q_A_ROUGE"]["agg_value"] < 1.0  # the other model's own answers, not memoised ones
    # a new list (even with equal records) is tokenized afresh
    evaluate(memorizer, tokenizer, "toy", datasets={k: list(v) for k, v in sets.items()}, max_new_tokens=32,
             metrics=wanted, tokens=tokens)
    assert calls["answers"] == 2 * once["answers"]


def test_toy_suite_prior_knowledge_enters_model_utility(memorizer, tokenizer, tmp_path):
    """A world with prior knowledge: its set is scored like TOFU's real authors and model utility is the harmonic
    mean of six figures, retain's three and prior's three; ``load_suite_data`` finds ``prior.jsonl``."""
    sets = _toy_sets()
    sets["prior"] = [dict(r, index=i) for i, r in enumerate(sets["retain"])]  # known facts, in prior's role
    out = evaluate(memorizer, tokenizer, "toy", datasets=sets, max_new_tokens=32, metrics=["model_utility"])
    parts = {m: out[m]["agg_value"] for m in ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
                                               "prior_Q_A_Prob_normalised", "prior_Q_A_ROUGE", "prior_Truth_Ratio")}
    assert set(out["model_utility"]["components"]) == set(parts)
    assert out["model_utility"]["agg_value"] == pytest.approx(harmonic_mean(list(parts.values())), abs=1e-12)
    p = out["prior_Q_A_Prob"]["value_by_index"]["0"]["prob"]
    wrong = out["prior_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"]
    assert out["prior_Q_A_Prob_normalised"]["value_by_index"]["0"]["prob"] == pytest.approx(p / (p + sum(wrong)),
                                                                                             rel=1e-6)
    assert out["prior_Q_A_ROUGE"]["agg_value"] == 1.0  # memorized answers
    for name in ("forget", "retain", "holdout", "prior"):
        with (tmp_path / f"{name}.jsonl").open("w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in sets[name])
    assert set(load_suite_data("toy", tmp_path)) == {"forget", "retain", "holdout", "prior"}
    (tmp_path / "prior.jsonl").unlink()
    assert set(load_suite_data("toy", tmp_path)) == {"forget", "retain", "holdout"}


def test_retain_model_reference_and_skipped_metrics(memorizer, tiny_model, tokenizer):
    sets = _toy_sets()
    for rec in sets["retain"]:
        del rec["perturbed_answer"]
    out = evaluate(memorizer, tokenizer, "toy", datasets=sets, retain_model=tiny_model, max_new_tokens=4,
                   metrics=["forget_quality", "model_utility"])
    # retain truth ratio cannot be computed without perturbed answers: utility over probability and ROUGE
    assert "retain_Truth_Ratio" not in out
    assert set(out["model_utility"]["components"]) == {"retain_Q_A_Prob", "retain_Q_A_ROUGE"}
    # two truth ratios per model: a random model's sit near 1, the memorizer's do not (p = 2 / C(4, 2))
    assert out["forget_quality"]["agg_value"] == pytest.approx(1 / 3, abs=1e-9)
    with pytest.raises(ValueError, match="not both"):
        evaluate(memorizer, tokenizer, "toy", datasets=sets, retain_model=tiny_model, reference={})


def test_required_metrics_and_unknown_names():
    names = [s.name for s in required_metrics(suite_specs("tofu"), ["ra_Truth_Ratio"])]
    assert names == ["ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "ra_Truth_Ratio"]
    with pytest.raises(ValueError, match="unknown metric"):
        required_metrics(suite_specs("toy"), ["ra_Truth_Ratio"])
    with pytest.raises(ValueError, match="unknown suite 'muse'"):
        suite_specs("muse")


def test_tofu_files_load_as_they_are():
    sets = load_suite_data("tofu", TOFU_DIR, forget_split="forget05", limit=3)
    assert {k: len(v) for k, v in sets.items()} == {
        "forget": 3, "retain": 3, "holdout": 3, "real_authors": 3, "world_facts": 3}
    full = load_suite_data("tofu", TOFU_DIR, forget_split="forget01")
    sizes = {k: len(v) for k, v in full.items()}
    assert sizes == {"forget": 40, "retain": 400, "holdout": 40, "real_authors": 100, "world_facts": 117}
    assert len(full["forget"][0]["perturbed_answer"]) == 5 and len(full["real_authors"][0]["perturbed_answer"]) == 3
    with pytest.raises(ValueError, match="forget01"):
        load_suite_data("tofu", TOFU_DIR, forget_split="forget20")


def test_tofu_suite_real_authors_block(tiny_model, tokenizer):
    out = evaluate(tiny_model, tokenizer, "tofu", TOFU_DIR, limit=2, max_new_tokens=2,
                   metrics=["ra_Q_A_Prob_normalised", "ra_Truth_Ratio"])
    assert set(out) == {"ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "ra_Q_A_Prob_normalised", "ra_Truth_Ratio"}
    p = out["ra_Q_A_Prob"]["value_by_index"]["0"]["prob"]
    wrong = out["ra_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"]
    assert len(wrong) == 3
    # the 1e-10 guard in the denominator moves the ratio by ~1e-8 relative at these tiny probabilities
    assert out["ra_Q_A_Prob_normalised"]["value_by_index"]["0"]["prob"] == pytest.approx(p / (p + sum(wrong)), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# reports and the CLI


def _record(name: str, fq: float | None, mu: float) -> dict:
    metrics = {"forget_quality": {"agg_value": fq, "value_by_index": {}},
               "model_utility": {"agg_value": mu, "value_by_index": {}},
               "forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {"0": {"score": 0.5}}}}
    return build_record(metrics, name, f"/models/{name}", "toy", {"limit": None}, 1.5)


def test_write_and_load_eval(tmp_path):
    record = _record("memorizer", 1e-4, 0.8)
    out = write_eval(tmp_path / "run", record)
    loaded = load_eval(out)
    assert loaded["metrics"] == record["metrics"] and loaded["summary"]["forget_quality"] == 1e-4
    report = (out / "report.md").read_text()
    assert "| forget_quality | ↑ | 1.000e-04 |" in report and "| model_utility | ↑ | 0.8000 |" in report
    with pytest.raises(FileExistsError):
        write_eval(tmp_path / "run", record)
    flat = tmp_path / "TOFU_EVAL.json"
    flat.write_text(json.dumps(record["metrics"]))
    assert load_eval(flat)["summary"]["model_utility"] == 0.8
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        load_eval(tmp_path / "bad.json")


def test_write_compare_table_and_chart(tmp_path):
    records = [_record("memorizer", 3e-5, 0.91), _record("sau", 0.4, 0.85), _record("no-ref", None, 0.9)]
    result = write_compare(records, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| sau | 0.4000 | 0.8500 |" in md and "| no-ref | n/a | 0.9000 |" in md
    png = (tmp_path / "cmp" / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert result["chart"].endswith("compare.png")


def test_cli_eval_and_compare(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from sau_compress.cli.app import app

    files = {}
    for name, rows in _toy_sets().items():
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()
    args = ["eval", str(tiny_model_dir), "--forget", str(files["forget"]), "--retain", str(files["retain"]),
            "--holdout", str(files["holdout"]), "--max-new-tokens", "4", "--device", "cpu"]
    first = runner.invoke(app, [*args, "--output", str(tmp_path / "a"), "--name", "A", "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])["summary"]
    assert summary["forget_quality"] is None and 0 <= summary["model_utility"] <= 1
    # the first run's eval.json as the reference of the same model: forget quality 1
    second = runner.invoke(app, [*args, "--retain-model", str(tmp_path / "a"), "--output", str(tmp_path / "b"),
                                 "--name", "B", "--json"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout.strip().splitlines()[-1])["summary"]["forget_quality"] == 1.0
    again = runner.invoke(app, [*args, "--output", str(tmp_path / "a")])
    assert again.exit_code == 2 and "already exists" in again.output
    cmp = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b" / "eval.json"),
                              "--output", str(tmp_path / "cmp"), "--json"])
    assert cmp.exit_code == 0, cmp.output
    result = json.loads(cmp.stdout.strip().splitlines()[-1])
    assert [r["name"] for r in result["rows"]] == ["A", "B"] and os.path.isfile(result["chart"])
    bad = runner.invoke(app, ["eval", str(tiny_model_dir), "--suite", "muse"], env={"COLUMNS": "300"})
    assert bad.exit_code == 2 and "'muse' is not one of 'toy', 'tofu'" in " ".join(bad.output.split())


@pytest.mark.slow
def test_toy_world_acceptance(tmp_path):
    """Forget quality of the memorizer vs its retain model < 0.05; of the retain model vs itself = 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sau_compress.worlds import build_toy_world

    world = build_toy_world()
    tok = AutoTokenizer.from_pretrained(world.model_dir)
    memorizer = AutoModelForCausalLM.from_pretrained(world.model_dir).eval()
    retain = AutoModelForCausalLM.from_pretrained(world.retain_model_dir).eval()
    wanted = ["forget_quality", "privleak"]
    ref = evaluate(retain, tok, "toy", world.data_dir, metrics=wanted, reference=None)
    self_check = evaluate(retain, tok, "toy", world.data_dir, metrics=wanted, reference=ref)
    assert self_check["forget_quality"]["agg_value"] == 1.0
    out = evaluate(memorizer, tok, "toy", world.data_dir, metrics=wanted, reference=ref)
    assert out["forget_quality"]["agg_value"] < 0.05
    assert math.isfinite(out["privleak"]["agg_value"])
