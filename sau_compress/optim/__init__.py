"""Optimizers of the unlearning loop, all with one interface (``attach``, ``detach``, ``zero_grad``,
``grads_finite``, ``clip_grad_norm_``, ``step``, ``state_bytes``, ``held_bytes``):

- :mod:`~sau_compress.optim.scaled`: the whole update, weight decay included, scaled per entry (modes
  ``sau``, ``topk``: compact layout on G; ``masked``: full layout, scale = the frozen mask);
- :mod:`~sau_compress.optim.projected`: the ``dense`` baseline, a ``torch.optim`` step then the frozen mask
  re-applied.
"""

from __future__ import annotations

from sau_compress.optim.projected import ProjectedOptimizer
from sau_compress.optim.scaled import (
    OPTIM_PRECISION,
    OPTIMIZERS,
    ParamScale,
    ScaledAdamW,
    ScaledOptimizer,
    ScaledSGD,
    make_optimizer,
    nbytes,
)

__all__ = [
    "OPTIMIZERS",
    "OPTIM_PRECISION",
    "ParamScale",
    "ProjectedOptimizer",
    "ScaledAdamW",
    "ScaledOptimizer",
    "ScaledSGD",
    "UnlearningOptimizer",
    "make_optimizer",
    "nbytes",
]

#: What the loop holds: either kind shares the interface above.
UnlearningOptimizer = ScaledOptimizer | ProjectedOptimizer
