"""Sharded unlearning: one process per device under ``torchrun``, each decoder layer sharded with FSDP2.

:class:`ShardContext` is everything the loop needs to know about the other processes: it shards the model
(``torch.distributed.fsdp.fully_shard`` on every decoder layer, then on the root), sums and gathers small
tensors across the processes (:class:`sau_compress.selection.Collective`), and gathers the finished weights to
rank 0 for writing. Every process runs the same batches in the same order (the sharding divides the memory
of weights and unlearning state; it does not split the data), so FSDP2's averaged gradient is the gradient
one process computes, and the selection, the clipping and the steps follow the single-process run.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from loguru import logger
from torch import nn

from sau_compress.errors import UserError
from sau_compress.masking import PackedMask, all_2of4

__all__ = ["ShardContext"]


class ShardContext:
    """This process's place in a sharded run (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as torchrun sets them).

    :param device: ``cpu`` (gloo) or ``cuda`` (NCCL, the device ``cuda:LOCAL_RANK``); ``None``: CUDA when
        available
    """

    def __init__(self, device: str | None = None) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
        if use_cuda and not torch.cuda.is_available():
            raise UserError(f"device '{device}' requested but CUDA is not available; use 'cpu'")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            dist.init_process_group(backend="cuda:nccl,cpu:gloo" if use_cuda else "gloo")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))

    @staticmethod
    def requested() -> bool:
        """Whether this process was started as one of several (``WORLD_SIZE`` > 1, as torchrun sets it)."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    def close(self) -> None:
        """Leave the process group (when this context created it)."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()

    # ---- sharding

    def shard_model(self, model: nn.Module) -> int:
        """``fully_shard`` every decoder layer (the classes in the model's ``_no_split_modules``), then the
        root (embeddings, final norm, head). The model must be on the CPU or this process's device.

        :return: the number of decoder layers sharded
        :raises UserError: the model names no decoder-layer class
        """
        from torch.distributed.fsdp import fully_shard

        classes = set(getattr(model, "_no_split_modules", None) or [])
        blocks = [m for m in model.modules() if type(m).__name__ in classes]
        if not blocks:
            raise UserError(
                f"{type(model).__name__} names no decoder-layer class (_no_split_modules); it cannot be sharded "
                "layer by layer: run on one process"
            )
        for block in blocks:
            fully_shard(block, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)
        logger.info(f"rank {self.rank}/{self.world_size}: {len(blocks)} decoder layers sharded with FSDP2 on "
                    f"{self.device}")
        return len(blocks)

    def flat_offset(self, param: torch.Tensor) -> int:
        """Flat index, in the whole parameter, of this process's first entry (row blocks as ``torch.chunk``)."""
        rows = param.shape[0]
        per_row = param[0].numel() if rows else 0
        chunk = -(-rows // self.world_size)
        return min(self.rank * chunk, rows) * per_row

    # ---- collectives (sau_compress.selection.Collective)

    def _all_reduce(self, tensor: torch.Tensor, op: Any) -> torch.Tensor:
        """All-reduce in place through this process's device (gloo: CPU tensors, NCCL: CUDA); return it."""
        work = tensor.to(self.device)
        dist.all_reduce(work, op=op)
        if work is not tensor:
            tensor.copy_(work.to(tensor.device))
        return tensor

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the processes, in place; return the tensor."""
        return self._all_reduce(tensor, dist.ReduceOp.SUM)

    def all_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Maximum over the processes, in place; return the tensor."""
        return self._all_reduce(tensor, dist.ReduceOp.MAX)

    def sum_before(self, value: int) -> int:
        """Sum of ``value`` over the processes of lower rank."""
        values = torch.zeros(self.world_size, dtype=torch.int64, device=self.device)
        values[self.rank] = int(value)
        self.all_sum(values)
        return int(values[: self.rank].sum())

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process."""
        return int(self.all_sum(torch.tensor([0 if flag else 1], device=self.device))) == 0

    def mask_stats(self, masks: dict[str, PackedMask]) -> tuple[dict[str, float], bool, float]:
        """Per-layer sparsity, whether every layer is 2:4 and the size-weighted sparsity, over whole layers."""
        counts = torch.tensor([[m.numel() - m.n_surviving, m.numel()] for m in masks.values()],
                              dtype=torch.int64, device=self.device).reshape(-1, 2)
        self.all_sum(counts)
        sparsities = {name: (int(p) / int(n) if int(n) else 0.0) for name, (p, n) in zip(masks, counts.tolist(),
                                                                                        strict=True)}
        total = int(counts[:, 1].sum())
        overall = int(counts[:, 0].sum()) / total if total else 0.0
        return sparsities, self.all_true(all_2of4(m.unpack() for m in masks.values())), overall

    def gather_objects(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (picklable values)."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        """Wait for every process."""
        dist.barrier()

    # ---- output

    def gather_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's tensors on rank 0's CPU, gathered one tensor at a time (every process must call
        this); ``None`` on the other ranks."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.rank == 0 else None

    def describe(self) -> dict[str, Any]:
        """Rank, world size and device, for reports."""
        return {"rank": self.rank, "world_size": self.world_size, "device": str(self.device)}
