"""Benchmark: memory and time of ``sau`` against ``dense`` on random-init models of real shapes, pruned 2:4.

Each (model, mode) runs in a fresh process, so that one run's memory cannot leak into the next. The model is
a random-init Llama (or Qwen2) of the named shape, magnitude-pruned 2:4 on its decoder Linear layers; the data
is random token rows of ``--seq`` tokens (the answer is the second half), ``--forget`` forget and retain
rows; the method is GradDiff with AdamW, batch ``--batch``, ``--steps`` steps.

Memory is measured twice, independently:

- **independent** (this script): on CPU the kernel's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before unlearning) minus the resident set before the model was built; on
  CUDA ``torch.cuda.max_memory_reserved`` (what the caching allocator took from the device).
- **library**: ``UnlearnResult.peak_memory_bytes`` (:class:`sau_compress.memory.PeakMemory`: on CPU the model's
  bytes plus the sampled rise of resident memory during the run; on CUDA ``max_memory_allocated``).

Printed per size: both peaks and their ratio, ``sau``/``dense`` peak ratios, seconds per step, saliency
seconds and the all-in seconds of the run.

Usage::

    python benchmarks/bench_scale.py                              # CPU: llama-25m, llama-110m, qwen2-110m, llama-350m
    python benchmarks/bench_scale.py --sizes llama-350m --steps 3
    python benchmarks/bench_scale.py --device cuda --dtype bfloat16 --sizes llama-1b llama-3b llama-8b
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

#: name -> (architecture, config overrides); vocabularies and shapes of the public models they stand for
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-25m": ("llama", {"hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1024,
                            "num_attention_heads": 6, "num_key_value_heads": 6, "vocab_size": 32000,
                            "tie_word_embeddings": True}),
    "llama-110m": ("llama", {"hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 2048,
                             "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 32000,
                             "tie_word_embeddings": True}),
    "qwen2-110m": ("qwen2", {"hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 2048,
                             "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 32000,
                             "tie_word_embeddings": True}),
    "llama-350m": ("llama", {"hidden_size": 1024, "num_hidden_layers": 24, "intermediate_size": 2816,
                             "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
                             "tie_word_embeddings": True}),
    # Llama-3.2-1B / 3B and Llama-3.1-8B shapes (GPU)
    "llama-1b": ("llama", {"hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
                           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                           "tie_word_embeddings": True}),
    "llama-3b": ("llama", {"hidden_size": 3072, "num_hidden_layers": 28, "intermediate_size": 8192,
                           "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 128256,
                           "tie_word_embeddings": True}),
    "llama-8b": ("llama", {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
                           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                           "tie_word_embeddings": False}),
}
CPU_SIZES = ["llama-25m", "llama-110m", "qwen2-110m", "llama-350m"]
MiB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _build(name: str, dtype: Any, seed: int, **change: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    arch, overrides = SHAPES[name]
    config = (LlamaConfig if arch == "llama" else Qwen2Config)(**{**overrides, **change})
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _rows(n: int, seq: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, seq), generator=g).tolist()
    half = seq // 2
    return [{"input_ids": row, "labels": [-100] * half + row[half:], "index": i} for i, row in enumerate(ids)]


def run_one(args: dict[str, Any]) -> dict[str, Any]:
    """One (model, mode) run, in its own process."""
    import torch
    from loguru import logger

    from sau_compress.masking import prune_by_magnitude_, resolve_targets
    from sau_compress.memory import release_free_memory
    from sau_compress.unlearn import UnlearnConfig, unlearn

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    torch.set_num_threads(args["threads"]) if args["threads"] else None
    dtype = getattr(torch, args["dtype"])
    device = torch.device(args["device"])
    forget = _rows(args["forget"], args["seq"], SHAPES[args["size"]][1]["vocab_size"], 1)
    retain = _rows(args["forget"], args["seq"], SHAPES[args["size"]][1]["vocab_size"], 2)
    # warm up: import the architecture's code and run one forward/backward on a 1-layer miniature, so that
    # one-time allocations (modules, kernels, thread pools) are in the baseline, not in the peak
    mini = _build(args["size"], dtype, 0, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2).to(device)
    ids = torch.tensor([forget[0]["input_ids"]], device=device)
    mini(input_ids=ids, labels=ids).loss.backward()
    del mini, ids
    release_free_memory()  # leftovers of model building must not count
    baseline = _rss()
    t0 = time.perf_counter()
    model = _build(args["size"], dtype, 0)
    prune_by_magnitude_(model, 0.5, "2:4")
    build_seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_target = sum(layer.weight.numel() for layer in resolve_targets(model).values())
    if device.type == "cuda":
        model.to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    release_free_memory()  # leftovers of model building must not count
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    cfg = UnlearnConfig(
        mode=args["mode"], method="grad_diff", optimizer="adamw", learning_rate=1e-5, batch_size=args["batch"],
        max_steps=args["steps"], device=args["device"], progress=False,
        gradient_checkpointing=args["checkpointing"], max_grad_norm=None,  # as the recorded figures were measured
    )
    result = unlearn(model, forget, retain, cfg, pad_token_id=0)
    if device.type == "cuda":
        independent = int(torch.cuda.max_memory_reserved())
        measure = "cuda_max_reserved"
    else:
        independent = _hwm() - baseline
        measure = "cpu_vmhwm_minus_baseline"
    return {
        "size": args["size"], "mode": args["mode"], "dtype": args["dtype"], "device": args["device"],
        "params": n_params, "target_params": n_target, "build_seconds": build_seconds,
        "independent_peak_bytes": independent, "independent_measure": measure,
        "library_peak_bytes": result.peak_memory_bytes, "library_measure": result.memory_measure,
        "optimizer_state_bytes": result.optimizer_state_bytes,
        "steps": result.steps, "seconds_per_step": result.train_seconds / max(1, result.steps),
        "saliency_seconds": result.saliency_seconds, "reference_seconds": result.reference_seconds,
        "all_in_seconds": result.seconds, "tokens_per_second": result.tokens_per_second,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | params (target) | mode | peak MiB (independent) | peak MiB (library) | library / indep. "
        "| B per target param | s/step | saliency s | all-in s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.0f}M ({r['target_params'] / 1e6:.0f}M) | {r['mode']} "
            f"| {r['independent_peak_bytes'] / MiB:.0f} | {r['library_peak_bytes'] / MiB:.0f} "
            f"| {r['library_peak_bytes'] / r['independent_peak_bytes']:.3f} "
            f"| {r['independent_peak_bytes'] / r['target_params']:.2f} | {r['seconds_per_step']:.2f} "
            f"| {r['saliency_seconds']:.2f} | {r['all_in_seconds']:.1f} |"
        )
    return "\n".join(lines)


def _ratios(rows: list[dict[str, Any]]) -> str:
    by = {(r["size"], r["mode"]): r for r in rows}
    lines = ["| model | sau/dense peak (independent) | sau/dense peak (library) | sau/dense s/step |",
             "|---|---|---|---|"]
    for size in dict.fromkeys(r["size"] for r in rows):
        s, d = by.get((size, "sau")), by.get((size, "dense"))
        if s is None or d is None:
            continue
        lines.append(
            f"| {size} | {s['independent_peak_bytes'] / d['independent_peak_bytes']:.3f} "
            f"| {s['library_peak_bytes'] / d['library_peak_bytes']:.3f} "
            f"| {s['seconds_per_step'] / d['seconds_per_step']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=None, choices=sorted(SHAPES),
                        help=f"model shapes (default on CPU: {' '.join(CPU_SIZES)})")
    parser.add_argument("--modes", nargs="+", default=["sau", "dense"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--forget", type=int, default=8, help="forget rows (and as many retain rows)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and table.md here")
    ns = parser.parse_args(argv)
    sizes = ns.sizes or CPU_SIZES
    rows = []
    ctx = mp.get_context("spawn")
    for size in sizes:
        for mode in ns.modes:
            job = {"size": size, "mode": mode, "device": ns.device, "dtype": ns.dtype, "steps": ns.steps,
                   "batch": ns.batch, "seq": ns.seq, "forget": ns.forget, "threads": ns.threads,
                   "checkpointing": ns.checkpointing}
            with ctx.Pool(1) as pool:
                row = pool.apply(run_one, (job,))
            rows.append(row)
            print(json.dumps(row), flush=True)
    text = (f"{_table(rows)}\n\n{_ratios(rows)}\n\n"
            f"steps {ns.steps}, batch {ns.batch} x {ns.seq} tokens (forget) + as many retain, {ns.dtype} on "
            f"{ns.device}, GradDiff + AdamW, magnitude 2:4, gradient checkpointing {ns.checkpointing}")
    print(text)
    if ns.out is not None:
        ns.out.mkdir(parents=True, exist_ok=True)
        (ns.out / "results.json").write_text(json.dumps(rows, indent=1))
        (ns.out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
