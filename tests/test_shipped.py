"""The shipped worlds: every file matches the manifest, the default world is the shipped one (nothing is
built), and a forced build says whether its weights are the shipped ones."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from sau_compress.cli.app import app
from sau_compress.worlds import (
    MIN_PEOPLE,
    SHIPPED_DIR,
    ToyTrainConfig,
    build_toy_world,
    resolve_model_path,
    ship_world,
    shipped_manifest,
    toy_data_file,
    toy_world_cache_dir,
)
from sau_compress.worlds import shipped as shipped_module
from sau_compress.worlds.cache import world_weights
from sau_compress.worlds.shipped import MANIFEST_FILE, file_checksums

#: the default world's folder (40 people, seed 0), as in the cache
DEFAULT = "people40-seed0-0158da46fb9b"


def test_every_shipped_file_matches_the_manifest():
    manifest = shipped_manifest()
    assert DEFAULT in manifest
    assert sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_dir()) == sorted(manifest)
    for name, entry in manifest.items():
        root = SHIPPED_DIR / name
        # exact: no file missing, none added, every byte the same
        assert file_checksums(root) == entry["files"], name
        assert world_weights(root) == entry["weights_sha256"], name
        assert json.loads((root / "world.json").read_text())["key"] == entry["key"] == name.rsplit("-", 1)[1]
        for sub in ("model", "retain_model"):
            assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
                p.split("/")[1] for p in entry["files"] if p.startswith(f"{sub}/")}
        assert {"data/forget.jsonl", "data/retain.jsonl", "data/holdout.jsonl", "world.json"} <= set(entry["files"])


def test_file_checksums_are_sha256_of_each_file_by_relative_path(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.bin").write_bytes(b"\x00\x01")
    (tmp_path / "a.json").write_text("{}")
    assert file_checksums(tmp_path) == {"a.json": hashlib.sha256(b"{}").hexdigest(),
                                        "b/x.bin": hashlib.sha256(b"\x00\x01").hexdigest()}
    (tmp_path / "b" / "x.bin").write_bytes(b"\x00\x02")  # one byte changed: its checksum differs
    assert file_checksums(tmp_path)["b/x.bin"] == hashlib.sha256(b"\x00\x02").hexdigest()


def test_the_default_world_is_the_shipped_one_and_nothing_is_built(own_cache):
    world = build_toy_world()
    assert world.shipped and world.cached and world.matches_shipped is True
    assert world.root == SHIPPED_DIR / DEFAULT and toy_world_cache_dir().name == DEFAULT
    assert world.weights_sha256 == shipped_manifest()[DEFAULT]["weights_sha256"]
    assert (world.people, world.seed) == (40, 0)
    assert resolve_model_path("toy") == SHIPPED_DIR / DEFAULT / "model"
    assert resolve_model_path("toy-retain") == SHIPPED_DIR / DEFAULT / "retain_model"
    assert toy_data_file("holdout") == SHIPPED_DIR / DEFAULT / "data" / "holdout.jsonl"
    assert not own_cache.exists()


def test_cli_toy_build_reports_the_shipped_checksums_at_once(own_cache):
    result = CliRunner().invoke(app, ["toy", "build", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["shipped"] is True and out["matches_shipped"] is True
    assert out["weights_sha256"] == shipped_manifest()[DEFAULT]["weights_sha256"]
    assert out["model_dir"] == str(SHIPPED_DIR / DEFAULT / "model")
    assert out["seconds"] < 10
    assert not own_cache.exists()


def test_a_forced_build_says_whether_it_matches_the_shipped_world(tmp_path, own_cache, monkeypatch, warnings):
    """A small world stands for the default one: shipped from a first build, then rebuilt with ``force``."""
    cfg = ToyTrainConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=400,
                         epochs=1, batch_size=32, warmup_steps=1)
    built = build_toy_world(people=MIN_PEOPLE, seed=3, config=cfg)
    assert not built.shipped and built.matches_shipped is None  # nothing of these parameters is shipped
    assert built.root.parent == own_cache / "toy"
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    entry = ship_world(built.root, shipped_dir)
    assert entry["weights_sha256"] == built.weights_sha256
    assert entry["files"] == file_checksums(shipped_dir / built.root.name)
    monkeypatch.setattr(shipped_module, "SHIPPED_DIR", shipped_dir)

    found = build_toy_world(people=MIN_PEOPLE, seed=3, config=cfg)
    assert found.shipped and found.root == shipped_dir / built.root.name
    rebuilt = build_toy_world(people=MIN_PEOPLE, seed=3, config=cfg, force=True)
    assert not rebuilt.shipped and not rebuilt.cached and rebuilt.root == built.root
    assert rebuilt.matches_shipped is True  # a rebuild on the same machine gives the same weights

    manifest = json.loads((shipped_dir / MANIFEST_FILE).read_text())
    manifest[built.root.name]["weights_sha256"]["model"] = "0" * 64
    (shipped_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    other = build_toy_world(people=MIN_PEOPLE, seed=3, config=cfg, out=built.root)  # reused, then compared
    assert other.cached and not other.shipped and other.matches_shipped is False
    assert not warnings
    changed = build_toy_world(people=MIN_PEOPLE, seed=3, config=cfg)  # the shipped world no longer matches
    assert changed.shipped and changed.matches_shipped is False
    assert len(warnings) == 1 and "differ from the shipped world's manifest" in warnings[0]
