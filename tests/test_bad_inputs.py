"""The bad-input catalogue: inputs a new user gets wrong, one row each.

Every row runs the CLI in-process (typer's ``CliRunner``: the same ``user_errors`` handling as the console
script) and asserts exit code 2, no traceback, the named input in the message, and that nothing was written
(the folder the command runs in is the same, file by file, before and after). One case also runs the console
entry point in a subprocess, so the real process is covered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import QA, make_tiny_llama
from sau_compress.cli.app import app

CUDA = torch.cuda.is_available()


def _jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer) -> Path:
    """A folder of bad (and a few good) inputs; the commands run inside it, with relative paths."""
    root = tmp_path_factory.mktemp("bad_inputs")
    tiny = root / "tiny"
    make_tiny_llama(len(tokenizer)).save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)
    weights = (tiny / "model.safetensors").read_bytes()
    for name, content in (("trunc", weights[:4000]), ("garbage", os.urandom(4096)), ("noweights", None),
                          ("notok", weights)):
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_bytes((tiny / "config.json").read_bytes())
        if name != "notok":
            tokenizer.save_pretrained(folder)
        if content is not None:
            (folder / "model.safetensors").write_bytes(content)
    (root / "afile").write_text("not a folder\n")
    (root / "data").mkdir()
    (root / "exists").mkdir()
    (root / "exists" / "keep.txt").write_text("mine\n")
    records = [dict(r) for r in QA]
    _jsonl(root / "forget.jsonl", records[:2])
    _jsonl(root / "retain.jsonl", records[2:])
    _jsonl(root / "overlap.jsonl", records[3:] + records[:1])
    _jsonl(root / "emptyans.jsonl", [records[0], {"question": "Who?", "answer": "  "}])
    _jsonl(root / "emptyq.jsonl", [{"question": "", "answer": "Someone."}])
    _jsonl(root / "numans.jsonl", [{"question": "How many?", "answer": 5}])
    _jsonl(root / "nofield.jsonl", [records[0], {"question": "Who?"}])
    _jsonl(root / "long.jsonl", [{"question": "word " * 3000, "answer": "Someone."}])
    (root / "badjson.jsonl").write_text(json.dumps(records[0]) + "\n" + json.dumps(records[1]) + "\n{oops\n")
    (root / "nonutf8.jsonl").write_bytes(json.dumps(records[0]).encode() + b'\n{"question": "\xff\xfe"}\n')
    (root / "empty.jsonl").write_text("")
    (root / "table.csv").write_text("question,answer\nWho?,Someone.\n")
    (root / "pyobj.yaml").write_text("sau_stage:\n  m_modifiers:\n    X: !!python/object/apply:os.system ['true']\n")
    (root / "notmapping.yaml").write_text("- just\n- a list\n")
    (root / "badyaml.yaml").write_text("sau_stage: [unclosed\n")
    (root / "unknownmod.yaml").write_text(
        "sparsity_stage:\n  sparsity_modifiers:\n    SparsGPTModifier: {sparsity: 0.5}\n"
        "unlearn_stage:\n  unlearn_modifiers:\n    SparsityAwareUnlearningModifier: {max_steps: 1}\n"
    )
    (root / "nosau.yaml").write_text(
        "sparsity_stage:\n  sparsity_modifiers:\n    SparseGPTModifier: {sparsity: 0.5, mask_structure: '2:4'}\n"
    )
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


RUN = ["run", "tiny", "-o", "out", "--forget", "forget.jsonl", "--retain", "retain.jsonl"]
EXPORT = ["export", "tiny", "--format", "dense", "-o", "out"]

#: (id, arguments, what the message must name); every row must exit 2
CASES = [
    # corrupt or missing weights (tracebacks in run/eval before)
    ("run-truncated-safetensors", ["run", "trunc", *RUN[2:]], "trunc/model.safetensors"),
    ("run-garbage-safetensors", ["run", "garbage", *RUN[2:]], "garbage/model.safetensors"),
    ("eval-truncated-safetensors", ["eval", "trunc", "--forget", "forget.jsonl"], "trunc/model.safetensors"),
    ("eval-garbage-safetensors", ["eval", "garbage"], "garbage/model.safetensors"),
    ("inspect-garbage-safetensors", ["inspect", "garbage"], "garbage/model.safetensors"),
    ("export-garbage-safetensors", ["export", "garbage", *EXPORT[2:]], "garbage/model.safetensors"),
    ("run-no-weights", ["run", "noweights", *RUN[2:]], "noweights"),
    ("eval-no-weights", ["eval", "noweights"], "noweights"),
    ("run-no-tokenizer", ["run", "notok", *RUN[2:]], "notok"),
    ("run-model-is-a-file", ["run", "afile", *RUN[2:]], "'afile' is a file"),
    ("run-model-missing", ["run", "nothere", *RUN[2:]], "'nothere' not found"),
    ("inspect-missing-path", ["inspect", "nothere"], "'nothere' not found"),
    ("inspect-a-file", ["inspect", "afile"], "'afile' is a file"),
    ("export-missing-source", ["export", "nothere", *EXPORT[2:]], "'nothere' not found"),
    # devices
    ("run-device-unknown", [*RUN, "--device", "tpu"], "'--device': 'tpu'"),
    ("eval-device-unknown", ["eval", "tiny", "--device", "tpu"], "'--device': 'tpu'"),
    ("run-cuda-without-cuda", [*RUN, "--device", "cuda"], "--device cuda"),
    ("eval-cuda-without-cuda", ["eval", "tiny", "--device", "cuda"], "--device cuda"),
    # outputs
    ("toy-build-out-is-a-file", ["toy", "build", "--out", "afile"], "afile"),
    ("toy-build-too-few-people", ["toy", "build", "--people", "3", "--out", "world"], "--people"),
    ("toy-build-negative-prior", ["toy", "build", "--prior-people", "-1", "--out", "world"], "--prior-people"),
    ("export-output-parent-is-a-file", ["export", "tiny", "--format", "dense", "-o", "afile/sub"], "afile' is a file"),
    ("run-output-exists", [*RUN[:2], "-o", "exists", *RUN[4:]], "exists"),
    ("export-output-exists", [*EXPORT[:4], "-o", "exists"], "exists"),
    ("run-output-inside-input", [*RUN[:2], "-o", "tiny/sub", *RUN[4:]], "tiny/sub"),
    ("export-unknown-format", ["export", "tiny", "--format", "zip", "-o", "out"], "zip"),
    ("run-unknown-format", [*RUN, "--format", "zip"], "zip"),
    # data
    ("forget-mistyped-relative-path", [*RUN[:4], "--forget", "data/f8", *RUN[6:]], "data/f8"),
    ("forget-unknown-hub-name", [*RUN[:4], "--forget", "nobody-sau/no-such-set", *RUN[6:]], "nobody-sau/no-such-set"),
    ("forget-retain-overlap", [*RUN[:6], "--retain", "overlap.jsonl"], "overlap.jsonl"),
    ("forget-empty-answer", [*RUN[:4], "--forget", "emptyans.jsonl", *RUN[6:]], "emptyans.jsonl: line 2"),
    ("forget-empty-question", [*RUN[:4], "--forget", "emptyq.jsonl", *RUN[6:]], "emptyq.jsonl: line 1"),
    ("forget-answer-not-text", [*RUN[:4], "--forget", "numans.jsonl", *RUN[6:]], "numans.jsonl: line 1"),
    ("forget-missing-field", [*RUN[:4], "--forget", "nofield.jsonl", *RUN[6:]], "nofield.jsonl: line 2"),
    ("forget-invalid-json-line", [*RUN[:4], "--forget", "badjson.jsonl", *RUN[6:]], "badjson.jsonl:3"),
    ("forget-not-utf8", [*RUN[:4], "--forget", "nonutf8.jsonl", *RUN[6:]], "nonutf8.jsonl: not UTF-8"),
    ("forget-empty-file", [*RUN[:4], "--forget", "empty.jsonl", *RUN[6:]], "empty.jsonl"),
    ("forget-unsupported-type", [*RUN[:4], "--forget", "table.csv", *RUN[6:]], "table.csv"),
    ("forget-question-longer-than-max-length", [*RUN[:4], "--forget", "long.jsonl", *RUN[6:]], "long.jsonl"),
    ("eval-forget-not-utf8", ["eval", "tiny", "--forget", "nonutf8.jsonl"], "nonutf8.jsonl"),
    ("eval-forget-question-too-long", ["eval", "tiny", "--forget", "long.jsonl", "--retain", "retain.jsonl",
                                       "--holdout", "retain.jsonl"], "the forget set: record 1"),
    # recipes and --set
    ("set-sparsity-above-one", [*RUN, "--set", "SparseGPTModifier.sparsity=1.5"], "SparseGPTModifier.sparsity"),
    ("set-sparsity-negative", [*RUN, "--set", "SparseGPTModifier.sparsity=-0.1"], "SparseGPTModifier.sparsity"),
    ("set-sparsity-list-out-of-range", [*RUN, "--set", "SparseGPTModifier.sparsity=[0.5, 2]"],
     "SparseGPTModifier.sparsity"),
    ("set-sau-field-out-of-range", [*RUN, "--set", "max_steps=0"], "max_steps"),
    ("set-unknown-sau-field", [*RUN, "--set", "max_stepz=3"], "max_stepz"),
    ("set-without-equals", [*RUN, "--set", "max_steps"], "max_steps"),
    ("set-modifier-not-in-recipe", [*RUN, "--set", "WandaPruningModifier.sparsity=0.5"], "WandaPruningModifier"),
    ("recipe-unknown-modifier", [*RUN, "-r", "unknownmod.yaml"], "SparsGPTModifier"),
    ("recipe-python-object", [*RUN, "-r", "pyobj.yaml"], "pyobj.yaml"),
    ("recipe-not-a-mapping", [*RUN, "-r", "notmapping.yaml"], "notmapping.yaml"),
    ("recipe-invalid-yaml", [*RUN, "-r", "badyaml.yaml"], "badyaml.yaml"),
    ("recipe-missing", [*RUN, "-r", "nothere.yaml"], "nothere.yaml"),
    ("set-sau-field-on-a-recipe-without-sau", [*RUN, "-r", "nosau.yaml", "--set", "max_steps=2"],
     "no SparsityAwareUnlearningModifier"),
    # other options
    ("run-eval-limit-zero", [*RUN, "--eval-limit", "0"], "eval_limit"),
    ("run-calibration-samples-zero", [*RUN, "--num-calibration-samples", "0"], "num_calibration_samples"),
    ("eval-unknown-suite", ["eval", "tiny", "--suite", "nosuch"], "nosuch"),
    ("eval-unknown-prompt-format", ["eval", "tiny", "--forget", "forget.jsonl", "--prompt-format", "weird"], "weird"),
    ("compare-missing-run", ["compare", "nothere.json"], "nothere.json"),
]


@pytest.fixture()
def runner(monkeypatch, world):
    """A CliRunner inside ``world``, loguru writing to the runner's stderr, the hub offline."""
    import datasets.config
    import huggingface_hub.constants
    import llmcompressor  # noqa: F401 - it replaces loguru's sinks on import: let it, then set ours
    from loguru import logger

    monkeypatch.chdir(world)
    for module in (datasets.config, huggingface_hub.constants):  # read from the environment at import
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message), level="WARNING")
    yield CliRunner(env={"COLUMNS": "400"})
    logger.remove()  # ours, and any the command line installed on the runner's (now closed) stream


def _params() -> list:
    no_cuda = pytest.mark.skipif(CUDA, reason="this machine has CUDA")
    return [pytest.param(args, named, id=name, marks=[no_cuda] if "cuda" in name else [])
            for name, args, named in CASES]


@pytest.mark.parametrize(("args", "named"), _params())
def test_bad_input_is_one_clean_error(runner, world, args, named):
    before = _snapshot(world)
    result = runner.invoke(app, args)
    output = result.output
    assert result.exit_code == 2, output + repr(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    message = next(line for line in output.splitlines() if line.startswith("error:"))
    assert named in message, message
    assert _snapshot(world) == before  # nothing written, nothing changed


def test_catalogue_has_at_least_30_rows():
    assert len(CASES) >= 30


def test_console_script_prints_one_line(world):
    """The installed entry point, in its own process: one error line on stderr, exit 2, no traceback."""
    args, named = ["eval", "garbage"], "garbage/model.safetensors"
    before = _snapshot(world)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", COLUMNS="400")
    code = "from sau_compress.cli.app import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=world, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], proc.stderr
    assert _snapshot(world) == before


# ------------------------------------------------------------------------------------ doubtful input: warnings



def test_answers_cut_to_max_length_are_counted_and_named(tokenizer, warnings):
    from sau_compress.data import tokenize_records

    records = [dict(QA[0]), {"question": "Who?", "answer": "a long answer " * 40}, dict(QA[1])]
    items = tokenize_records(tokenizer, records, max_length=40, what="the forget set 'f.jsonl'")
    assert [len(i["input_ids"]) for i in items][1] == 40
    assert len(warnings) == 1
    assert "the forget set 'f.jsonl': 1 of 3 QA pairs are longer than max_length=40" in warnings[0]
    assert "records [2]" in warnings[0]
    tokenize_records(tokenizer, records[:1], max_length=40)
    assert len(warnings) == 1  # nothing cut, nothing said


def test_generation_cuts_prompts_to_the_model_context(tokenizer, warnings):
    from sau_compress.data import prompt_ids
    from sau_compress.evaluation.generation import generate_answers

    model = make_tiny_llama(len(tokenizer))  # max_position_embeddings 128
    long_question = "where was the glassblower born " * 60
    assert len(prompt_ids(tokenizer, long_question, "plain")) > 128
    answers = generate_answers(model, tokenizer, [QA[0]["question"], long_question], max_new_tokens=8,
                               prompt_format="plain", desc="generating forget")
    assert len(answers) == 2
    assert len(warnings) == 1
    assert "generating forget: 1 of 2 prompts are longer than the model's context allows (128 tokens" in warnings[0]
    assert "records [2]" in warnings[0] and "keeps its last 120 tokens" in warnings[0]
