"""Interoperability: the real compressed-tensors 0.14.0.1 reader loads our sparse-24-bitmask exports.

The reader lives in its own virtual environment (compressed-tensors 0.14.0.1, transformers 4.57, torch
2.13.0), built once by ``scripts/make_ct_reader_env.sh`` under ``sau_compress.io.cache_dir()`` and reused.
It loads each export with ``AutoModelForCausalLM.from_pretrained(folder, torch_dtype=...)`` in a subprocess
and writes back its decompressed weights and its logits on a fixed input; they must equal ours bit for bit
(weights) and to float tolerance (logits: a different transformers computes them).
Set ``SAU_COMPRESS_SKIP_INTEROP=1`` to skip where the package registry cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sau_compress.export import bits_equal, save_model
from sau_compress.io import cache_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_ct_reader_env.sh"
INPUT_IDS = [[1, 17, 99, 250, 3, 42, 7, 300, 12, 5]]

READER = textwrap.dedent(
    """
    import json, sys
    import torch, transformers, compressed_tensors
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    jobs = json.loads(sys.argv[1])
    ids = torch.tensor(json.loads(sys.argv[2]))
    report = {"transformers": transformers.__version__, "compressed_tensors": compressed_tensors.__version__}
    for job in jobs:
        dtype = getattr(torch, job["dtype"])
        model = AutoModelForCausalLM.from_pretrained(job["folder"], torch_dtype=dtype).eval()
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        with torch.no_grad():
            state["__logits__"] = model(input_ids=ids).logits.float().contiguous()
        save_file(state, job["out"])
        report[job["folder"]] = {"rope_theta": getattr(model.config, "rope_theta", None),
                                 "dtype": str(model.dtype)}
    print("REPORT " + json.dumps(report))
    """
)


def _reader_python() -> str:
    if os.environ.get("SAU_COMPRESS_SKIP_INTEROP") == "1":
        pytest.skip("SAU_COMPRESS_SKIP_INTEROP=1: the reader environment needs the package registry")
    venv = cache_dir() / "ct-reader-venv"
    proc = subprocess.run(["bash", str(SCRIPT), str(venv)], check=False, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        pytest.fail(f"building the compressed-tensors 0.14.0.1 reader environment failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _two_four_llama(dtype: torch.dtype, seed: int):
    """Tiny Llama, rope_theta 500000, every decoder Linear 2:4 except layer 1's down_proj (left dense)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, rope_theta=500000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name and name != "model.layers.1.mlp.down_proj":
                rows, cols = module.weight.shape
                keep = module.weight.abs().view(rows, cols // 4, 4).topk(2, dim=-1).indices
                mask = torch.zeros(rows, cols // 4, 4, dtype=torch.bool).scatter_(-1, keep, True)
                module.weight.masked_fill_(~mask.view(rows, cols), 0)
    return model.to(dtype)


@pytest.mark.slow
def test_compressed_tensors_0_14_reads_our_sparse_24_bitmask_bit_exact(tmp_path):
    python = _reader_python()
    models, jobs = {}, []
    for seed, dtype in enumerate((torch.float32, torch.bfloat16, torch.float16)):
        name = str(dtype).removeprefix("torch.")
        model = _two_four_llama(dtype, seed)
        folder = save_model(model, None, tmp_path / name, format="sparse-24-bitmask")
        config = json.loads((folder / "config.json").read_text())
        assert config["quantization_config"]["sparsity_config"]["ignore"] == [
            "lm_head", "model.layers.1.mlp.down_proj"]
        models[name] = model
        jobs.append({"folder": str(folder), "dtype": name, "out": str(tmp_path / f"{name}.reader.safetensors")})

    proc = subprocess.run(
        [python, "-c", READER, json.dumps(jobs), json.dumps(INPUT_IDS)],
        check=False, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert report["compressed_tensors"] == "0.14.0.1"
    assert report["transformers"].startswith("4.57")

    for job in jobs:
        name, model = job["dtype"], models[job["dtype"]]
        theirs = load_file(job["out"])
        logits = theirs.pop("__logits__")
        ours = model.state_dict()
        assert set(theirs) == set(ours)
        for key, tensor in ours.items():
            if key.endswith("inv_freq"):
                continue
            assert theirs[key].dtype == tensor.dtype, key
            assert bits_equal(theirs[key], tensor), f"{name}: {key} differs after the 0.14.0.1 reader"
        # transformers 4.57 read our config with the model's rope_theta, not its 10000 default
        assert report[job["folder"]]["rope_theta"] == 500000.0
        with torch.no_grad():
            expected = model(input_ids=torch.tensor(INPUT_IDS)).logits.float()
        tol = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}[name]
        torch.testing.assert_close(logits, expected, rtol=tol, atol=tol)


def _prune_24_(model: torch.nn.Module) -> torch.nn.Module:
    """Keep the 2 largest |w| of every group of 4 in each decoder Linear."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                rows, cols = module.weight.shape
                keep = module.weight.abs().view(rows, cols // 4, 4).topk(2, dim=-1).indices
                mask = torch.zeros(rows, cols // 4, 4, dtype=torch.bool).scatter_(-1, keep, True)
                module.weight.masked_fill_(~mask.view(rows, cols), 0)
    return model


#: architectures whose RoPE settings transformers 4.57 reads under other keys than 5.x writes, each with
#: settings other than 4.57's defaults (a lost setting changes the logits)
ROPE_MODELS = {
    "phi3": ("Phi3", {"rope_parameters": {"rope_type": "default", "rope_theta": 250000.0,
                                          "partial_rotary_factor": 0.5}}),
    "gpt_neox": ("GPTNeoX", {"rope_parameters": {"rope_type": "default", "rope_theta": 20000.0,
                                                 "partial_rotary_factor": 1.0}}),
    "gemma3": ("Gemma3", {"head_dim": 16, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"],
                          "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                 "rope_theta": 500000.0},
                                              "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}}}),
    "qwen3": ("Qwen3", {"head_dim": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
}


@pytest.mark.slow
def test_transformers_4_57_reads_the_rope_settings_of_other_architectures(tmp_path):
    """Phi-3's partial rotary factor, GPT-NeoX's base and rotary share, Gemma 3's scaled full and local
    RoPE reach the reader: it computes our logits."""
    import transformers

    python = _reader_python()
    models, jobs = {}, []
    for name, (prefix, extra) in ROPE_MODELS.items():
        fields = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, **extra)
        if name != "gpt_neox":
            fields["num_key_value_heads"] = 2
        config_cls = getattr(transformers, f"{prefix}TextConfig" if name == "gemma3" else f"{prefix}Config")
        torch.manual_seed(0)
        model = _prune_24_(getattr(transformers, f"{prefix}ForCausalLM")(config_cls(**fields)).eval())
        folder = save_model(model, None, tmp_path / name, format="sparse-24-bitmask")
        models[name] = model
        jobs.append({"folder": str(folder), "dtype": "float32", "out": str(tmp_path / f"{name}.reader.safetensors")})

    proc = subprocess.run(
        [python, "-c", READER, json.dumps(jobs), json.dumps(INPUT_IDS)],
        check=False, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for job in jobs:
        name = Path(job["folder"]).name
        theirs = load_file(job["out"])
        with torch.no_grad():
            expected = models[name](input_ids=torch.tensor(INPUT_IDS)).logits.float()
        torch.testing.assert_close(theirs["__logits__"], expected, rtol=1e-5, atol=1e-5, msg=name)


def test_reader_env_script_is_pinned():
    """The reader environment never pulls an unpinned torch, and pins the last sparse-capable releases."""
    text = SCRIPT.read_text()
    assert "torch==2.13.0" in text
    assert "compressed-tensors==0.14.0.1" in text
    assert '"transformers<=4.57.6"' in text


@pytest.mark.slow
def test_compressed_tensors_0_14_loads_our_tokenizer_and_gives_our_greedy_answers(tiny_model_dir, qa_files, tmp_path):
    """``verify --engine compressed-tensors-0.14`` on a sparse export: transformers 4.57 loads the tokenizer
    (transformers 5 would name its class TokenizersBackend, unknown to 4.57), tokenizes the prompts as we do,
    and its greedy answers equal ours token for token."""
    from transformers import AutoTokenizer

    from sau_compress.export import load_model
    from sau_compress.export.verify import verify_export

    _reader_python()  # builds or reuses the reader (or skips)
    model = _prune_24_(load_model(tiny_model_dir))
    folder = save_model(model, AutoTokenizer.from_pretrained(str(tiny_model_dir)), tmp_path / "m",
                        format="sparse-24-bitmask")
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    result = verify_export(folder, "compressed-tensors-0.14", forget=str(qa_files["forget"]),
                           retain=str(qa_files["retain"]), n=2, max_new_tokens=6)
    assert result["versions"]["compressed_tensors"] == "0.14.0.1"
    assert result["versions"]["transformers"].startswith("4.57")
    assert result["engine_tokenizer"] == "PreTrainedTokenizerFast" and result["tokenizer_identical"] is True
    assert result["format"] == "sparse-24-bitmask" and result["prompts"] == 4
    assert result["identical"] is True and result["matches"] == 4 and result["first_difference"] is None
