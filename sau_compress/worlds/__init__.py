"""Worlds: small memorizer models of known QA data, built locally and cached, to unlearn from and measure.

- :mod:`~sau_compress.worlds.facts`: the toy world's fictitious people, QA records and split by person;
- :mod:`~sau_compress.worlds.tokenizer`: the byte-level BPE tokenizer trained on a world's text;
- :mod:`~sau_compress.worlds.training`: the tiny Llama, :func:`train_memorizer`, :func:`train_world`;
- :mod:`~sau_compress.worlds.cache`: world keys, cache folders, the folder layout, reuse of a cached world;
- :mod:`~sau_compress.worlds.toy`: :func:`build_toy_world`, the embedded default;
- :mod:`~sau_compress.worlds.shipped`: the worlds shipped in the package (the default toy world), their manifest;
- :mod:`~sau_compress.worlds.tofu`: :func:`build_tofu_world`, the same on a subset of TOFU;
- :mod:`~sau_compress.worlds.pretrained`: :func:`finetune_tofu_world`, the TOFU subset on a pretrained base
  model (fine-tuned, its own tokenizer kept);
- :mod:`~sau_compress.worlds.names`: the model names ``toy`` and ``toy-retain`` (:func:`resolve_model_path`).

Only the pipeline, the benchmarks and the tests import this package; evaluation never does (it is given a
world's ``data_dir``).
"""

from __future__ import annotations

from sau_compress.worlds.cache import ToyWorld, WorldCacheSpec, device_tag, load_cached_world, reuse_world, write_world
from sau_compress.worlds.facts import FACTS, MIN_PEOPLE, N_PERTURBED, make_people, make_records, qa_corpus, split_people
from sau_compress.worlds.names import TOY_ALIASES, TOY_SPLITS, resolve_model_path, toy_data_file
from sau_compress.worlds.pretrained import (
    DEFAULT_RETAIN_AUTHORS,
    PRETRAINED_TOFU_VERSION,
    FineTuneConfig,
    base_weights_sha256,
    default_finetune_config,
    finetune_tofu_world,
    pretrained_tofu_location,
)
from sau_compress.worlds.shipped import SHIPPED_DIR, load_shipped_world, ship_world, shipped_manifest, shipped_weights
from sau_compress.worlds.tofu import (
    TOFU_WORLD_VERSION,
    TOFU_WORLDS,
    build_tofu_world,
    default_tofu_train_config,
    select_tofu_subset,
    tofu_world_cache_dir,
)
from sau_compress.worlds.tokenizer import SPECIAL_TOKENS, train_bpe_tokenizer
from sau_compress.worlds.toy import TOY_VERSION, TOY_WORLDS, build_toy_world, toy_world_cache_dir
from sau_compress.worlds.training import ToyTrainConfig, rouge_by_split, train_memorizer, train_world

__all__ = [
    "DEFAULT_RETAIN_AUTHORS",
    "FACTS",
    "MIN_PEOPLE",
    "N_PERTURBED",
    "PRETRAINED_TOFU_VERSION",
    "SHIPPED_DIR",
    "SPECIAL_TOKENS",
    "TOFU_WORLDS",
    "TOFU_WORLD_VERSION",
    "TOY_ALIASES",
    "TOY_SPLITS",
    "TOY_VERSION",
    "TOY_WORLDS",
    "FineTuneConfig",
    "ToyTrainConfig",
    "ToyWorld",
    "WorldCacheSpec",
    "base_weights_sha256",
    "build_tofu_world",
    "build_toy_world",
    "default_finetune_config",
    "default_tofu_train_config",
    "device_tag",
    "finetune_tofu_world",
    "load_cached_world",
    "load_shipped_world",
    "make_people",
    "make_records",
    "pretrained_tofu_location",
    "qa_corpus",
    "resolve_model_path",
    "reuse_world",
    "rouge_by_split",
    "select_tofu_subset",
    "ship_world",
    "shipped_manifest",
    "shipped_weights",
    "split_people",
    "tofu_world_cache_dir",
    "toy_data_file",
    "toy_world_cache_dir",
    "train_bpe_tokenizer",
    "train_memorizer",
    "train_world",
    "write_world",
]
