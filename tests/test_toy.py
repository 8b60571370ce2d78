"""The embedded toy world: determinism, schema, splits, tokenizer, training, memorization, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sau_compress.cli.app import app
from sau_compress.worlds import (
    FACTS,
    MIN_PEOPLE,
    N_PERTURBED,
    ToyTrainConfig,
    make_people,
    make_records,
    split_people,
    train_memorizer,
)

TOFU_FIELDS = {"question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer"}


def test_same_seed_same_records_and_different_seed_differs():
    a = make_records(make_people(40, seed=3), seed=3)
    b = make_records(make_people(40, seed=3), seed=3)
    c = make_records(make_people(40, seed=4), seed=4)
    assert a == b
    assert a != c
    assert len(a) == 40 * len(FACTS)


def test_schema_and_perturbations():
    records = make_records(make_people(12, seed=0), seed=0)
    assert len(FACTS) >= 10
    for r in records:
        assert TOFU_FIELDS <= set(r)
        assert len(r["perturbed_answer"]) == N_PERTURBED >= 3
        assert r["answer"] not in r["perturbed_answer"]
        assert len(set(r["perturbed_answer"])) == N_PERTURBED
        assert r["paraphrased_answer"] != r["answer"]
        assert r["paraphrased_question"] != r["question"]
        assert r["person"] in r["question"]


def test_split_by_person_no_overlap_and_proportions():
    people = make_people(40, seed=1)
    split = split_people(people, seed=1)
    assert [len(split[k]) for k in ("forget", "retain", "holdout")] == [4, 32, 4]
    f, r, h = (set(split[k]) for k in ("forget", "retain", "holdout"))
    assert not (f & r) and not (f & h) and not (r & h)
    assert f | r | h == {p["name"] for p in people}
    small = split_people(make_people(MIN_PEOPLE, seed=0), seed=0)
    assert [len(small[k]) for k in ("forget", "retain", "holdout")] == [1, 8, 1]


def test_too_few_people_names_the_minimum():
    with pytest.raises(ValueError, match=f"at least {MIN_PEOPLE}"):
        make_people(MIN_PEOPLE - 1)


def test_tokenizer_round_trip(tokenizer):
    text = "Question: Where was Mira Okafor born?\nAnswer: Mira Okafor was born in Port Elmwood."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    unseen = "Zebra quartz 1987!"  # byte-level BPE covers any text
    assert tokenizer.decode(tokenizer(unseen)["input_ids"], skip_special_tokens=True) == unseen


def test_short_training_run_lowers_the_loss(tokenizer, qa_records):
    cfg = ToyTrainConfig(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2, epochs=30,
                         batch_size=6, learning_rate=3e-3, warmup_steps=2)
    model = train_memorizer(qa_records, tokenizer, cfg, seed=0)
    losses = model.train_losses
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]


def test_memorizer_remembers_and_holdout_is_lower(toy_world):
    rouge = toy_world.rouge
    assert rouge["forget"] >= 0.9
    assert rouge["retain"] >= 0.9
    assert rouge["holdout"] <= min(rouge["forget"], rouge["retain"]) - 0.3
    # the retain model never saw the forget people
    assert toy_world.retain_model_rouge["retain"] >= 0.9
    assert toy_world.retain_model_rouge["forget"] <= rouge["forget"] - 0.3
    assert 2_000_000 <= toy_world.parameters <= 8_000_000
    for split in ("forget", "retain", "holdout"):
        rows = [json.loads(x) for x in (toy_world.data_dir / f"{split}.jsonl").read_text().splitlines()]
        assert rows and TOFU_FIELDS <= set(rows[0])


def test_cli_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("toy", "demo"):
        assert command in result.output


def test_cli_people_below_minimum_names_it():
    result = CliRunner().invoke(app, ["toy", "build", "--people", "1"])
    assert result.exit_code == 2
    assert "--people" in result.output and f"at least {MIN_PEOPLE}" in result.output


def test_cli_unwritable_out_names_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "world"
    result = CliRunner().invoke(app, ["toy", "build", "--out", str(target)])
    assert result.exit_code == 2
    assert str(target) in result.output.replace("\n", "")


def test_small_world_build_writes_and_reloads(tmp_path):
    from sau_compress.worlds import build_toy_world

    cfg = ToyTrainConfig(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2, vocab_size=400,
                         epochs=1, batch_size=32, warmup_steps=1)
    world = build_toy_world(people=MIN_PEOPLE, seed=5, out=tmp_path / "w", config=cfg)
    assert not world.cached and world.people == MIN_PEOPLE
    assert set(world.rouge) == {"forget", "retain", "holdout"}
    assert all(0.0 <= v <= 1.0 for v in world.rouge.values())
    counts = {s: len((world.data_dir / f"{s}.jsonl").read_text().splitlines()) for s in world.rouge}
    assert counts == {"forget": 10, "retain": 80, "holdout": 10}
    for sub in ("model", "retain_model"):
        assert (world.root / sub / "config.json").is_file() and (world.root / sub / "tokenizer.json").is_file()
    again = build_toy_world(people=MIN_PEOPLE, seed=5, out=tmp_path / "w", config=cfg)
    assert again.cached and again.rouge == world.rouge
    # a folder that holds something else is refused, naming it
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="other"):
        build_toy_world(people=MIN_PEOPLE, seed=5, out=other, config=cfg)
    assert (other / "keep.txt").read_text() == "user data"
