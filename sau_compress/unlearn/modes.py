"""What the modes differ in (``docs/design.md``): the selection G and the scale W of ``sau`` and ``topk`` (from the
saliency F over the forget set, kept on the surviving entries only), the full-layout scales of ``masked``, and
the optimizer each mode steps with. Behind the optimizers' one interface (:mod:`sau_compress.optim`), the
training loop itself does not branch on the mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from torch import nn

from sau_compress.data import sequential_batches, spread_batches
from sau_compress.losses import retain_nll, sequence_nll
from sau_compress.masking import PackedMask
from sau_compress.memory import PeakMemory
from sau_compress.optim import ParamScale, UnlearningOptimizer, make_optimizer
from sau_compress.saliency import CompactFisher, compute_fisher
from sau_compress.selection import build_selection_compact, build_selection_sharded, contrastive_score
from sau_compress.unlearn.batching import Batcher
from sau_compress.unlearn.config import UnlearnConfig

if TYPE_CHECKING:
    from sau_compress.unlearn.shard import ShardContext

__all__ = ["SELECTING_MODES", "UNMASKED_MODES", "Selection", "mode_optimizer"]

#: modes that select G from the saliency (the others skip the saliency pass)
SELECTING_MODES = ("sau", "topk")
#: modes whose optimizer leaves the pruned entries free during training
UNMASKED_MODES = ("naive", "unmasked")


class Selection:
    """The saliency pass and the selection built on it, once before training and again at each refresh
    (``saliency_refresh_steps``). :attr:`selected` holds each layer's latest G (flat indices of the whole
    layer, also in a sharded run)."""

    def __init__(
        self,
        params: dict[str, nn.Parameter],
        forget: list[dict[str, Any]],
        retain: list[dict[str, Any]],
        config: UnlearnConfig,
        device: torch.device,
        io: Batcher,
        memory: PeakMemory,
        release: Callable[..., None],
        shard: ShardContext | None = None,
    ) -> None:
        self.params = params
        self.forget = forget
        self.retain = retain
        self.config = config
        self.device = device
        self.io = io
        self.memory = memory
        self.release = release
        self.shard = shard
        self.selected: dict[str, torch.Tensor] = {}

    def select(
        self, masks: dict[str, PackedMask], sparsities: dict[str, float]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, ParamScale]]:
        """Per-layer G and W (modes ``sau``/``topk``) or the full-layout scales (``masked``)."""
        cfg = self.config
        info: dict[str, dict[str, Any]] = {}
        scales: dict[str, ParamScale] = {}
        if cfg.mode not in SELECTING_MODES:
            for name, mask in masks.items():
                n_sel = mask.n_surviving if cfg.mode == "masked" else mask.numel()
                info[name] = {
                    "sparsity": sparsities[name], "rho": None,
                    "selected_fraction": n_sel / mask.numel(), "n_selected": n_sel,
                }
                if cfg.mode == "masked":
                    scales[name] = ParamScale(indices=None, scale=mask.unpack(self.device))
            return info, scales
        def fisher_of(items: list[dict[str, Any]], batches: list[list[int]], desc: str) -> dict[str, CompactFisher]:
            def nll(idx: list[int]) -> torch.Tensor:
                batch = self.io.batch([items[i] for i in idx])
                loss = retain_nll(*sequence_nll(*self.io.scored(batch)))
                self.memory.sample()
                self.release(force=False)  # before the backward pass (see runner._HeapRelease)
                return loss

            out = compute_fisher(self.params, batches, nll, total=len(batches), desc=desc, progress=cfg.progress,
                                 masks=masks)
            self.memory.sample()
            return out

        size = cfg.saliency_batch_size or cfg.batch_size
        forget_batches = sequential_batches(len(self.forget), size, cfg.saliency_batches)
        fisher = fisher_of(self.forget, forget_batches, "saliency")
        retain_fisher = None
        if cfg.saliency == "contrastive":  # as many retain batches as forget batches, spread over the retain set
            retain_fisher = fisher_of(self.retain, spread_batches(len(self.retain), size, len(forget_batches)),
                                      "saliency (retain)")
        for name in list(fisher):
            f = fisher.pop(name)
            score = None
            if retain_fisher is not None:
                score = contrastive_score(f.surviving, retain_fisher.pop(name).surviving, cfg.contrastive_eps)
            # on a dense layer rho = 0, so W = 1: SAU is exactly its top-k selection there
            args = (f.surviving, f.pruned_total, masks[name].unpack(self.device), cfg.topk_ratio, cfg.alpha,
                    cfg.max_scale, cfg.mode == "sau")
            if self.shard is None:
                sel = build_selection_compact(*args, score=score)
                info[name] = sel.summary()
            else:  # this process's rows; the selection is the whole layer's (exact top-k across processes)
                sel, info[name] = build_selection_sharded(*args, comm=self.shard, score=score)
            del f, score
            self.selected[name] = (sel.indices.cpu() if self.shard is None  # flat indices of the whole layer
                                   else sel.indices.cpu().long() + self.shard.flat_offset(self.params[name]))
            scales[name] = ParamScale(indices=sel.indices, scale=sel.scale)
            logger.debug(
                f"{name}: sparsity {info[name]['sparsity']:.3f} rho {sel.rho:.4g} |G| {info[name]['n_selected']} "
                f"W mean {info[name]['w_mean']:.3f} max {info[name]['w_max']:.3f} clipped {info[name]['n_clipped']}"
            )
        return info, scales


def mode_optimizer(
    cfg: UnlearnConfig, params: dict[str, nn.Parameter], masks: dict[str, PackedMask], scales: dict[str, ParamScale]
) -> UnlearningOptimizer:
    """The optimizer of ``cfg.mode`` over ``params``: a standard torch step with the frozen mask re-applied
    (``dense``) or the pruned entries left free (``naive``/``unmasked``); else the scaled optimizer on ``scales``
    (``sau``/``topk``/``masked``)."""
    hyper = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "betas": cfg.adam_betas,
             "eps": cfg.adam_eps, "momentum": cfg.momentum}
    if cfg.mode == "dense":  # a standard torch step, then the frozen mask re-applied
        return make_optimizer(cfg.optimizer, params, keep=masks, **hyper)
    if cfg.mode in UNMASKED_MODES:  # a standard torch step, pruned entries free to move
        return make_optimizer(cfg.optimizer, params, keep={}, **hyper)
    return make_optimizer(cfg.optimizer, params, scales, **hyper)
