"""A tiny Llama memorizer of a TOFU subset and its retain model, built locally and cached.

The benchmark counterpart of :mod:`sau_compress.worlds.toy` on real data: TOFU's fictitious authors (MIT
licensed, see the data folder's README). A subset of authors is chosen so that everything trains on a laptop
CPU:

- ``forget``: TOFU's ``forget01`` split (the last 2 of the 200 authors, 40 QA pairs, with TOFU's own
  paraphrased and perturbed answers);
- ``retain``: the first ``retain_authors`` authors of ``retain_perturbed`` (20 QA pairs each, with
  paraphrased and perturbed answers, so the retain truth ratio and model utility are defined);
- ``holdout``: TOFU's ``holdout01`` (2 authors never in TOFU's training set): the forgetting target is the
  memorizer's ROUGE-L recall on these unseen authors.

A byte-level BPE tokenizer is trained on the subset's text, then :func:`sau_compress.worlds.training.train_world`
trains the *memorizer* on forget + retain and the *retain model* on retain only (the reference of forget
quality). The folder layout is the toy world's (:mod:`sau_compress.worlds.cache`), so every consumer of a
:class:`~sau_compress.worlds.cache.ToyWorld` reads it unchanged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sau_compress.data import TOFU_DIR_ENV, load_qa, tofu_data_dir
from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.worlds.cache import ToyWorld, WorldCacheSpec, reuse_world
from sau_compress.worlds.facts import qa_corpus
from sau_compress.worlds.training import ToyTrainConfig, train_world

__all__ = [
    "ROWS_PER_AUTHOR",
    "TOFU_WORLDS",
    "TOFU_WORLD_VERSION",
    "build_tofu_world",
    "check_retain_authors",
    "default_tofu_train_config",
    "find_tofu_folder",
    "select_tofu_subset",
    "tofu_world_cache_dir",
]

#: Bump when the subset selection or the training recipe changes: it is part of the cache key.
TOFU_WORLD_VERSION = 1
#: QA pairs per TOFU author (the files hold authors in blocks of this many rows).
ROWS_PER_AUTHOR = 20
#: Keys and cache folders of TOFU worlds: ``<cache>/tofu/retain<N>-seed<S>-<key>``.
TOFU_WORLDS = WorldCacheSpec(folder="tofu", version=TOFU_WORLD_VERSION, size_field="retain_authors",
                             size_label="retain")


def default_tofu_train_config() -> ToyTrainConfig:
    """The memorizer recipe for TOFU's longer answers: the toy architecture, a larger vocabulary, longer
    sequences and more epochs (TOFU answers average 25 words, up to 66)."""
    return ToyTrainConfig(vocab_size=2048, epochs=90, batch_size=16, learning_rate=3e-3, warmup_steps=30,
                          max_length=128)


def check_retain_authors(retain_authors: int) -> None:
    """:raises UserError: ``retain_authors`` is not in [1, 20] (retain_perturbed holds 20 complete authors)"""
    if not 1 <= retain_authors <= 20:
        raise UserError(f"retain_authors must be in [1, 20], got {retain_authors}")


def find_tofu_folder(tofu_dir: str | os.PathLike[str] | None) -> Path:
    """The TOFU data folder to read: ``tofu_dir``, else ``$SAU_COMPRESS_TOFU_DIR``.

    :raises UserError: neither is given
    :raises InputNotFoundError: the folder does not exist
    """
    folder = tofu_data_dir(tofu_dir)
    if folder is None:
        raise UserError(f"no TOFU folder: pass tofu_dir or set ${TOFU_DIR_ENV} to a folder with TOFU's jsonl files")
    if not folder.is_dir():
        raise InputNotFoundError(f"TOFU folder '{folder}' not found")
    return folder


def select_tofu_subset(tofu_dir: str | os.PathLike[str], retain_authors: int = 6) -> dict[str, list[dict[str, Any]]]:
    """The QA records of the subset: ``forget`` (forget01), ``retain`` (first authors of retain_perturbed),
    ``holdout`` (holdout01), each record with an ``index`` (its position) and an ``author`` number.

    :param tofu_dir: folder with TOFU's ``forget01_perturbed``, ``retain_perturbed`` and ``holdout01`` files
    :param retain_authors: number of retain authors (1 to 20; retain_perturbed holds 20 complete authors)
    :return: split name -> records
    :raises UserError: ``retain_authors`` out of range
    :raises InputNotFoundError: a TOFU file is missing
    """
    check_retain_authors(retain_authors)
    folder = Path(tofu_dir).expanduser()
    files = {"forget": "forget01_perturbed", "retain": "retain_perturbed", "holdout": "holdout01"}
    out: dict[str, list[dict[str, Any]]] = {}
    for split, stem in files.items():
        path = folder / f"{stem}.jsonl"
        if not path.is_file():
            raise InputNotFoundError(f"TOFU file '{path}' not found (needed for the {split} split)")
        rows = load_qa(str(path))
        if split == "retain":
            rows = rows[: retain_authors * ROWS_PER_AUTHOR]
        out[split] = [
            {**{k: v for k, v in row.items() if k != "index"}, "index": i, "author": i // ROWS_PER_AUTHOR}
            for i, row in enumerate(rows)
        ]
    return out


def tofu_world_cache_dir(retain_authors: int = 6, seed: int = 0, config: ToyTrainConfig | None = None,
                         device: str = "cpu") -> Path:
    """Cache folder of the TOFU world that :func:`build_tofu_world` builds with these parameters (not the
    folder of TOFU's data files: that is :func:`sau_compress.data.tofu_data_dir`)."""
    return TOFU_WORLDS.location(retain_authors, seed, config or default_tofu_train_config(), device)[1]


def build_tofu_world(
    tofu_dir: str | os.PathLike[str] | None = None,
    retain_authors: int = 6,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    config: ToyTrainConfig | None = None,
    device: str = "cpu",
) -> ToyWorld:
    """Build (or reuse) the TOFU-subset world: data splits, tokenizer, memorizer and retain model.

    :param tofu_dir: folder of TOFU's data files (default ``$SAU_COMPRESS_TOFU_DIR``; not needed when the
        world is cached)
    :param retain_authors: number of retain authors (20 QA pairs each)
    :param seed: seed of initialisation and data order
    :param out: folder to build into (default: the cache folder under a key of the parameters)
    :param force: rebuild even when a matching world exists
    :param config: architecture and training hyperparameters (default :func:`default_tofu_train_config`)
    :param device: where the models are trained; a world trained off the CPU is cached under another key
    :return: a :class:`~sau_compress.worlds.cache.ToyWorld` (``people`` holds the number of authors);
        ``rouge`` is the memorizer's greedy-answer ROUGE-L recall per split
    :raises UserError: no TOFU data folder given or set
    :raises InputNotFoundError: the TOFU data folder or one of its files does not exist
    """
    config = config or default_tofu_train_config()
    start = time.perf_counter()
    key, root = TOFU_WORLDS.location(retain_authors, seed, config, device, out)
    cached = reuse_world(root, key, force, start, "TOFU")
    if cached is not None:
        return cached

    splits = select_tofu_subset(find_tofu_folder(tofu_dir), retain_authors)
    corpus = qa_corpus(r for rows in splits.values() for r in rows)
    meta = {
        "version": TOFU_WORLD_VERSION,
        "source": "TOFU (locuslab/TOFU, MIT): forget01_perturbed, retain_perturbed[:20*retain_authors], holdout01",
        "authors": 2 + retain_authors + 2,
        "retain_authors": retain_authors,
    }
    return train_world(root, key, splits, corpus, config, seed, 2 + retain_authors + 2, meta, start, desc="TOFU",
                       max_new_tokens=config.max_length, device=device)
