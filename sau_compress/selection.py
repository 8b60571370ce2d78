"""SAU's top-k selection G and redistribution W for one layer, from its saliency F and frozen mask M.

Symbols as in ``docs/design.md``: for a target weight θ with frozen mask M (True = surviving) and saliency F
(same shape, fp32), G is the ``topk_ratio`` fraction of surviving entries with the largest F, and
W_i = 1 + α·ρ·|G|·F_i / ΣF[G] on G (clipped to ``max_scale``) with ρ = ΣF[M=0] / ΣF[M=1]. On a dense layer
ρ = 0, so W = 1 and SAU is exactly its top-k selection.

Plain tensor math on one layer at a time. G is kept *compact*: the ascending flat indices of the selected
entries, so a layer's selection costs ``|G|`` integers instead of a full mask.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = [
    "Collective",
    "LayerSelection",
    "build_selection",
    "build_selection_sharded",
    "redistribute",
    "saliency_ratio",
    "build_selection_compact",
    "contrastive_score",
    "select_topk",
    "select_topk_compact",
    "selection_mask",
    "selection_stats",
    "topk_count",
]

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


def _index_dtype(numel: int) -> torch.dtype:
    """int32 for flat indices of a layer below 2**31 entries (half the memory of int64), else int64."""
    return torch.int32 if numel < 2**31 else torch.long


def _topk_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` largest of a 1-D tensor, ascending; ties go to the lower position."""
    n = scores.numel()
    if k >= n:
        return torch.arange(n, device=scores.device)
    threshold = torch.kthvalue(scores, n - k + 1).values
    above = scores > threshold
    n_above = int(above.sum())
    equal = scores == threshold
    # the first (k - n_above) equal entries in position order
    take_equal = equal & (torch.cumsum(equal, 0) <= (k - n_above))
    return (above | take_equal).nonzero().squeeze(1)


def select_topk_compact(surviving_fisher: torch.Tensor, mask: torch.Tensor, ratio: float) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """G from the saliency of the surviving entries only (``F[M]``, row-major order).

    :param surviving_fisher: ``[n_surviving]`` saliency of the surviving entries, in row-major order
    :param mask: the layer's bool mask (True = surviving)
    :param ratio: ``topk_ratio`` in (0, 1]
    :return: ``(flat indices [|G|] ascending, int32 below 2**31 entries; positions in surviving_fisher)``
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    n_surv = surviving_fisher.numel()
    flat_surviving = mask.reshape(-1).nonzero().squeeze(1)
    if flat_surviving.numel() != n_surv:
        raise ValueError(f"{n_surv} saliency values for a mask with {flat_surviving.numel()} surviving entries")
    k = topk_count(n_surv, ratio)
    positions = _topk_positions(surviving_fisher.float(), k)
    return flat_surviving[positions].to(_index_dtype(mask.numel())), positions


def select_topk(fisher: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """G: the :func:`topk_count` surviving entries with the largest saliency, as ascending flat indices.

    Ties break deterministically towards the lower flat (row-major) index, on every device: entries above
    the k-th largest value are taken, then the equal ones in index order. Pruned entries are never selected.

    :param fisher: saliency F, any shape, non-negative
    :param mask: bool mask of the same shape (True = surviving)
    :param ratio: ``topk_ratio`` in (0, 1]
    :return: ``[|G|]`` flat indices, sorted ascending (int32 below 2**31 entries, else int64)
    """
    if fisher.shape != mask.shape:
        raise ValueError(f"saliency shape {tuple(fisher.shape)} != mask shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    return select_topk_compact(fisher[mask], mask, ratio)[0]


def selection_mask(shape: torch.Size | tuple[int, ...], indices: torch.Tensor) -> torch.Tensor:
    """Expand compact flat indices into a bool mask of ``shape`` (for inspection and tests)."""
    out = torch.zeros(math.prod(shape), dtype=torch.bool, device=indices.device)
    out[indices.long()] = True
    return out.reshape(shape)


def _ratio(pruned: float, surviving: float) -> float:
    if pruned == 0.0:
        return 0.0
    if surviving == 0.0:
        return math.inf
    return pruned / surviving


def saliency_ratio(fisher: torch.Tensor, mask: torch.Tensor) -> float:
    """ρ = ΣF[M=0] / ΣF[M=1]: pruned saliency mass relative to surviving mass.

    0 when the layer has no pruned entries or no pruned saliency; ``inf`` when survivors carry no saliency
    but pruned entries do.
    """
    f = fisher.double()
    return _ratio(float(f[~mask].sum()), float(f[mask].sum()))


def redistribute(
    fisher_selected: torch.Tensor,
    rho: float,
    alpha: float,
    max_scale: float = 10.0,
    count: int | None = None,
    total: float | None = None,
) -> torch.Tensor:
    """W on the selected entries: ``W_i = 1 + α·ρ·|G|·F_i / ΣF[G]``, clipped to ``max_scale``.

    Before clipping the mean of W over G is exactly ``1 + α·ρ``. Edge cases: ρ = 0 or α = 0 gives W = 1;
    ΣF[G] = 0 (no saliency on the selection) spreads the extra mass evenly, W = 1 + α·ρ; ρ = ∞ (all
    saliency on pruned entries) gives ``max_scale`` everywhere.

    :param fisher_selected: F on G, ``[|G|]``
    :param rho: the layer's ρ (:func:`saliency_ratio`)
    :param alpha: redistribution strength α ≥ 0
    :param max_scale: upper clip (≥ 1; ``math.inf`` disables clipping)
    :param count: |G| of the whole layer when ``fisher_selected`` is one shard's part of G (default: its size)
    :param total: ΣF[G] of the whole layer, likewise (default: the sum of ``fisher_selected``)
    :return: fp32, the size of ``fisher_selected``
    """
    if alpha < 0 or rho < 0:
        raise ValueError(f"alpha and rho must be non-negative, got alpha={alpha}, rho={rho}")
    if max_scale < 1:
        raise ValueError(f"max_scale must be at least 1, got {max_scale}")
    f = fisher_selected.double()
    size = f.numel()
    n = size if count is None else int(count)
    if alpha == 0 or rho == 0 or size == 0:
        return torch.ones(size, dtype=torch.float32, device=f.device)
    if math.isinf(rho):
        return torch.full((size,), float(max_scale), dtype=torch.float32, device=f.device)
    total = float(f.sum()) if total is None else float(total)
    if total == 0.0:
        w = torch.full((size,), 1.0 + alpha * rho, dtype=torch.float64, device=f.device)
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
    """G and (optionally) W for one layer, from its full saliency and frozen mask.

    :param fisher: saliency F ``[out, in]`` (fp32)
    :param mask: frozen mask M ``[out, in]`` (True = surviving)
    :param topk_ratio: fraction of survivors in G, in (0, 1]
    :param alpha: α of the redistribution
    :param max_scale: clip of W
    :param redistribution: compute W (``sau``); ``False`` keeps W = 1 (``topk``)
    :return: the layer's :class:`LayerSelection`
    """
    if fisher.shape != mask.shape:
        raise ValueError(f"saliency shape {tuple(fisher.shape)} != mask shape {tuple(mask.shape)}")
    pruned_total = float(fisher[~mask].double().sum())
    return build_selection_compact(fisher[mask], pruned_total, mask, topk_ratio, alpha, max_scale, redistribution)


def contrastive_score(forget: torch.Tensor, retain: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """The ``contrastive`` ranking of a layer's surviving entries: ``F / (F_r + ε·mean F_r)``.

    Large where the forget set's Fisher is large *and* the retain set's is small, so G avoids weights that
    retained knowledge needs. ε is relative to the layer's mean retain Fisher, which keeps the ratio finite and
    makes it scale-free (multiplying F_r by a constant leaves the ranking unchanged). A layer whose retain
    Fisher is zero everywhere has nothing to contrast with: its score is F itself.

    :param forget: F on the surviving entries, fp32 ``[n]``
    :param retain: F_r on the same entries, ``[n]``
    :param eps: ε > 0
    :return: the score, fp32 ``[n]``
    """
    if forget.shape != retain.shape:
        raise ValueError(f"forget and retain saliency differ in shape: {tuple(forget.shape)} != {tuple(retain.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    mean = float(retain.double().mean()) if retain.numel() else 0.0
    if mean <= 0.0:
        return forget.float()
    return forget.float() / (retain.float() + eps * mean)


def build_selection_compact(
    surviving_fisher: torch.Tensor,
    pruned_total: float,
    mask: torch.Tensor,
    topk_ratio: float,
    alpha: float = 0.1,
    max_scale: float = 10.0,
    redistribution: bool = True,
    score: torch.Tensor | None = None,
) -> LayerSelection:
    """G and (optionally) W for one layer from the compact saliency the loop keeps: F on the surviving
    entries (row-major order) and the total of F over the pruned ones (all ρ needs of them).

    :param surviving_fisher: ``F[M]``, fp32 ``[n_surviving]``
    :param pruned_total: ``ΣF[M=0]``
    :param mask: frozen mask M ``[out, in]`` (True = surviving)
    :param score: what ranks the survivors for G (e.g. :func:`contrastive_score`), ``[n_surviving]``;
        ``None``: F. ρ and W are computed from F either way
    :return: the layer's :class:`LayerSelection`; ``indices`` are int32 below 2**31 entries
    """
    if score is not None and score.shape != surviving_fisher.shape:
        raise ValueError(f"score shape {tuple(score.shape)} != saliency shape {tuple(surviving_fisher.shape)}")
    indices, positions = select_topk_compact(surviving_fisher if score is None else score, mask, topk_ratio)
    rho = _ratio(float(pruned_total), float(surviving_fisher.double().sum()))
    scale = None
    n_clipped = 0
    if redistribution:
        w = redistribute(surviving_fisher[positions], rho, alpha, max_scale)
        n_clipped = int((w >= max_scale).sum()) if alpha > 0 and rho > 0 else 0
        scale = None if bool((w == 1).all()) else w
    return LayerSelection(
        indices=indices, scale=scale, numel=mask.numel(), n_surviving=surviving_fisher.numel(), rho=rho,
        n_clipped=n_clipped,
    )


def selection_stats(layers: dict[str, dict[str, float | int | None]]) -> dict[str, float | int | None]:
    """A run's redistribution in a few numbers, from the per-layer :meth:`LayerSelection.summary` records:
    ρ (mean, median, max over layers), W (mean of the layers' means, max), the share of G clipped at
    ``max_scale``, and |G| over all surviving entries. ``None`` for what a mode does not compute (``rho`` is
    ``None`` outside ``sau``/``topk``)."""
    rhos = [float(info["rho"]) for info in layers.values() if info.get("rho") is not None]
    sel = [info for info in layers.values() if "w_mean" in info]
    n_selected = sum(int(info["n_selected"]) for info in sel)
    n_surviving = sum(int(info["n_surviving"]) for info in sel)
    return {
        "layers": len(layers),
        "rho_mean": statistics.fmean(rhos) if rhos else None,
        "rho_median": statistics.median(rhos) if rhos else None,
        "rho_max": max(rhos) if rhos else None,
        "w_mean": statistics.fmean(float(info["w_mean"]) for info in sel) if sel else None,
        "w_max": max(float(info["w_max"]) for info in sel) if sel else None,
        "clipped_share": sum(int(info["n_clipped"]) for info in sel) / n_selected if n_selected else None,
        "selected_share": n_selected / n_surviving if n_surviving else None,
    }


# ------------------------------------------------------------------------------ sharded layers (FSDP2)


class Collective(Protocol):
    """What the sharded selection needs from the processes that hold a layer's row blocks (rank r holds
    the r-th block, so rank order is row-major order). Implemented by
    :class:`sau_compress.unlearn.shard.ShardContext`."""

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place; return it."""

    def all_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Maximum of ``tensor`` over the processes, in place; return it."""

    def sum_before(self, value: int) -> int:
        """The sum of ``value`` over the processes of lower rank."""


#: one past the bit pattern of +inf: no finite non-negative fp32 value has bits at or above it
_ABOVE_FINITE = 0x7F800001


def _kth_largest_bits(bits: torch.Tensor, k: int, comm: Collective) -> int:
    """The bit pattern of the k-th largest value of the non-negative fp32 values spread over the processes
    (``bits`` = this process's values viewed as int32; for non-negative floats the order of the bit patterns
    is the order of the values). A bisection over the patterns: 31 counts summed over the processes, exact."""
    lo, hi = 0, _ABOVE_FINITE  # count(bits >= lo) >= k > count(bits >= hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        count = comm.all_sum((bits >= mid).sum(dtype=torch.int64).reshape(1))
        if int(count) >= k:
            lo = mid
        else:
            hi = mid
    return lo


def _sum(comm: Collective, value: float | int, dtype: torch.dtype, device: torch.device) -> float:
    return comm.all_sum(torch.tensor([value], dtype=dtype, device=device)).item()


def build_selection_sharded(
    surviving_fisher: torch.Tensor,
    pruned_total: float,
    mask: torch.Tensor,
    topk_ratio: float,
    alpha: float,
    max_scale: float,
    redistribution: bool,
    comm: Collective,
    score: torch.Tensor | None = None,
) -> tuple[LayerSelection, dict[str, float | int]]:
    """:func:`build_selection_compact` for a layer whose rows are split over processes, each calling this with
    its row block: the same G as one process would select from the whole layer (the k-th largest saliency
    found exactly across the processes, ties to the lower flat index), and W from the layer's totals.

    :param surviving_fisher: ``F[M]`` of this process's rows, fp32, row-major
    :param pruned_total: ΣF over this process's pruned entries
    :param mask: this process's rows of the frozen mask
    :param comm: the processes (:class:`Collective`)
    :param score: what ranks the survivors for G (non-negative) on this process's rows, computed from the
        whole layer's figures; ``None``: F. ρ and W come from F either way
    :return: this process's :class:`LayerSelection` (indices into its own rows) and the layer's summary
        (the numbers of :meth:`LayerSelection.summary`, for the whole layer)
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    device = surviving_fisher.device
    flat_surviving = mask.reshape(-1).nonzero().squeeze(1)
    n_local = surviving_fisher.numel()
    if flat_surviving.numel() != n_local:
        raise ValueError(f"{n_local} saliency values for a mask with {flat_surviving.numel()} surviving entries")
    counts = comm.all_sum(torch.tensor([n_local, mask.numel()], dtype=torch.int64, device=device))
    n_surviving, numel = int(counts[0]), int(counts[1])
    k = topk_count(n_surviving, topk_ratio)
    if score is not None and score.shape != surviving_fisher.shape:
        raise ValueError(f"score shape {tuple(score.shape)} != saliency shape {tuple(surviving_fisher.shape)}")
    scores = (surviving_fisher if score is None else score).float().contiguous()
    if k == 0:
        positions = torch.zeros(0, dtype=torch.long, device=device)
    else:
        if n_local and float(scores.min()) < 0:
            raise ValueError("saliency must be non-negative")
        bits = scores.view(torch.int32)
        threshold = _kth_largest_bits(bits, k, comm)
        above = bits > threshold
        equal = bits == threshold
        need = k - int(comm.all_sum(above.sum(dtype=torch.int64).reshape(1)))
        n_equal = int(equal.sum())
        take = max(0, min(n_equal, need - comm.sum_before(n_equal)))
        positions = (above | (equal & (torch.cumsum(equal, 0) <= take))).nonzero().squeeze(1)
    indices = flat_surviving[positions].to(_index_dtype(mask.numel()))
    rho = _ratio(_sum(comm, float(pruned_total), torch.float64, device),
                 _sum(comm, float(surviving_fisher.double().sum()), torch.float64, device))
    scale = None
    n_clipped = 0
    w_mean = w_max = 1.0
    if redistribution:
        selected = surviving_fisher[positions]
        w = redistribute(selected, rho, alpha, max_scale, count=k,
                         total=_sum(comm, float(selected.double().sum()), torch.float64, device))
        n_clipped = int(_sum(comm, int((w >= max_scale).sum()) if alpha > 0 and rho > 0 else 0, torch.int64,
                             device))
        w_mean = _sum(comm, float(w.double().sum()), torch.float64, device) / k if k else 1.0
        local_max = float(w.max()) if w.numel() else 0.0
        w_max = comm.all_max(torch.tensor([local_max], dtype=torch.float64, device=device)).item() if k else 1.0
        scale = None if bool((w == 1).all()) else w
    local = LayerSelection(indices=indices, scale=scale, numel=mask.numel(), n_surviving=n_local, rho=rho,
                           n_clipped=n_clipped)
    summary = {
        "sparsity": (numel - n_surviving) / numel if numel else 0.0,
        "rho": rho,
        "selected_fraction": k / numel if numel else 0.0,
        "n_selected": k,
        "n_surviving": n_surviving,
        "w_mean": w_mean,
        "w_max": w_max,
        "n_clipped": n_clipped,
    }
    return local, summary
