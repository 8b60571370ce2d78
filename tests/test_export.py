"""Export: sparse-24-bitmask layout, round trips, dense export + sidecar, corrupt input, atomicity, inspect, CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny_llama
from sau_compress.export import (
    FORMATS,
    SIDECAR_NAME,
    CorruptCheckpointError,
    bits_equal,
    check_format,
    count_group_violations,
    export_checkpoint,
    export_model,
    forget_set_hash,
    inspect_checkpoint,
    is_two_four,
    load_model,
    pack_24_bitmask,
    read_header,
    read_state_dict,
    save_model,
    unlearning_record,
    unpack_24_bitmask,
)
from sau_compress.io import OutputExistsError

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _prune_24(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Keep the 2 largest |w| of every group of 4 in each decoder Linear (zeros are +0.0)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name and name not in skip:
                rows, cols = module.weight.shape
                keep = module.weight.abs().view(rows, cols // 4, 4).topk(2, dim=-1).indices
                mask = torch.zeros(rows, cols // 4, 4, dtype=torch.bool).scatter_(-1, keep, True)
                module.weight.masked_fill_(~mask.view(rows, cols), 0)
    return model


def _model(dtype=torch.float32, skip=("model.layers.1.mlp.down_proj",), seed=0):
    return _prune_24(make_tiny_llama(320, seed=seed), skip).to(dtype)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ tensor layout


def test_pack_matches_hand_computed_layout():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0],
                      [0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 0.0, 0.0]])
    compressed, bitmask, shape = pack_24_bitmask(w)
    # row 0: group 0 keeps cols 0,2; group 1 keeps its non-zero col 7 plus its first zero, col 4
    # row 1: group 0 is all zero -> cols 0,1; group 1 keeps cols 4,5
    assert torch.equal(compressed, torch.tensor([[1.0, 2.0, 0.0, 3.0], [0.0, 0.0, 5.0, 6.0]]))
    assert bitmask.dtype == torch.uint8
    assert bitmask.tolist() == [[1 + 4 + 16 + 128], [1 + 2 + 16 + 32]]  # little-endian: bit j = column j
    assert shape.dtype == torch.int64 and shape.tolist() == [[2], [8]]
    assert torch.equal(unpack_24_bitmask(compressed, bitmask, shape), w)


def test_pack_pads_bitmask_when_cols_not_multiple_of_8():
    w = torch.tensor([[0.0, 7.0, 0.0, 8.0, 9.0, 0.0, 0.0, 1.0, 0.0, 0.0, 4.0, 0.0]])
    compressed, bitmask, shape = pack_24_bitmask(w)
    assert list(bitmask.shape) == [1, 2]
    # cols 1,3 | 4,7 | 8 (first zero) and 10 -> byte0 = 2+8+16+128, byte1 = 1 + 4
    assert bitmask.tolist() == [[154, 5]]
    assert compressed.tolist() == [[7.0, 8.0, 9.0, 1.0, 0.0, 4.0]]
    assert torch.equal(unpack_24_bitmask(compressed, bitmask, shape), w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_unpack_bit_exact_random(dtype):
    torch.manual_seed(1)
    w = torch.randn(48, 96).to(dtype)
    keep = torch.rand(48, 24, 4).argsort(-1)[..., :2]
    mask = torch.zeros(48, 24, 4, dtype=torch.bool).scatter_(-1, keep, True).view(48, 96)
    w = w.masked_fill(~mask, 0)
    w[3, 8:12] = 0  # an all-zero group
    back = unpack_24_bitmask(*pack_24_bitmask(w))
    assert back.dtype == dtype
    assert torch.equal(back.view(INT_VIEW[dtype]), w.view(INT_VIEW[dtype]))


def test_fp8_packs_through_int8_view():
    w = torch.tensor([[0.5, 0.0, -2.0, 0.0, 0.0, 0.0, 448.0, 0.0]]).to(torch.float8_e4m3fn)
    compressed, bitmask, shape = pack_24_bitmask(w)
    assert compressed.dtype == torch.float8_e4m3fn
    assert bitmask.tolist() == [[1 + 4 + 16 + 64]]
    back = unpack_24_bitmask(compressed, bitmask, shape)
    assert torch.equal(back.view(torch.int8), w.view(torch.int8))


def test_two_four_check_is_masking_s_and_reads_float8_zeros():
    from sau_compress import masking

    assert count_group_violations is masking.count_2of4_violations
    w = torch.tensor([[-0.0, 0.0, 1.0, 2.0], [1.0, -0.0, 3.0, 0.0]]).to(torch.float8_e4m3fn)  # -0.0 is 0x80
    assert masking.nonzero_mask(w).tolist() == [[False, False, True, True], [True, False, True, False]]
    assert is_two_four(w) and not is_two_four(w.view(torch.int8))  # as int8, 0x80 is -128: three non-zeros
    assert not is_two_four(torch.zeros(2, 6)) and not is_two_four(torch.zeros(8))  # shapes that cannot be 2:4


def test_negative_zero_not_stored_comes_back_positive():
    w = torch.tensor([[1.0, -0.0, 2.0, -0.0]])
    back = unpack_24_bitmask(*pack_24_bitmask(w))
    assert back.view(torch.int32).tolist() == torch.tensor([[1.0, 0.0, 2.0, 0.0]]).view(torch.int32).tolist()
    assert bits_equal(back, w)  # zeros compared as +0.0
    assert not bits_equal(back, torch.tensor([[1.0, 0.0, 2.5, 0.0]]))


def test_pack_rejects_non_24_and_bad_shapes():
    w = torch.zeros(2, 8)
    w[1, 4:7] = 1.0
    assert count_group_violations(w) == 1 and not is_two_four(w)
    with pytest.raises(ValueError, match=r"layer\.weight: .*1 group\(s\).*row 1, columns 4\.\.7"):
        pack_24_bitmask(w, name="layer.weight")
    with pytest.raises(ValueError, match=r"cols % 4 == 0, got shape \[2, 6\]"):
        pack_24_bitmask(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="2-D"):
        pack_24_bitmask(torch.zeros(8))


def test_unpack_rejects_three_bits_in_a_group():
    compressed, bitmask, shape = pack_24_bitmask(torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0]]))
    bitmask[0, 0] |= 2  # group 0 now has 3 bits
    with pytest.raises(CorruptCheckpointError,
                       match=r"f\.safetensors: m\.bitmask: 1 group.*row 0, columns 0\.\.3: 3 bits"):
        unpack_24_bitmask(compressed, bitmask, shape, where="f.safetensors: m")


def test_unpack_rejects_mismatched_shapes_and_dtypes():
    compressed, bitmask, shape = pack_24_bitmask(torch.zeros(4, 16))
    with pytest.raises(CorruptCheckpointError, match=r"m\.compressed: shape \[4, 8\] does not match shape \[4, 32\]"):
        unpack_24_bitmask(compressed, torch.zeros(4, 4, dtype=torch.uint8), torch.tensor([[4], [32]]), where="m")
    with pytest.raises(CorruptCheckpointError, match=r"m\.bitmask: shape \[4, 2\] does not match shape \[8, 16\]"):
        unpack_24_bitmask(compressed, bitmask, torch.tensor([[8], [16]]), where="m")
    with pytest.raises(CorruptCheckpointError, match="expected dtype uint8"):
        unpack_24_bitmask(compressed, bitmask.to(torch.int8), shape, where="m")
    with pytest.raises(CorruptCheckpointError, match=r"\[4, 10\] is not a valid 2:4 weight shape"):
        unpack_24_bitmask(compressed, bitmask, torch.tensor([[4], [10]]), where="m")


# -------------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load_round_trip_bit_exact(tmp_path, tokenizer, dtype):
    model = _model(dtype)
    out = save_model(model, tokenizer, tmp_path / "m", format="sparse-24-bitmask")
    stored = load_file(out / "model.safetensors")
    prefix = "model.layers.0.mlp.up_proj"
    assert f"{prefix}.weight" not in stored
    assert stored[f"{prefix}.compressed"].dtype == dtype and list(stored[f"{prefix}.compressed"].shape) == [128, 32]
    assert stored[f"{prefix}.bitmask"].dtype == torch.uint8 and list(stored[f"{prefix}.bitmask"].shape) == [128, 8]
    assert stored[f"{prefix}.shape"].tolist() == [[128], [64]]
    # the layer left dense and the embeddings are stored unchanged
    assert torch.equal(stored["model.layers.1.mlp.down_proj.weight"], model.model.layers[1].mlp.down_proj.weight)
    assert torch.equal(stored["model.embed_tokens.weight"], model.model.embed_tokens.weight)

    back = load_model(out)
    assert back.dtype == dtype
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for key, tensor in ours.items():
        assert torch.equal(theirs[key].view(INT_VIEW[dtype]), tensor.view(INT_VIEW[dtype])), key
    if dtype == torch.float32:  # (.to(half) also casts the rotary inv_freq buffer, a fresh load keeps it fp32)
        ids = torch.tensor([[1, 5, 9, 30, 2]])
        with torch.no_grad():
            assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)


def test_sparse_config_block_matches_compressed_tensors_0_14(tmp_path):
    out = save_model(_model(), None, tmp_path / "m", format="sparse-24-bitmask")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    sc = qc.pop("sparsity_config")
    assert qc == {"quant_method": "compressed-tensors", "version": "0.14.0.1", "transform_config": {}}
    assert sc["format"] == "sparse-24-bitmask" and sc["sparsity_structure"] == "2:4"
    assert sc["targets"] == ["Linear"] and sc["registry_requires_subclass"] is False
    assert sc["ignore"] == ["lm_head", "model.layers.1.mlp.down_proj"]
    model = _model()
    floats = [t for t in model.state_dict().values()]
    zeros = sum(int((t == 0).sum()) for t in floats)
    assert sc["global_sparsity"] == pytest.approx(zeros / sum(t.numel() for t in floats), abs=1e-12)


def test_bf16_24_layers_at_most_057_of_dense(tmp_path):
    model = _model(torch.bfloat16)
    out = save_model(model, None, tmp_path / "m", format="sparse-24-bitmask")
    dense_out = save_model(model, None, tmp_path / "d", format="dense")
    header = read_header(out / "model.safetensors")
    dense_header = read_header(dense_out / "model.safetensors")
    layers = json.loads((out / SIDECAR_NAME).read_text())["sparsity"]["compressed_layers"]
    assert len(layers) == 13
    stored = sum(header[f"{p}.{s}"].nbytes for p in layers for s in ("compressed", "bitmask", "shape"))
    dense = sum(dense_header[f"{p}.weight"].nbytes for p in layers)
    # per layer: rows*cols/2 * 2 B + rows*cols/8 B + 16 B = 0.5625 * dense + 16 B
    assert stored == sum(dense_header[f"{p}.weight"].nbytes * 9 // 16 + 16 for p in layers)
    assert stored / dense <= 0.57


def test_config_readable_by_transformers_4_with_rope_scaling(tmp_path):
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    torch.manual_seed(0)
    model = _prune_24(LlamaForCausalLM(config).eval())
    out = save_model(model, None, tmp_path / "m", format="sparse-24-bitmask")
    written = json.loads((out / "config.json").read_text())
    assert written["torch_dtype"] == "float32" and written["rope_theta"] == 500000.0
    assert written["rope_scaling"]["rope_type"] == "llama3" and written["rope_scaling"]["factor"] == 8.0
    # transformers 5 reads the same rope parameters back from the file with both spellings
    assert AutoConfig.from_pretrained(out).rope_parameters == model.config.rope_parameters


#: (model_type, rope_parameters) -> the keys transformers 4.57 reads, as compat_config must write them
V4_ROPE_CASES = [
    ("phi3", {"rope_type": "default", "rope_theta": 250000.0, "partial_rotary_factor": 0.5},
     {"rope_theta": 250000.0, "partial_rotary_factor": 0.5, "rope_scaling": None}),
    ("phi3", {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
              "partial_rotary_factor": 1.0, "original_max_position_embeddings": 16},
     {"rope_theta": 10000.0, "partial_rotary_factor": 1.0,
      "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}}),
    ("gpt_neox", {"rope_type": "default", "rope_theta": 20000.0, "partial_rotary_factor": 1.0},
     {"rotary_emb_base": 20000.0, "rotary_pct": 1.0, "rope_scaling": None}),
    ("gemma3_text", {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 500000.0},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}},
     {"rope_theta": 500000.0, "rope_local_base_freq": 20000.0, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}),
    ("qwen2", {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 16},
     {"rope_theta": 1000000.0, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 16}}),
    ("qwen3", {"rope_type": "default", "rope_theta": 1000000.0}, {"rope_theta": 1000000.0, "rope_scaling": None}),
]


@pytest.mark.parametrize(("model_type", "rope", "v4"), V4_ROPE_CASES, ids=[c[0] + "-" + str(i)
                                                                           for i, c in enumerate(V4_ROPE_CASES)])
def test_compat_config_writes_rope_for_transformers_4_and_5_reads_it_back(tmp_path, model_type, rope, v4):
    from transformers import AutoConfig

    from sau_compress.export.config import compat_config

    source = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                  rope_parameters=copy.deepcopy(rope))
    written = compat_config(source.to_dict())
    added = {k: v for k, v in written.items() if k not in source.to_dict()}
    assert added == v4 | {"torch_dtype": written["dtype"]}
    (tmp_path / "config.json").write_text(json.dumps(written))
    back = AutoConfig.from_pretrained(tmp_path).rope_parameters
    if model_type == "phi3" and rope["rope_type"] == "longrope":
        assert back.pop("type") == "longrope"  # 4.57's spelling of rope_type, kept by 5.x (same meaning)
    assert back == source.rope_parameters


def test_compat_config_keeps_keys_already_there():
    from sau_compress.export.config import compat_config

    config = {"model_type": "llama", "dtype": "bfloat16", "torch_dtype": "float16", "rope_theta": 7.0,
              "rope_scaling": {"rope_type": "linear", "factor": 2.0},
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    assert compat_config(config) == config
    assert compat_config({"model_type": "opt"}) == {"model_type": "opt"}


def _tiny_gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=64,
                           rope_parameters={"rope_type": "default", "rope_theta": 20000.0,
                                            "partial_rotary_factor": 1.0})
    return _prune_24(GPTNeoXForCausalLM(config).eval())


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt_neox_head_is_stored_as_embed_out_like_save_pretrained(tmp_path, fmt):
    from safetensors import safe_open

    model = _tiny_gpt_neox()
    assert "lm_head" in dict(model.named_modules())  # transformers 5's in-memory name
    model.save_pretrained(tmp_path / "hf")
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        hf_names = set(f.keys())
    assert "embed_out.weight" in hf_names and "lm_head.weight" not in hf_names
    out = save_model(model, None, tmp_path / fmt, format=fmt)
    assert set(read_state_dict(out)) == hf_names
    torch.testing.assert_close(read_state_dict(out)["embed_out.weight"], model.lm_head.weight, rtol=0, atol=0)
    if fmt == "sparse-24-bitmask":  # the dense head is listed as dense under its checkpoint name
        assert json.loads((out / "config.json").read_text())["quantization_config"]["sparsity_config"][
            "ignore"] == ["embed_out"]
    converted = export_model(tmp_path / "hf", tmp_path / f"{fmt}-from-folder", format=fmt)["output"]
    assert set(read_state_dict(converted)) == hf_names
    if fmt == "sparse-24-bitmask":  # converting the hub-layout folder names the head the same way
        assert json.loads((Path(converted) / "config.json").read_text())["quantization_config"][
            "sparsity_config"]["ignore"] == ["embed_out"]
    back = load_model(out)
    assert back.config.rope_parameters == model.config.rope_parameters  # rope_theta 20000, not the 10000 default
    ids = torch.tensor([[1, 5, 9, 200, 17]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------------------- dense and sidecar


def test_dense_export_has_no_quantization_config_and_full_sidecar(tmp_path, tokenizer, qa_records):
    model = _model()
    record = unlearning_record({"method": "npo", "mode": "sau", "alpha": 0.1}, qa_records[:2],
                               before={"forget_rouge": 0.9}, after={"forget_rouge": 0.2})
    out = save_model(model, tokenizer, tmp_path / "d", format="dense",
                     metadata={"recipe": "unlearn_stage: {}", "unlearning": record, "run": "r1"})
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (out / "tokenizer.json").is_file()
    stored = load_file(out / "model.safetensors")
    assert torch.equal(stored["model.layers.0.mlp.up_proj.weight"], model.model.layers[0].mlp.up_proj.weight)
    side = json.loads((out / SIDECAR_NAME).read_text())
    assert side["format"] == "dense" and side["quantization"] is None
    layer = side["sparsity"]["layers"]["model.layers.0.mlp.up_proj"]
    assert layer == {"shape": [128, 64], "dtype": "float32", "sparsity": 0.5, "is_2of4": True, "structure": "2:4"}
    assert side["sparsity"]["layers"]["model.layers.1.mlp.down_proj"]["structure"] == "dense"
    assert side["sparsity"]["layers"]["lm_head"]["is_2of4"] is False
    assert side["sparsity"]["compressed_layers"] == []
    assert side["recipe"] == "unlearn_stage: {}" and side["metadata"] == {"run": "r1"}
    assert side["unlearning"]["method"] == "npo" and side["unlearning"]["mode"] == "sau"
    assert side["unlearning"]["forget_set_hash"] == forget_set_hash(qa_records[:2])
    assert side["unlearning"]["metrics"] == {"before": {"forget_rouge": 0.9}, "after": {"forget_rouge": 0.2}}
    assert "current (0.33)" in side["serving"][0]


def test_forget_set_hash_depends_on_content_only(qa_records):
    a = forget_set_hash(qa_records[:3])
    assert a == forget_set_hash([{"answer": r["answer"], "question": r["question"]} for r in qa_records[:3]])
    assert a != forget_set_hash(qa_records[1:4])
    assert a.startswith("sha256:") and len(a) == len("sha256:") + 64


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match=r"metadata\.bad: a object cannot be written to JSON"):
        save_model(_model(), None, tmp_path / "m", format="dense", metadata={"bad": object()})
    assert not (tmp_path / "m").exists()


def test_export_from_folder_keeps_source_untouched(tmp_path, tokenizer):
    src = save_model(_model(torch.bfloat16), tokenizer, tmp_path / "src", format="dense",
                     metadata={"unlearning": {"method": "grad_diff", "mode": "sau"}})
    before = _tree_digest(src)
    sparse = export_checkpoint(src, tmp_path / "sparse", format="sparse-24-bitmask")
    dense = export_checkpoint(sparse, tmp_path / "dense", format="dense")
    assert _tree_digest(src) == before
    assert (sparse / "tokenizer.json").is_file() and (dense / "tokenizer.json").is_file()
    # the unlearning record travels with the weights
    assert json.loads((dense / SIDECAR_NAME).read_text())["unlearning"]["method"] == "grad_diff"
    a, b = load_file(src / "model.safetensors"), load_file(dense / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k].view(torch.int16), b[k].view(torch.int16)) for k in a)
    assert "quantization_config" not in json.loads((dense / "config.json").read_text())
    with pytest.raises(ValueError, match="must not be the source folder"):
        export_checkpoint(src, src, format="dense", overwrite=True)


def test_sharded_checkpoint_round_trip(tmp_path):
    model = _model(torch.bfloat16)
    out = save_model(model, None, tmp_path / "m", format="sparse-24-bitmask", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (out / "model.safetensors").exists()
    state = read_state_dict(out)
    for key, tensor in model.state_dict().items():
        assert torch.equal(state[key].view(torch.int16), tensor.view(torch.int16)), key


def test_dense_folder_with_sparsity_targets_loads_and_is_flagged(tmp_path):
    """A pruned checkpoint from older llmcompressor: format dense with sparsity targets (vLLM 0.22+ refuses)."""
    model = _model()
    out = save_model(model, None, tmp_path / "m", format="dense")
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "version": "0.9.0",
        "sparsity_config": {"format": "dense", "sparsity_structure": "2:4", "targets": ["Linear"],
                            "ignore": ["lm_head"], "global_sparsity": 0.4}}
    (out / "config.json").write_text(json.dumps(config))
    back = load_model(out)  # transformers 5 alone fails on a quantization_config holding only sparsity
    assert torch.equal(back.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert inspect_checkpoint(out)["vllm"][1].startswith("vLLM >= 0.22: refuses it")
    clean = export_checkpoint(out, tmp_path / "clean", format="dense")
    assert "quantization_config" not in json.loads((clean / "config.json").read_text())
    assert "current (0.33)" in inspect_checkpoint(clean)["vllm"][0]


def test_load_model_reads_plain_hf_folder(tiny_model_dir, tiny_model):
    back = load_model(tiny_model_dir, torch_dtype=torch.bfloat16)
    assert back.dtype == torch.bfloat16
    assert torch.equal(back.lm_head.weight, tiny_model.lm_head.weight.to(torch.bfloat16))


def test_sparse_format_needs_a_24_layer(tmp_path):
    with pytest.raises(ValueError, match="no Linear layer is 2:4 sparse"):
        save_model(make_tiny_llama(320), None, tmp_path / "m", format="sparse-24-bitmask")
    with pytest.raises(ValueError,
                       match=r"unknown export format 'sparse'; choose from \['sparse-24-bitmask', 'dense'\]"):
        save_model(_model(), None, tmp_path / "m", format="sparse")
    assert list(tmp_path.iterdir()) == []  # nothing left behind, no temporary folder either


def test_user_errors_are_project_error_types(tmp_path):
    from sau_compress.errors import InputNotFoundError, UserError

    with pytest.raises(UserError, match="unknown export format 'zip'"):
        check_format("zip")
    assert check_format("auto", ("auto", *FORMATS)) == "auto"
    with pytest.raises(InputNotFoundError, match="does not exist"):
        export_checkpoint(tmp_path / "missing", tmp_path / "out", format="dense")
    with pytest.raises(FileNotFoundError, match="no config.json"):  # the builtin still catches it
        inspect_checkpoint(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{")
    with pytest.raises(CorruptCheckpointError, match=r"config\.json: not valid JSON"):
        export_checkpoint(tmp_path / "bad", tmp_path / "out", format="dense")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InputNotFoundError, match="no safetensors weights"):
        inspect_checkpoint(tmp_path / "bad")
    with pytest.raises(UserError, match="no Linear layer is 2:4 sparse"):
        save_model(make_tiny_llama(320), None, tmp_path / "m", format="sparse-24-bitmask")


def test_export_model_returns_the_sidecar_and_output(tmp_path):
    from sau_compress.errors import InputNotFoundError, UserError

    src = save_model(_model(), None, tmp_path / "src", format="dense")
    (tmp_path / "extra.json").write_text(json.dumps({"run": "r7"}))
    result = export_model(src, tmp_path / "out", format="sparse-24-bitmask", metadata=tmp_path / "extra.json")
    out = (tmp_path / "out").absolute()
    assert result == {**json.loads((out / SIDECAR_NAME).read_text()), "output": str(out)}
    assert result["metadata"] == {"run": "r7"} and len(result["sparsity"]["compressed_layers"]) == 13
    assert export_model(out, tmp_path / "d", format="dense", metadata={"run": "r8"})["metadata"] == {"run": "r8"}
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(UserError, match="expected a JSON object"):
        export_model(src, tmp_path / "x", format="dense", metadata=str(tmp_path / "list.json"))
    with pytest.raises(InputNotFoundError, match="metadata file .* does not exist"):
        export_model(src, tmp_path / "x", format="dense", metadata=tmp_path / "none.json")
    with pytest.raises(UserError, match="unknown export format"):
        export_model(src, tmp_path / "x", format="sparse")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------- atomicity, overwrite


def test_refuses_existing_output_and_overwrites_on_request(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists"):
        save_model(_model(), None, out, format="dense")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    save_model(_model(), None, out, format="sparse-24-bitmask", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_export_leaves_existing_output_intact(tmp_path):
    out = save_model(_model(), None, tmp_path / "m", format="dense")
    before = _tree_digest(out)
    with pytest.raises(ValueError, match="no Linear layer is 2:4 sparse"):
        save_model(make_tiny_llama(320), None, out, format="sparse-24-bitmask", overwrite=True)
    assert _tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ------------------------------------------------------------------------------------------------ corrupt input


@pytest.fixture()
def sparse_dir(tmp_path) -> Path:
    return save_model(_model(), None, tmp_path / "sparse", format="sparse-24-bitmask")


def test_truncated_file_names_file_and_tensor(sparse_dir):
    file = sparse_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-100])
    last = max(read_header_raw(data).items(), key=lambda kv: kv[1]["data_offsets"][1])[0]
    with pytest.raises(CorruptCheckpointError, match=rf"model\.safetensors: truncated: tensor '{last}'"):
        load_model(sparse_dir)
    file.write_bytes(data[:5])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: truncated safetensors file \(5 bytes"):
        read_state_dict(sparse_dir)


def read_header_raw(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return {k: v for k, v in json.loads(data[8 : 8 + n]).items() if k != "__metadata__"}


def _rewrite(folder: Path, edit) -> None:
    file = folder / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_three_bits_in_a_group_names_file_and_tensor(sparse_dir):
    prefix = "model.layers.0.self_attn.k_proj"

    def edit(t):
        mask = t[f"{prefix}.bitmask"].clone()
        mask[2, 0] = 0b0111  # row 2, columns 0..3: three bits
        t[f"{prefix}.bitmask"] = mask

    _rewrite(sparse_dir, edit)
    with pytest.raises(CorruptCheckpointError,
                       match=rf"model\.safetensors: {prefix}\.bitmask: .*row 2, columns 0\.\.3: 3 bits"):
        load_model(sparse_dir)


def test_shape_mismatch_names_file_and_tensor(sparse_dir):
    prefix = "model.layers.1.mlp.up_proj"

    def edit(t):
        t[f"{prefix}.shape"] = torch.tensor([[64], [128]])  # really [128, 64]

    _rewrite(sparse_dir, edit)
    with pytest.raises(CorruptCheckpointError,
                       match=rf"model\.safetensors: {prefix}\.bitmask: "
                             r"shape \[128, 8\] does not match shape \[64, 128\]"):
        read_state_dict(sparse_dir)


def test_weight_shape_not_matching_config_is_named(sparse_dir):
    config = json.loads((sparse_dir / "config.json").read_text())
    config["intermediate_size"] = 96
    (sparse_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError,
                       match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape "
                             r"\[128, 64\], the model config \(.*config\.json\) expects \[96, 64\]"):
        load_model(sparse_dir)


def test_incomplete_triple_is_named(sparse_dir):
    _rewrite(sparse_dir, lambda t: t.pop("model.layers.0.mlp.down_proj.shape"))
    with pytest.raises(CorruptCheckpointError, match=r"'model\.layers\.0\.mlp\.down_proj\.compressed' has no "
                                                     r"'model\.layers\.0\.mlp\.down_proj\.shape'"):
        read_state_dict(sparse_dir)


# ------------------------------------------------------------------------------------------------------ inspect


def test_inspect_sparse_and_dense(sparse_dir, tmp_path):
    info = inspect_checkpoint(sparse_dir)
    assert info["format"] == "sparse-24-bitmask" and info["quantization"] is None
    by_name = {layer["name"]: layer for layer in info["layers"]}
    up = by_name["model.layers.0.mlp.up_proj"]
    assert up == {"name": "model.layers.0.mlp.up_proj", "shape": [128, 64], "dtype": "float32",
                  "stored": "sparse-24-bitmask", "sparsity": 0.5, "is_2of4": True,
                  "bytes": 128 * 32 * 4 + 128 * 8 + 16, "dense_bytes": 128 * 64 * 4}
    assert by_name["model.layers.1.mlp.down_proj"]["stored"] == "dense"
    assert by_name["model.layers.1.mlp.down_proj"]["is_2of4"] is False
    assert info["totals"]["layers"] == 15 and info["totals"]["layers_compressed"] == 13
    headers = read_header(sparse_dir / "model.safetensors")
    assert info["totals"]["weight_bytes"] == sum(h.nbytes for h in headers.values())
    assert "vLLM <= 0.18.1" in info["vllm"][0] and "vLLM >= 0.19: cannot" in info["vllm"][1]
    # layer 1's down_proj is dense while its gate/up are 2:4: no fused group is split, no warning
    assert info["warnings"] == []

    dense = inspect_checkpoint(export_checkpoint(sparse_dir, tmp_path / "dense", format="dense"))
    assert dense["format"] == "dense" and dense["totals"]["layers_compressed"] == 0
    assert dense["totals"]["linear_ratio"] == 1.0
    assert {layer["name"]: layer["sparsity"] for layer in dense["layers"]} == {
        layer["name"]: layer["sparsity"] for layer in info["layers"]}
    assert "current (0.33)" in dense["vllm"][0]


def test_inspect_warns_on_split_fused_group(tmp_path):
    out = save_model(_model(skip=("model.layers.0.self_attn.k_proj",)), None, tmp_path / "m",
                     format="sparse-24-bitmask")
    warnings = inspect_checkpoint(out)["warnings"]
    assert warnings == [("vLLM needs fused layers to share a scheme: model.layers.0.self_attn: q_proj, v_proj 2:4 "
                         "but k_proj not")]


# ---------------------------------------------------------------------------------------------------------- CLI


def test_cli_export_and_inspect_json(tmp_path, tokenizer):
    from typer.testing import CliRunner

    from sau_compress.cli.app import app

    src = save_model(_model(), tokenizer, tmp_path / "src", format="dense")
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(src), "--format", "sparse-24-bitmask", "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["format"] == "sparse-24-bitmask" and len(result["sparsity"]["compressed_layers"]) == 13
    assert result["output"] == str(out.absolute())

    res = runner.invoke(app, ["export", str(src), "--format", "sparse-24-bitmask", "--output", str(out)])
    assert res.exit_code == 2 and "already exists" in " ".join(res.output.split())

    res = runner.invoke(app, ["export", str(src), "--format", "zip", "--output", str(tmp_path / "x")],
                        env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "'zip' is not one of 'sparse-24-bitmask', 'dense'" in " ".join(res.output.split())

    res = runner.invoke(app, ["inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["totals"]["layers_compressed"] == 13

    res = runner.invoke(app, ["inspect", str(out)], env={"COLUMNS": "200"})
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "model.layers.0.mlp.up_proj" in text and "2:4 bitmask" in text
    assert "vLLM <= 0.18.1" in text

    res = runner.invoke(app, ["inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing' not found" in " ".join(res.output.split())


# ---------------------------------------------------------------------------------------------------- quantized


@pytest.mark.slow
def test_dense_export_of_fp8_model_matches_llmcompressor(tmp_path, tiny_model_dir):
    """An llmcompressor FP8 model: our dense export == llmcompressor's own save, bytes and config."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    _prune_24(model)
    oneshot(model=model, recipe=[QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])])
    ours = save_model(model, None, tmp_path / "ours", format="dense")
    with pytest.raises(ValueError, match="sparse-24-bitmask' of a quantized checkpoint"):
        save_model(model, None, tmp_path / "sparse", format="sparse-24-bitmask")
    model.save_pretrained(tmp_path / "ref", save_compressed=True)
    a, b = load_file(ours / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and bits_equal(a[key], b[key]), key
    qc = json.loads((ours / "config.json").read_text())["quantization_config"]
    assert qc == json.loads((tmp_path / "ref" / "config.json").read_text())["quantization_config"]
    assert qc["sparsity_config"] == {} and qc["format"] == "float-quantized"
    info = inspect_checkpoint(ours)
    up = next(layer for layer in info["layers"] if layer["name"] == "model.layers.0.mlp.up_proj")
    assert up["dtype"] == "float8_e4m3fn" and up["is_2of4"] and up["sparsity"] == 0.5  # zeros stay zeros
    # a quantized folder exports to dense file-to-file, quantization kept
    again = export_checkpoint(tmp_path / "ref", tmp_path / "again", format="dense")
    assert json.loads((again / "config.json").read_text())["quantization_config"] == qc


@pytest.mark.parametrize("fmt", ["dense", "sparse-24-bitmask"])
def test_exports_are_readable_by_other_accounts(tmp_path, fmt):
    import stat

    old = os.umask(0o022)
    try:
        out = save_model(_model(), None, tmp_path / "out", format=fmt)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files and {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == dict.fromkeys(
        (p.name for p in files), 0o644
    )
