"""Frozen sparsity masks, SAU's top-k selection G and redistribution W, and pattern checks.

Symbols follow DESIGN.md ("SAU, precisely"): for a target weight θ with frozen mask M (True = surviving) and
saliency F (same shape, fp32), G is the ``topk_ratio`` fraction of surviving entries with the largest F, and
W_i = 1 + α·ρ·|G|·F_i / ΣF[G] on G (clipped to ``max_scale``) with ρ = ΣF[M=0] / ΣF[M=1].

Everything here is plain tensor math on one layer at a time (plus two model walkers, :func:`resolve_targets`
and :func:`capture_masks`); nothing imports llmcompressor. G is kept *compact*: the ascending flat indices of
the selected entries, so a layer's selection costs ``|G|`` integers instead of a full mask.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from loguru import logger
from torch import nn

__all__ = [
    "DECODER_LAYER_PATTERN",
    "DEFAULT_IGNORE",
    "LayerSelection",
    "MaskViolationError",
    "build_selection",
    "capture_masks",
    "count_2of4_violations",
    "is_2of4",
    "redistribute",
    "resolve_targets",
    "saliency_ratio",
    "select_topk",
    "selection_mask",
    "sparsity",
    "topk_count",
    "verify_2of4",
    "verify_masks",
]

#: Default targets: an ``nn.Linear`` whose dotted name lies inside a decoder block (``...layers.<i>....``).
DECODER_LAYER_PATTERN = r"(^|.*\.)layers\.\d+\."
#: Default ignore list (llmcompressor's form; a bare ``"lm_head"`` does not match ``Linear`` targets there).
DEFAULT_IGNORE = ("re:.*lm_head",)


class MaskViolationError(RuntimeError):
    """A layer's sparsity pattern is not what it must be (changed during unlearning, or not 2:4)."""


# ----------------------------------------------------------------------------------------------- targets


def _matches(entry: str, name: str, module: nn.Module) -> bool:
    """llmcompressor's matching rule: ``re:<regex>`` (``re.match`` on the dotted name), an exact module name,
    or a class name anywhere in the module's MRO."""
    if entry.startswith("re:"):
        return re.match(entry[3:], name) is not None
    if entry == name:
        return True
    return any(cls.__name__ == entry for cls in type(module).__mro__)


def _check_patterns(patterns: Iterable[str], what: str) -> list[str]:
    out = []
    for entry in patterns:
        if not isinstance(entry, str) or not entry:
            raise TypeError(f"{what} entries must be non-empty strings, got {entry!r}")
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as err:
                raise ValueError(f"{what} entry {entry!r} is not a valid regular expression: {err}") from err
        out.append(entry)
    return out


def resolve_targets(
    model: nn.Module,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
) -> dict[str, nn.Linear]:
    """Find the ``nn.Linear`` layers to unlearn, with llmcompressor's ``targets``/``ignore`` conventions.

    An entry is a class name (``"Linear"``), an exact dotted module name, or ``"re:<regex>"`` matched with
    ``re.match`` against the dotted name. A matched ``nn.Linear`` is a target; a matched container (e.g.
    ``"re:model.layers.\\d+$"``, a decoder block) contributes every ``nn.Linear`` inside it. ``ignore`` uses
    the same forms, checked against each Linear itself.

    :param model: the model to search
    :param targets: entries to include; ``None`` = every ``nn.Linear`` inside a decoder block (its name
        matches :data:`DECODER_LAYER_PATTERN`), so ``lm_head`` and embeddings are never targets
    :param ignore: entries to exclude; ``None`` = :data:`DEFAULT_IGNORE`, ``[]`` = nothing
    :return: ``{dotted name: layer}`` in model order
    :raises ValueError: nothing matches (the error names the patterns)
    """
    ignore_list = _check_patterns(DEFAULT_IGNORE if ignore is None else ignore, "ignore")
    found: dict[str, nn.Linear] = {}
    if targets is None:
        pattern = re.compile(DECODER_LAYER_PATTERN)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and pattern.match(name):
                found[name] = module
        described = f"default targets (nn.Linear matching {DECODER_LAYER_PATTERN!r})"
    else:
        target_list = _check_patterns(targets, "targets")
        if not target_list:
            raise ValueError("targets is an empty list; pass None for the default (decoder-block Linear layers)")
        for name, module in model.named_modules():
            if not any(_matches(t, name, module) for t in target_list):
                continue
            if isinstance(module, nn.Linear):
                found[name] = module
            else:
                for sub_name, sub in module.named_modules(prefix=name):
                    if isinstance(sub, nn.Linear):
                        found[sub_name] = sub
        described = f"targets {target_list}"
        # keep model order (a container match may add children before a later direct match)
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        found = dict(sorted(found.items(), key=lambda kv: order[kv[0]]))
    kept = {name: mod for name, mod in found.items() if not any(_matches(i, name, mod) for i in ignore_list)}
    if not kept:
        raise ValueError(
            f"no nn.Linear layer matches {described} after ignore {ignore_list} "
            f"({len(found)} matched before ignore)"
        )
    logger.debug(f"resolved {len(kept)} target layers ({len(found) - len(kept)} ignored)")
    return kept


# ------------------------------------------------------------------------------------------------- masks


def capture_masks(
    model: nn.Module,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Capture the frozen sparsity mask of every target layer: ``True`` where the weight is non-zero.

    :param model: the (pruned) model
    :param targets: see :func:`resolve_targets`
    :param ignore: see :func:`resolve_targets`
    :return: ``{layer name: bool mask [out, in]}`` on each weight's device
    """
    return {name: layer.weight.detach() != 0 for name, layer in resolve_targets(model, targets, ignore).items()}


def sparsity(mask_or_weight: torch.Tensor) -> float:
    """Fraction of pruned entries: ``False`` entries of a bool mask, or zero entries of a weight.

    :param mask_or_weight: a bool mask (True = surviving) or a weight tensor
    :return: a float in [0, 1] (0.0 for an empty tensor)
    """
    if mask_or_weight.numel() == 0:
        return 0.0
    if mask_or_weight.dtype == torch.bool:
        pruned = mask_or_weight.numel() - int(mask_or_weight.sum())
    else:
        pruned = int((mask_or_weight == 0).sum())
    return pruned / mask_or_weight.numel()


def verify_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Check that every masked layer's zero pattern is exactly its frozen mask.

    A violation is an entry that is non-zero where the mask is ``False`` (a pruned weight that moved) or zero
    where it is ``True`` (a survivor that became exactly zero).

    :param model: the model holding the layers
    :param masks: ``{layer name: bool mask}`` from :func:`capture_masks`
    :raises KeyError: a mask names a layer the model does not have
    :raises MaskViolationError: naming each bad layer and its number of violations
    """
    modules = dict(model.named_modules())
    bad = []
    for name, mask in masks.items():
        if name not in modules or not hasattr(modules[name], "weight"):
            raise KeyError(f"mask for '{name}' but the model has no such layer with a weight")
        weight = modules[name].weight.detach()
        if weight.shape != mask.shape:
            raise MaskViolationError(f"{name}: weight shape {tuple(weight.shape)} != mask shape {tuple(mask.shape)}")
        n = int(((weight != 0) != mask.to(weight.device)).sum())
        if n:
            bad.append(f"{name}: {n} violations")
    if bad:
        raise MaskViolationError(f"sparsity pattern changed in {len(bad)} layer(s): " + "; ".join(bad))


def _groups_of_4(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"2:4 checks need a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if weight.shape[1] % 4:
        raise ValueError(f"2:4 checks need the input dim to be a multiple of 4, got shape {tuple(weight.shape)}")
    return (weight != 0).reshape(weight.shape[0], -1, 4)


def count_2of4_violations(weight: torch.Tensor) -> int:
    """Number of groups of 4 consecutive entries along the input dim that hold more than 2 non-zeros.

    :param weight: a 2-D weight ``[out, in]`` with ``in % 4 == 0`` (or its bool mask)
    :return: the number of offending groups
    :raises ValueError: not 2-D, or ``in`` not a multiple of 4 (the error gives the shape)
    """
    return int((_groups_of_4(weight).sum(dim=-1) > 2).sum())


def is_2of4(weight: torch.Tensor) -> bool:
    """Whether every group of 4 along the input dim has at most 2 non-zeros (see :func:`count_2of4_violations`)."""
    return count_2of4_violations(weight) == 0


def verify_2of4(weights: dict[str, torch.Tensor]) -> None:
    """Raise if any tensor breaks the 2:4 pattern.

    :param weights: ``{layer name: weight or mask}``
    :raises MaskViolationError: naming each bad layer and its number of offending groups of 4
    """
    bad = [f"{name}: {n} violations" for name, w in weights.items() if (n := count_2of4_violations(w))]
    if bad:
        raise MaskViolationError(f"not 2:4 sparse in {len(bad)} layer(s): " + "; ".join(bad))


# ------------------------------------------------------------------------------------ selection G and W


def topk_count(n_surviving: int, ratio: float) -> int:
    """|G| for a layer: ``ratio * n_surviving`` rounded to the nearest integer (halves up), at least 1.

    Rounding to nearest (not flooring) keeps float noise such as ``0.29 * 100 = 28.999...`` from losing an
    entry; the floor of 1 keeps every layer with survivors trainable. ``ratio = 1`` selects all survivors.

    :param n_surviving: surviving entries of the layer
    :param ratio: ``topk_ratio`` in (0, 1]
    :return: 0 when ``n_surviving`` is 0, else an integer in [1, n_surviving]
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"topk_ratio must be in (0, 1], got {ratio}")
    if n_surviving <= 0:
        return 0
    return min(n_surviving, max(1, math.floor(ratio * n_surviving + 0.5)))


def select_topk(fisher: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """G: the :func:`topk_count` surviving entries with the largest saliency, as ascending flat indices.

    Ties break deterministically towards the lower flat (row-major) index, on every device: entries above
    the k-th largest value are taken, then the equal ones in index order. Pruned entries are never selected.

    :param fisher: saliency F, any shape, non-negative
    :param mask: bool mask of the same shape (True = surviving)
    :param ratio: ``topk_ratio`` in (0, 1]
    :return: int64 tensor ``[|G|]`` of flat indices, sorted ascending
    """
    if fisher.shape != mask.shape:
        raise ValueError(f"saliency shape {tuple(fisher.shape)} != mask shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    flat_mask = mask.reshape(-1)
    n_surv = int(flat_mask.sum())
    k = topk_count(n_surv, ratio)
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=fisher.device)
    if k == n_surv:
        return flat_mask.nonzero().squeeze(1)
    # pruned entries get -1 < any saliency, so the k-th largest overall is the k-th largest survivor
    scores = torch.where(flat_mask, fisher.reshape(-1).float(), torch.full((), -1.0, device=fisher.device))
    threshold = torch.kthvalue(scores, scores.numel() - k + 1).values
    above = scores > threshold
    n_above = int(above.sum())
    equal = scores == threshold
    # the first (k - n_above) equal entries in index order
    take_equal = equal & (torch.cumsum(equal, 0) <= (k - n_above))
    return (above | take_equal).nonzero().squeeze(1)


def selection_mask(shape: torch.Size | tuple[int, ...], indices: torch.Tensor) -> torch.Tensor:
    """Expand compact flat indices into a bool mask of ``shape`` (for inspection and tests)."""
    out = torch.zeros(math.prod(shape), dtype=torch.bool, device=indices.device)
    out[indices] = True
    return out.reshape(shape)


def saliency_ratio(fisher: torch.Tensor, mask: torch.Tensor) -> float:
    """ρ = ΣF[M=0] / ΣF[M=1]: pruned saliency mass relative to surviving mass.

    0 when the layer has no pruned entries or no pruned saliency; ``inf`` when survivors carry no saliency
    but pruned entries do.
    """
    f = fisher.double()
    pruned = float(f[~mask].sum())
    surviving = float(f[mask].sum())
    if pruned == 0.0:
        return 0.0
    if surviving == 0.0:
        return math.inf
    return pruned / surviving


def redistribute(
    fisher_selected: torch.Tensor,
    rho: float,
    alpha: float,
    max_scale: float = 10.0,
) -> torch.Tensor:
    """W on the selected entries: ``W_i = 1 + α·ρ·|G|·F_i / ΣF[G]``, clipped to ``max_scale``.

    Before clipping the mean of W over G is exactly ``1 + α·ρ``. Edge cases: ρ = 0 or α = 0 gives W = 1;
    ΣF[G] = 0 (no saliency on the selection) spreads the extra mass evenly, W = 1 + α·ρ; ρ = ∞ (all
    saliency on pruned entries) gives ``max_scale`` everywhere.

    :param fisher_selected: F on G, ``[|G|]``
    :param rho: the layer's ρ (:func:`saliency_ratio`)
    :param alpha: redistribution strength α ≥ 0
    :param max_scale: upper clip (≥ 1; ``math.inf`` disables clipping)
    :return: fp32 ``[|G|]``
    """
    if alpha < 0 or rho < 0:
        raise ValueError(f"alpha and rho must be non-negative, got alpha={alpha}, rho={rho}")
    if max_scale < 1:
        raise ValueError(f"max_scale must be at least 1, got {max_scale}")
    f = fisher_selected.double()
    n = f.numel()
    if alpha == 0 or rho == 0 or n == 0:
        return torch.ones(n, dtype=torch.float32, device=f.device)
    if math.isinf(rho):
        return torch.full((n,), float(max_scale), dtype=torch.float32, device=f.device)
    total = float(f.sum())
    if total == 0.0:
        w = torch.full((n,), 1.0 + alpha * rho, dtype=torch.float64, device=f.device)
    else:
        w = 1.0 + (alpha * rho * n / total) * f
    return w.clamp_(max=max_scale).float()


@dataclass
class LayerSelection:
    """One layer's G (compact flat indices) and W (``None`` = all ones), with the numbers behind them."""

    indices: torch.Tensor
    scale: torch.Tensor | None
    numel: int
    n_surviving: int
    rho: float
    n_clipped: int = 0

    @property
    def n_selected(self) -> int:
        """|G|."""
        return int(self.indices.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of pruned entries of the layer."""
        return (self.numel - self.n_surviving) / self.numel if self.numel else 0.0

    @property
    def selected_fraction(self) -> float:
        """|G| over all entries of the layer (about ``topk_ratio * (1 - sparsity)``)."""
        return self.n_selected / self.numel if self.numel else 0.0

    def summary(self) -> dict[str, float | int]:
        """JSON-able per-layer numbers: sparsity, rho, selected_fraction, n_selected, W mean/max, clipped."""
        w_mean = float(self.scale.double().mean()) if self.scale is not None and self.scale.numel() else 1.0
        w_max = float(self.scale.max()) if self.scale is not None and self.scale.numel() else 1.0
        return {
            "sparsity": self.sparsity,
            "rho": self.rho,
            "selected_fraction": self.selected_fraction,
            "n_selected": self.n_selected,
            "n_surviving": self.n_surviving,
            "w_mean": w_mean,
            "w_max": w_max,
            "n_clipped": self.n_clipped,
        }


def build_selection(
    fisher: torch.Tensor,
    mask: torch.Tensor,
    topk_ratio: float,
    alpha: float = 0.1,
    max_scale: float = 10.0,
    redistribution: bool = True,
) -> LayerSelection:
    """G and (optionally) W for one layer, from its saliency and frozen mask.

    :param fisher: saliency F ``[out, in]`` (fp32)
    :param mask: frozen mask M ``[out, in]`` (True = surviving)
    :param topk_ratio: fraction of survivors in G, in (0, 1]
    :param alpha: α of the redistribution
    :param max_scale: clip of W
    :param redistribution: compute W (``sau``); ``False`` keeps W = 1 (``topk``)
    :return: the layer's :class:`LayerSelection`
    """
    indices = select_topk(fisher, mask, topk_ratio)
    rho = saliency_ratio(fisher, mask)
    scale = None
    n_clipped = 0
    if redistribution:
        w = redistribute(fisher.reshape(-1)[indices], rho, alpha, max_scale)
        n_clipped = int((w >= max_scale).sum()) if alpha > 0 and rho > 0 else 0
        scale = None if bool((w == 1).all()) else w
    return LayerSelection(
        indices=indices, scale=scale, numel=mask.numel(), n_surviving=int(mask.sum()), rho=rho, n_clipped=n_clipped
    )
