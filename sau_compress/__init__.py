"""sau-compress: Sparsity-Aware Unlearning (SAU) for pruned LLMs.

The pure modules (saliency, masking, optim, losses, data, unlearn, evaluation, export) import torch and
friends only; llmcompressor is imported by :mod:`sau_compress.modifier` and :mod:`sau_compress.pipeline`.
Importing this package registers the modifiers with llmcompressor's ``ModifierFactory`` (at once if
llmcompressor is loaded, else the moment it is), without importing llmcompressor itself.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

from sau_compress._registration import install as _install_registration  # noqa: E402

# SparsityAwareUnlearningModifier and OneShotMagnitudePruningModifier are registered with llmcompressor's
# ModifierFactory as soon as llmcompressor is (or already was) imported; see sau_compress._registration.
_install_registration()
