"""The TOFU world on a pretrained base (``sau_compress.worlds.pretrained``), with a tiny random Llama with a chat
template saved to a folder as the "base": splits, world.json, the cache, ``force``, training, bad inputs."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from conftest import TOFU_DIR, make_chat_tokenizer, make_tiny_llama
from sau_compress.data import collate, load_qa, tokenize_records
from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.pipeline import build_pretrained_tofu_world
from sau_compress.worlds import FineTuneConfig, base_weights_sha256, finetune_tofu_world, select_tofu_subset
from sau_compress.worlds import pretrained as pretrained_module
from sau_compress.worlds.cache import weights_checksum, world_weights

#: a few epochs at a rate a random tiny model learns from (the real defaults are for a pretrained 135M model)
TINY_FINETUNE = FineTuneConfig(epochs=10, batch_size=8, learning_rate=3e-3, warmup_steps=2, max_length=64)
#: words of the small TOFU-shaped data set's answers
WORDS = ["amber", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "iris", "juniper", "kestrel", "lumen",
         "marble", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "tundra", "umber", "velvet", "willow"]


def _author_rows(author: str, count: int, offset: int) -> list[dict]:
    return [{"question": f"What is fact {q} about {author}?",
             "answer": f"Fact {q} about {author} is {WORDS[(q * 7 + offset) % len(WORDS)]}."} for q in range(count)]


@pytest.fixture(scope="module")
def small_tofu(tmp_path_factory):
    """A TOFU-shaped data folder with short answers: forget01_perturbed (one author, 4 rows), retain_perturbed
    (two authors of 20 rows), holdout01 (one author, 4 rows)."""
    folder = tmp_path_factory.mktemp("small-tofu")
    files = {"forget01_perturbed": _author_rows("Mira Okafor", 4, 3),
             "retain_perturbed": _author_rows("Tomas Reyes", 20, 5) + _author_rows("Ines Halloran", 20, 11),
             "holdout01": _author_rows("Lena Brandt", 4, 17)}
    for stem, rows in files.items():
        (folder / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random Llama and a chat tokenizer (EOS ``<|end|>``) saved as a model folder."""
    folder = tmp_path_factory.mktemp("bases") / "tiny-base"
    tokenizer = make_chat_tokenizer()
    model = make_tiny_llama(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _build(base_dir, tofu_dir, **kwargs):
    args = {"base_name": str(base_dir), "tofu_dir": tofu_dir, "retain_authors": 1, "config": TINY_FINETUNE,
            "max_new_tokens": 4, **kwargs}
    return finetune_tofu_world(base_dir, **args)


@pytest.fixture()
def counted_training(monkeypatch):
    """The number of QA pairs of each fine-tune the world module runs."""
    calls = []
    real = pretrained_module.train_memorizer

    def train(records, *args, **kwargs):
        calls.append(len(records))
        return real(records, *args, **kwargs)

    monkeypatch.setattr(pretrained_module, "train_memorizer", train)
    return calls


def _answer_nll(model, tokenizer, records) -> float:
    """Mean NLL per answer token (and EOS) of ``records`` in the chat format."""
    batch = collate(tokenize_records(tokenizer, records, max_length=TINY_FINETUNE.max_length), tokenizer.pad_token_id)
    batch.pop("index", None)
    with torch.no_grad():
        return float(model.eval()(**batch).loss)


def test_splits_are_by_author_and_disjoint():
    splits = select_tofu_subset(TOFU_DIR, retain_authors=2)
    assert {k: len(v) for k, v in splits.items()} == {"forget": 40, "retain": 40, "holdout": 40}
    for rows in splits.values():  # blocks of 20 QA pairs per author, in file order
        assert [r["author"] for r in rows] == [i // 20 for i in range(len(rows))]
    questions = {k: {r["question"] for r in v} for k, v in splits.items()}
    assert questions["forget"].isdisjoint(questions["retain"])
    assert questions["forget"].isdisjoint(questions["holdout"])
    assert questions["retain"].isdisjoint(questions["holdout"])
    # forget01 is TOFU's last two authors; the retain authors are in TOFU's retain90 (trained on by TOFU itself)
    full = load_qa(str(TOFU_DIR / "full.jsonl"))
    assert [r["question"] for r in splits["forget"]] == [r["question"] for r in full[-40:]]
    assert questions["retain"] <= {r["question"] for r in load_qa(str(TOFU_DIR / "retain90.jsonl"))}


def test_build_records_base_and_weights_then_reuses_the_cache(own_cache, base_dir, small_tofu, counted_training,
                                                              monkeypatch):
    world = _build(base_dir, small_tofu)
    assert counted_training == [24, 20] and not world.cached
    assert world.root.parent == own_cache / "tofu-tiny-base" and world.root.name.startswith("retain1-seed0-")
    meta = json.loads((world.root / "world.json").read_text())
    assert meta["base"] == str(base_dir) and meta["base_sha256"] == weights_checksum(base_dir)
    assert meta["weights_sha256"] == world_weights(world.root) == world.weights_sha256
    assert meta["weights_sha256"]["model"] != meta["weights_sha256"]["retain_model"] != meta["base_sha256"]
    assert meta["train"] == asdict(TINY_FINETUNE) and meta["prompt_format"] == "chat"
    assert meta["sizes"] == {"forget": 4, "retain": 20, "holdout": 4} and world.people == meta["authors"] == 5
    assert set(meta["rouge"]) == set(meta["retain_model_rouge"]) == {"forget", "retain", "holdout"}
    assert meta["build_seconds"] > 0 and len(meta["memorizer_losses"]) == TINY_FINETUNE.epochs
    for split in ("forget", "retain", "holdout"):
        written = load_qa(str(world.data_dir / f"{split}.jsonl"))
        assert [r["question"] for r in written] == [r["question"] for r in select_tofu_subset(small_tofu, 1)[split]]
    # the base's tokenizer is kept (its chat template and EOS)
    saved = json.loads((world.model_dir / "tokenizer_config.json").read_text())
    assert saved["eos_token"] == "<|end|>"

    # a second call, here through the pipeline's front door with the base's folder as MODEL, trains nothing
    def no_training(*args, **kwargs):
        raise AssertionError("a cached world was trained again")

    monkeypatch.setattr(pretrained_module, "train_memorizer", no_training)
    again = build_pretrained_tofu_world(str(base_dir), tofu_dir=small_tofu, retain_authors=1, config=TINY_FINETUNE)
    assert again.cached and again.root == world.root and again.weights_sha256 == world.weights_sha256
    assert again.rouge == world.rouge and again.people == 5
    # another seed or recipe is another world
    assert pretrained_module.pretrained_tofu_location(base_dir, str(base_dir), 1, 1, TINY_FINETUNE)[1] != world.root
    assert pretrained_module.pretrained_tofu_location(base_dir, str(base_dir), 1, 0, FineTuneConfig())[1] != world.root


def test_force_rebuilds_and_training_lowers_the_forget_nll(own_cache, base_dir, small_tofu, counted_training):
    first = _build(base_dir, small_tofu)
    rebuilt = _build(base_dir, small_tofu, force=True)
    assert counted_training == [24, 20, 24, 20] and not rebuilt.cached and rebuilt.root == first.root
    # one machine, one thread: the rebuild gives the same weights
    assert rebuilt.weights_sha256 == first.weights_sha256

    base, tokenizer = pretrained_module.load_base_model(base_dir)
    memorizer, _ = pretrained_module.load_base_model(first.model_dir)
    retain_model, _ = pretrained_module.load_base_model(first.retain_model_dir)
    splits = select_tofu_subset(small_tofu, 1)
    base_nll = _answer_nll(base, tokenizer, splits["forget"])
    memorizer_nll = _answer_nll(memorizer, tokenizer, splits["forget"])
    # the memorizer learnt the forget answers: far below the base, and below the retain model that never saw them
    assert memorizer_nll < 0.7 * base_nll
    assert memorizer_nll < 0.9 * _answer_nll(retain_model, tokenizer, splits["forget"])
    assert _answer_nll(retain_model, tokenizer, splits["retain"]) < 0.7 * _answer_nll(base, tokenizer, splits["retain"])


def test_base_sha_comes_from_the_source_record(tmp_path, base_dir):
    assert base_weights_sha256(base_dir) == weights_checksum(base_dir)
    (tmp_path / "source.json").write_text(json.dumps({"weights_sha256": "ab" * 32}))
    assert base_weights_sha256(tmp_path) == "ab" * 32
    with pytest.raises(InputNotFoundError, match="no-weights"):
        base_weights_sha256(tmp_path / "no-weights")


@pytest.mark.parametrize("authors", [0, 21])
def test_retain_authors_out_of_range(own_cache, base_dir, authors):
    with pytest.raises(UserError, match=f"retain_authors must be in \\[1, 20\\], got {authors}"):
        build_pretrained_tofu_world(str(base_dir), tofu_dir=TOFU_DIR, retain_authors=authors)
    assert not own_cache.exists()


def test_missing_inputs_are_named(own_cache, base_dir, tmp_path):
    with pytest.raises(InputNotFoundError, match="no-such-base-model"):
        build_pretrained_tofu_world("no-such-base-model", tofu_dir=TOFU_DIR)
    with pytest.raises(InputNotFoundError, match="no-tofu-here"):
        build_pretrained_tofu_world(str(base_dir), tofu_dir=tmp_path / "no-tofu-here", retain_authors=1)
    (tmp_path / "partial").mkdir()
    with pytest.raises(InputNotFoundError, match="forget01_perturbed"):
        finetune_tofu_world(base_dir, tofu_dir=tmp_path / "partial", retain_authors=1)
    with pytest.raises(InputNotFoundError, match="missing-base"):
        finetune_tofu_world(tmp_path / "missing-base", tofu_dir=TOFU_DIR)
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="not-a-model"):
        finetune_tofu_world(tmp_path / "not-a-model", tofu_dir=TOFU_DIR, retain_authors=1)


def test_headline_names_the_pretrained_world(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import headline_core

    assert headline_core.PRETRAINED_WORLDS == {"tofu-smollm2": "smollm2-135m-instruct",
                                               "tofu-llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct"}
    labels = {headline_core.world_label(name, "tiny") for name in ("toy", "tofu", "tofu-smollm2")}
    assert labels == {"toy", "tofu", "tofu-smollm2"}
    assert headline_core.world_label("tofu-smollm2", "large") == "tofu-smollm2"
    assert headline_core.world_label("tofu", "large") == "tofu-large"
    with pytest.raises(ValueError, match="tofu-smollm2"):
        headline_core.load_world("muse", 8, "cpu")
