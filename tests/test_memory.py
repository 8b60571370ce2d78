"""PeakMemory: the CPU figure is the base bytes plus the measured rise of resident memory."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from sau_compress.memory import PeakMemory, model_bytes

MB = 2**20


def test_model_bytes_counts_tied_tensors_once():
    lin = torch.nn.Linear(8, 4)
    model = torch.nn.Sequential(lin, torch.nn.Linear(8, 4))
    assert model_bytes(model) == 2 * (8 * 4 + 4) * 4
    model[1].weight = lin.weight  # tied
    assert model_bytes(model) == (8 * 4 + 4 + 4) * 4


def test_cpu_peak_sees_a_freed_allocation_by_explicit_sample():
    with PeakMemory(torch.device("cpu"), base_bytes=1000, interval=10.0) as mem:  # the thread will not sample
        big = torch.ones(64 * MB // 4)  # 64 MiB, touched
        mem.sample()
        del big
    assert mem.measure == "cpu_rss_peak"
    assert 1000 + 60 * MB <= mem.peak_bytes <= 1000 + 80 * MB, mem.peak_bytes / MB


def test_cpu_peak_sees_a_freed_allocation_by_the_sampling_thread():
    with PeakMemory(torch.device("cpu"), interval=0.001) as mem:
        big = torch.ones(64 * MB // 4)
        time.sleep(0.2)
        del big
    assert 60 * MB <= mem.peak_bytes <= 80 * MB, mem.peak_bytes / MB


def test_cpu_peak_without_allocation_is_about_the_base():
    with PeakMemory(torch.device("cpu"), base_bytes=5 * MB) as mem:
        pass
    assert 5 * MB <= mem.peak_bytes <= 7 * MB


_HOLES = """
import psutil, torch
from sau_compress.memory import release_free_memory
rss = psutil.Process().memory_info
# 64 KiB tensors sit on the C heap (below malloc's mmap threshold); a small long-lived tensor after each one
# keeps the heap from shrinking at its top when they are freed
big, small = [], []
for _ in range(2048):
    big.append(torch.ones(16 * 1024))
    small.append(torch.ones(4))
del big
before = rss().rss
released = release_free_memory()
print(released, before - rss().rss)
"""


def test_release_free_memory_returns_the_holes_freed_tensors_leave():
    # a fresh process: in this one, earlier tests' freed memory would be reused instead of grown
    out = subprocess.run([sys.executable, "-c", _HOLES], capture_output=True, text=True, check=True)
    released, returned = out.stdout.split()
    assert released == "True"  # CI and this machine run glibc
    assert int(returned) >= 64 * MB, int(returned) / MB  # most of the 128 MiB freed goes back


_RETENTION = """
import os, sys, psutil, torch
from sau_compress.memory import limit_heap_retention
rss = psutil.Process().memory_info
limited = limit_heap_retention() if sys.argv[1] == "limit" else False
# freeing a mapped 8 MiB block raises glibc's dynamic mmap threshold to 8 MiB: 2 MiB tensors then come from
# the heap, and a smaller long-lived tensor after each one pins the holes they leave
del_me = torch.ones(2 * 1024 * 1024)
del del_me
big, small = [], []
for _ in range(64):
    big.append(torch.ones(512 * 1024))
    small.append(torch.ones(16 * 1024))  # 64 KiB: always on the heap
before = rss().rss
del big
print(limited, before - rss().rss)
"""


def _freed_on_release(arg: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _RETENTION, arg], capture_output=True, text=True, check=True,
                         env=env)
    limited, returned = out.stdout.split()
    return limited, int(returned)


def test_limit_heap_retention_returns_large_tensors_the_moment_they_are_freed():
    import os

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    limited, returned = _freed_on_release("limit", env)
    assert limited == "True"
    assert returned >= 120 * MB, returned / MB  # the 128 MiB freed went back at once
    # the control: glibc's default keeps the freed 2 MiB blocks resident
    limited, returned = _freed_on_release("default", env)
    assert limited == "False"
    assert returned <= 16 * MB, returned / MB


def test_limit_heap_retention_leaves_a_users_own_setting_alone():
    import os

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * MB))
    limited, returned = _freed_on_release("limit", env)
    assert limited == "False"
    assert returned <= 16 * MB, returned / MB  # their 64 MiB threshold keeps 2 MiB blocks on the heap
