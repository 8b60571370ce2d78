"""sau-compress: Sparsity-Aware Unlearning (SAU) for pruned LLMs.

The pure modules (saliency, masking, optim, losses, data, unlearn, evaluation, export) import torch and
friends only; llmcompressor is imported by :mod:`sau_compress.modifier` alone, which importing this package
registers with llmcompressor's ``ModifierFactory`` when llmcompressor is installed.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

try:  # register SparsityAwareUnlearningModifier with llmcompressor's ModifierFactory when llmcompressor imports
    from sau_compress import modifier as _modifier  # noqa: F401, E402
except ImportError as _err:  # pragma: no cover - llmcompressor missing (or broken)
    if not str(getattr(_err, "name", "") or "").startswith(("llmcompressor", "compressed_tensors")):
        import warnings

        warnings.warn(f"SparsityAwareUnlearningModifier not registered with llmcompressor: {_err}", stacklevel=2)
