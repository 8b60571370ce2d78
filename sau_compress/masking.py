"""Frozen sparsity masks and sparsity patterns: target layers, mask capture and verification, sparsity
figures, the 2:4 / N:M checks and magnitude masks.

Plain tensor math on one layer at a time (plus two model walkers, :func:`resolve_targets` and
:func:`capture_masks`); nothing imports llmcompressor. The selection G and redistribution W built on these
masks live in :mod:`sau_compress.selection`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from loguru import logger
from torch import nn

from sau_compress.shards import local_tensor

__all__ = [
    "DECODER_LAYER_PATTERN",
    "DEFAULT_IGNORE",
    "FP8_DTYPES",
    "MaskViolationError",
    "PackedMask",
    "capture_masks",
    "capture_packed_masks",
    "check_structure_sparsity",
    "count_2of4_violations",
    "all_2of4",
    "is_2of4",
    "magnitude_mask",
    "mean_sparsity",
    "nonzero_mask",
    "parse_mask_structure",
    "prune_by_magnitude_",
    "resolve_targets",
    "sparsity",
    "verify_2of4",
    "verify_masks",
]

#: Default targets: an ``nn.Linear`` whose dotted name lies inside a decoder block (``...layers.<i>....``).
DECODER_LAYER_PATTERN = r"(^|.*\.)layers\.\d+\."
#: Default ignore list (llmcompressor's form; a bare ``"lm_head"`` does not match ``Linear`` targets there).
DEFAULT_IGNORE = ("re:.*lm_head",)
#: The float8 dtypes this torch build has; their zeros are read from the bits (see :func:`nonzero_mask`).
FP8_DTYPES = tuple(
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
)


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


_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


class PackedMask:
    """A frozen mask stored as bits: 1/8 byte per entry instead of the 1 byte of a bool tensor.

    The unlearning loop holds one per target layer for the whole run (for the ``dense`` baseline's
    re-projection and the final pattern check), so on an 8B model it holds ~0.9 GB of masks instead of ~7 GB.
    Unpack one layer at a time with :meth:`unpack`.

    :param mask: a bool mask (True = surviving)
    """

    def __init__(self, mask: torch.Tensor) -> None:
        if mask.dtype != torch.bool:
            raise TypeError(f"PackedMask needs a bool mask, got {mask.dtype}")
        self.shape = tuple(mask.shape)
        self.n_surviving = int(mask.sum())
        flat = mask.reshape(-1)
        pad = (-flat.numel()) % 8
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        shifts = _BIT_SHIFTS.to(flat.device)
        self.bits = (flat.view(-1, 8).to(torch.uint8) << shifts).sum(dim=1, dtype=torch.uint8)

    @property
    def device(self) -> torch.device:
        return self.bits.device

    @property
    def nbytes(self) -> int:
        """Bytes held (the bits)."""
        return self.bits.numel()

    def numel(self) -> int:
        """Entries of the mask."""
        return math.prod(self.shape)

    @property
    def sparsity(self) -> float:
        """Fraction of pruned entries."""
        n = self.numel()
        return (n - self.n_surviving) / n if n else 0.0

    def unpack(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The bool mask, on ``device`` (default: where the bits are)."""
        bits = self.bits if device is None else self.bits.to(device)
        flat = (bits.unsqueeze(1) >> _BIT_SHIFTS.to(bits.device)).bitwise_and_(1).view(-1)
        return flat[: self.numel()].to(torch.bool).reshape(self.shape)

    def to(self, device: torch.device | str) -> PackedMask:
        """A copy whose bits live on ``device`` (``self`` when already there)."""
        if torch.device(device) == self.bits.device:
            return self
        out = object.__new__(PackedMask)
        out.shape, out.n_surviving, out.bits = self.shape, self.n_surviving, self.bits.to(device)
        return out

    def __repr__(self) -> str:
        return f"PackedMask(shape={self.shape}, sparsity={self.sparsity:.4f})"


def capture_packed_masks(
    model: nn.Module,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
) -> dict[str, PackedMask]:
    """:func:`capture_masks` as :class:`PackedMask` objects, one layer's bool mask alive at a time."""
    return {
        name: PackedMask(local_tensor(layer.weight.detach()) != 0)
        for name, layer in resolve_targets(model, targets, ignore).items()
    }


def sparsity(mask_or_weight: torch.Tensor | PackedMask) -> float:
    """Fraction of pruned entries: ``False`` entries of a bool mask, or zero entries of a weight.

    :param mask_or_weight: a bool mask (True = surviving), a :class:`PackedMask` or a weight tensor
    :return: a float in [0, 1] (0.0 for an empty tensor)
    """
    if isinstance(mask_or_weight, PackedMask):
        return mask_or_weight.sparsity
    if mask_or_weight.numel() == 0:
        return 0.0
    if mask_or_weight.dtype == torch.bool:
        pruned = mask_or_weight.numel() - int(mask_or_weight.sum())
    else:
        pruned = int((mask_or_weight == 0).sum())
    return pruned / mask_or_weight.numel()


def verify_masks(model: nn.Module, masks: dict[str, torch.Tensor | PackedMask]) -> None:
    """Check that every masked layer's zero pattern is exactly its frozen mask.

    A violation is an entry that is non-zero where the mask is ``False`` (a pruned weight that moved) or zero
    where it is ``True`` (a survivor that became exactly zero).

    :param model: the model holding the layers
    :param masks: ``{layer name: bool mask or PackedMask}`` from :func:`capture_masks` /
        :func:`capture_packed_masks`
    :raises KeyError: a mask names a layer the model does not have
    :raises MaskViolationError: naming each bad layer and its number of violations
    """
    modules = dict(model.named_modules())
    bad = []
    for name, mask in masks.items():
        if name not in modules or not hasattr(modules[name], "weight"):
            raise KeyError(f"mask for '{name}' but the model has no such layer with a weight")
        weight = local_tensor(modules[name].weight.detach())
        if isinstance(mask, PackedMask):
            if tuple(weight.shape) != mask.shape:
                raise MaskViolationError(f"{name}: weight shape {tuple(weight.shape)} != mask shape {mask.shape}")
            mask = mask.unpack(weight.device)
        if weight.shape != mask.shape:
            raise MaskViolationError(f"{name}: weight shape {tuple(weight.shape)} != mask shape {tuple(mask.shape)}")
        n = int(((weight != 0) != mask.to(weight.device)).sum())
        if n:
            bad.append(f"{name}: {n} violations")
    if bad:
        raise MaskViolationError(f"sparsity pattern changed in {len(bad)} layer(s): " + "; ".join(bad))


def nonzero_mask(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the entries that are not zero (``-0.0`` counts as zero; NaN counts as non-zero).

    :param weight: any tensor; float8, integer and bool dtypes are supported
    :return: bool tensor of ``weight``'s shape, on its device
    """
    if weight.dtype in FP8_DTYPES:
        # float8 comparisons are not implemented on every device: read the bits, 0x00 and 0x80 are the zeros
        return (weight.view(torch.int8) & 0x7F) != 0
    return weight != 0


def _groups_of_4(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"2:4 checks need a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if weight.shape[1] % 4:
        raise ValueError(f"2:4 checks need the input dim to be a multiple of 4, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    return nonzero_mask(weight).reshape(rows, cols // 4, 4)


def count_2of4_violations(weight: torch.Tensor) -> int:
    """Number of groups of 4 consecutive entries along the input dim that hold more than 2 non-zeros.

    Zeros are those of :func:`nonzero_mask` (float8 weights included).

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


def all_2of4(weights: Iterable[torch.Tensor]) -> bool:
    """Whether every tensor is a 2-D ``[out, in]`` weight (or mask) with ``in % 4 == 0`` in the 2:4 pattern.

    Unlike :func:`is_2of4` a tensor of another shape is an answer (``False``), not an error; an empty
    iterable gives ``False`` (there is no pattern to speak of).
    """
    seen = False
    for w in weights:
        seen = True
        if w.dim() != 2 or w.shape[1] % 4 or count_2of4_violations(w):
            return False
    return seen


def mean_sparsity(masks: dict[str, torch.Tensor | PackedMask]) -> float:
    """Fraction of pruned entries over all layers together (each layer weighted by its size).

    :param masks: ``{layer name: bool mask, PackedMask or weight}``
    :return: a float in [0, 1] (0.0 when there are no entries)
    """
    total = sum(m.numel() for m in masks.values())
    return sum(sparsity(m) * m.numel() for m in masks.values()) / total if total else 0.0


# ------------------------------------------------------------------------------------- magnitude masks

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_mask_structure(mask_structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"N:M"`` -> ``(N, M)`` (N kept of every M along the input dim).

    :raises ValueError: anything else, or not ``0 < N < M``
    """
    if mask_structure == "unstructured":
        return None
    match = _NM.match(mask_structure)
    if match is None:
        raise ValueError(
            f"mask_structure must be 'unstructured' or 'N:M' (e.g. '2:4'), got {mask_structure!r}"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"mask_structure '{mask_structure}' needs 0 < N < M")
    return n, m


def check_structure_sparsity(mask_structure: str, sparsity: float) -> tuple[int, int] | None:
    """Parse ``mask_structure`` and check that an ``N:M`` structure comes with sparsity ``1 - N/M``.

    :return: ``(N, M)`` or ``None`` (unstructured)
    :raises ValueError: a bad structure, or a sparsity that ``N:M`` does not give
    """
    nm = parse_mask_structure(mask_structure)
    if nm is not None and not math.isclose(sparsity, 1 - nm[0] / nm[1], abs_tol=1e-9):
        raise ValueError(
            f"mask_structure '{mask_structure}' means sparsity {1 - nm[0] / nm[1]}, got sparsity {sparsity}"
        )
    return nm


def magnitude_mask(
    weight: torch.Tensor, sparsity: float, mask_structure: str = "unstructured"
) -> torch.Tensor:
    """Keep-mask of magnitude pruning: ``True`` on the entries that survive.

    Unstructured: the ``round(sparsity * numel)`` entries of smallest ``|w|`` are pruned (ties: the lower
    row-major index is pruned first). ``N:M``: in every group of M consecutive entries along the input
    (last) dim the N largest ``|w|`` survive (ties: the lower index survives); ``sparsity`` must then be
    ``1 - N/M``.

    :param weight: ``[out, in]`` (any float dtype; ranked in fp32)
    :param sparsity: fraction to prune, in [0, 1)
    :param mask_structure: ``"unstructured"`` or ``"N:M"`` with ``in % M == 0``
    :return: bool ``[out, in]``
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    score = weight.detach().abs().float()
    nm = check_structure_sparsity(mask_structure, sparsity)
    if nm is None:
        k = round(sparsity * score.numel())
        keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
        if k:
            order = torch.sort(score.reshape(-1), stable=True).indices
            keep[order[:k]] = False
        return keep.reshape(score.shape)
    n, m = nm
    if score.dim() != 2 or score.shape[1] % m:
        raise ValueError(
            f"mask_structure '{mask_structure}' needs a 2-D weight with in % {m} == 0, "
            f"got shape {tuple(score.shape)}"
        )
    groups = score.reshape(score.shape[0], -1, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(score.shape)


@torch.no_grad()
def prune_by_magnitude_(
    model: nn.Module,
    sparsity: float,
    mask_structure: str = "unstructured",
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Magnitude-prune every target layer of ``model`` in place (:func:`magnitude_mask` per layer).

    For plain in-memory models (tests, benchmarks); inside an llmcompressor recipe use
    ``OneShotMagnitudePruningModifier``, which also handles offloaded parameters.

    :return: ``{layer name: keep mask}``
    """
    masks = {}
    for name, layer in resolve_targets(model, targets, ignore).items():
        masks[name] = magnitude_mask(layer.weight, sparsity, mask_structure)
        layer.weight.masked_fill_(~masks[name], 0.0)
    return masks
