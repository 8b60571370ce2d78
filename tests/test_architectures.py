"""The real ``run`` pipeline (SparseGPT 2:4 -> SAU, 2 steps -> export -> load back) on every supported
decoder architecture, each a tiny random-init model built from its config (no hub).

Each architecture runs twice from the same folder: the real run (learning rate 3e-3, 2 steps, evaluated,
exported ``sparse-24-bitmask``) and a control whose learning rate is 1e-30 (1 step; every update is below
fp32 resolution, so its weights are the pruned state SAU started from; exported ``dense``). Pruning and the
selection G do not depend on the learning rate, so the two exports must have the same 2:4 zeros and the
same non-target tensors, and differ only in entries SAU selected, in every target layer.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import QA, TINY_RECIPE
from sau_compress.export import load_model, read_state_dict
from sau_compress.masking import is_2of4, sparsity
from sau_compress.pipeline import run

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 64, 2, 4, 2, 16, 128
SLIDING = 16  # shorter than a prompt+answer, so the sliding-window masks are exercised
#: what the exporter adds to config.json for transformers 4.57 next to dtype and rope_parameters
V4_KEYS = {"dtype", "torch_dtype", "rope_theta", "rope_scaling", "partial_rotary_factor", "rope_local_base_freq",
           "rotary_emb_base", "rotary_pct"}
LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _common(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)


#: name -> (model class, config class, extra config fields, decoder-block prefix, Linear names in a block)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {"tie_word_embeddings": True}, "model.layers", LLAMA_LINEARS),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {}, "model.layers", LLAMA_LINEARS),
    "mistral": ("MistralForCausalLM", "MistralConfig", {"sliding_window": SLIDING}, "model.layers", LLAMA_LINEARS),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", {}, "gpt_neox.layers",
                 ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", {}, "model.layers",
             ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", {"head_dim": HEAD_DIM}, "model.layers", LLAMA_LINEARS),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", {"head_dim": HEAD_DIM, "sliding_window": SLIDING},
               "model.layers", LLAMA_LINEARS),
    "opt": ("OPTForCausalLM", "OPTConfig", {"ffn_dim": FFN, "word_embed_proj_dim": HIDDEN}, "model.decoder.layers",
            ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2")),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", {"head_dim": HEAD_DIM}, "model.layers", LLAMA_LINEARS),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig",
               {"head_dim": HEAD_DIM, "sliding_window": SLIDING,
                "layer_types": ["sliding_attention", "full_attention"]}, "model.layers", LLAMA_LINEARS),
}


def _build(arch: str, vocab: int) -> torch.nn.Module:
    model_cls, config_cls, extra, _, _ = ARCHITECTURES[arch]
    fields = _common(vocab) | extra
    if arch in ("gpt_neox", "opt"):  # no grouped KV heads, and OPT names its MLP width ffn_dim
        fields = {k: v for k, v in fields.items() if k != "num_key_value_heads"}
        if arch == "opt":
            fields.pop("intermediate_size")
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**fields)).eval()
    assert type(model).__name__ == model_cls
    return model


def _config(model: torch.nn.Module) -> dict:
    """The config as saved, less the dtype and the RoPE keys the exporter adds for transformers 4.57
    (``export.config.compat_config``; ``rope_parameters``, which 5.x reads, stays in)."""
    return {k: v for k, v in model.config.to_diff_dict().items() if k not in V4_KEYS}


def _targets(arch: str) -> set[str]:
    _, _, _, prefix, linears = ARCHITECTURES[arch]
    return {f"{prefix}.{i}.{name}" for i in range(LAYERS) for name in linears}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_run_prunes_unlearns_exports_and_reloads(arch, tokenizer, qa_files, tmp_path):
    source = _build(arch, len(tokenizer))
    src_dir = tmp_path / "model"
    source.save_pretrained(src_dir)
    tokenizer.save_pretrained(src_dir)
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    common = dict(forget=str(qa_files["forget"]), retain=str(qa_files["retain"]))

    summary = run(src_dir, tmp_path / "tiny.yaml", tmp_path / "sau", overrides=["max_steps=2"], eval_limit=1,
                  max_new_tokens=2, **common)
    control = run(src_dir, tmp_path / "tiny.yaml", tmp_path / "control",
                  overrides=["max_steps=1", "learning_rate=1e-30"], export_format="dense", evaluate=False, **common)

    targets = _targets(arch)
    assert summary["modifiers"] == ["SparseGPTModifier", "SparsityAwareUnlearningModifier"]
    assert summary["unlearn"]["steps"] == 2 and control["unlearn"]["steps"] == 1  # --set beat the recipe's 3
    assert set(summary["unlearn"]["layers"]) == targets
    assert summary["pattern_preserved"] is True and summary["two_four"] is True and summary["sparsity"] == 0.5
    assert summary["format"] == "sparse-24-bitmask" and control["format"] == "dense"
    for key in ("forget_rouge", "retain_rouge", "forget_nll", "retain_nll"):
        assert summary["before"][key] >= 0 and summary["after"][key] >= 0, key
    assert summary["eval_records"] == {"forget": 1, "retain": 1}

    # both exports store the tensors under the names save_pretrained gives them (the hub's layout)
    assert set(read_state_dict(tmp_path / "sau")) == set(read_state_dict(tmp_path / "control")) \
        == set(read_state_dict(src_dir))

    # the exports load back with transformers: ours through load_model, the dense one through plain
    # from_pretrained, each as the source's class with the source's config
    sau = load_model(tmp_path / "sau")
    pruned = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "control").eval()
    for loaded in (sau, pruned):
        assert type(loaded) is type(source) and loaded.dtype == torch.float32
        assert _config(loaded) == _config(source)
        emb, head = loaded.get_input_embeddings().weight, loaded.get_output_embeddings().weight
        assert (emb.data_ptr() == head.data_ptr()) is bool(source.config.tie_word_embeddings)

    sau_state, pruned_state, source_state = sau.state_dict(), pruned.state_dict(), source.state_dict()
    assert sau_state.keys() == pruned_state.keys() == source_state.keys()
    changed_layers = 0
    for name, tensor in sau_state.items():
        layer = name.removesuffix(".weight")
        if layer not in targets:  # embeddings, norms, biases, lm_head: neither pruned nor trained
            assert torch.equal(tensor, source_state[name]) and torch.equal(pruned_state[name], tensor), name
            continue
        before, after = pruned_state[name], tensor
        assert is_2of4(before) and sparsity(before) == 0.5, name
        assert torch.equal(after != 0, before != 0), name  # the frozen mask survived training and export
        assert not torch.equal(before, source_state[name]), name  # SparseGPT pruned it
        moved = int((after != before).sum())
        assert moved <= summary["unlearn"]["layers"][layer]["n_selected"], name  # only G was trained
        changed_layers += moved > 0
    assert changed_layers == len(targets)  # every target layer was trained

    # the reloaded model is the model the source's class builds with those weights
    ids = tokenizer(QA[0]["question"], return_tensors="pt").input_ids
    rebuilt = type(source)(source.config).eval()
    rebuilt.load_state_dict(sau_state)
    with torch.no_grad():
        logits = sau(ids).logits
        assert torch.isfinite(logits).all() and torch.equal(logits, rebuilt(ids).logits)
        assert not torch.equal(logits, pruned(ids).logits)
