"""``sau_compress.pipeline`` (recipes, overrides, run) and the ``run``/``recipes`` commands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_RECIPE, make_chat_tokenizer, make_tiny_llama
from sau_compress.cli.app import app
from sau_compress.evaluation import SUMMARY_KEYS
from sau_compress.io import OutputExistsError
from sau_compress.magnitude import OneShotMagnitudePruningModifier
from sau_compress.masking import is_2of4, sparsity
from sau_compress.modifier import SparsityAwareUnlearningModifier
from sau_compress.pipeline import (
    DEMO_RECIPE,
    SAU_MODIFIER,
    apply_overrides,
    list_recipes,
    load_recipe,
    parse_overrides,
    read_recipe,
    resolve_recipe,
    run,
)
from sau_compress.unlearn import UnlearnConfig

BUNDLED = [
    "magnitude-50-sau-graddiff",
    "sparsegpt-2of4-sau-fp8",
    "sparsegpt-2of4-sau-graddiff",
    "sparsegpt-2of4-sau-npo",
    "sparsegpt-50-sau-npo",
    "toy-sparsegpt-2of4-graddiff",
    "wanda-50-sau-graddiff",
]


def _folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def tiny_recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


# ------------------------------------------------------------------------------------------------ recipes


def test_bundled_recipes_are_listed_with_their_first_line():
    rows = list_recipes()
    assert [r["name"] for r in rows] == BUNDLED
    for row in rows:
        first = Path(row["path"]).read_text().splitlines()[0]
        assert (
            first.startswith("# ")
            and row["description"] == first[2:].strip()
            and len(row["description"]) > 20
        )


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_recipe_builds_and_ignores_lm_head(name):
    recipe = load_recipe(apply_overrides(read_recipe(name), {SAU_MODIFIER: {"forget": "f.jsonl"}}))
    kinds = [type(m).__name__ for m in recipe.modifiers]
    assert kinds.index(SAU_MODIFIER) == 1
    for modifier in recipe.modifiers:
        assert modifier.ignore == ["re:.*lm_head"], type(modifier).__name__
    sau = recipe.modifiers[1]
    assert isinstance(sau, SparsityAwareUnlearningModifier) and sau.forget.path == "f.jsonl"
    assert read_recipe(name)["unlearn_stage"]["unlearn_modifiers"][SAU_MODIFIER]["prompt_format"] == "auto"
    if name.startswith("magnitude"):
        assert isinstance(recipe.modifiers[0], OneShotMagnitudePruningModifier)
    if name.endswith("fp8"):
        assert kinds[2] == "QuantizationModifier"


@pytest.mark.parametrize("name", ["sparsegpt-2of4-sau-npo", "sparsegpt-50-sau-npo"])
def test_npo_recipes_spell_out_the_modifiers_pretrained_defaults(name):
    # the NPO recipes write the settings measured on SmolLM2 (docs/pretrained.md); they and the defaults move together
    fields = read_recipe(name)["unlearn_stage"]["unlearn_modifiers"][SAU_MODIFIER]
    keys = ("method", "learning_rate", "epochs", "batch_size", "retain_weight", "max_grad_norm")
    defaults = UnlearnConfig()
    assert {k: fields[k] for k in keys} == {k: getattr(defaults, k) for k in keys}
    assert (defaults.method, defaults.learning_rate, defaults.epochs, defaults.retain_weight) == ("npo", 5e-5, 10, 15.0)


def test_resolve_recipe_by_name_with_or_without_yaml_and_by_path(tiny_recipe):
    assert resolve_recipe("sparsegpt-2of4-sau-npo") == resolve_recipe("sparsegpt-2of4-sau-npo.yaml")
    assert resolve_recipe(str(tiny_recipe)) == tiny_recipe
    with pytest.raises(FileNotFoundError, match=r"bundled: \['magnitude-50-sau-graddiff'"):
        resolve_recipe("sparsegpt-3of4")


def test_parse_overrides():
    parsed = parse_overrides(
        [
            "max_steps=20",
            "learning_rate=1e-4",
            "ignore=[re:.*lm_head]",
            "SparseGPTModifier.sparsity=0.6",
            "beta=null",
            "method=npo",
        ]
    )
    assert parsed == {
        SAU_MODIFIER: {
            "max_steps": 20,
            "learning_rate": "1e-4",
            "ignore": ["re:.*lm_head"],
            "beta": None,
            "method": "npo",
        },
        "SparseGPTModifier": {"sparsity": 0.6},
    }
    for bad in ("max_steps", "=3", "SparseGPTModifier.=1"):
        with pytest.raises(ValueError, match="--set|empty field"):
            parse_overrides([bad])


def test_overrides_are_validated_and_name_the_field():
    recipe = apply_overrides(
        read_recipe("sparsegpt-2of4-sau-graddiff"),
        parse_overrides(["max_steps=7", "learning_rate=1e-4", "forget=f.jsonl"]),
    )
    sau = load_recipe(recipe).modifiers[1]
    assert sau.config.max_steps == 7 and sau.config.learning_rate == 1e-4
    with pytest.raises(ValueError, match="max_stepz"):
        load_recipe(
            apply_overrides(read_recipe("sparsegpt-2of4-sau-graddiff"), parse_overrides(["max_stepz=7"]))
        )
    with pytest.raises(ValueError, match=r"no WandaPruningModifier to set \['sparsity'\]"):
        apply_overrides(
            read_recipe("sparsegpt-2of4-sau-graddiff"), parse_overrides(["WandaPruningModifier.sparsity=0.4"])
        )


def test_trainer_knobs_are_recipe_fields_and_set_keys():
    recipe = apply_overrides(
        read_recipe("sparsegpt-2of4-sau-graddiff"),
        parse_overrides(["forget=f.jsonl", "grad_accum_steps=4", "lr_scheduler=Cosine", "warmup_steps=2",
                         "gradient_checkpointing=true", "max_grad_norm=1.0"]),
    )
    cfg = load_recipe(recipe).modifiers[1].config
    assert (cfg.grad_accum_steps, cfg.lr_scheduler, cfg.warmup_steps) == (4, "cosine", 2)
    assert cfg.gradient_checkpointing is True and cfg.max_grad_norm == 1.0
    for bad, field in (("grad_accum_steps=0", "grad_accum_steps"), ("lr_scheduler=step", "lr_scheduler"),
                       ("warmup_steps=-1", "warmup_steps")):
        with pytest.raises(ValueError, match=field):
            load_recipe(apply_overrides(read_recipe("sparsegpt-2of4-sau-graddiff"),
                                        parse_overrides(["forget=f.jsonl", bad])))


# ---------------------------------------------------------------------------------------------------- run


def test_existing_output_is_refused_before_any_work(tiny_model_dir, tiny_recipe, qa_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(tiny_model_dir, tiny_recipe, out, forget=str(qa_files["forget"]), retain=str(qa_files["retain"]))
    assert (out / "keep.txt").read_text() == "mine"


def test_output_overlapping_the_input_is_refused(tiny_model_dir, tiny_recipe, qa_files):
    for out in (tiny_model_dir, tiny_model_dir / "sub"):
        with pytest.raises(ValueError, match="overlaps the input model folder"):
            run(tiny_model_dir, tiny_recipe, out, forget=str(qa_files["forget"]), overwrite=True)


@pytest.mark.slow
def test_run_end_to_end_leaves_the_input_untouched(tiny_model_dir, tiny_recipe, qa_files, tmp_path, monkeypatch):
    import sau_compress.data
    import sau_compress.data.loading
    import sau_compress.unlearn.runner
    from sau_compress.export import load_model

    # one forget set through the whole path: each file read once, masks captured once, verified once
    calls: dict[str, list] = {"load_qa": [], "capture_packed_masks": [], "verify_masks": []}

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name].append(str(args[0]) if name == "load_qa" else 1)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(sau_compress.data, "load_qa")  # the pipeline's own reads
    counted(sau_compress.data.loading, "load_qa")  # QASetSpec.load
    counted(sau_compress.unlearn.runner, "capture_packed_masks")
    counted(sau_compress.unlearn.runner, "verify_masks")
    digest = _folder_hash(tiny_model_dir)
    out = tmp_path / "out"
    summary = run(
        tiny_model_dir,
        tiny_recipe,
        out,
        forget=str(qa_files["forget"]),
        retain=str(qa_files["retain"]),
        overrides=["max_steps=2"],
        max_new_tokens=8,
    )
    assert _folder_hash(tiny_model_dir) == digest
    assert sorted(calls["load_qa"]) == sorted([str(qa_files["forget"]), str(qa_files["retain"])])
    assert calls["capture_packed_masks"] == [1] and calls["verify_masks"] == [1]
    assert summary["output"] == str(out.absolute()) and summary["format"] == "sparse-24-bitmask"
    assert summary["modifiers"] == ["SparseGPTModifier", SAU_MODIFIER]
    assert summary["pattern_preserved"] is True and summary["two_four"] is True and summary["sparsity"] == 0.5
    assert summary["unlearn"]["steps"] == 2  # --set beat the recipe's max_steps: 3
    keys = {f"{s}_{k}" for s in ("forget", "retain") for k in SUMMARY_KEYS} | {"samples", "contained"}
    for key in ("before", "pruned", "after"):  # the pruned model is evaluated right before the SAU stage
        assert set(summary[key]) == keys
    assert summary["after"]["forget_nll"] > summary["pruned"]["forget_nll"]
    for split in ("forget", "retain"):  # of the facts the pruned model stated, how many the result still states
        stated, last = summary["pruned"]["contained"][split], summary["after"]["contained"][split]
        still = sum(a and b for a, b in zip(stated, last, strict=True))
        assert summary["kept"][split] == {"stated": sum(stated), "still": still,
                                          "share": still / sum(stated) if sum(stated) else None}
    first_forget = json.loads(qa_files["forget"].read_text().splitlines()[0])
    assert summary["pruned"]["samples"]["forget"][0]["question"] == first_forget["question"]
    sidecar = json.loads((out / "sau_compress.json").read_text())
    assert list(sidecar["unlearning"]["metrics"]) == ["before", "pruned", "after"]
    assert sidecar["unlearning"]["metrics"]["pruned"]["forget_nll"] == summary["pruned"]["forget_nll"]
    assert summary["seconds"] > 0
    saved = load_model(out)
    for name, layer in saved.named_modules():
        if name.startswith("model.layers.") and isinstance(layer, torch.nn.Linear):
            assert is_2of4(layer.weight) and sparsity(layer.weight) == 0.5, name
    sidecar = json.loads((out / "sau_compress.json").read_text())
    assert sidecar["unlearning"]["method"] == "npo" and sidecar["unlearning"]["forget_set_size"] == 2  # default
    # the tiny tokenizer has no chat template: auto is plain, recorded in the summary and the sidecar
    assert summary["prompt_format"] == "plain"
    assert sidecar["unlearning"]["prompt_format"] == "plain"
    assert sidecar["metadata"]["run"]["prompt_format"] == "plain"


def test_our_sparse_export_is_a_valid_input_to_a_sau_only_recipe(tiny_model_dir, tiny_recipe, qa_files, tmp_path):
    from sau_compress.export import load_model

    sets = {"forget": str(qa_files["forget"]), "retain": str(qa_files["retain"])}
    first = tmp_path / "first"
    run(tiny_model_dir, tiny_recipe, first, **sets, overrides=["max_steps=1"], evaluate=False)
    loaded = load_model(first)
    assert loaded.name_or_path == str(first) and loaded.config.name_or_path == str(first)  # not None
    sau_only = tmp_path / "sau-only.yaml"
    sau_only.write_text(
        "unlearn_stage:\n  unlearn_modifiers:\n    SparsityAwareUnlearningModifier: "
        "{max_steps: 2, batch_size: 2, learning_rate: 3.0e-3, progress: false}\n"
    )
    second = tmp_path / "second"
    summary = run(first, sau_only, second, **sets, evaluate=False)
    assert summary["modifiers"] == [SAU_MODIFIER] and summary["format"] == "sparse-24-bitmask"
    assert summary["pattern_preserved"] is True and summary["unlearn"]["steps"] == 2
    before, after = load_model(first), load_model(second)
    changed = 0
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        if ".layers." in name and name.endswith("proj.weight"):
            assert torch.equal(a != 0, b != 0), name  # the 2:4 pattern is kept exactly
            changed += int((a != b).sum())
    assert changed > 0


def test_run_on_the_toy_world_records_the_resolved_prompt_format(toy_world, tmp_path):
    from transformers import AutoTokenizer

    from sau_compress.data import has_chat_template

    assert not has_chat_template(AutoTokenizer.from_pretrained(str(toy_world.model_dir)))
    out = tmp_path / "toy"
    summary = run("toy", "sparsegpt-2of4-sau-graddiff", out, overrides=["max_steps=1", "batch_size=2"],
                  num_calibration_samples=8, eval_limit=2, eval_batch_size=2, max_new_tokens=4, device="cpu")
    assert summary["prompt_format"] == "plain" and summary["eval_records"] == {"forget": 2, "retain": 2}
    sidecar = json.loads((out / "sau_compress.json").read_text())
    assert sidecar["unlearning"]["prompt_format"] == "plain"
    assert sidecar["metadata"]["run"]["prompt_format"] == "plain"


def test_run_with_a_chat_tokenizer_uses_chat_everywhere(tiny_recipe, qa_files, tmp_path, monkeypatch):
    """auto -> chat: the unlearning job, the calibration rows and both evaluations get the same format."""
    import importlib

    import sau_compress.evaluation
    from sau_compress.unlearn import UnlearnJob

    run_module = importlib.import_module("sau_compress.pipeline.run")  # the package's ``run`` is the function

    chat_dir = tmp_path / "chat-llama"
    tok = make_chat_tokenizer()
    make_tiny_llama(len(tok)).save_pretrained(chat_dir)
    tok.save_pretrained(chat_dir)
    seen: dict[str, list] = {"job": [], "calibration": [], "summarize": []}
    real_job, real_oneshot, real_summarize = (UnlearnJob.from_records.__func__, run_module.run_oneshot,
                                              sau_compress.evaluation.summarize)

    def job(cls, tokenizer, forget, retain, max_length=256, prompt_format="auto", callback=None, **kwargs):
        made = real_job(cls, tokenizer, forget, retain, max_length, prompt_format, callback, **kwargs)
        seen["job"].append(tokenizer.decode(made.forget[0]["input_ids"]))
        return made

    def oneshot(*args):
        seen["calibration"].append(args[-1])
        return real_oneshot(*args)

    def summarize(*args, **kwargs):
        seen["summarize"].append(kwargs["prompt_format"])
        return real_summarize(*args, **kwargs)

    monkeypatch.setattr(UnlearnJob, "from_records", classmethod(job))
    monkeypatch.setattr(run_module, "run_oneshot", oneshot)
    monkeypatch.setattr(sau_compress.evaluation, "summarize", summarize)
    out = tmp_path / "out"
    summary = run(chat_dir, tiny_recipe, out, forget=str(qa_files["forget"]),
                  retain=str(qa_files["retain"]), overrides=["max_steps=1"], max_new_tokens=2, device="cpu")
    assert summary["prompt_format"] == "chat"
    first = json.loads(qa_files["forget"].read_text().splitlines()[0])
    assert seen["job"] == [f"<s><|user|>\n{first['question']}<|end|><|assistant|>\n{first['answer']}<|end|>"]
    # before, right after pruning, after
    assert seen["calibration"] == ["chat"] and seen["summarize"] == ["chat", "chat", "chat"]
    sidecar = json.loads((out / "sau_compress.json").read_text())
    assert sidecar["unlearning"]["prompt_format"] == "chat" and sidecar["metadata"]["run"]["prompt_format"] == "chat"


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_recipe_runs(name, tiny_model_dir, qa_files, tmp_path):
    summary = run(
        tiny_model_dir,
        name,
        tmp_path / name,
        forget=str(qa_files["forget"]),
        retain=str(qa_files["retain"]),
        overrides=["max_steps=1", "batch_size=2"],
        evaluate=False,
    )
    # SparseGPT's unstructured mask is chosen block by block: about half, not exactly half, of each layer
    assert summary["pattern_preserved"] is True
    assert summary["sparsity"] == (pytest.approx(0.5, abs=1e-3) if name.startswith("sparsegpt-50") else 0.5)
    assert summary["two_four"] is ("2of4" in name)
    assert summary["quantized"] is name.endswith("fp8")
    assert summary["format"] == (
        "sparse-24-bitmask" if "2of4" in name and not name.endswith("fp8") else "dense"
    )
    assert (tmp_path / name / "sau_compress.json").is_file()


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_recipes_json():
    result = CliRunner().invoke(app, ["recipes", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)["recipes"]] == BUNDLED


def test_cli_run_refuses_existing_output(tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    result = CliRunner().invoke(
        app, ["run", str(tiny_model_dir), "--forget", str(qa_files["forget"]), "--output", str(out), "--json"]
    )
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # rich wraps long lines
    assert f"'{out}' already exists; pass --overwrite" in message


def test_cli_run_bad_set_is_a_user_error(tiny_model_dir, qa_files, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(tiny_model_dir),
            "--forget",
            str(qa_files["forget"]),
            "--output",
            str(tmp_path / "o"),
            "--set",
            "max_stepz=3",
        ],
    )
    assert result.exit_code == 2 and "max_stepz" in result.output


@pytest.mark.slow
def test_toy_memorizer_forgets_and_keeps_the_retain_set(tmp_path):
    """Acceptance on the toy memorizer (the shipped world).

    Measured with the toy demo's settings: forget ROUGE-L recall 1.000 -> 0.411, retain 1.000 -> 0.967 (H100).
    """
    summary = run(
        "toy",
        DEMO_RECIPE,
        tmp_path / "out",
        max_new_tokens=48,
        eval_batch_size=64,
        eval_limit=40,  # all 40 forget records and the first 40 retain records: keeps CI fast
        num_calibration_samples=128,
    )
    before, after = summary["before"], summary["after"]
    assert before["forget_rouge"] > 0.95 and before["retain_rouge"] > 0.95
    assert after["forget_rouge"] < 0.6  # forgotten: the retain-only model scores 0.36 here
    assert after["retain_rouge"] > 0.9  # kept
    assert after["forget_nll"] > before["forget_nll"] + 1.0
    assert summary["pattern_preserved"] and summary["two_four"] and summary["sparsity"] == 0.5
    assert summary["format"] == "sparse-24-bitmask"
