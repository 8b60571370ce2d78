"""Peak memory of a stretch of work, measured rather than added up.

- On CUDA: ``torch.cuda.max_memory_allocated`` over the stretch (everything the caching allocator handed
  out: model, activations, gradients, optimizer state, temporaries).
- On CPU: the model's own bytes plus the largest rise of the process's resident set size (RSS) above its
  level at the start, sampled by a background thread every ``interval`` seconds and at every
  :meth:`PeakMemory.sample` call. The model is resident before the stretch starts, so adding its bytes makes
  the figure comparable to the CUDA one. Sampling can miss a spike shorter than the interval, so the figure
  is a lower bound of the true peak; ``benchmarks/bench_scale.py`` checks it against the kernel's own
  high-water mark (``VmHWM``), which nothing here reads.

RSS counts memory the allocator keeps after tensors are freed, as the operating system sees it: that is
what decides whether a run fits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import psutil
import torch
from torch import nn

from sau_compress.shards import local_tensor

__all__ = ["HEAP_MMAP_THRESHOLD", "PeakMemory", "limit_heap_retention", "model_bytes", "release_free_memory"]


def _load_libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _load_libc()
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)
_MALLOPT = getattr(_LIBC, "mallopt", None)

#: glibc's ``M_MMAP_THRESHOLD`` parameter number for ``mallopt``
_M_MMAP_THRESHOLD = -3
#: allocations of at least this many bytes get their own memory map on a CPU run (see limit_heap_retention)
HEAP_MMAP_THRESHOLD = 1 << 20
_heap_limited = False


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the operating system (glibc's ``malloc_trim``).

    CPU tensors are allocated with ``malloc``. Many medium-sized tensors freed between long-lived ones (the
    saliency pass, the per-layer selection, the per-layer optimizer step) leave holes that glibc keeps
    resident, so the process's memory stays at its high-water mark although the tensors are gone. Called
    between phases of a CPU run, this returns those pages. A no-op (``False``) where there is no glibc.
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def limit_heap_retention() -> bool:
    """Make glibc give every allocation of at least 1 MiB its own memory map, returned on free.

    glibc serves allocations below its mmap threshold from the heap, and it raises that threshold (up to
    32 MiB on 64-bit) each time a mapped block is freed. After a few steps nearly every activation, gradient
    and logits tensor of a CPU run comes from the heap, whose freed holes stay resident between long-lived
    tensors, and :func:`release_free_memory` can only return whole free pages at the top and in the middle.
    With a fixed threshold of :data:`HEAP_MMAP_THRESHOLD` those tensors are unmapped the moment they are
    freed: on a 350M-parameter Llama the ``sau`` run's peak resident memory fell from 3233 to 2538 MiB and
    ``dense``'s from 5657 to 5181 (``docs/scale.md``). The price is fresh zero pages for each large tensor, a
    small cost next to the matmuls that fill them.

    The setting is process-wide, so it is applied once per process, and not at all when the user set
    ``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc's own knob; theirs wins). Returns whether it is in
    effect (``False`` where there is no glibc ``mallopt``).
    """
    global _heap_limited
    if _heap_limited:
        return True
    if _MALLOPT is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    _heap_limited = bool(_MALLOPT(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))
    return _heap_limited


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        t = local_tensor(t.detach())  # a sharded parameter: the shard this process holds
        key = t.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


class PeakMemory:
    """Context manager measuring the peak memory of the work inside it on ``device``.

    :param device: the device the work runs on
    :param base_bytes: bytes already held that count towards the CPU figure (the model's bytes)
    :param interval: CPU sampling period in seconds
    :ivar peak_bytes: the figure, after exit
    :ivar measure: ``"cuda_max_allocated"`` or ``"cpu_rss_peak"``
    """

    def __init__(self, device: torch.device, base_bytes: int = 0, interval: float = 0.001) -> None:
        self.device = torch.device(device)
        self.base_bytes = int(base_bytes)
        self.interval = float(interval)
        self.peak_bytes = 0
        self.measure = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_peak"
        self._process = psutil.Process()
        self._start_rss = 0
        self._max_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one RSS sample now (CPU; a no-op on CUDA)."""
        if self.device.type != "cuda":
            rss = self._process.memory_info().rss
            if rss > self._max_rss:
                self._max_rss = rss

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start_rss = self._max_rss = self._process.memory_info().rss
            self._thread = threading.Thread(target=self._poll, name="sau-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = self.base_bytes + max(0, self._max_rss - self._start_rss)
