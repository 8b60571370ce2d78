"""The audit (``sau_compress.audit``, ``sau-compress audit``): each attack's variant is what it claims, the
verdicts separate a model that forgot from one that did not, and the input model is never changed."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sau_compress.audit import (
    QUANT_SCHEMES,
    QuantScheme,
    fake_quantize_tokens,
    fake_quantize_weight,
    paraphrase_variants,
    parse_attacks,
    prune_more_copy,
    prune_more_target,
    quantized_copy,
    split_by_person,
)
from sau_compress.audit.attacks import few_shot_question, finetuned_copy, target_weights
from sau_compress.audit.quant import FP8_DTYPE
from sau_compress.cli.app import app
from sau_compress.errors import UserError
from sau_compress.masking import magnitude_mask, sparsity

# ------------------------------------------------------------------------------------------ quantization


def test_int4_rounds_to_nearest_with_compressed_tensors_scale():
    # scale = max|w| / 7.5 (int4 range 15 / 2); codes clamp to [-8, 7] then round
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0]])
    deq, scale = fake_quantize_weight(w, QuantScheme("t", 4, "int", 4))
    assert scale.item() == pytest.approx(1 / 7.5)
    assert deq.tolist()[0] == pytest.approx([7 / 7.5, -4 / 7.5, 2 / 7.5, 0.0])


def _groups(w: torch.Tensor, size: int):
    for start in range(0, w.shape[1], size):
        yield from w[:, start : start + size]


@pytest.mark.parametrize(("name", "most", "least"), [("quant-int4", 16, 8), ("quant-int8", 256, 16)])
def test_int_variants_take_at_most_2_to_the_bits_values_per_group_of_128(name, most, least):
    torch.manual_seed(0)
    w = torch.randn(6, 320) * torch.rand(6, 1)  # 320 = two groups of 128 and a ragged one of 64
    deq, scale = fake_quantize_weight(w, QUANT_SCHEMES[name])
    assert scale.shape == (6, 3)
    counts = [row.unique().numel() for row in _groups(deq, 128)]
    assert max(counts) <= most
    assert min(counts) > least  # 128 gaussian weights spread over the grid: the bound is not vacuous
    codes = deq / scale.repeat_interleave(128, dim=1)[:, :320]
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert (deq - w).abs().max() > 0  # it did quantize


def test_fp8_weights_and_tokens_are_float8_e4m3_values_after_scaling():
    torch.manual_seed(1)
    w = torch.randn(5, 96) * 3
    deq, scale = fake_quantize_weight(w, QUANT_SCHEMES["quant-fp8"])
    assert scale.shape == (5, 1)
    assert torch.allclose(scale[:, 0], w.abs().amax(dim=1) / 448)
    codes = deq / scale
    assert torch.allclose(codes.to(FP8_DTYPE).float(), codes, rtol=1e-6, atol=0)
    assert not torch.equal(deq, w)
    x = torch.randn(2, 7, 96)
    xq = fake_quantize_tokens(x, QUANT_SCHEMES["quant-fp8"])
    tok_scale = x.abs().amax(dim=-1, keepdim=True) / 448
    assert torch.allclose((xq / tok_scale).to(FP8_DTYPE).float(), xq / tok_scale, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["quant-fp8", "quant-int8", "quant-int4"])
def test_schemes_match_compressed_tensors_presets_and_fake_quantize(name):
    ct = pytest.importorskip("compressed_tensors.quantization")
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    ours = QUANT_SCHEMES[name]
    args = ct.preset_name_to_scheme(ours.name, ["Linear"]).weights
    assert (args.num_bits, str(args.type), args.group_size, args.symmetric) == (
        ours.num_bits, ours.kind, ours.group_size, True)
    torch.manual_seed(2)
    w = torch.randn(8, 256)
    groups = w.reshape(8, -1, ours.group_size or 256)
    scale, zp = calculate_qparams(groups.amin(dim=-1), groups.amax(dim=-1), args)
    expected = fake_quantize(w, scale, zp, args)
    assert torch.equal(fake_quantize_weight(w, ours)[0], expected)


def test_quantized_copy_leaves_the_input_alone_and_hooks_fp8_activations(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    variant = quantized_copy(tiny_model, QUANT_SCHEMES["quant-fp8"])
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    layers = target_weights(variant)
    assert len(layers) == 14 and all(not torch.equal(w, before[f"{n}.weight"]) for n, w in layers.items())
    assert torch.equal(variant.lm_head.weight, before["lm_head.weight"])  # lm_head is not quantized
    hooked = [m for m in variant.modules() if m._forward_pre_hooks]
    assert len(hooked) == 14 and not any(m._forward_pre_hooks for m in tiny_model.modules())


# ---------------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize(("present", "two_four", "target"), [(0.5, True, 0.6), (0.5, False, 0.7), (0.0, False, 0.5),
                                                            (0.8, False, 0.9)])
def test_prune_more_target(present, two_four, target):
    assert prune_more_target(present, two_four) == pytest.approx(target)


def test_prune_more_takes_a_2of4_model_to_60_percent_and_keeps_its_zeros(tiny_model):
    with torch.no_grad():
        for w in target_weights(tiny_model).values():
            w.mul_(magnitude_mask(w, 0.5, "2:4"))
    before = {k: w.clone() for k, w in target_weights(tiny_model).items()}
    variant, info = prune_more_copy(tiny_model)
    assert info == {"sparsity_before": 0.5, "two_four_before": True, "target": 0.6}
    for name, w in target_weights(variant).items():
        assert sparsity(w) == pytest.approx(0.6, abs=1 / w.numel())
        assert torch.all(w[before[name] == 0] == 0)
        assert torch.equal(before[name], target_weights(tiny_model)[name])


# ------------------------------------------------------------------------------------ prompts and data


def test_few_shot_question_gives_the_plain_prompt_repeated(tokenizer):
    from sau_compress.data import format_prompt

    shots = [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]
    field = few_shot_question("Q?", shots, tokenizer, "plain")
    assert format_prompt(field, tokenizer, "plain") == (
        "Question: Q1?\nAnswer: A1.\n\nQuestion: Q2?\nAnswer: A2.\n\nQuestion: Q?\nAnswer:")


def test_paraphrase_variants_ask_the_paraphrased_and_few_shot_questions(tokenizer):
    forget = [{"question": "q", "paraphrased_question": "pq", "answer": "a"}]
    sets = {"forget": forget, "retain": [{"question": "r", "answer": "ra"}], "holdout": []}
    variants = paraphrase_variants(sets, tokenizer, "plain", shots=3)
    assert variants["paraphrased"] == {"forget": [{"question": "pq", "paraphrased_question": "pq", "answer": "a"}]}
    assert variants["few_shot"]["forget"][0]["question"] == "r\nAnswer: ra\n\nQuestion: q"
    assert forget[0]["question"] == "q"  # the caller's records are not changed
    no_para = dict(sets, forget=[{"question": "q", "answer": "a"}])
    assert list(paraphrase_variants(no_para, tokenizer, "plain")) == ["few_shot"]


def test_split_by_person_keeps_each_person_on_one_side():
    recs = [{"person": p, "i": i} for i, p in enumerate("AABBCCDDE")]
    train, test = split_by_person(recs)
    assert [r["i"] for r in train] == [0, 1, 2, 3]
    assert [r["i"] for r in test] == [4, 5, 6, 7, 8]
    assert [len(x) for x in split_by_person([{"i": i} for i in range(5)])] == [2, 3]
    with pytest.raises(UserError, match="at least 2 people"):
        split_by_person([{"author": "X"}, {"author": "X"}])


def test_finetuned_copy_trains_a_copy(tiny_model, tokenizer, qa_records):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    variant = finetuned_copy(tiny_model, tokenizer, qa_records[:4], steps=2, batch_size=2)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(variant.lm_head.weight, tiny_model.lm_head.weight)
    assert not variant.training


def test_parse_attacks():
    assert parse_attacks(None) == parse_attacks("all") == [
        "quant-fp8", "quant-int8", "quant-int4", "prune-more", "paraphrase", "relearn", "mia"]
    assert parse_attacks("mia, quant-int4") == ["quant-int4", "mia"]
    with pytest.raises(UserError, match="unknown attack"):
        parse_attacks("quant-int3")


def test_cli_rejects_an_unknown_attack_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["audit", str(tmp_path), "--attacks", "gptq"])
    assert result.exit_code == 2
    assert "unknown attack(s) ['gptq']" in result.output and "Traceback" not in result.output


def test_cli_rejects_bad_settings_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["audit", "toy", "--relearn-steps", "0"])
    assert result.exit_code == 2
    assert "relearn_steps must be at least 1, got 0" in result.output and "Traceback" not in result.output


def test_record_in_sidecar_appends_and_keeps_the_rest(tmp_path):
    from sau_compress.pipeline.audit import record_in_sidecar

    (tmp_path / "sau_compress.json").write_text(json.dumps({"schema": 1, "format": "dense"}))
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    record_in_sidecar(tmp_path, {"holds": True})
    record_in_sidecar(tmp_path, {"holds": False})
    assert json.loads((tmp_path / "sau_compress.json").read_text()) == {
        "schema": 1, "format": "dense", "audits": [{"holds": True}, {"holds": False}]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "sau_compress.json"]
    with pytest.raises(UserError, match="has no sau_compress.json"):
        record_in_sidecar(tmp_path / "model.safetensors", {})


# ------------------------------------------------------------------------------ end to end on the toy world

#: lighter measurements for the tests (utility on 16 retain records, short answers); the verdicts use the
#: forget set and the holdout / retain-model levels in full
FAST = {"utility_records": 16, "max_new_tokens": 32}


def _verdicts(result) -> dict[str, bool]:
    return {a["name"]: a["holds"] for a in result["attacks"]}


@pytest.mark.slow
def test_cli_audit_of_the_memorizer_says_it_did_not_forget(toy_world):
    out = CliRunner().invoke(app, ["audit", "toy", "--attacks", "paraphrase,relearn,mia", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert _verdicts(result) == {"paraphrase": False, "relearn": False, "mia": False}
    assert result["holds"] is False and result["reference"] == "retain_model"
    mia = result["attacks"][2]
    assert mia["value"] > 0.95 and mia["level"] < 0.6  # members are told apart; the retain model cannot


@pytest.mark.slow
def test_the_retain_model_holds_every_attack_at_the_holdout_level(toy_world, tmp_path):
    from sau_compress.pipeline import audit_model

    result = audit_model("toy-retain", retain_model="none", output=tmp_path / "audit", settings=FAST)
    assert _verdicts(result) == dict.fromkeys(
        ["quant-fp8", "quant-int8", "quant-int4", "prune-more", "paraphrase", "relearn", "mia"], True)
    assert result["reference"] == "holdout"
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == ["audit.json", "audit.md", "audit.png"]
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [a["name"] for a in saved["attacks"]] == [a["name"] for a in result["attacks"]]


@pytest.mark.slow
def test_a_model_unlearned_for_too_few_steps_is_caught(toy_world):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from sau_compress.audit import AuditSettings, Subject, audit
    from sau_compress.data import load_qa, tokenize_records
    from sau_compress.masking import prune_by_magnitude_
    from sau_compress.unlearn import UnlearnConfig, unlearn

    tok = AutoTokenizer.from_pretrained(toy_world.model_dir)
    sets = {s: load_qa(toy_world.data_dir / f"{s}.jsonl") for s in ("forget", "retain", "holdout")}
    model = LlamaForCausalLM.from_pretrained(toy_world.model_dir).eval()
    prune_by_magnitude_(model, 0.5, "2:4")
    items = {s: tokenize_records(tok, sets[s], max_length=64) for s in ("forget", "retain")}
    # measured: after 4 steps forget ROUGE-L 0.92 (1.0 before), 0.97 on the relearn test half after relearning
    cfg = UnlearnConfig(mode="sau", method="grad_diff", max_steps=4, batch_size=8, learning_rate=1e-3,
                        device="cpu", progress=False)
    unlearn(model, items["forget"], items["retain"], cfg, pad_token_id=tok.pad_token_id)
    retain = Subject(LlamaForCausalLM.from_pretrained(toy_world.retain_model_dir).eval(), tok, "plain")
    result = audit(Subject(model, tok, "plain"), sets, retain, ["relearn"], AuditSettings(**FAST))
    (entry,) = result["attacks"]
    assert entry["holds"] is False and result["holds"] is False
    assert entry["value"] > entry["threshold"] + 0.2


def test_a_reference_cache_measures_the_retain_model_once_per_attack(tiny_model, tokenizer, qa_records, monkeypatch):
    import sau_compress.audit.core as core
    from sau_compress.audit import AuditSettings, Subject, audit

    retain_net = type(tiny_model)(tiny_model.config)
    torch.manual_seed(1)
    retain_net.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in tiny_model.state_dict().items()})
    sets = {"forget": qa_records[:2], "retain": qa_records[2:], "holdout": qa_records[2:4]}
    settings = AuditSettings(max_new_tokens=8, batch_size=4)
    measured: list[str] = []
    real = core.measure

    def counting(subject, *args, **kwargs):
        measured.append(subject)
        return real(subject, *args, **kwargs)

    monkeypatch.setattr(core, "measure", counting)
    attacks = ["quant-int8", "prune-more"]
    plain = audit(Subject(tiny_model, tokenizer, "plain"), sets, Subject(retain_net, tokenizer, "plain"), attacks,
                  settings)
    calls_without = len(measured)
    cache: dict = {}
    first = audit(Subject(tiny_model, tokenizer, "plain"), sets, Subject(retain_net, tokenizer, "plain"), attacks,
                  settings, reference_cache=cache)
    assert sorted(k.split("|")[0] for k in cache) == ["base", "prune-more", "quant-int8"]
    cache = json.loads(json.dumps(cache))  # what a caller keeps on disk
    measured.clear()
    second = audit(Subject(tiny_model, tokenizer, "plain"), sets, Subject(retain_net, tokenizer, "plain"), attacks,
                   settings, reference_cache=cache)
    assert len(measured) == calls_without - 3  # base, int8 and prune-more: the model only
    for a, b, c in zip(plain["attacks"], first["attacks"], second["attacks"], strict=True):
        assert a["value"] == b["value"] == c["value"] and a["level"] == b["level"] == c["level"]
        assert a["holds"] == c["holds"] and a["retain_model_after"] == c["retain_model_after"]
    assert second["attacks"][1]["pruning"]["retain_model"] == plain["attacks"][1]["pruning"]["retain_model"]
    other = AuditSettings(max_new_tokens=9, batch_size=4)  # other settings: another key, measured again
    measured.clear()
    audit(Subject(tiny_model, tokenizer, "plain"), sets, Subject(retain_net, tokenizer, "plain"), ["quant-int8"],
          other, reference_cache=cache)
    assert len(measured) == 4 and len(cache) == 5


def test_verdict_scores_give_the_same_verdicts_and_measure_only_the_forget_rouge(tiny_model, tokenizer, qa_records,
                                                                                 monkeypatch):
    import sau_compress.audit.core as core
    from sau_compress.audit import AuditSettings, Subject, audit

    retain_net = type(tiny_model)(tiny_model.config)
    torch.manual_seed(1)
    retain_net.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in tiny_model.state_dict().items()})
    sets = {"forget": qa_records[:4], "retain": qa_records[4:], "holdout": qa_records[4:6]}
    asked: list[tuple[str, ...]] = []
    real = core.run_specs

    def recording(ctx, specs, reference=None):
        asked.append(tuple(sorted(s.name for s in specs)))
        return real(ctx, specs, reference)

    monkeypatch.setattr(core, "run_specs", recording)
    attacks = ["quant-int4", "prune-more", "relearn", "mia"]

    def run(scores: str) -> dict:
        asked.clear()
        settings = AuditSettings(max_new_tokens=8, batch_size=4, relearn_steps=2, attack_scores=scores)
        return audit(Subject(tiny_model, tokenizer, "plain"), sets, Subject(retain_net, tokenizer, "plain"),
                     attacks, settings)

    full = run("all")
    full_asked = list(asked)
    lean = run("verdict")
    for a, b in zip(full["attacks"], lean["attacks"], strict=True):
        assert (a["name"], a["value"], a["level"], a["holds"]) == (b["name"], b["value"], b["level"], b["holds"])
        if a["name"] != "relearn":  # relearn's before is its own (test-half) measurement, lean too
            assert a["before"] == b["before"]  # the unattacked model is measured in full either way
    assert full["attacks"][0]["after"]["model_utility"] is not None
    lean_after = lean["attacks"][0]["after"]
    assert lean_after["model_utility"] is None and lean_after["forget_prob"] is None
    assert lean["attacks"][3]["after"]["mia_min_k"] is not None  # mia reads the unattacked measurement
    # base (model and retain model) in full; each attacked measurement asks for the forget ROUGE-L alone:
    # int4 x2, prune-more x2, relearn before x2, after x2, control x1 (mia reads base)
    assert len(asked) == 11 and asked.count(("forget_Q_A_ROUGE",)) == 9
    assert len(full_asked) == len(asked) and all(len(names) > 1 for names in full_asked)
