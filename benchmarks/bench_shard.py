"""Benchmark: what one process of a sharded ``sau-compress unlearn`` holds, against one process alone.

A random-init Llama of the given shape (the toy world's tokenizer and QA data, so the vocabulary is 1,024),
magnitude-pruned 2:4, saved in ``--dtype``; then ``sau-compress unlearn`` on it with ``--nproc 1`` (no
torchrun) and ``--nproc N`` (torchrun, gloo on the CPU), each a fresh set of processes. Printed and written
(``--out``) per run and rank: model bytes (the rank's shards), optimizer state (selection indices, W, fp32
masters, AdamW moments), mask bits, and the measured peak (model bytes + the peak rise of resident memory),
each also per target parameter.

Usage::

    python benchmarks/bench_shard.py                       # hidden 256, 4 layers, bf16, 1 and 2 processes
    python benchmarks/bench_shard.py --hidden 768 --layers 12 --nproc 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def build_model(folder: Path, hidden: int, layers: int, dtype: str) -> int:
    """Save the pruned random-init model with the toy world's tokenizer; return its target parameters."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sau_compress.masking import prune_by_magnitude_, resolve_targets
    from sau_compress.worlds import build_toy_world

    world = build_toy_world()
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         intermediate_size=hidden * 8 // 3 // 64 * 64, num_attention_heads=hidden // 64,
                         num_key_value_heads=hidden // 64, tie_word_embeddings=True, max_position_embeddings=512)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        prune_by_magnitude_(model, 0.5, "2:4")
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(layer.weight.numel() for layer in resolve_targets(model).values())


def run(model: Path, output: Path, nproc: int, data: Path, steps: int) -> dict:
    command = [sys.executable, "-m", "sau_compress.cli.app", "unlearn", str(model), "--forget",
               str(data / "forget.jsonl"), "--retain", str(data / "retain.jsonl"), "--output", str(output),
               "--no-eval", "--json", "--format", "dense", "--device", "cpu", "--set", f"max_steps={steps}",
               "--set", "batch_size=4", "--set", "learning_rate=1e-5", "--set", "saliency_batches=1",
               "--set", "progress=false"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/results/bench_shard"))
    args = parser.parse_args()

    from sau_compress.worlds import build_toy_world

    data = build_toy_world().data_dir
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        targets = build_model(model, args.hidden, args.layers, args.dtype)
        for nproc in args.nproc:
            result = run(model, Path(tmp) / f"out-{nproc}", nproc, data, args.steps)
            for rank, mem in enumerate(result["memory"]):
                state = mem["optimizer_state_bytes"] + mem["mask_bytes"]
                rows.append({"nproc": nproc, "rank": rank, "target_params": targets, **mem,
                             "state_bytes": state, "state_bytes_per_target_param": state / targets,
                             "model_bytes_per_target_param": mem["model_bytes"] / targets,
                             "peak_bytes_per_target_param": mem["peak_memory_bytes"] / targets,
                             "selected": sum(v["n_selected"] for v in result["unlearn"]["layers"].values()),
                             "seconds": result["seconds"]})
    header = ["nproc", "rank", "model MiB", "opt. state MiB", "masks MiB", "state B/target", "peak MiB",
              "peak B/target", "|G|"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {r['nproc']} | {r['rank']} | {r['model_bytes'] / 2**20:.1f} | "
                     f"{r['optimizer_state_bytes'] / 2**20:.1f} | {r['mask_bytes'] / 2**20:.2f} | "
                     f"{r['state_bytes_per_target_param']:.3f} | {r['peak_memory_bytes'] / 2**20:.1f} | "
                     f"{r['peak_bytes_per_target_param']:.2f} | {r['selected']} |")
    table = "\n".join(lines)
    print(f"random-init Llama, hidden {args.hidden}, {args.layers} layers, {args.dtype}, {targets} target "
          f"parameters, 2:4, sau GradDiff, {args.steps} steps\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                       "rows": rows}, indent=2) + "\n")
    (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
