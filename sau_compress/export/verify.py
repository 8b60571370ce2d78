"""Does an export serve? Load it in another engine and compare greedy tokens with our own model."""

from __future__ import annotations

__all__ = ["ENGINES"]

#: the engines ``sau-compress verify --engine`` knows
ENGINES = ("transformers", "vllm", "compressed-tensors-0.14")
