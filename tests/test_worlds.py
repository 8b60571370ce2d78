"""The worlds package: cache keys unchanged, the TOFU data-folder lookup, errors, and the evaluation boundary."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from sau_compress.data import TOFU_DIR_ENV, tofu_data_dir
from sau_compress.errors import InputNotFoundError, OutputExistsError, UserError
from sau_compress.evaluation import evaluate, load_suite_data
from sau_compress.worlds import (
    FACTS,
    build_tofu_world,
    make_people,
    make_records,
    resolve_model_path,
    reuse_world,
    tofu_world_cache_dir,
    toy_data_file,
    toy_world_cache_dir,
)

#: sha256 of the default toy world's records (40 people, seed 0) as JSON with sorted keys
PINNED_RECORDS = "120032ae7f4f5a4fff68872caf191de4ec73689f95d3507a9ea05f670d70d00e"


def test_cache_folders_keep_their_keys(own_cache):
    # worlds built before the package existed are found under these names (keys pinned from the old modules)
    assert toy_world_cache_dir() == own_cache / "toy" / "people40-seed0-0158da46fb9b"
    assert toy_world_cache_dir(12, 3, device="cuda:1").name == "people12-seed3-82fe709953f6"
    assert tofu_world_cache_dir() == own_cache / "tofu" / "retain6-seed0-0f850091fd4f"
    assert tofu_world_cache_dir(3, 2, device="cuda").name == "retain3-seed2-eb918039633c"


def test_generator_draws_the_same_world():
    # the records of the default world, pinned from the generator before its data moved to facts.json
    people = make_people(40, seed=0)
    blob = json.dumps(make_records(people, seed=0), sort_keys=True).encode()
    assert hashlib.sha256(blob).hexdigest() == PINNED_RECORDS


def test_tofu_data_dir_explicit_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TOFU_DIR_ENV, raising=False)
    assert tofu_data_dir() is None
    monkeypatch.setenv(TOFU_DIR_ENV, str(tmp_path / "env"))
    assert tofu_data_dir() == tmp_path / "env"
    assert tofu_data_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv(TOFU_DIR_ENV, "")
    assert tofu_data_dir() is None


def test_tofu_world_without_data_folder_names_the_variable(own_cache, monkeypatch):
    monkeypatch.delenv(TOFU_DIR_ENV, raising=False)
    with pytest.raises(UserError, match=TOFU_DIR_ENV):
        build_tofu_world()
    with pytest.raises(InputNotFoundError, match="no-such-folder"):
        build_tofu_world(own_cache / "no-such-folder")


def test_user_errors_of_names_and_cache(tmp_path):
    with pytest.raises(InputNotFoundError, match="toy-retain"):
        resolve_model_path(tmp_path / "missing")
    with pytest.raises(UserError, match="holdout"):
        toy_data_file("test")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="other"):
        reuse_world(tmp_path / "other", "key", False, 0.0, "toy")


def test_toy_suite_without_data_folder_names_it(tiny_model, tokenizer, qa_files):
    with pytest.raises(UserError, match=r"data_dir.*forget, retain, holdout"):
        load_suite_data("toy")
    with pytest.raises(UserError, match=r"data_dir.*holdout"):
        evaluate(tiny_model, tokenizer, "toy", forget=qa_files["forget"], retain=qa_files["retain"])


def test_evaluation_does_not_import_worlds():
    code = "import sys, sau_compress.evaluation; print(sorted(m for m in sys.modules if 'worlds' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_eval_cli_takes_the_toy_world_by_default(toy_world):
    from typer.testing import CliRunner

    from sau_compress.cli.app import app

    args = ["eval", "toy", "--limit", "2", "--max-new-tokens", "4", "--batch-size", "4", "--device", "cpu", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert '"forget_quality"' in result.output and '"model_utility"' in result.output


def test_weights_checksum_hashes_the_weight_files_and_worlds_carry_it(tmp_path, toy_world):
    from sau_compress.worlds.cache import weights_checksum

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"world")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"hello ")
    (folder / "config.json").write_text("{}")  # not a weight file
    assert weights_checksum(folder) == hashlib.sha256(b"hello world").hexdigest()  # name order
    (folder / "config.json").write_text('{"changed": 1}')
    assert weights_checksum(folder) == hashlib.sha256(b"hello world").hexdigest()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        weights_checksum(tmp_path)
    assert toy_world.weights_sha256 == {
        "model": weights_checksum(toy_world.model_dir),
        "retain_model": weights_checksum(toy_world.retain_model_dir),
    }
    assert toy_world.weights_sha256["model"] != toy_world.weights_sha256["retain_model"]


def test_prior_knowledge_is_learnt_first_and_rehearsed(tmp_path, own_cache, monkeypatch):
    """``prior_people``: extra people in their own ``prior`` split, learnt alone first; the memorizer and the
    retain model each start from a copy of that model and rehearse the prior records with their own sets."""
    import torch

    from sau_compress.worlds import ToyTrainConfig, build_toy_world, training

    # worlds without prior knowledge keep their keys; the headline's capacity world is pinned
    assert toy_world_cache_dir(prior_people=0) == toy_world_cache_dir()
    capacity = ToyTrainConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, epochs=60,
                              batch_size=32)
    assert toy_world_cache_dir(240, config=capacity, prior_people=48).name == "people240-seed0-1a56666e6337"
    assert toy_world_cache_dir(prior_people=5) != toy_world_cache_dir(prior_people=5, prior_epochs=3)

    calls = []
    real = training.train_memorizer

    def spy(records, tokenizer, config=None, seed=0, desc="", device="cpu", model=None):
        start = None if model is None else {k: v.clone() for k, v in model.state_dict().items()}
        out = real(records, tokenizer, config, seed, desc, device, model)
        calls.append((desc, [r["person"] for r in records], config.epochs, start, model, out))
        return out

    monkeypatch.setattr(training, "train_memorizer", spy)
    config = ToyTrainConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=400,
                            epochs=2, batch_size=16)
    world = build_toy_world(people=10, prior_people=5, prior_epochs=1, config=config, out=tmp_path / "w")
    meta = json.loads((world.root / "world.json").read_text())
    splits = meta["splits"]
    assert len(splits["prior"]) == 5 and meta["prior_people"] == 5 and meta["prior_epochs"] == 1
    named = [n for name in ("forget", "retain", "holdout") for n in splits[name]]
    assert len(named) == 10 and not set(named) & set(splits["prior"])
    prior_rows = [json.loads(line) for line in (world.data_dir / "prior.jsonl").read_text().splitlines()]
    assert {r["person"] for r in prior_rows} == set(splits["prior"]) and len(prior_rows) == 5 * len(FACTS)
    assert set(world.rouge) == {"forget", "retain", "holdout", "prior"} and len(meta["prior_losses"]) == 1

    (stage1, people1, epochs1, start1, _, first), (_, people2, _, start2, m2, _), (_, people3, _, start3, m3, _) = calls
    assert "prior" in stage1 and set(people1) == set(splits["prior"]) and epochs1 == 1 and start1 is None
    assert set(people2) == set(splits["forget"]) | set(splits["retain"]) | set(splits["prior"])
    assert set(people3) == set(splits["retain"]) | set(splits["prior"])
    # both later stages start from the prior-knowledge model's weights, each on its own copy
    assert m2 is not first and m3 is not first and m2 is not m3
    for start in (start2, start3):
        assert all(torch.equal(start[k], v) for k, v in first.state_dict().items())
    # the prior people are the last ones drawn
    assert {p["name"] for p in make_people(15, 0)[10:]} == set(splits["prior"])
