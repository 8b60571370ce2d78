"""The headline benchmark's pruning: the pruners, their calibration rows and the cached pruned folders.

Used through ``headline_core`` (which re-exports these names); see ``benchmarks/headline.py``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from sau_compress.io import atomic_output_dir, cache_dir

PRUNERS = ("magnitude", "wanda", "sparsegpt")
#: structure label -> ``mask_structure`` as llmcompressor spells it for SparseGPT/Wanda
STRUCTURES = {"50%": "0:0", "2:4": "2:4"}
#: bump when pruning changes (part of the pruned-folder cache key)
PRUNE_VERSION = 1


def evenly(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` evenly spaced records of ``records`` (all of them when there are not more)."""
    if n >= len(records):
        return list(records)
    step = len(records) / n
    return [records[int(i * step)] for i in range(n)]


def make_pruner(method: str, structure: str) -> Any:
    """The llmcompressor modifier of pruner ``method`` at 50% in ``structure`` (a key of :data:`STRUCTURES`),
    ``lm_head`` left dense."""
    if structure not in STRUCTURES:
        raise ValueError(f"unknown structure '{structure}'; choose from {list(STRUCTURES)}")
    mask = STRUCTURES[structure]
    ignore = ["re:.*lm_head"]
    if method == "magnitude":
        from sau_compress.magnitude import OneShotMagnitudePruningModifier

        return OneShotMagnitudePruningModifier(
            sparsity=0.5, mask_structure="unstructured" if mask == "0:0" else mask, ignore=ignore
        )
    if method == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return WandaPruningModifier(sparsity=0.5, mask_structure=mask, targets=["Linear"], ignore=ignore)
    if method == "sparsegpt":
        from llmcompressor.modifiers.obcq import SparseGPTModifier

        return SparseGPTModifier(sparsity=0.5, mask_structure=mask, targets=["Linear"], ignore=ignore)
    raise ValueError(f"unknown pruning method '{method}'; choose from {list(PRUNERS)}")


#: calibration rows of the pruners: this many evenly spaced records (every person/author counts)
CALIBRATION_SAMPLES = 64


def calibration_records(world: Any) -> list[dict[str, Any]]:
    """The pruners' calibration rows: :data:`CALIBRATION_SAMPLES` evenly spaced retain records, or on a world
    whose ``calibration`` is ``train`` (a pretrained world) forget + retain records, the memorizer's fine-tuning
    data: a deployer prunes the model it serves, calibrated on its own domain, before the deletion request
    (on SmolLM2 fine-tuned on TOFU, calibrating SparseGPT on the 20 retain records alone took the forget set
    below the forgetting target at 2:4 and every real-author and world-fact answer at 50%, docs/results.md)."""
    records = world.forget + world.retain if world.calibration == "train" else world.retain
    return evenly(records, CALIBRATION_SAMPLES)


def prune(model: torch.nn.Module, world: Any, method: str, structure: str) -> torch.nn.Module:
    """Prune ``model`` in place with :func:`sau_compress.pipeline.run_oneshot`, the pipeline's own path
    (calibration: :func:`calibration_records`, 256 tokens each).

    ``model`` must carry a ``name_or_path`` that oneshot can re-read (a model loaded from a folder).
    """
    from sau_compress.pipeline import run_oneshot

    run_oneshot(model, world.tokenizer, [make_pruner(method, structure)],
                calibration=calibration_records(world),
                num_calibration_samples=CALIBRATION_SAMPLES, max_seq_length=256)
    return model


def pruned_path(world: Any, method: str, structure: str, work: Path) -> Path:
    """Where :func:`pruned_dir` keeps the memorizer pruned by (``method``, ``structure``): keyed by the world's
    folder, the pruning and (where it is not the retain set) the calibration."""
    tag = "" if world.calibration == "retain" else f"-calibration={world.calibration}"
    key = hashlib.sha256(f"{PRUNE_VERSION}-{world.root}-{method}-{structure}{tag}".encode()).hexdigest()[:10]
    return work / "pruned" / f"{world.name}-{method}-{structure.replace('%', 'pct').replace(':', 'of')}-{key}"


def pruned_dir(world: Any, method: str, structure: str, work: Path) -> Path:
    """The folder of the memorizer pruned by (``method``, ``structure``): pruned once, then reused."""
    out = pruned_path(world, method, structure, work)
    if (out / "config.json").is_file():
        return out
    from sau_compress.export import load_model

    start = time.perf_counter()
    model = load_model(world.model_dir)
    prune(model, world, method, structure)
    with atomic_output_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        world.tokenizer.save_pretrained(tmp)
        (tmp / "prune.json").write_text(json.dumps({"method": method, "structure": structure,
                                                    "seconds": time.perf_counter() - start}))
    logger.info(f"pruned {world.name} with {method} {structure} in {time.perf_counter() - start:.1f}s -> {out}")
    return out


def default_work_dir() -> Path:
    """Where pruned folders are cached: ``<cache>/headline``."""
    return cache_dir() / "headline"
