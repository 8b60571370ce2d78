"""World folders and their cache: keys, locations, the folder layout, reuse of a world already built.

A world (toy or TOFU) is one folder: ``model/`` (the memorizer), ``retain_model/`` (trained without the
forget set), ``data/{forget,retain,holdout}.jsonl`` and ``world.json`` (its key, parameters and figures).
By default it lives in the user cache folder under a key of everything that determines its content, so a
second build with the same parameters reuses it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from sau_compress.errors import OutputExistsError
from sau_compress.io import atomic_output_dir, cache_dir, check_writable_parent

__all__ = [
    "DATA_SUBDIR",
    "MODEL_SUBDIR",
    "RETAIN_MODEL_SUBDIR",
    "WORLD_FILE",
    "ToyWorld",
    "WorldCacheSpec",
    "device_tag",
    "load_cached_world",
    "reuse_world",
    "weights_checksum",
    "world_weights",
    "write_world",
]

#: Subfolders and file of a world folder.
MODEL_SUBDIR = "model"
RETAIN_MODEL_SUBDIR = "retain_model"
DATA_SUBDIR = "data"
WORLD_FILE = "world.json"


@dataclass
class ToyWorld:
    """Where a world (toy or TOFU) lives and how well its memorizer remembers."""

    root: Path
    model_dir: Path
    retain_model_dir: Path
    data_dir: Path
    people: int
    seed: int
    rouge: dict[str, float] = field(default_factory=dict)
    retain_model_rouge: dict[str, float] = field(default_factory=dict)
    parameters: int = 0
    seconds: float = 0.0
    build_seconds: float = 0.0
    cached: bool = False
    #: SHA-256 of each model's weight files (``model``, ``retain_model``): two builds with the same key gave the
    #: same weights exactly when these agree (builds are deterministic on one machine, not across machines)
    weights_sha256: dict[str, str] = field(default_factory=dict)
    #: the world is the one shipped in the package (:mod:`sau_compress.worlds.shipped`), not a build
    shipped: bool = False
    #: whether ``weights_sha256`` equals the shipped world's of the same parameters; ``None`` when none is shipped
    matches_shipped: bool | None = None

    @classmethod
    def at(cls, root: Path, **fields: Any) -> ToyWorld:
        """The world in folder ``root`` (its model, retain-model and data folders follow the layout), with the
        checksums of its weights.

        :param root: the world folder
        :param fields: the other fields (``people``, ``seed``, figures)
        """
        return cls(root=root, model_dir=root / MODEL_SUBDIR, retain_model_dir=root / RETAIN_MODEL_SUBDIR,
                   data_dir=root / DATA_SUBDIR, weights_sha256=world_weights(root), **fields)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (paths as strings)."""
        out = asdict(self)
        for key in ("root", "model_dir", "retain_model_dir", "data_dir"):
            out[key] = str(out[key])
        return out


def weights_checksum(folder: Path) -> str:
    """SHA-256 over a model folder's ``*.safetensors`` files (in name order): equal exactly when the saved
    weights are (``save_pretrained`` writes the same bytes for the same tensors).

    :param folder: a model folder
    :return: 64 hex digits
    :raises FileNotFoundError: the folder holds no safetensors file
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in '{folder}'")
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def world_weights(root: Path) -> dict[str, str]:
    """The :func:`weights_checksum` of a world folder's two models.

    :param root: a world folder
    :return: ``{"model": ..., "retain_model": ...}``
    """
    return {"model": weights_checksum(root / MODEL_SUBDIR),
            "retain_model": weights_checksum(root / RETAIN_MODEL_SUBDIR)}


def device_tag(device: str) -> dict[str, str]:
    """The training device's part of a world's cache key: empty on the CPU (so CPU keys are unchanged), else
    the device type (a world trained on a GPU has other weights than the same world trained on the CPU).

    :param device: ``cpu``, ``cuda``, ``cuda:1`` ...
    """
    kind = str(device).split(":")[0]
    return {} if kind == "cpu" else {"device": kind}


@dataclass(frozen=True)
class WorldCacheSpec:
    """How a family of worlds (toy, TOFU) is keyed and named in the cache.

    A world's key hashes the family's ``version``, its size, its seed, the training config and the training
    device (off the CPU); its cache folder is ``<cache>/<folder>/<size_label><size>-seed<seed>-<key>``.

    :ivar folder: the family's subfolder of the user cache (``toy``, ``tofu``)
    :ivar version: bumped when the family's data or training recipe changes
    :ivar size_field: the name of the world's size in the key (``people``, ``retain_authors``)
    :ivar size_label: its prefix in the folder name (``people``, ``retain``)
    """

    folder: str
    version: int
    size_field: str
    size_label: str

    def key(self, size: int, seed: int, config: Any, device: str = "cpu",
            extra: Mapping[str, Any] | None = None) -> str:
        """The cache key of the world with these parameters: a short hash of what determines its content.

        :param size: number of people (or retain authors)
        :param seed: the world's seed
        :param config: the training config (a dataclass, hashed under ``train``)
        :param device: the training device (see :func:`device_tag`)
        :param extra: further parameters of the content (e.g. prior knowledge); left out of the hash when empty,
            so the keys of worlds without them do not change
        :return: 12 hex digits
        """
        fields = {"version": self.version, self.size_field: size, "seed": seed, "train": asdict(config),
                  **device_tag(device), **(dict(extra) if extra else {})}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def location(
        self, size: int, seed: int, config: Any, device: str = "cpu", out: str | os.PathLike[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, Path]:
        """The key of the world with these parameters and its folder: ``out`` when given, else its cache folder.

        :param out: a folder the user chose instead of the cache
        :param extra: see :meth:`key`
        :return: ``(key, folder)`` (the folder absolute)
        """
        key = self.key(size, seed, config, device, extra)
        if out is not None:
            return key, Path(out).expanduser().absolute()
        return key, cache_dir() / self.folder / self.folder_name(size, seed, key)

    def folder_name(self, size: int, seed: int, key: str) -> str:
        """The name of a world's cache folder (and of its shipped folder): ``<size_label><size>-seed<seed>-<key>``."""
        return f"{self.size_label}{size}-seed{seed}-{key}"


def load_cached_world(root: Path, key: str) -> ToyWorld | None:
    """Read the world saved in ``root`` if its ``world.json`` carries ``key``.

    :param root: a world folder
    :param key: the expected cache key
    :return: the world (``cached`` set), or ``None`` when ``root`` holds no world or one of another key
    """
    meta_path = root / WORLD_FILE
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("key") != key:
        return None
    return ToyWorld.at(
        root,
        people=meta.get("people", meta.get("authors")),
        seed=meta["seed"],
        rouge=meta["rouge"],
        retain_model_rouge=meta["retain_model_rouge"],
        parameters=meta["parameters"],
        build_seconds=meta["build_seconds"],
        cached=True,
    )


def reuse_world(
    root: Path, key: str, force: bool, start: float, kind: str, where: str = ""
) -> ToyWorld | None:
    """Return the world cached in ``root`` under ``key`` (unless ``force``); otherwise check that ``root``
    may be built into: its parent is writable and it is empty or holds a world (which will be replaced).

    :param root: the world folder
    :param key: the world's cache key
    :param force: ignore a cached world (it will be rebuilt)
    :param start: ``time.perf_counter()`` when the build started (for ``seconds``)
    :param kind: the world's name in messages (``toy``, ``TOFU``)
    :param where: what ``root`` is to the user, prefixed to the path in errors (e.g. ``"--out "``)
    :return: the cached world, or ``None`` when it is to be built
    :raises OutputExistsError: ``root`` holds something other than a world
    """
    if not force:
        cached = load_cached_world(root, key)
        if cached is not None:
            cached.seconds = time.perf_counter() - start
            logger.info(f"{kind} world found in {root}")
            return cached
    check_writable_parent(root)
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{where}'{root}' is a file, not a folder; name a folder to build the {kind} world in")
    if root.exists() and not (root / WORLD_FILE).is_file() and any(root.iterdir()):
        raise OutputExistsError(f"{where}'{root}' exists and does not hold a {kind} world; choose another folder")
    return None


def write_world(
    root: Path,
    tokenizer: Any,
    memorizer: Any,
    retain_model: Any,
    splits: Mapping[str, list[dict[str, Any]]],
    record: Mapping[str, Any],
    record_weights: bool = False,
) -> None:
    """Write a world folder atomically (an existing one is replaced once the new one is complete).

    :param root: the world folder
    :param tokenizer: saved beside each model
    :param memorizer: the model trained on forget + retain (``model/``)
    :param retain_model: the model trained on retain only (``retain_model/``)
    :param splits: QA records per split (``data/<split>.jsonl``)
    :param record: the content of ``world.json`` (with the cache ``key`` :func:`load_cached_world` checks)
    :param record_weights: add the :func:`world_weights` of the models as written to ``world.json``
        (``weights_sha256``)
    """
    with atomic_output_dir(root, overwrite=True) as tmp:
        for sub, model in ((MODEL_SUBDIR, memorizer), (RETAIN_MODEL_SUBDIR, retain_model)):
            model.save_pretrained(tmp / sub)
            tokenizer.save_pretrained(tmp / sub)
        (tmp / DATA_SUBDIR).mkdir()
        for name, rows in splits.items():
            with (tmp / DATA_SUBDIR / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        if record_weights:
            record = {**record, "weights_sha256": world_weights(tmp)}
        (tmp / WORLD_FILE).write_text(json.dumps(record, indent=2))
