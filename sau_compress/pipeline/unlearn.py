"""What ``sau-compress unlearn`` does: the unlearning stage alone, on an already pruned model.

The model is read from a folder (plain HF, compressed-tensors, or our ``dense``/``sparse-24-bitmask`` export),
the stage's settings are the fields of :class:`~sau_compress.modifier.SparsityAwareUnlearningModifier` (validated
by that class, so the two cannot drift), and the work is :func:`sau_compress.unlearn.unlearn`, the same
function the modifier calls. The result is written like ``run`` writes its own (same formats, the sidecar
with the unlearning record), atomically. A model that already carries unlearning records (a second deletion
request) keeps them: the sidecar's ``unlearning_history`` lists every request in order, the newest last.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this function: the model is sharded layer by layer
with FSDP2 (:class:`~sau_compress.unlearn.shard.ShardContext`), and rank 0 gathers the weights and writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from sau_compress.errors import UserError
from sau_compress.pipeline.models import load_model_and_tokenizer, resolve_model
from sau_compress.pipeline.recipes import SAU_MODIFIER, parse_overrides, validation_problems
from sau_compress.pipeline.run import (
    EXPORT_FORMATS,
    check_output,
    eval_sets_for,
    pick_export_format,
    target_layer_stats,
    timed_summary,
    weight_stats,
)

__all__ = ["check_unlearn_args", "launch_sharded", "unlearn_model"]

#: modifier fields that name things ``unlearn`` takes as its own options
_OWN_OPTIONS = {"forget": "--forget", "retain": "--retain", "device": "--device"}


def _stage(model_path: Path, forget: str, retain: str | None, overrides: Sequence[str] | None,
           device: str | None) -> Any:
    """The validated stage settings: a :class:`SparsityAwareUnlearningModifier` built from ``--set``."""
    from pydantic import ValidationError

    from sau_compress.modifier import SparsityAwareUnlearningModifier

    parsed = parse_overrides(list(overrides or []))
    others = sorted(set(parsed) - {SAU_MODIFIER})
    if others:
        raise UserError(f"--set names {others}: unlearn has one stage ({SAU_MODIFIER}); use plain key=value")
    fields = dict(parsed.get(SAU_MODIFIER, {}))
    for key, option in _OWN_OPTIONS.items():
        if key in fields:
            raise UserError(f"--set {key}=...: pass {option} instead")
    fields.update(forget=forget, retain=retain, device=device)
    fields.setdefault("tokenizer", str(model_path))
    try:
        return SparsityAwareUnlearningModifier.model_validate(fields)
    except ValidationError as err:
        raise UserError(f"unlearn settings rejected: {validation_problems(err)}") from err


def _memory(result: Any, shard: Any) -> list[dict[str, Any]]:
    """What each process held (one entry per rank): its model bytes (its shards), the optimizer state, the
    mask bits and the measured peak."""
    mine = {"model_bytes": result.extra["model_bytes"], "optimizer_state_bytes": result.optimizer_state_bytes,
            "mask_bytes": result.extra["mask_bytes"], "peak_memory_bytes": result.peak_memory_bytes,
            "memory_measure": result.memory_measure}
    return shard.gather_objects(mine) if shard is not None else [mine]


def _history(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The unlearning records the input model's sidecar holds, oldest first."""
    if not previous:
        return []
    if previous.get("unlearning_history"):
        return list(previous["unlearning_history"])
    return [previous["unlearning"]] if previous.get("unlearning") else []


def check_unlearn_args(model: str | os.PathLike[str], output: str | os.PathLike[str], forget: str,
                       retain: str | None = None, overrides: Sequence[str] | None = None,
                       export_format: str = "auto", overwrite: bool = False, device: str | None = None) -> None:
    """Check what :func:`unlearn_model` would check before loading anything (the launcher calls it, so a bad
    option fails once, with one line, before any process starts).

    :raises UserError: as :func:`unlearn_model`
    """
    from sau_compress.export import check_format

    check_format(export_format, EXPORT_FORMATS)
    model_path = resolve_model(str(model))
    check_output(model_path, Path(output).expanduser().absolute(), overwrite)
    _stage(model_path, forget, retain, overrides, device)


def launch_sharded(nproc: int, args: Sequence[str]) -> int:
    """Run ``sau-compress unlearn ARGS`` in ``nproc`` processes with torchrun (``torch.distributed.run``,
    standalone: one machine, a free port), its output passed through.

    :return: torchrun's exit code (0 when every process succeeded; non-zero when any failed, and then no
        output folder was written)
    :raises UserError: ``nproc`` below 1
    """
    import subprocess
    import sys

    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "sau_compress.cli.app", "unlearn", *args]
    logger.info(f"launching {nproc} processes: {' '.join(command)}")
    return subprocess.run(command, check=False).returncode


def unlearn_model(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    forget: str,
    retain: str | None = None,
    overrides: Sequence[str] | None = None,
    export_format: str = "auto",
    overwrite: bool = False,
    evaluate: bool = True,
    eval_limit: int | None = None,
    eval_batch_size: int = 16,
    max_new_tokens: int = 64,
    device: str | None = None,
    callback: Callable[[int, Any], bool] | None = None,
) -> dict[str, Any]:
    """Unlearn ``forget`` from a pruned model folder and write the result (the modifier's stage on its own).

    :param model: a model folder (plain HF, compressed-tensors, our ``dense`` or ``sparse-24-bitmask``)
    :param output: the folder to write (must not exist unless ``overwrite``; never the input folder)
    :param forget: the forget set (any source :func:`sau_compress.data.load_qa` reads)
    :param retain: the retain set (methods with a retain term need it; evaluation too)
    :param overrides: ``key=value`` settings, the fields of ``SparsityAwareUnlearningModifier``
        (``max_steps=20``, ``mode=topk``, ``prompt_format=plain`` ...)
    :param export_format: ``auto`` (``sparse-24-bitmask`` when every target layer is 2:4), or a format name
    :param evaluate: before/after ROUGE-L recall and answer NLL on forget and retain
    :param device: ``cpu`` or ``cuda`` (default: CUDA when available); under torchrun each process takes
        ``cuda:LOCAL_RANK``
    :param callback: ``callback(step, model)`` after every optimizer step; ``True`` stops early (see
        :func:`sau_compress.unlearn.unlearn`)
    :return: ``output``, ``model``, ``format``, ``prompt_format``, ``before``/``after``, ``sparsity``,
        ``two_four``, ``pattern_preserved``, ``memory`` (per rank: model, optimizer-state and mask bytes, measured
        peak), ``requests`` (unlearning requests recorded in the output,
        this one included), ``unlearn`` (the result), ``rank``/``world_size``, ``seconds``, ``timings``
    """
    from sau_compress.export import check_format, save_model, unlearning_record
    from sau_compress.export.metadata import read_sidecar
    from sau_compress.unlearn import UnlearnJob, unlearn
    from sau_compress.unlearn.shard import ShardContext

    start = time.perf_counter()
    timings: dict[str, float] = {}
    check_format(export_format, EXPORT_FORMATS)
    if eval_limit is not None and eval_limit < 1:
        raise UserError(f"eval_limit must be at least 1, got {eval_limit}")
    output = Path(output).expanduser().absolute()
    model_path = resolve_model(str(model))
    check_output(model_path, output, overwrite)
    stage = _stage(model_path, forget, retain, overrides, device)
    shard = ShardContext(device) if ShardContext.requested() else None
    try:
        t = time.perf_counter()
        net, tokenizer = load_model_and_tokenizer(model_path, "cpu" if shard is not None else device)
        from sau_compress.data import resolve_prompt_format

        prompt_format = resolve_prompt_format(tokenizer, stage.prompt_format)
        records = {"forget": stage.forget.load(), "retain": stage.retain.load() if stage.retain else None}
        job = UnlearnJob.from_records(tokenizer, records["forget"], records["retain"], stage.max_length,
                                      prompt_format, callback)
        timings["load"] = time.perf_counter() - t
        eval_sets = eval_sets_for(records, eval_limit, evaluate)
        before = after = None
        if evaluate:  # on the whole model, before it is sharded (every process gets the same numbers)
            before = timed_summary(net, tokenizer, eval_sets, eval_batch_size, max_new_tokens, prompt_format,
                                   timings, "before")
        if shard is not None:
            shard.shard_model(net)

        t = time.perf_counter()
        with torch.enable_grad():
            result = unlearn(net, job.forget, job.retain, stage.config, job.pad_token_id, job.callback, shard=shard)
        timings["unlearn"] = time.perf_counter() - t
        if evaluate:
            after = timed_summary(net, tokenizer, eval_sets, eval_batch_size, max_new_tokens, prompt_format,
                                  timings, "after")

        t = time.perf_counter()
        state = shard.gather_state(net) if shard is not None else None  # every process takes part
        writer = shard is None or shard.rank == 0
        if state is not None:
            stats = weight_stats({name: state[f"{name}.weight"] for name in result.masks})
        else:
            stats = target_layer_stats(net, list(result.masks)) if writer else {"sparsity": None, "two_four": None}
        fmt = pick_export_format(export_format, stats, quantized=False) if writer else None
        previous = read_sidecar(model_path)
        record = unlearning_record(stage.config, records["forget"], before, after, result, prompt_format=prompt_format)
        history = [*_history(previous), record]
        summary: dict[str, Any] = {
            "output": str(output),
            "model": str(model_path),
            "format": fmt,
            "prompt_format": prompt_format,
            "eos_token": tokenizer.eos_token,
            "before": before,
            "after": after,
            "sparsity": stats["sparsity"],
            "two_four": stats["two_four"],
            "pattern_preserved": bool(result.pattern_preserved),
            "requests": len(history),
            "unlearn": result.to_dict(),
            "eval_records": {name: len(recs) for name, recs in eval_sets.items()} if evaluate else None,
            "memory": _memory(result, shard),
            "rank": shard.rank if shard is not None else 0,
            "world_size": shard.world_size if shard is not None else 1,
        }
        if writer:
            metadata = {
                "recipe": (previous or {}).get("recipe"),
                "unlearning": record,
                "unlearning_history": history,
                "unlearn_command": json.loads(json.dumps(
                    {k: v for k, v in summary.items() if k not in ("unlearn", "rank")}, default=str)),
            }
            save_model(net, tokenizer, output, format=fmt, metadata=metadata, overwrite=overwrite, state=state)
        if shard is not None:
            shard.barrier()  # no process reports success before the output is in place
        timings["save"] = time.perf_counter() - t
    finally:
        if shard is not None:
            shard.close()
    summary["timings"] = timings
    summary["seconds"] = time.perf_counter() - start
    logger.info(f"unlearn done in {summary['seconds']:.1f}s -> {output} ({fmt})")
    return summary
