"""Benchmark: sparse-24-bitmask pack / unpack throughput on a synthetic ~100M-parameter set of 2:4 weights (CPU).

The weights have the shapes of a small Llama (8 decoder layers, hidden 1024, intermediate 2816: 101M
parameters in the Linear layers), random values pruned to 2:4. Throughput is dense bytes processed per
second (bf16: 2 bytes a parameter), best of ``--repeat`` runs; every unpacked weight is checked bit-exact.

    python benchmarks/bench_export.py [--dtype bfloat16] [--layers 8] [--threads 1] [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from sau_compress.export import bits_equal, pack_24_bitmask, unpack_24_bitmask


def synthetic_weights(layers: int, hidden: int, intermediate: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """2:4-pruned random weights with the shapes of ``layers`` Llama decoder layers."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(hidden, hidden)] * 4 + [(intermediate, hidden)] * 2 + [(hidden, intermediate)]
    out = []
    for _ in range(layers):
        for rows, cols in shapes:
            w = torch.randn(rows, cols, generator=gen)
            keep = w.abs().view(rows, cols // 4, 4).topk(2, dim=-1).indices
            mask = torch.zeros(rows, cols // 4, 4, dtype=torch.bool).scatter_(-1, keep, True)
            out.append(w.masked_fill_(~mask.view(rows, cols), 0).to(dtype))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CI machine has 2 shared cores)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    weights = synthetic_weights(args.layers, args.hidden, args.intermediate, dtype)
    params = sum(w.numel() for w in weights)
    dense_bytes = sum(w.numel() * w.element_size() for w in weights)

    pack_s, unpack_s = float("inf"), float("inf")
    packed: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        packed = [pack_24_bitmask(w) for w in weights]
        pack_s = min(pack_s, time.perf_counter() - start)
        start = time.perf_counter()
        dense = [unpack_24_bitmask(*p) for p in packed]
        unpack_s = min(unpack_s, time.perf_counter() - start)
    if not all(bits_equal(a, b) for a, b in zip(dense, weights, strict=True)):
        raise SystemExit("unpacked weights differ from the originals")
    stored = sum(t.numel() * t.element_size() for p in packed for t in p)

    result = {
        "dtype": args.dtype,
        "parameters": params,
        "dense_mb": dense_bytes / 1e6,
        "stored_mb": stored / 1e6,
        "ratio": stored / dense_bytes,
        "pack_s": pack_s,
        "unpack_s": unpack_s,
        "pack_mb_s": dense_bytes / 1e6 / pack_s,
        "unpack_mb_s": dense_bytes / 1e6 / unpack_s,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{params / 1e6:.1f}M params {args.dtype}: {result['dense_mb']:.1f} MB dense -> "
              f"{result['stored_mb']:.1f} MB stored ({result['ratio']:.4f}x)")
        print(f"pack   {pack_s:6.2f} s  {result['pack_mb_s']:8.1f} MB/s")
        print(f"unpack {unpack_s:6.2f} s  {result['unpack_mb_s']:8.1f} MB/s   ({args.threads} thread(s))")


if __name__ == "__main__":
    main()
