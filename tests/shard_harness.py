"""Run ``unlearn_model`` in one process of a torchrun job and record what each rank held (for
``tests/test_unlearn_sharded.py``): the selection G (flat indices of the whole layers), the optimizer state and
mask bytes, the local bytes of the target weights. ``--kill-step S`` kills rank 1 with SIGKILL after step S.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/shard_harness.py MODEL OUT FORGET RETAIN
        RECORD_DIR [--kill-step S] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch

import sau_compress.unlearn as unlearn_package
from sau_compress.pipeline import unlearn_model
from sau_compress.shards import local_tensor


def make_recorder(original, record_dir: Path, rank: int):
    """Wrap ``sau_compress.unlearn.unlearn`` (which ``unlearn_model`` calls) so that it saves each result."""

    def recording(model, *args, **kwargs):
        result = original(model, *args, **kwargs)
        modules = dict(model.named_modules())
        torch.save({
            "selected": result.selected,
            "layers": result.layers,
            "optimizer_state_bytes": result.optimizer_state_bytes,
            "mask_bytes": result.extra["mask_bytes"],
            "target_weight_bytes": sum(local_tensor(modules[name].weight.detach()).nbytes for name in result.masks),
            "peak_memory_bytes": result.peak_memory_bytes,
            "losses": result.losses,
        }, record_dir / f"rank{rank}.pt")
        return result

    return recording


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("model", "output", "forget", "retain", "record_dir"):
        parser.add_argument(name)
    parser.add_argument("--kill-step", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    unlearn_package.unlearn = make_recorder(unlearn_package.unlearn, Path(args.record_dir), rank)
    callback = None
    if args.kill_step is not None:
        def callback(step, model):  # noqa: ARG001 - the loop's callback signature
            if rank == 1 and step == args.kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return False
    unlearn_model(args.model, args.output, args.forget, args.retain, overrides=args.overrides, evaluate=False,
                  device="cpu", callback=callback)


if __name__ == "__main__":
    main()
