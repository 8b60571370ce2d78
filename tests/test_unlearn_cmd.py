"""``sau-compress unlearn``: the SAU stage alone on a pruned model folder, one process."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_llama
from sau_compress.cli.app import app
from sau_compress.evaluation import SUMMARY_KEYS
from sau_compress.export import SIDECAR_NAME, forget_set_hash, read_state_dict
from sau_compress.masking import prune_by_magnitude_
from sau_compress.pipeline import unlearn_model

SETTINGS = ["mode=sau", "max_steps=3", "batch_size=2", "learning_rate=3e-3", "progress=false"]


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, tokenizer):
    """A tiny Llama pruned 2:4 by magnitude, saved as a plain HF folder with its tokenizer."""
    model = make_tiny_llama(len(tokenizer))
    with torch.no_grad():
        prune_by_magnitude_(model, 0.5, "2:4")
    out = tmp_path_factory.mktemp("pruned") / "tiny-2of4"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _zeros(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t == 0 for name, t in state.items() if name.endswith("proj.weight")}


def test_unlearn_writes_a_2of4_export_and_a_second_request_is_recorded_after_the_first(
    pruned_dir, qa_records, tmp_path
):
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in qa_records[:2]))
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps(r) + "\n" for r in qa_records[2:3]))
    retain = tmp_path / "retain.jsonl"
    retain.write_text("".join(json.dumps(r) + "\n" for r in qa_records[3:]))

    a = unlearn_model(pruned_dir, tmp_path / "A", str(first), str(retain), SETTINGS, eval_limit=2, max_new_tokens=8)
    assert (a["format"], a["two_four"], a["sparsity"], a["pattern_preserved"], a["requests"]) == (
        "sparse-24-bitmask", True, 0.5, True, 1)
    assert a["unlearn"]["steps"] == 3
    keys = {f"{s}_{k}" for s in ("forget", "retain") for k in SUMMARY_KEYS} | {"samples", "contained"}
    assert set(a["before"]) == keys
    source, out_a = read_state_dict(pruned_dir), read_state_dict(tmp_path / "A")
    assert all(torch.equal(z, _zeros(out_a)[name]) for name, z in _zeros(source).items())
    moved = [name for name in _zeros(source) if not torch.equal(source[name], out_a[name])]
    assert len(moved) == 14  # 2 layers x 7 projections, every one updated
    assert set(out_a) == set(source)

    # the second deletion request reads the first's sparse-24-bitmask export
    b = unlearn_model(tmp_path / "A", tmp_path / "B", str(second), str(retain), SETTINGS, evaluate=False)
    assert (b["format"], b["pattern_preserved"], b["requests"]) == ("sparse-24-bitmask", True, 2)
    sidecar = json.loads((tmp_path / "B" / SIDECAR_NAME).read_text())
    hashes = [r["forget_set_hash"] for r in sidecar["unlearning_history"]]
    assert hashes == [forget_set_hash(qa_records[:2]), forget_set_hash(qa_records[2:3])]
    assert sidecar["unlearning"] == sidecar["unlearning_history"][-1]
    assert sidecar["source"] == str(tmp_path / "A")
    out_b = read_state_dict(tmp_path / "B")
    assert all(torch.equal(z, _zeros(out_b)[name]) for name, z in _zeros(source).items())


def _cli(*args: str):
    return CliRunner().invoke(app, ["unlearn", *args])


def test_cli_unlearn_json(pruned_dir, qa_files, tmp_path):
    result = _cli(str(pruned_dir), "--forget", str(qa_files["forget"]), "--retain", str(qa_files["retain"]),
                  "--output", str(tmp_path / "o"), "--no-eval", "--format", "dense", "--json",
                  *[a for s in SETTINGS for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["format"], out["requests"], out["world_size"], out["after"]) == ("dense", 1, 1, None)
    assert sum(layer["n_selected"] for layer in out["unlearn"]["layers"].values()) == sum(
        round(0.3 * layer["n_surviving"]) for layer in out["unlearn"]["layers"].values())
    assert json.loads((tmp_path / "o" / SIDECAR_NAME).read_text())["format"] == "dense"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "max_stepz=3"], "max_stepz"),
        (["--set", "SparseGPTModifier.sparsity=0.6"], "unlearn has one stage"),
        (["--set", "forget=x.jsonl"], "pass --forget instead"),
        (["--format", "gguf"], "gguf"),
        (["--nproc", "0"], "--nproc must be at least 1"),
    ],
)
def test_cli_unlearn_bad_options_are_one_line_errors(pruned_dir, qa_files, tmp_path, extra, message):
    result = _cli(str(pruned_dir), "--forget", str(qa_files["forget"]), "--output", str(tmp_path / "o"), *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_cli_unlearn_refuses_an_unpruned_model(tokenizer, qa_files, tmp_path):
    dense = tmp_path / "dense"
    make_tiny_llama(len(tokenizer)).save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    result = _cli(str(dense), "--forget", str(qa_files["forget"]), "--retain", str(qa_files["retain"]),
                  "--output", str(tmp_path / "o"), "--no-eval", "--set", "progress=false")
    assert result.exit_code == 2 and "has pruned weights" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()
