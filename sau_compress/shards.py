"""Local shards: the part of a parameter this process holds.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) a parameter, and its gradient, is a ``DTensor`` sharded by
rows across the processes; each process reads and writes its rows through the local tensor, a view of its
shard's storage. Everything else is its own local part. The masks, the saliency, the selection and the
optimizer state of a sharded run are kept on these local parts (``docs/scale.md``).
"""

from __future__ import annotations

import torch

__all__ = ["is_sharded", "local_tensor"]


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a distributed tensor (a ``DTensor``; recognised without importing
    ``torch.distributed``)."""
    return hasattr(tensor, "to_local") and hasattr(tensor, "placements")


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds: a ``DTensor``'s local shard (a view: in-place writes reach
    the shard), any other tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor
