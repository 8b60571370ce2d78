"""The headline benchmark's worlds: model sizes, the TOFU data folder, and which builder makes each world.

Split out of ``headline_core`` (which re-exports every name here); imports nothing of the benchmarks.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from sau_compress.data import tofu_data_dir
from sau_compress.unlearn.config import UnlearnConfig

__all__ = ["BUNDLED_TOFU_DIR", "MODEL_SIZES", "MODIFIER_DEFAULTS", "PRETRAINED_PRIOR_FILES", "PRETRAINED_RETAIN_EVAL",
           "PRETRAINED_STAGE", "PRETRAINED_WORLDS", "WORLD_PEOPLE", "WORLD_PRIOR", "build_world",
           "headline_tofu_data_dir", "pretrained_prior", "world_label"]

#: model sizes of the worlds, as overrides of the world's training config: ``tiny`` (hidden 192, 4 layers,
#: 2.2-2.6M parameters; trained on the CPU, the CPU default) and ``large`` (hidden 512, 8 layers, about 28M
#: parameters; trained on the benchmark's device, the CUDA default). A lower learning rate keeps the deeper
#: model's from-scratch memorization stable.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "large": {"hidden_size": 512, "intermediate_size": 1408, "num_layers": 8, "num_heads": 8,
              "learning_rate": 1e-3},
    # near capacity: 213K parameters for 240 people (WORLD_PEOPLE), so pruning costs what it costs real LLMs
    "capacity": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "epochs": 60,
                 "batch_size": 32},
}
#: people of the toy world per model size (default 40): more facts per parameter than the tiny world
WORLD_PEOPLE: dict[str, int] = {"capacity": 240}
#: prior-knowledge people of the toy world per model size (default none): learnt first and rehearsed, in no
#: split unlearning touches; model utility includes them (``sau_compress.worlds.build_toy_world``)
WORLD_PRIOR: dict[str, int] = {"capacity": 48}


#: worlds on a real pretrained model (:func:`sau_compress.pipeline.build_pretrained_tofu_world`): world name ->
#: base model; they have no model sizes (the base is the model) and are fine-tuned on the benchmark's device.
#: ``tofu-llama-3.2-1b`` is the GPU world (a hub id: it needs the hub and, at 1.24B parameters, a GPU); it has
#: not run in this project yet
PRETRAINED_WORLDS: dict[str, str] = {"tofu-smollm2": "smollm2-135m-instruct",
                                     "tofu-llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct"}


#: the modifier's defaults a pretrained world runs at (measured on SmolLM2, docs/pretrained.md), read from
#: ``UnlearnConfig`` so the benchmark follows them
MODIFIER_DEFAULTS: dict[str, Any] = {k: getattr(UnlearnConfig(), k)
                                     for k in ("learning_rate", "batch_size", "retain_weight", "max_grad_norm")}
#: the SAU stage's fields on a pretrained world where the benchmark's toy settings differ from the modifier's
#: defaults: the retain term's weight, and clipping
PRETRAINED_STAGE: dict[str, Any] = {k: MODIFIER_DEFAULTS[k] for k in ("retain_weight", "max_grad_norm")}

#: retain records (and as many prior-knowledge records) model utility uses on a pretrained world: one
#: evaluation of the 135M model scores about 500 answers, minutes on one CPU thread
PRETRAINED_RETAIN_EVAL = 20

#: the prior knowledge of a pretrained world: TOFU's real-author and world-fact questions (with their wrong
#: options), knowledge the base model had before fine-tuning; model utility covers them as TOFU's does
PRETRAINED_PRIOR_FILES = ("real_authors_perturbed", "world_facts_perturbed")


def pretrained_prior(tofu_dir: str | None = None) -> list[dict[str, Any]]:
    """The prior-knowledge records of a pretrained world (:data:`PRETRAINED_PRIOR_FILES`, in that order), read
    from the benchmark's TOFU folder (:func:`headline_tofu_data_dir`)."""
    from sau_compress.data import load_qa

    folder = headline_tofu_data_dir(tofu_dir)
    return [rec for name in PRETRAINED_PRIOR_FILES for rec in load_qa(str(folder / f"{name}.jsonl"))]


def world_label(name: str, size: str) -> str:
    """A world's name in records and tables: ``toy``/``tofu`` for the tiny models, else ``<name>-<size>``; a
    pretrained world (:data:`PRETRAINED_WORLDS`) by its name alone (``tofu-smollm2``)."""
    return name if size == "tiny" or name in PRETRAINED_WORLDS else f"{name}-{size}"


#: The TOFU copy bundled with the repository.
BUNDLED_TOFU_DIR = Path(__file__).resolve().parents[1] / "data" / "tofu"


def headline_tofu_data_dir(tofu_dir: str | None = None) -> Path:
    """The benchmark's TOFU data folder: :func:`sau_compress.data.tofu_data_dir` (``tofu_dir``, else
    ``$SAU_COMPRESS_TOFU_DIR``), else the copy bundled with the repository (``data/tofu``)."""
    return tofu_data_dir(tofu_dir) or BUNDLED_TOFU_DIR


def build_world(name: str, size: str, device: str, tofu_dir: str | None = None) -> tuple[Any, int, str]:
    """Build or reuse world ``name`` at model ``size`` (see ``headline_core.load_world``).

    :return: the built world (a ``sau_compress.worlds.ToyWorld``), the longest answer its evaluations generate,
        and the device it was trained on
    :raises ValueError: unknown world or size
    """
    from dataclasses import replace

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size '{size}'; choose from {list(MODEL_SIZES)}")
    train_device = "cpu" if size in ("tiny", "capacity") and name not in PRETRAINED_WORLDS else device
    if name in PRETRAINED_WORLDS:
        from sau_compress.pipeline import build_pretrained_tofu_world
        from sau_compress.worlds.pretrained import ANSWER_TOKENS

        built = build_pretrained_tofu_world(PRETRAINED_WORLDS[name], headline_tofu_data_dir(tofu_dir),
                                            device=train_device)
        max_new_tokens = ANSWER_TOKENS
    elif name == "toy":
        from sau_compress.worlds import ToyTrainConfig, build_toy_world

        built = build_toy_world(people=WORLD_PEOPLE.get(size, 40),
                                config=replace(ToyTrainConfig(), **MODEL_SIZES[size]), device=train_device,
                                prior_people=WORLD_PRIOR.get(size, 0))
        max_new_tokens = 32
    elif name == "tofu":
        from sau_compress.worlds import build_tofu_world, default_tofu_train_config

        built = build_tofu_world(headline_tofu_data_dir(tofu_dir),
                                 config=replace(default_tofu_train_config(), **MODEL_SIZES[size]),
                                 device=train_device)
        max_new_tokens = 64
    else:
        raise ValueError(f"unknown world '{name}'; choose from {['toy', 'tofu', *PRETRAINED_WORLDS]}")
    return built, max_new_tokens, train_device


#: how a world's forgetting target is set. ``memorizer-holdout``: the memorizer's mean forget ROUGE-L recall on
#: the holdout set. ``retain-band``: the retain model's mean on the forget set plus 1.96 standard errors over its
#: questions, the highest level still inside the 95% band of a model that never saw the forget authors (on
#: SmolLM2 the memorizer's holdout level, 0.326, lies below the retain model's own 0.335, and unlearning levels
#: off at 0.33-0.37, so reaching it was chance; docs/results.md)
TARGET_RULES = ("memorizer-holdout", "retain-band")


def retain_band(scores: list[float]) -> float:
    """The upper end of the normal 95% band of the mean of ``scores`` (per-question ROUGE-L recalls)."""
    if len(scores) < 2:
        raise ValueError(f"the retain band needs at least 2 questions, got {len(scores)}")
    return statistics.fmean(scores) + 1.96 * statistics.stdev(scores) / math.sqrt(len(scores))
