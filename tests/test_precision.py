"""Mixed precision: bf16 weights are updated through an fp32 master, so small updates land."""

from __future__ import annotations

import copy

import pytest
import torch

from sau_compress.masking import prune_by_magnitude_, resolve_targets
from sau_compress.unlearn import UnlearnConfig, unlearn


@pytest.fixture(scope="module")
def items(qa_items):
    return qa_items


@pytest.fixture()
def bf16_and_fp32(tiny_model):
    """The pruned tiny Llama in bf16, and an fp32 copy holding exactly the same (bf16) values."""
    prune_by_magnitude_(tiny_model, 0.5)
    bf16 = tiny_model.to(torch.bfloat16)
    fp32 = copy.deepcopy(bf16).to(torch.float32)
    return bf16, fp32


def _weights(model):
    return {name: layer.weight.detach().clone() for name, layer in resolve_targets(model).items()}


def _cfg(**kw):
    base = {"mode": "sau", "method": "grad_diff", "retain_weight": 1.0,
            "learning_rate": 1e-5, "max_steps": 20, "batch_size": 2,
            "device": "cpu", "progress": False, "return_master": True}
    base.update(kw)
    return UnlearnConfig(**base)


def test_bf16_sau_matches_fp32_through_its_master(bf16_and_fp32, items):
    bf16, fp32 = bf16_and_fp32
    data, pad = items
    start = _weights(bf16)
    r16 = unlearn(bf16, data[:2], data[2:], _cfg(), pad_token_id=pad)
    r32 = unlearn(fp32, data[:2], data[2:], _cfg(), pad_token_id=pad)
    assert r16.extra["weight_dtype"] == "torch.bfloat16" and r32.master == {}
    after16, after32 = _weights(bf16), _weights(fp32)
    moved = total = 0
    for name, w16 in after16.items():
        idx = r16.selected[name].long()
        master = r16.master[name]
        assert master.dtype == torch.float32 and master.shape == idx.shape
        # the master follows the fp32 run: same start, same steps, gradients from a bf16 forward
        w32 = after32[name].reshape(-1)[idx]
        assert float((master - w32).norm() / w32.norm()) <= 1e-3, name
        # every bf16 weight is its master rounded; everything else is bit-identical to the start
        flat = w16.reshape(-1)
        assert torch.equal(flat[idx], master.to(torch.bfloat16)), name
        untouched = torch.ones(flat.numel(), dtype=torch.bool)
        untouched[idx] = False
        assert torch.equal(flat[untouched], start[name].reshape(-1)[untouched]), name
        moved += int((master != start[name].reshape(-1)[idx].float()).sum())
        total += idx.numel()
    assert moved >= 0.99 * total, (moved, total)
    # without a master, 20 steps of 1e-5 would have left most bf16 weights where they were: the rounded
    # weights moved far less often than the masters did
    rounded_moved = sum(int((after16[n] != start[n]).sum()) for n in after16)
    assert rounded_moved < moved


@pytest.mark.parametrize("mode", ["dense", "masked"])
def test_bf16_full_layout_masters_round_to_the_weights(bf16_and_fp32, items, mode):
    bf16, _ = bf16_and_fp32
    data, pad = items
    start = _weights(bf16)
    r = unlearn(bf16, data[:2], data[2:], _cfg(mode=mode, max_steps=5, learning_rate=1e-4), pad_token_id=pad)
    for name, w in _weights(bf16).items():
        master = r.master[name]
        assert master.shape == w.shape and master.dtype == torch.float32
        assert torch.equal(w, master.to(torch.bfloat16)), name
        pruned = start[name] == 0
        assert torch.equal(master[pruned], torch.zeros(int(pruned.sum()))), name  # exactly +0.0 in the master
        assert int((master[~pruned] != start[name][~pruned].float()).sum()) >= 0.99 * int((~pruned).sum()), name


def test_no_master_is_kept_for_fp32_weights(tiny_model, items):
    prune_by_magnitude_(tiny_model, 0.5)
    data, pad = items
    r = unlearn(tiny_model, data[:2], data[2:], _cfg(max_steps=2), pad_token_id=pad)
    n_sel = sum(v["n_selected"] for v in r.layers.values())
    assert r.master == {} and r.optimizer_state_bytes == 16 * n_sel  # moments, int32 index, W: no master
