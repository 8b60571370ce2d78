"""The bundled models' names: ``toy`` (the toy world's memorizer) and ``toy-retain`` (its retain model).

Wherever a model path is expected, these words stand for the default toy world's model folders (the world
shipped in the package, :mod:`sau_compress.worlds.shipped`), and :func:`toy_data_file` names its data files.
"""

from __future__ import annotations

from pathlib import Path

from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.worlds.cache import MODEL_SUBDIR, RETAIN_MODEL_SUBDIR, ToyWorld
from sau_compress.worlds.toy import build_toy_world

__all__ = ["TOY_ALIASES", "TOY_SPLITS", "resolve_model_path", "toy_data_file"]

#: Words that stand for a bundled model wherever a model path is expected (word -> subfolder of the world).
TOY_ALIASES = {"toy": MODEL_SUBDIR, "toy-retain": RETAIN_MODEL_SUBDIR}
#: The toy world's data splits.
TOY_SPLITS = ("forget", "retain", "holdout")


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Map ``toy`` (the memorizer) or ``toy-retain`` (its retain model) to their folders in the shipped
    default world; any other value must be an existing folder.

    :param name_or_path: a model folder or one of :data:`TOY_ALIASES`
    :return: the model folder
    :raises InputNotFoundError: the path does not exist, or is a file
    """
    text = str(name_or_path)
    if text in TOY_ALIASES:
        world = build_toy_world()
        return world.root / TOY_ALIASES[text]
    path = Path(text).expanduser()
    if not path.is_dir():
        what = "is a file, not a model folder" if path.is_file() else "not found"
        raise InputNotFoundError(f"model '{text}' {what}: expected a model folder or one of {sorted(TOY_ALIASES)}")
    return path


def toy_data_file(split: str, world: ToyWorld | None = None) -> Path:
    """Path of a split of the (default) toy world.

    :param split: ``forget``, ``retain`` or ``holdout``
    :param world: the world (default: the default toy world, the shipped one)
    :raises UserError: an unknown split
    """
    if split not in TOY_SPLITS:
        raise UserError(f"unknown toy split '{split}'; choose from {sorted(TOY_SPLITS)}")
    world = world or build_toy_world()
    return world.data_dir / f"{split}.jsonl"
