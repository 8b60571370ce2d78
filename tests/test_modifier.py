"""SparsityAwareUnlearningModifier and OneShotMagnitudePruningModifier inside llmcompressor's oneshot."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from compressed_tensors.offload import remove_dispatch, set_onload_device
from compressed_tensors.offload.cache import OffloadCache
from llmcompressor import oneshot
from llmcompressor.core import Event, State
from llmcompressor.modifiers import Modifier, ModifierFactory
from llmcompressor.recipe import Recipe
from pydantic import PrivateAttr, ValidationError
from safetensors.torch import load_file

import sau_compress  # noqa: F401 - registers the modifiers
from sau_compress.data import QASetSpec, collate, load_qa, tokenize_records
from sau_compress.errors import UserError
from sau_compress.magnitude import OneShotMagnitudePruningModifier
from sau_compress.masking import is_2of4, magnitude_mask, parse_mask_structure, sparsity
from sau_compress.modifier import SparsityAwareUnlearningModifier
from sau_compress.offload import onloaded, quantization_disabled
from sau_compress.pipeline import calibration_dataset
from sau_compress.unlearn import UnlearnConfig, UnlearnJob


class PatternSnapshotModifier(Modifier):
    """Test helper: copies every weight when its (data-free) stage starts, i.e. after the earlier stages."""

    _weights: dict[str, torch.Tensor] = PrivateAttr(default_factory=dict)

    def on_initialize(self, state: State, **kwargs) -> bool:
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs) -> None:
        # on a GPU machine the pipeline's offloading hands out onloaded (cuda) copies: keep CPU copies
        self._weights = {n: p.detach().to("cpu", copy=True) for n, p in state.model.named_parameters()}


ModifierFactory.register("PatternSnapshotModifier", PatternSnapshotModifier)

SPARSEGPT_24 = """
sparsity_stage:
  sparsity_modifiers:
    SparseGPTModifier:
      sparsity: 0.5
      mask_structure: "2:4"
      ignore: ["re:.*lm_head"]
"""
SNAPSHOT = """
snapshot_stage:
  snapshot_modifiers:
    PatternSnapshotModifier: {}
"""


def _sau_stage(forget: Path, retain: Path, **fields) -> str:
    args = {
        "forget": str(forget),
        "retain": str(retain),
        "method": "grad_diff",
        "retain_weight": 1.0,  # GradDiff as open-unlearning weighs it (the default, 5, is NPO's on pretrained models)
        "mode": "sau",  # these tests are about SAU itself (the default mode is masked)
        "learning_rate": 3e-3,
        "max_steps": 4,
        "batch_size": 2,
        "device": "cpu",
        "progress": False,
        **fields,
    }
    return (
        "unlearn_stage:\n  unlearn_modifiers:\n    SparsityAwareUnlearningModifier: "
        + json.dumps(args)
        + "\n"
    )


def _answer_nll(model, tokenizer, records) -> float:
    """Mean per-token NLL of the answers given their prompts (labels -100 on the prompt)."""
    batch = collate(tokenize_records(tokenizer, records), tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    return float(out.loss)


def _oneshot(model_dir, recipe_text, tokenizer, records):
    recipe = Recipe.create_instance(recipe_text)
    dataset = calibration_dataset(records, tokenizer, 16, 64, seed=0)
    model = oneshot(
        model=str(model_dir),
        recipe=recipe,
        dataset=dataset,
        num_calibration_samples=len(dataset),
        shuffle_calibration_samples=False,
    )
    remove_dispatch(model)
    return model, recipe


# ------------------------------------------------------------------------------------------ recipe load


def test_registered_with_llmcompressor():
    assert (
        ModifierFactory._registered_registry["SparsityAwareUnlearningModifier"]
        is SparsityAwareUnlearningModifier
    )
    assert (
        ModifierFactory._registered_registry["OneShotMagnitudePruningModifier"]
        is OneShotMagnitudePruningModifier
    )


def test_every_unlearn_config_field_is_a_recipe_field_with_the_same_default():
    fields = SparsityAwareUnlearningModifier.model_fields
    for name, info in UnlearnConfig.model_fields.items():
        assert name in fields, name
        assert fields[name].get_default(call_default_factory=True) == info.get_default(
            call_default_factory=True
        )
    modifier = SparsityAwareUnlearningModifier(max_steps=7, mode="TOPK", learning_rate="2e-4")
    assert modifier.config == UnlearnConfig(max_steps=7, mode="topk", learning_rate=2e-4)
    assert modifier.requires_calibration_data is False


def test_misspelt_field_fails_at_recipe_load_naming_it():
    text = (
        SPARSEGPT_24 + "unlearn_stage:\n  unlearn_modifiers:\n    SparsityAwareUnlearningModifier:\n"
        "      forget: f.jsonl\n      learnin_rate: 1.0e-4\n"
    )
    with pytest.raises(ValidationError, match="learnin_rate"):
        Recipe.create_instance(text)


def test_bad_value_fails_at_recipe_load_naming_the_field():
    text = "unlearn_stage:\n  unlearn_modifiers:\n    SparsityAwareUnlearningModifier:\n      mode: sauu\n"
    expected = r"mode\n  Input should be 'sau', 'dense', 'masked', 'topk', 'naive' or 'unmasked'"
    with pytest.raises(ValidationError, match=expected):
        Recipe.create_instance(text)
    with pytest.raises(ValidationError, match="topk_ratio"):
        SparsityAwareUnlearningModifier(topk_ratio=1.5)


def test_dataset_spec_shorthand_and_mapping():
    m = SparsityAwareUnlearningModifier(
        forget="a.jsonl", retain={"path": "b.jsonl", "answer_key": "text", "limit": 3}
    )
    assert m.forget == QASetSpec(path="a.jsonl")
    assert m.retain == QASetSpec(path="b.jsonl", answer_key="text", limit=3)
    with pytest.raises(ValidationError, match="colour"):
        SparsityAwareUnlearningModifier(forget={"path": "a.jsonl", "colour": "red"})


# ------------------------------------------------------------------------------------- through oneshot


@pytest.mark.slow
def test_sparsegpt_then_sau_keeps_sparsegpts_pattern(tiny_model_dir, tokenizer, qa_records, qa_files):
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    recipe_text = SPARSEGPT_24 + SNAPSHOT + _sau_stage(qa_files["forget"], qa_files["retain"])
    model, recipe = _oneshot(tiny_model_dir, recipe_text, tokenizer, qa_records)
    snapshot = next(m for m in recipe.modifiers if isinstance(m, PatternSnapshotModifier))._weights
    sau = next(m for m in recipe.modifiers if isinstance(m, SparsityAwareUnlearningModifier))
    final = {n: p.detach().cpu() for n, p in model.named_parameters()}

    # lm_head and embeddings untouched by both stages
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        assert torch.equal(final[name], original[name]), name
    # every target layer: exactly SparseGPT's 2:4 pattern (same zeros), and SAU moved survivors
    assert len(sau.result.masks) == 14
    moved = 0
    for name, mask in sau.result.masks.items():
        w = final[f"{name}.weight"]
        pruned = snapshot[f"{name}.weight"]
        assert torch.equal(w != 0, pruned != 0), name
        assert torch.equal(mask.unpack(), pruned != 0), name
        assert is_2of4(w) and sparsity(w) == 0.5, name
        moved += int((w != pruned).sum())
    assert moved > 0
    result = sau.result
    assert result is not None and result.steps == 4 and result.pattern_preserved and result.mode == "sau"
    assert all(layer["rho"] > 0 for layer in result.layers.values())
    # forgetting goes the right way: forget NLL rises against the pruned model's
    pruned_model = copy.deepcopy(model)
    pruned_model.load_state_dict(snapshot)
    before = _answer_nll(pruned_model, tokenizer, qa_records[:2])
    after = _answer_nll(model, tokenizer, qa_records[:2])
    assert after > before + 0.1, (before, after)


@pytest.mark.slow
def test_reverse_order_runs_sau_on_dense_layers_with_rho_0_and_w_1(
    tiny_model_dir, tokenizer, qa_records, qa_files
):
    recipe_text = _sau_stage(qa_files["forget"], qa_files["retain"], max_steps=2) + SPARSEGPT_24
    model, recipe = _oneshot(tiny_model_dir, recipe_text, tokenizer, qa_records)
    assert [type(m).__name__ for m in recipe.modifiers] == [
        "SparsityAwareUnlearningModifier",
        "SparseGPTModifier",
    ]
    sau = recipe.modifiers[0]
    assert all(bool(mask.unpack().all()) for mask in sau.result.masks.values())  # dense when SAU ran
    assert sau.result.steps == 2 and sau.result.mode == "sau"  # no switch to topk: rho = 0 gives W = 1
    for name, layer in sau.result.layers.items():
        assert layer["sparsity"] == 0.0 and layer["rho"] == 0.0, name
        assert layer["w_mean"] == 1.0 and layer["w_max"] == 1.0, name
    modules = dict(model.named_modules())
    assert all(is_2of4(modules[name].weight) for name in sau.result.masks)  # SparseGPT pruned afterwards


def test_dense_model_without_pruning_stage_is_a_clear_error(tiny_model_dir, tokenizer, qa_records, qa_files):
    recipe_text = _sau_stage(qa_files["forget"], qa_files["retain"])
    with pytest.raises(UserError, match=r"none of the 14 target layers has pruned weights: .*pruning stage"):
        _oneshot(tiny_model_dir, recipe_text, tokenizer, qa_records)


def test_assigned_job_is_used_and_no_file_is_read(tiny_model_dir, tokenizer, qa_records, qa_files, tmp_path):
    # the recipe names files that do not exist: with a job assigned, the stage never reads them
    recipe_text = SPARSEGPT_24 + _sau_stage(tmp_path / "nope.jsonl", tmp_path / "nada.jsonl", max_steps=2)
    recipe = Recipe.create_instance(recipe_text)
    sau = next(m for m in recipe.modifiers if isinstance(m, SparsityAwareUnlearningModifier))
    job = UnlearnJob.from_records(tokenizer, load_qa(str(qa_files["forget"])), load_qa(str(qa_files["retain"])))
    sau.assign(job)
    dataset = calibration_dataset(qa_records, tokenizer, 16, 64, seed=0)
    model = oneshot(model=str(tiny_model_dir), recipe=recipe, dataset=dataset,
                    num_calibration_samples=len(dataset), shuffle_calibration_samples=False)
    remove_dispatch(model)
    assert len(job.results) == 1 and job.results[0] is sau.result and sau.result.steps == 2
    assert len(job.forget) == len(load_qa(str(qa_files["forget"])))  # the caller's job keeps its data
    assert len(sau.result.masks) == 14 and all(is_2of4(m.unpack()) for m in sau.result.masks.values())


def test_missing_forget_set_fails_at_initialize(tiny_model_dir, tokenizer, qa_records):
    recipe_text = (
        SPARSEGPT_24 + "unlearn_stage:\n  unlearn_modifiers:\n    SparsityAwareUnlearningModifier: {}\n"
    )
    with pytest.raises(ValueError, match="no forget set"):
        _oneshot(tiny_model_dir, recipe_text, tokenizer, qa_records)


def test_onloaded_trains_real_parameters_and_restores_offloading(tiny_model):
    set_onload_device(tiny_model, "cpu")
    layer = tiny_model.model.layers[0].mlp.down_proj
    assert isinstance(layer._parameters, OffloadCache)
    before = layer.weight.detach().clone()
    with onloaded(tiny_model):
        assert not any(isinstance(m._parameters, OffloadCache) for m in tiny_model.modules())
        opt = torch.optim.SGD([layer.weight], lr=0.5)
        layer.weight.grad = torch.ones_like(layer.weight)
        opt.step()
    assert all(isinstance(m._parameters, OffloadCache) for m in tiny_model.modules())
    assert layer._parameters.onload_device == "cpu"
    assert torch.equal(layer.weight, before - 0.5)


def test_quantization_stage_before_sau_is_refused(tiny_model_dir, tokenizer, qa_records, qa_files):
    recipe_text = (
        "quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n"
        "      targets: [Linear]\n      scheme: FP8_DYNAMIC\n      ignore: ['re:.*lm_head']\n"
        + _sau_stage(qa_files["forget"], qa_files["retain"])
    )
    with pytest.raises(
        ValueError, match=r"after \['QuantizationModifier'\].*put the quantization stage after it"
    ):
        _oneshot(tiny_model_dir, recipe_text, tokenizer, qa_records)


def test_quantization_disabled_restores_each_flag(tiny_model):
    layers = tiny_model.model.layers[0].mlp
    layers.up_proj.quantization_enabled = True
    layers.down_proj.quantization_enabled = False
    with quantization_disabled(tiny_model):
        assert layers.up_proj.quantization_enabled is False and layers.down_proj.quantization_enabled is False
    assert layers.up_proj.quantization_enabled is True and layers.down_proj.quantization_enabled is False
    assert not hasattr(layers.gate_proj, "quantization_enabled")


# ------------------------------------------------------------------------------------ magnitude pruning


def test_magnitude_mask_by_hand():
    w = torch.tensor([[1.0, -8.0, 3.0, -2.0], [0.5, 4.0, -6.0, 7.0]])
    # unstructured 50%: the 4 smallest |w| (0.5, 1, 2, 3) go
    assert torch.equal(
        magnitude_mask(w, 0.5), torch.tensor([[False, True, False, False], [False, True, True, True]])
    )
    # 2:4: per group of 4, the two largest |w| stay
    assert torch.equal(
        magnitude_mask(w, 0.5, "2:4"), torch.tensor([[False, True, True, False], [False, False, True, True]])
    )
    ties = torch.ones(1, 4)
    assert torch.equal(magnitude_mask(ties, 0.5, "2:4"), torch.tensor([[True, True, False, False]]))
    assert torch.equal(magnitude_mask(ties, 0.5), torch.tensor([[False, False, True, True]]))
    assert torch.equal(magnitude_mask(w, 0.0), torch.ones(2, 4, dtype=torch.bool))


def test_magnitude_mask_errors():
    assert parse_mask_structure("unstructured") is None and parse_mask_structure("2:4") == (2, 4)
    with pytest.raises(ValueError, match="'N:M'"):
        parse_mask_structure("half")
    with pytest.raises(ValueError, match="0 < N < M"):
        parse_mask_structure("4:2")
    with pytest.raises(ValueError, match="means sparsity 0.5, got sparsity 0.6"):
        magnitude_mask(torch.ones(1, 4), 0.6, "2:4")
    with pytest.raises(ValueError, match=r"in % 4 == 0, got shape \(1, 6\)"):
        magnitude_mask(torch.ones(1, 6), 0.5, "2:4")
    with pytest.raises(ValidationError, match="means sparsity"):
        OneShotMagnitudePruningModifier(sparsity=0.7, mask_structure="2:4")


def test_magnitude_then_dense_mode_through_oneshot(tiny_model_dir, tokenizer, qa_records, qa_files):
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    recipe_text = (
        "sparsity_stage:\n  sparsity_modifiers:\n    OneShotMagnitudePruningModifier:\n"
        "      sparsity: 0.5\n      ignore: ['re:.*lm_head']\n"
        + _sau_stage(qa_files["forget"], qa_files["retain"], max_steps=1, mode="dense")
    )
    model, recipe = _oneshot(tiny_model_dir, recipe_text, tokenizer, qa_records)
    sau = recipe.modifiers[1]
    assert sau.result.mode == "dense" and sau.result.steps == 1 and sau.result.pattern_preserved
    modules = dict(model.named_modules())
    for name, mask in sau.result.masks.items():
        expected = magnitude_mask(original[f"{name}.weight"], 0.5)
        assert torch.equal(mask.unpack(), expected), name
        assert torch.equal(modules[name].weight != 0, expected), name
    assert torch.equal(model.lm_head.weight, original["lm_head.weight"])


def test_unmasked_mode_without_a_pruning_stage_after_it_is_refused(tiny_model_dir, tokenizer, qa_records, qa_files):
    recipe_text = SPARSEGPT_24 + _sau_stage(qa_files["forget"], qa_files["retain"], mode="unmasked")
    with pytest.raises(ValueError, match=r"mode 'unmasked' .* no pruning stage follows it: .*naive-reprune"):
        _oneshot(tiny_model_dir, recipe_text, tokenizer, qa_records)


def test_naive_reprune_prunes_the_unmasked_model_again(tiny_model_dir, tokenizer, qa_records, qa_files):
    recipe_text = (
        SPARSEGPT_24 + _sau_stage(qa_files["forget"], qa_files["retain"], mode="unmasked", max_steps=2)
        + SPARSEGPT_24.replace("sparsity_stage", "reprune_stage")
    )
    model, recipe = _oneshot(tiny_model_dir, recipe_text, tokenizer, qa_records)
    sau = recipe.modifiers[1]
    assert isinstance(sau, SparsityAwareUnlearningModifier) and sau.result.mode == "unmasked"
    assert not sau.result.pattern_preserved  # the SAU stage left pruned entries non-zero ...
    modules = dict(model.named_modules())
    assert all(is_2of4(modules[name].weight) for name in sau.result.masks)  # ... and the second pruner fixed it
