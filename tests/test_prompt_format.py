"""``prompt_format`` (auto | plain | chat): token-level labels, resolution, and one format shared by unlearning,
saliency and evaluation (issue 12)."""

from __future__ import annotations

import contextlib
import json

import pytest
from loguru import logger

from conftest import QA, make_chat_tokenizer, make_tiny_llama
from sau_compress.data import (
    IGNORE_INDEX,
    PROMPT_TEMPLATE,
    format_prompt,
    prompt_ids,
    resolve_prompt_format,
    tokenize_qa,
    tokenize_records,
)
from sau_compress.errors import UserError
from sau_compress.unlearn import UnlearnJob


@pytest.fixture(scope="module")
def chat_tok():
    """A BPE tokenizer with a chat template whose assistant turn closes with its EOS, ``<|end|>``."""
    return make_chat_tokenizer()


@pytest.fixture()
def logs():
    """The loguru messages logged during the test, as ``"LEVEL message"``.

    Importing llmcompressor replaces every loguru sink: a test that imports it first does so before this
    fixture (its own import, then ``request.getfixturevalue("logs")``).
    """
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["level"].name + " " + m.record["message"]), level="DEBUG")
    yield messages
    with contextlib.suppress(ValueError):  # already removed by a late llmcompressor import
        logger.remove(sink)


def _conversation(tok, question: str, answer: str) -> str:
    return tok.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
    )


# ------------------------------------------------------------------------------------------- the labels


@pytest.mark.parametrize("record", QA[:3])
def test_chat_labels_cover_exactly_the_assistant_answer_and_eos(chat_tok, record):
    q, a = record["question"], record["answer"]
    item = tokenize_qa(chat_tok, q, a, prompt_format="chat")
    # the ids of the whole rendered conversation (the template ends the assistant turn with <|end|> = EOS)
    full = _conversation(chat_tok, q, a)
    assert full == f"<s><|user|>\n{q}<|end|><|assistant|>\n{a}<|end|>"
    full_ids = chat_tok(full, add_special_tokens=False)["input_ids"]
    assert item["input_ids"] == full_ids
    answer_ids = chat_tok(a, add_special_tokens=False)["input_ids"]
    end, assistant = chat_tok.convert_tokens_to_ids(["<|end|>", "<|assistant|>"])
    assert end == chat_tok.eos_token_id
    k = len(full_ids) - len(answer_ids) - 1
    assert item["labels"] == [IGNORE_INDEX] * k + answer_ids + [end]
    # everything the template renders before the answer is unlabelled, its generation prompt included
    assert full_ids[0] == chat_tok.bos_token_id and full_ids[k - 2 : k] == [assistant, chat_tok.encode("\n")[-1]]
    prompt = f"<s><|user|>\n{q}<|end|><|assistant|>\n"
    assert chat_tok.decode(full_ids[:k]) == format_prompt(q, chat_tok, "chat") == prompt
    labelled = [t for t in item["labels"] if t != IGNORE_INDEX]
    assert chat_tok.decode(labelled) == a + "<|end|>"
    # the generation prompt is exactly the unlabelled prefix
    assert prompt_ids(chat_tok, q, "chat") == full_ids[:k]


def test_plain_format_is_the_question_answer_template(chat_tok, tokenizer):
    q, a = QA[0]["question"], QA[0]["answer"]
    for tok in (tokenizer, chat_tok):  # plain ignores a chat template
        item = tokenize_qa(tok, q, a, prompt_format="plain")
        k = item["labels"].count(IGNORE_INDEX)
        assert item["labels"][:k] == [IGNORE_INDEX] * k and IGNORE_INDEX not in item["labels"][k:]
        assert tok.decode(item["input_ids"][:k]) == "<s>" + PROMPT_TEMPLATE.format(question=q)
        assert tok.decode(item["labels"][k:]) == " " + a + tok.eos_token
        assert item["input_ids"][k:] == item["labels"][k:]


def test_max_length_cuts_the_answer_tail_in_chat(chat_tok):
    q, a = QA[1]["question"], QA[1]["answer"]
    whole = tokenize_qa(chat_tok, q, a, prompt_format="chat")
    cut = tokenize_qa(chat_tok, q, a, max_length=len(whole["input_ids"]) - 3, prompt_format="chat")
    assert cut["input_ids"] == whole["input_ids"][:-3] and cut["labels"] == whole["labels"][:-3]
    prompt_len = len(prompt_ids(chat_tok, q, "chat"))
    with pytest.raises(UserError, match="leaves no answer token"):
        tokenize_qa(chat_tok, q, a, max_length=prompt_len, prompt_format="chat")


# --------------------------------------------------------------------------------------------- resolving


def test_auto_picks_chat_with_a_template_and_plain_without(chat_tok, tokenizer, logs):
    assert resolve_prompt_format(chat_tok, "auto") == "chat"
    assert resolve_prompt_format(tokenizer, "auto") == "plain"
    assert resolve_prompt_format(chat_tok) == "chat"  # auto is the default
    infos = [m for m in logs if m.startswith("INFO")]
    assert len(infos) == 3
    for message, (fmt, have) in zip(infos, [("chat", "a"), ("plain", "no"), ("chat", "a")], strict=True):
        assert message.startswith(f"INFO prompt format: {fmt} (auto: the tokenizer ")
        assert message.endswith(f" has {have} chat template)")
    assert resolve_prompt_format(chat_tok, " Plain ") == "plain" and resolve_prompt_format(chat_tok, "CHAT") == "chat"
    q, a = QA[2]["question"], QA[2]["answer"]
    assert tokenize_qa(chat_tok, q, a) == tokenize_qa(chat_tok, q, a, prompt_format="chat")
    assert tokenize_qa(tokenizer, q, a) == tokenize_qa(tokenizer, q, a, prompt_format="plain")
    assert tokenize_qa(chat_tok, q, a) != tokenize_qa(chat_tok, q, a, prompt_format="plain")
    assert format_prompt(q) == PROMPT_TEMPLATE.format(question=q)  # no tokenizer: no chat template


def test_chat_without_a_template_and_unknown_formats_are_user_errors(tokenizer):
    tokenizer.name_or_path = "tiny-bpe"
    try:
        with pytest.raises(UserError) as err:
            resolve_prompt_format(tokenizer, "chat")
    finally:
        tokenizer.name_or_path = ""
    message = str(err.value)
    assert "\n" not in message
    assert message == ("prompt_format 'chat' needs a tokenizer with a chat template, but the tokenizer 'tiny-bpe' "
                       "has none: use prompt_format 'plain' (or 'auto')")
    for call in (lambda: tokenize_qa(tokenizer, "q", "a", prompt_format="chat"),
                 lambda: tokenize_records(tokenizer, [{"question": "q", "answer": "a"}], prompt_format="chat")):
        with pytest.raises(UserError, match="needs a tokenizer with a chat template"):
            call()
    with pytest.raises(UserError, match="prompt_format must be one of auto, plain, chat, got 'xml'"):
        resolve_prompt_format(tokenizer, "xml")
    with pytest.raises(UserError, match="got True"):
        resolve_prompt_format(tokenizer, True)  # type: ignore[arg-type]


def test_a_template_that_does_not_close_the_turn_with_eos_is_warned_about(logs):
    tok = make_chat_tokenizer(eos="</s>")  # the turn closes with <|end|>, EOS is </s>
    assert resolve_prompt_format(tok) == "chat"
    warnings = [m for m in logs if m.startswith("WARNING")]
    assert len(warnings) == 1 and "closes the assistant turn with '<|end|>', not EOS '</s>'" in warnings[0]
    assert resolve_prompt_format(tok) == "chat"  # warned once per template
    assert len([m for m in logs if m.startswith("WARNING")]) == 1
    item = tokenize_qa(tok, QA[0]["question"], QA[0]["answer"])
    assert item["labels"][-1] == tok.convert_tokens_to_ids("</s>")  # the rule stays: answer + EOS
    logs.clear()
    assert resolve_prompt_format(make_chat_tokenizer()) == "chat"
    assert not [m for m in logs if m.startswith("WARNING")]


# -------------------------------------------------------------------- one format: unlearning and evaluation


def test_unlearn_job_tokenizes_in_the_resolved_format(chat_tok, tokenizer, qa_records):
    job = UnlearnJob.from_records(chat_tok, qa_records[:2], qa_records[2:], max_length=64)
    assert job.forget == tokenize_records(chat_tok, qa_records[:2], 64, prompt_format="chat")
    assert job.retain == tokenize_records(chat_tok, qa_records[2:], 64, prompt_format="chat")
    assert all(chat_tok.decode(it["input_ids"]).startswith("<s><|user|>\n") for it in job.forget)
    plain = UnlearnJob.from_records(chat_tok, qa_records[:2], None, 64, prompt_format="plain")
    assert all(chat_tok.decode(it["input_ids"]).startswith("<s>Question: ") for it in plain.forget)
    assert plain.retain is None
    with pytest.raises(UserError, match="chat template"):
        UnlearnJob.from_records(tokenizer, qa_records[:2], None, prompt_format="chat")


def test_evaluation_prompts_and_scores_in_the_unlearning_format(chat_tok, qa_records, monkeypatch):
    from sau_compress.evaluation import answer_nll, summarize
    from sau_compress.evaluation.context import EvalContext
    from sau_compress.evaluation.scoring import tokenize_answers

    forget, retain = qa_records[:2], qa_records[2:4]
    job = UnlearnJob.from_records(chat_tok, forget, retain)  # auto -> chat, as the pipeline would
    model = make_tiny_llama(len(chat_tok))
    prompts: list[list[int]] = []
    real_generate = model.generate

    def recording_generate(input_ids, attention_mask, **kwargs):
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompts.append([t for t, m in zip(row, mask, strict=True) if m])  # left padding removed
        return real_generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    ctx = EvalContext(model, chat_tok, {"forget": forget}, max_new_tokens=2)
    assert ctx.prompt_format == "chat"
    # scoring: the same items, the same labelled tokens as unlearning
    items, groups = tokenize_answers(chat_tok, forget)
    assert items == [{k: v for k, v in it.items() if k != "index"} for it in job.forget] and groups == [[0], [1]]
    for options, train in zip(ctx.scores("forget"), job.forget, strict=True):
        assert options[0].labels.tolist() == [t for t in train["labels"] if t != IGNORE_INDEX]
    # generation: prompted with exactly the unlabelled prefix of the training items
    ctx.generations("forget")
    expected = [it["input_ids"][: it["labels"].count(IGNORE_INDEX)] for it in job.forget]
    assert sorted(prompts) == sorted(expected)
    assert all(p[-2] == chat_tok.convert_tokens_to_ids("<|assistant|>") for p in prompts)
    # summarize (the pipeline's before/after) and answer_nll take the same default
    prompts.clear()
    out = summarize(model, chat_tok, forget, retain, max_new_tokens=2)
    assert sorted(prompts) == sorted(
        expected + [it["input_ids"][: it["labels"].count(IGNORE_INDEX)] for it in job.retain]
    )
    nll = answer_nll(model, chat_tok, forget)
    assert out["forget_nll"] == pytest.approx(sum(nll) / len(nll), rel=1e-6)
    assert answer_nll(model, chat_tok, forget, prompt_format="plain") != pytest.approx(nll)


def test_evaluate_refuses_chat_without_a_template(tiny_model, tokenizer, qa_records):
    from sau_compress.evaluation import evaluate

    sets = {"forget": qa_records[:2], "retain": qa_records[2:4], "holdout": qa_records[4:]}
    with pytest.raises(UserError, match="chat template"):
        evaluate(tiny_model, tokenizer, datasets=sets, prompt_format="chat")


# ------------------------------------------------------------------------------------- recipes and the CLI


def test_modifier_prompt_format_default_and_deprecated_chat_template(request):
    from sau_compress.modifier import SparsityAwareUnlearningModifier
    from sau_compress.pipeline import load_recipe

    logs = request.getfixturevalue("logs")  # after llmcompressor's import reset the sinks

    assert SparsityAwareUnlearningModifier().prompt_format == "auto"
    assert SparsityAwareUnlearningModifier(prompt_format="Chat").prompt_format == "chat"

    def recipe(**fields):
        return {"unlearn_stage": {"unlearn_modifiers": {"SparsityAwareUnlearningModifier": fields}}}

    logs.clear()
    for old, new in ((True, "chat"), (False, "plain")):
        (sau,) = load_recipe(recipe(chat_template=old)).modifiers
        assert sau.prompt_format == new and not hasattr(sau, "chat_template")
    warnings = [m for m in logs if m.startswith("WARNING") and "chat_template" in m]
    assert warnings == [
        "WARNING SparsityAwareUnlearningModifier: chat_template: true is deprecated; it reads as "
        "prompt_format: chat (write that instead)",
        "WARNING SparsityAwareUnlearningModifier: chat_template: false is deprecated; it reads as "
        "prompt_format: plain (write that instead)",
    ]
    (sau,) = load_recipe(recipe(chat_template=True, prompt_format="chat")).modifiers
    assert sau.prompt_format == "chat"
    with pytest.raises(UserError, match="chat_template: true contradicts prompt_format: plain"):
        load_recipe(recipe(chat_template=True, prompt_format="plain"))
    with pytest.raises(UserError, match="prompt_format"):
        load_recipe(recipe(prompt_format="xml"))


def test_sau_stages_must_resolve_to_one_format(chat_tok, tokenizer):
    from sau_compress.modifier import SparsityAwareUnlearningModifier as Sau
    from sau_compress.pipeline.run import resolve_stage_format

    assert resolve_stage_format([Sau(), Sau(prompt_format="chat")], chat_tok) == "chat"
    assert resolve_stage_format([Sau(), Sau(prompt_format="plain")], tokenizer) == "plain"
    with pytest.raises(UserError, match=r"different prompt formats \(\['chat', 'plain'\]\)"):
        resolve_stage_format([Sau(), Sau(prompt_format="plain")], chat_tok)


def test_cli_eval_prompt_format(tiny_model_dir, qa_files, tmp_path):
    from typer.testing import CliRunner

    from sau_compress.cli.app import app

    runner = CliRunner()
    args = ["eval", str(tiny_model_dir), "--forget", str(qa_files["forget"]), "--retain", str(qa_files["retain"]),
            "--holdout", str(qa_files["retain"]), "--max-new-tokens", "2", "--device", "cpu"]
    for flags in (["--prompt-format", "chat"], ["--chat-template"]):  # the tiny tokenizer has no chat template
        result = runner.invoke(app, [*args, *flags])
        assert result.exit_code == 2, result.output
        assert "needs a tokenizer with a chat template" in " ".join(result.output.split())
    bad = runner.invoke(app, [*args, "--prompt-format", "xml"], env={"COLUMNS": "300"})
    assert bad.exit_code == 2 and "'xml' is not one of 'auto', 'plain', 'chat'" in " ".join(bad.output.split())
    clash = runner.invoke(app, [*args, "--chat-template", "--prompt-format", "plain"])
    assert clash.exit_code == 2 and "contradicts --prompt-format plain" in " ".join(clash.output.split())
    ok = runner.invoke(app, [*args, "--limit", "1", "--output", str(tmp_path / "e"), "--json"])
    assert ok.exit_code == 0, ok.output
    settings = json.loads((tmp_path / "e" / "eval.json").read_text())["settings"]
    assert settings["prompt_format"] == "plain" and "chat_template" not in settings
    assert "- prompt_format: `plain`" in (tmp_path / "e" / "report.md").read_text()

