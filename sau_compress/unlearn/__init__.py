"""The unlearning stage: :func:`unlearn` (the loop), :class:`UnlearnConfig` (its settings) and
:class:`UnlearnResult` (what it reports). See ``docs/design.md`` for the modes and the update rule.

Modules, one job each: :mod:`~sau_compress.unlearn.driver` (:func:`unlearn`: checks, device, setup and
clean-up), :mod:`~sau_compress.unlearn.runner` (one run phase by phase, and the training loop),
:mod:`~sau_compress.unlearn.modes` (the selection G and W, the optimizer of each mode),
:mod:`~sau_compress.unlearn.steps` (the reference passes, each micro-batch's losses),
:mod:`~sau_compress.unlearn.batching` (checked items, collated and run through the model),
:mod:`~sau_compress.unlearn.config` (settings, results, jobs), :mod:`~sau_compress.unlearn.shard` (sharded runs).
"""

from __future__ import annotations

from sau_compress.errors import NonFiniteLossError
from sau_compress.unlearn.config import MODES, UnlearnConfig, UnlearnJob, UnlearnResult
from sau_compress.unlearn.driver import unlearn

__all__ = ["MODES", "NonFiniteLossError", "UnlearnConfig", "UnlearnJob", "UnlearnResult", "unlearn"]
