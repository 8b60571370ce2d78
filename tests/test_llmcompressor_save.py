"""A model unlearned by our modifier and saved through llmcompressor's own path (``oneshot(output_dir=...)``)
carries the unlearning record; ``export`` keeps it; the ``recipe.yaml`` llmcompressor writes is plain YAML that
reloads and reruns."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import QA
from sau_compress.export import export_model, load_model
from sau_compress.export.metadata import CONFIG_RECORD_KEY, forget_set_hash
from sau_compress.masking import is_2of4
from sau_compress.unlearn import UnlearnConfig


def test_every_modifier_field_dumps_to_plain_yaml():
    """llmcompressor writes recipe.yaml with ``yaml.dump``: no field may default to a tuple (``!!python/tuple``)."""
    from sau_compress.modifier import SparsityAwareUnlearningModifier

    mod = SparsityAwareUnlearningModifier(forget="f.jsonl", retain={"path": "r.jsonl", "limit": 3})
    text = yaml.dump(mod.model_dump())
    assert "!!python" not in text
    assert yaml.safe_load(text)["adam_betas"] == [0.9, 0.999]
    assert UnlearnConfig(adam_betas=[0.8, 0.99]).adam_betas == [0.8, 0.99]
    with pytest.raises(ValueError, match="adam_betas"):
        UnlearnConfig(adam_betas=[0.9])


@pytest.mark.slow
def test_oneshot_output_dir_carries_the_record_and_its_recipe_reruns(tiny_model_dir, qa_files, tmp_path):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    from sau_compress.modifier import SparsityAwareUnlearningModifier

    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in QA]
    calib = Dataset.from_dict({"text": texts})

    def sau(**kw):
        return SparsityAwareUnlearningModifier(
            forget=str(qa_files["forget"]), retain=str(qa_files["retain"]), mode="sau", max_steps=2, batch_size=2,
            learning_rate=3e-3, adam_betas=[0.8, 0.99], progress=False, **kw)

    recipe = [SparseGPTModifier(sparsity=0.5, mask_structure="2:4", ignore=["re:.*lm_head"]), sau()]
    saved = tmp_path / "oneshot"
    oneshot(model=str(tiny_model_dir), recipe=recipe, dataset=calib, num_calibration_samples=len(texts),
            max_seq_length=64, output_dir=str(saved))

    # the record rides in config.json
    config = json.loads((saved / "config.json").read_text())
    record = config[CONFIG_RECORD_KEY]["unlearning"]
    forget = [json.loads(line) for line in qa_files["forget"].read_text().splitlines()]
    assert record["method"] == "npo" and record["mode"] == "sau"  # npo: the default method
    assert record["forget_set_hash"] == forget_set_hash(forget) and record["forget_set_size"] == 2
    assert record["hyperparameters"]["adam_betas"] == [0.8, 0.99] and record["result"]["steps"] == 2
    assert record["prompt_format"] == "plain" and record["result"]["pattern_preserved"] is True

    # export keeps it (in the sidecar) and recovers the 2:4 structure from the weights
    out = tmp_path / "export"
    side = export_model(saved, out, format="sparse-24-bitmask")
    assert side["unlearning"] == record
    assert len(side["sparsity"]["compressed_layers"]) == 14  # every decoder Linear, lm_head stays dense
    assert CONFIG_RECORD_KEY not in json.loads((out / "config.json").read_text())

    # recipe.yaml is plain YAML and reruns with llmcompressor
    text = (saved / "recipe.yaml").read_text()
    assert "!!python" not in text
    stages = yaml.safe_load(text)
    assert "SparsityAwareUnlearningModifier" in json.dumps(stages)
    rerun = tmp_path / "rerun"
    oneshot(model=str(tiny_model_dir), recipe=str(saved / "recipe.yaml"), dataset=calib,
            num_calibration_samples=len(texts), max_seq_length=64, output_dir=str(rerun))
    again = json.loads((rerun / "config.json").read_text())[CONFIG_RECORD_KEY]["unlearning"]
    assert again["hyperparameters"] == record["hyperparameters"]
    assert again["forget_set_hash"] == record["forget_set_hash"]
    first, second = load_model(saved), load_model(rerun)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        if ".layers." in name and name.endswith("proj.weight"):
            assert is_2of4(b) and torch.equal(a != 0, b != 0), name
