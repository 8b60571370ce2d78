"""The unlearning stage: :func:`unlearn` (the loop), :class:`UnlearnConfig` (its settings) and
:class:`UnlearnResult` (what it reports). See ``docs/design.md`` for the modes and the update rule."""

from __future__ import annotations

from sau_compress.errors import NonFiniteLossError
from sau_compress.unlearn.config import MODES, UnlearnConfig, UnlearnJob, UnlearnResult
from sau_compress.unlearn.loop import unlearn

__all__ = ["MODES", "NonFiniteLossError", "UnlearnConfig", "UnlearnJob", "UnlearnResult", "unlearn"]
