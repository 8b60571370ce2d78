"""Worlds shipped inside the package (the default toy world), the same on every machine.

A world's weights depend on the machine that trains it (CPU kernels round differently), so the default world,
whose figures the README states, is built once and shipped as files under ``shipped-worlds/``, in a folder
named like its cache folder (``people40-seed0-<key>``). ``shipped-worlds/manifest.json`` lists the SHA-256 of
every file of each shipped world (the tests compare them exactly) and the checksums of its weights. A build
with a shipped world's parameters returns the shipped folder instead of training, unless forced; a forced build
says whether its weights match the shipped ones (:func:`shipped_weights`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from sau_compress.io import atomic_output_dir
from sau_compress.worlds.cache import WORLD_FILE, ToyWorld, load_cached_world, world_weights

__all__ = ["MANIFEST_FILE", "SHIPPED_DIR", "file_checksums", "load_shipped_world", "ship_world", "shipped_manifest",
           "shipped_weights"]

#: The folder of the shipped worlds, inside the package (an installed wheel has them too).
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped-worlds"
#: The manifest's name in :data:`SHIPPED_DIR`: world folder name -> ``key``, ``weights_sha256``, ``files``.
MANIFEST_FILE = "manifest.json"


def file_checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by path relative to it (``/``-separated, sorted).

    :param root: a folder
    :return: relative path -> 64 hex digits
    """
    out = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def shipped_manifest(shipped_dir: Path | None = None) -> dict[str, Any]:
    """The manifest of the shipped worlds (``{}`` when there is none).

    :param shipped_dir: the folder of shipped worlds (default :data:`SHIPPED_DIR`)
    """
    path = (shipped_dir or SHIPPED_DIR) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def shipped_weights(name: str, shipped_dir: Path | None = None) -> dict[str, str] | None:
    """The weights' checksums (``model``, ``retain_model``) of the shipped world ``name``, or ``None``.

    :param name: a world's cache folder name (``people40-seed0-0158da46fb9b``)
    :param shipped_dir: the folder of shipped worlds (default :data:`SHIPPED_DIR`)
    """
    entry = shipped_manifest(shipped_dir).get(name)
    return dict(entry["weights_sha256"]) if entry else None


def load_shipped_world(name: str, key: str, shipped_dir: Path | None = None) -> ToyWorld | None:
    """The shipped world ``name`` if it is shipped under ``key`` (marked ``shipped`` and ``cached``; whether its
    weights still match the manifest is :func:`shipped_weights`'s to tell).

    :param name: a world's cache folder name
    :param key: its cache key (checked against the shipped ``world.json``)
    :param shipped_dir: the folder of shipped worlds (default :data:`SHIPPED_DIR`)
    """
    shipped_dir = shipped_dir or SHIPPED_DIR
    if name not in shipped_manifest(shipped_dir):
        return None
    world = load_cached_world(shipped_dir / name, key)
    if world is not None:
        world.shipped = True
    return world


def ship_world(src: Path, shipped_dir: Path | None = None) -> dict[str, Any]:
    """Copy the world folder ``src`` into the shipped worlds (under its own name, replacing one of that name)
    and record its checksums in the manifest. For maintainers (``scripts/ship_world.py``).

    :param src: a built world folder (``world.json``, models, data), named like its cache folder
    :param shipped_dir: the folder of shipped worlds (default :data:`SHIPPED_DIR`)
    :return: the world's manifest entry
    :raises FileNotFoundError: ``src`` holds no world
    """
    src, shipped_dir = Path(src), shipped_dir or SHIPPED_DIR
    if not (src / WORLD_FILE).is_file():
        raise FileNotFoundError(f"'{src}' holds no world ({WORLD_FILE} not found)")
    with atomic_output_dir(shipped_dir / src.name, overwrite=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    root = shipped_dir / src.name
    entry = {
        "key": json.loads((root / WORLD_FILE).read_text())["key"],
        "weights_sha256": world_weights(root),
        "files": file_checksums(root),
    }
    manifest = shipped_manifest(shipped_dir)
    manifest[src.name] = entry
    tmp_manifest = shipped_dir / f".{MANIFEST_FILE}.tmp"
    tmp_manifest.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    tmp_manifest.replace(shipped_dir / MANIFEST_FILE)
    return entry
