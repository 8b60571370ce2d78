"""Property-based tests of the pattern guarantee (hypothesis).

Random layer shapes, sparsity patterns (2:4, N:M, unstructured at any density, all-zero rows), modes (the loop also
`naive`, and contrastive saliency),
optimizers, dtypes, weight decay, gradient clipping, saliency with ties and zeros: after random steps the pruned
entries are exactly zero, the zero pattern is the frozen mask bit for bit, the survivors outside G (``sau`` and
``topk``) are bit-identical, and nothing became NaN or Inf.

Two levels: the selection and optimizer step on their own (saliency chosen by the test, so ties and zeros are
exercised; many examples, milliseconds each), and the whole :func:`sau_compress.unlearn.unlearn` loop on a tiny
random language model (a fifth as many examples). Profiles (``tests/conftest.py``): ``ci`` by default (25 + 10
examples), ``slow`` with ``pytest --hypothesis-profile=slow`` (1,000 + 200).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sau_compress.masking import PackedMask
from sau_compress.optim import ParamScale, make_optimizer
from sau_compress.selection import build_selection_compact, selection_mask
from sau_compress.unlearn import UnlearnConfig, unlearn

MODES = ("sau", "topk", "masked", "dense")
#: the whole loop also runs `naive` (no mask while training, the frozen mask re-applied at the end)
LOOP_MODES = (*MODES, "naive")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (``-0.0`` and ``+0.0`` differ, as do NaN payloads)."""
    return t.contiguous().view(_INT_VIEW[t.dtype])


@st.composite
def patterns(draw, rows: int, cols: int) -> torch.Tensor:
    """A frozen mask ``[rows, cols]`` (True = surviving): 2:4, N:M, unstructured, each maybe with zero rows."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["2:4", "n:m", "unstructured"]))
    if kind == "unstructured":
        density = draw(st.sampled_from([0.0, 0.05, 0.25, 0.5, 0.75, 1.0]) | st.floats(0.0, 1.0))
        mask = torch.rand(rows, cols, generator=gen) < density
    else:
        n, m = (2, 4) if kind == "2:4" else draw(st.sampled_from([(1, 4), (3, 4), (1, 2), (2, 8), (4, 8), (6, 8)]))
        if cols % m:
            m, n = 4, 2
        order = torch.rand(rows, cols // m, m, generator=gen).argsort(dim=-1)
        mask = (order < n).reshape(rows, cols)
    if draw(st.booleans()):  # some rows pruned entirely
        mask[torch.rand(rows, generator=gen) < 0.3] = False
    return mask


@st.composite
def layers(draw, max_rows: int = 12, max_groups: int = 4) -> dict[str, torch.Tensor]:
    """One or two masks of random shapes (columns a multiple of 8, so every N:M above fits)."""
    out = {}
    for i in range(draw(st.integers(1, 2))):
        rows, cols = draw(st.integers(1, max_rows)), 8 * draw(st.integers(1, max_groups))
        out[f"layers.{i}.proj"] = draw(patterns(rows, cols))
    return out


def _weights(masks: dict[str, torch.Tensor], dtype: torch.dtype, seed: int) -> dict[str, nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name, mask in masks.items():
        w = torch.randn(mask.shape, generator=gen)
        w = (w + w.sign() * 0.05) * 0.1  # survivors well away from zero
        params[name] = nn.Parameter(torch.where(mask, w, 0.0).to(dtype))  # pruned: +0.0, as pruners leave them
    return params


def _saliency(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "zeros":
        return torch.zeros(n)
    if kind == "ties":
        return torch.randint(0, 3, (n,), generator=gen).float()
    return torch.rand(n, generator=gen) * 10.0 ** float(torch.randint(-6, 3, (), generator=gen))


def _check(before: dict[str, torch.Tensor], params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor],
           selected: dict[str, torch.Tensor] | None) -> None:
    for name, p in params.items():
        w, mask = p.detach(), masks[name]
        assert torch.isfinite(w).all(), name
        assert bool((_bits(w)[~mask] == 0).all()), name  # pruned entries exactly +0.0
        assert torch.equal(w != 0, mask), name  # the pattern, bit for bit
        if selected is not None:
            g = selection_mask(mask.shape, selected[name])
            assert not bool((g & ~mask).any()), name
            keep = mask & ~g
            assert torch.equal(_bits(w)[keep], _bits(before[name])[keep]), name  # untouched survivors


@given(
    masks=layers(),
    mode=st.sampled_from(MODES),
    optimizer=st.sampled_from(["adamw", "sgd"]),
    dtype=st.sampled_from(sorted(DTYPES)),
    weight_decay=st.sampled_from([0.0, 0.01, 0.1]),
    max_grad_norm=st.none() | st.floats(1e-3, 10.0),
    lr=st.floats(1e-4, 1e-1),
    saliency=st.sampled_from(["ties", "zeros", "random"]),
    topk_ratio=st.sampled_from([1e-3, 0.1, 0.3, 0.5, 1.0]) | st.floats(1e-3, 1.0),
    alpha=st.sampled_from([0.0, 0.1, 2.0]),
    pruned_total=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1e3),
    grad_scale=st.sampled_from([0.0, 1e-8, 1.0, 1e4]),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_steps_keep_the_pattern(masks, mode, optimizer, dtype, weight_decay, max_grad_norm, lr, saliency,
                                       topk_ratio, alpha, pruned_total, grad_scale, steps, seed):
    """The selection and the optimizer step as the loop builds them (``unlearn/modes.py``: ``Selection.select``,
    ``mode_optimizer``; ``unlearn/runner.py``: ``Runner._train``), with random finite gradients."""
    gen = torch.Generator().manual_seed(seed)
    params = _weights(masks, DTYPES[dtype], seed)
    before = {name: p.detach().clone() for name, p in params.items()}
    hyper = {"lr": lr, "weight_decay": weight_decay}
    selected = None
    if mode == "dense":
        opt = make_optimizer(optimizer, params, keep={n: PackedMask(m) for n, m in masks.items()}, **hyper)
    elif mode == "masked":
        opt = make_optimizer(optimizer, params, {n: ParamScale(None, m) for n, m in masks.items()}, **hyper)
    else:
        selected, scales = {}, {}
        for name, mask in masks.items():
            sel = build_selection_compact(_saliency(saliency, int(mask.sum()), gen), pruned_total, mask, topk_ratio,
                                          alpha, redistribution=mode == "sau")
            selected[name] = sel.indices
            scales[name] = ParamScale(indices=sel.indices, scale=sel.scale)
        opt = make_optimizer(optimizer, params, scales, **hyper)
    opt.attach()
    try:
        for _ in range(steps):
            loss = sum((p.float() * torch.randn(p.shape, generator=gen) * grad_scale).sum() for p in params.values())
            loss.backward()
            assert opt.grads_finite()
            if max_grad_norm is not None:
                opt.clip_grad_norm_(max_grad_norm)
            opt.step()
            opt.zero_grad()
    finally:
        opt.detach()
    _check(before, params, masks, selected)
    for name in params:
        master = opt.master(name)
        assert master is None or bool(torch.isfinite(master).all())


class _TinyLM(nn.Module):
    """Embedding, residual MLP blocks (``layers.N.up``/``down``, the default targets), ``lm_head``."""

    def __init__(self, vocab: int, width: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"up": nn.Linear(width, hidden, bias=False), "down": nn.Linear(hidden, width, bias=False)})
            for _ in range(blocks)
        )
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        x = self.embed(input_ids)
        for block in self.layers:
            x = x + block["down"](torch.tanh(block["up"](x)))
        return SimpleNamespace(logits=self.lm_head(x))


def _items(n: int, vocab: int, gen: torch.Generator) -> list[dict]:
    out = []
    for i in range(n):
        length = int(torch.randint(4, 10, (), generator=gen))
        ids = torch.randint(1, vocab, (length,), generator=gen).tolist()
        cut = int(torch.randint(1, length - 1, (), generator=gen))
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:], "index": i})
    return out


# the whole loop costs about ten times a bare step: a fifth of the profile's examples, at least 10
# (ci: 10, slow: 200)
@settings(max_examples=max(10, settings.default.max_examples // 5))
@given(
    width=st.sampled_from([8, 16, 24]),
    hidden=st.sampled_from([8, 16, 32]),
    blocks=st.integers(1, 2),
    data=st.data(),
    mode=st.sampled_from(LOOP_MODES),
    saliency=st.sampled_from(["forget", "contrastive"]),
    method=st.sampled_from(["grad_ascent", "grad_diff", "npo", "simnpo"]),
    optimizer=st.sampled_from(["adamw", "sgd"]),
    dtype=st.sampled_from(sorted(DTYPES)),
    weight_decay=st.sampled_from([0.0, 0.1]),
    max_grad_norm=st.none() | st.sampled_from([1e-3, 1.0]),
    topk_ratio=st.sampled_from([0.01, 0.3, 1.0]),
    steps=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_unlearn_keeps_the_pattern(width, hidden, blocks, data, mode, saliency, method, optimizer, dtype,
                                   weight_decay, max_grad_norm, topk_ratio, steps, seed):
    """The whole loop: saliency from the forget loss, selection, steps, its own pattern check."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vocab = 32
    model = _TinyLM(vocab, width, hidden, blocks)
    targets = {f"layers.{b}.{p}": model.layers[b][p] for b in range(blocks) for p in ("up", "down")}
    masks = {}
    for name, layer in targets.items():
        rows, cols = layer.weight.shape
        mask = data.draw(patterns(rows, cols), label=name)
        if not mask.any():
            mask[0, 0] = True  # at least one survivor somewhere keeps the model "pruned but trainable"
        with torch.no_grad():
            w = layer.weight
            w.copy_(torch.where(mask, w + w.sign() * 1e-3, 0.0))
        masks[name] = mask
    if all(bool(m.all()) for m in masks.values()):
        next(iter(targets.values())).weight.data[0, 0] = 0.0
        next(iter(masks.values()))[0, 0] = False
    model.to(DTYPES[dtype])
    params = {name: layer.weight for name, layer in targets.items()}
    before = {name: p.detach().clone() for name, p in params.items()}
    config = UnlearnConfig(mode=mode, saliency=saliency, method=method, optimizer=optimizer, weight_decay=weight_decay,
                           max_grad_norm=max_grad_norm, topk_ratio=topk_ratio, max_steps=steps, batch_size=2,
                           learning_rate=1e-2, device="cpu", progress=False, seed=seed)
    result = unlearn(model, _items(3, vocab, gen), _items(3, vocab, gen), config)
    assert result.pattern_preserved and result.steps == steps
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses)
    _check(before, params, masks, result.selected if mode in ("sau", "topk") else None)
