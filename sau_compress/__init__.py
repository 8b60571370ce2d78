"""sau-compress: Sparsity-Aware Unlearning (SAU) for pruned LLMs.

The layers below the modifier (saliency, masking, selection, optim, losses, data, unlearn, evaluation,
export, worlds) import torch and friends only; llmcompressor is imported by the modifier layer
(:mod:`~sau_compress.modifier`, :mod:`~sau_compress.magnitude`, :mod:`~sau_compress.offload`) and the pipeline.
The module map and the import rule: ``docs/architecture.md``.
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
