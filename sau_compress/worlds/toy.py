"""The embedded default: a toy world of fictitious people and a tiny Llama that has memorized it.

Everything is built locally from a seed (no download): QA records in TOFU's schema split *by person* into
forget (10%), retain (80%) and holdout (10%, never trained) (:mod:`sau_compress.worlds.facts`), then a
tokenizer, the *memorizer* and the *retain model* are trained on them (:mod:`sau_compress.worlds.training`).
The result is cached in the user's cache folder under a key of the world's parameters
(:mod:`sau_compress.worlds.cache`), so the second call is instant. The default world (40 people, seed 0) is
not built at all: it is shipped in the package (:mod:`sau_compress.worlds.shipped`), so its figures are the
same on every machine; ``force`` rebuilds it and says whether the rebuilt weights match the shipped ones.

A world can also hold *prior knowledge* (``prior_people``): further people whose facts both models learn
first, on their own, and keep rehearsing while they learn the world's people; they are in no split that
unlearning touches, so they stand for what a pretrained model knew before its fine-tune (TOFU's real authors
and world facts) and let model utility measure damage that the retain loss does not guard.
"""

from __future__ import annotations

import time
from pathlib import Path

from loguru import logger

from sau_compress.errors import UserError
from sau_compress.worlds.cache import ToyWorld, WorldCacheSpec, reuse_world
from sau_compress.worlds.facts import MIN_PEOPLE, make_people, make_records, qa_corpus, split_people
from sau_compress.worlds.shipped import load_shipped_world, shipped_weights
from sau_compress.worlds.training import ToyTrainConfig, train_world

__all__ = ["TOY_VERSION", "TOY_WORLDS", "build_toy_world", "toy_world_cache_dir"]

#: Bump when the generator or the training recipe changes: it is part of the cache key.
TOY_VERSION = 2
#: Keys and cache folders of toy worlds: ``<cache>/toy/people<N>-seed<S>-<key>``.
TOY_WORLDS = WorldCacheSpec(folder="toy", version=TOY_VERSION, size_field="people", size_label="people")


def _prior_key(prior_people: int, prior_epochs: int) -> dict[str, int] | None:
    return {"prior_people": prior_people, "prior_epochs": prior_epochs} if prior_people else None


def toy_world_cache_dir(people: int = 40, seed: int = 0, config: ToyTrainConfig | None = None,
                        device: str = "cpu", prior_people: int = 0, prior_epochs: int = 20) -> Path:
    """Cache folder of the toy world that :func:`build_toy_world` builds with these parameters."""
    return TOY_WORLDS.location(people, seed, config or ToyTrainConfig(), device,
                               extra=_prior_key(prior_people, prior_epochs))[1]


def build_toy_world(
    people: int = 40,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
    config: ToyTrainConfig | None = None,
    device: str = "cpu",
    prior_people: int = 0,
    prior_epochs: int = 20,
) -> ToyWorld:
    """Build (or reuse) the toy world: data splits, tokenizer, memorizer and retain model.

    A world shipped in the package with these parameters (the default world) is returned as it is, unless
    ``out`` or ``force`` is given. Otherwise the world is written atomically to ``out`` (default: the user cache
    folder under a key of the parameters) and reused on later calls with the same parameters; where a world of
    these parameters is shipped, ``matches_shipped`` says whether the built weights are the shipped ones.

    :param people: number of fictitious people (at least :data:`~sau_compress.worlds.facts.MIN_PEOPLE`)
    :param seed: seed for people, splits, initialisation and data order
    :param out: folder to build into; an existing folder that holds another world is refused
    :param force: build even when a matching world is shipped or exists
    :param config: model and training hyperparameters
    :param device: where the models are trained; a world trained off the CPU is cached under another key
    :param prior_people: people of the prior knowledge (``data/prior.jsonl``; 0: none, the default world)
    :param prior_epochs: epochs of the first stage, on the prior knowledge alone
    :return: paths and memorization figures (greedy-answer ROUGE-L recall per split)
    :raises UserError: fewer than ``MIN_PEOPLE`` people, or a negative ``prior_people``
    :raises OutputExistsError: ``out`` holds something other than a world
    """
    config = config or ToyTrainConfig()
    start = time.perf_counter()
    if people < MIN_PEOPLE:
        raise UserError(f"--people must be at least {MIN_PEOPLE} (one person per split), got {people}")
    if prior_people < 0:
        raise UserError(f"prior_people must be 0 or more, got {prior_people}")
    key, root = TOY_WORLDS.location(people, seed, config, device, out, extra=_prior_key(prior_people, prior_epochs))
    name = TOY_WORLDS.folder_name(people, seed, key)
    shipped = None if out is not None or force else load_shipped_world(name, key)
    world = shipped or reuse_world(root, key, force, start, "toy", "--out ")
    if world is None:
        world = _build(people, seed, root, key, config, device, prior_people, prior_epochs, start)
    reference = shipped_weights(name)
    world.matches_shipped = None if reference is None else world.weights_sha256 == reference
    if world.shipped and not world.matches_shipped:
        logger.warning(f"the weights in '{world.root}' differ from the shipped world's manifest: they were changed")
    world.seconds = time.perf_counter() - start
    return world


def _build(people: int, seed: int, root: Path, key: str, config: ToyTrainConfig, device: str, prior_people: int,
           prior_epochs: int, start: float) -> ToyWorld:
    """Draw the world's people, records and splits and train its models into ``root`` (:func:`train_world`)."""
    # the prior people are drawn with the world's people (distinct names) and split off before the split by person
    everyone = make_people(people + prior_people, seed)
    world_people, prior = everyone[:people], everyone[people:]
    records = make_records(everyone, seed)
    split = split_people(world_people, seed)
    if prior:
        split["prior"] = sorted(p["name"] for p in prior)
    members = {name: set(names) for name, names in split.items()}
    splits = {name: [r for r in records if r["person"] in people_of] for name, people_of in members.items()}
    for rows in splits.values():
        for i, row in enumerate(rows):
            row["index"] = i
    meta = {"version": TOY_VERSION, "splits": split}
    if prior:
        meta.update(prior_people=prior_people, prior_epochs=prior_epochs)
    return train_world(root, key, splits, qa_corpus(records), config, seed, people, meta, start, device=device,
                       prior_epochs=prior_epochs)
