"""Masks, G, W and pattern checks on hand-computed tensors and the tiny Llama."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sau_compress.masking import (
    MaskViolationError,
    capture_masks,
    count_2of4_violations,
    is_2of4,
    resolve_targets,
    sparsity,
    verify_2of4,
    verify_masks,
)
from sau_compress.selection import (
    build_selection,
    redistribute,
    saliency_ratio,
    select_topk,
    selection_mask,
    topk_count,
)

LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# ---------------------------------------------------------------------------------------------- targets


def test_default_targets_are_the_decoder_linears(tiny_model):
    names = list(resolve_targets(tiny_model))
    assert names == [f"model.layers.{i}.{s}" for i in range(2) for s in LLAMA_LINEARS]


def test_class_target_with_default_ignore_drops_lm_head(tiny_model):
    assert "lm_head" not in resolve_targets(tiny_model, ["Linear"])
    assert len(resolve_targets(tiny_model, ["Linear"])) == 14
    assert list(resolve_targets(tiny_model, ["Linear"], ignore=[]))[-1] == "lm_head"


def test_regex_on_a_container_takes_its_linears_and_ignore_applies(tiny_model):
    got = resolve_targets(tiny_model, [r"re:model.layers.0$"], ignore=["re:.*mlp"])
    assert list(got) == [f"model.layers.0.{s}" for s in LLAMA_LINEARS[:4]]
    assert list(resolve_targets(tiny_model, ["model.layers.1.mlp.up_proj"])) == ["model.layers.1.mlp.up_proj"]


def test_no_match_names_the_patterns(tiny_model):
    with pytest.raises(ValueError, match=r"re:.*nothing_here"):
        resolve_targets(tiny_model, ["re:.*nothing_here"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        resolve_targets(tiny_model, ["re:("])


# ------------------------------------------------------------------------------------------------ masks


def _linear(weight: list[list[float]]) -> nn.Sequential:
    w = torch.tensor(weight)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return nn.Sequential(nn.ModuleDict({"layers": nn.ModuleList([nn.ModuleDict({"proj": lin})])}))


def test_capture_masks_and_sparsity():
    model = _linear([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    masks = capture_masks(model)
    assert list(masks) == ["0.layers.0.proj"]
    expected = torch.tensor([[True, False, True, False], [False, False, False, True]])
    assert torch.equal(masks["0.layers.0.proj"], expected)
    assert sparsity(expected) == 5 / 8
    assert sparsity(model[0]["layers"][0]["proj"].weight) == 5 / 8
    assert sparsity(torch.ones(3, dtype=torch.bool)) == 0.0


def test_verify_masks_names_layer_and_count():
    model = _linear([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    masks = capture_masks(model)
    verify_masks(model, masks)  # unchanged: no error
    with torch.no_grad():
        w = model[0]["layers"][0]["proj"].weight
        w[0, 1] = 0.5  # a pruned entry moved
        w[1, 3] = 0.0  # a survivor became zero
    with pytest.raises(MaskViolationError, match=r"0\.layers\.0\.proj: 2 violations"):
        verify_masks(model, masks)
    with pytest.raises(KeyError, match="no_such"):
        verify_masks(model, {"no_such": masks["0.layers.0.proj"]})


def test_2of4_checks():
    good = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 4.0]])
    bad = torch.tensor([[1.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert is_2of4(good) and count_2of4_violations(good) == 0
    assert count_2of4_violations(bad) == 2 and not is_2of4(bad)
    verify_2of4({"a": good})
    with pytest.raises(MaskViolationError, match="b: 2 violations"):
        verify_2of4({"a": good, "b": bad})
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        count_2of4_violations(torch.zeros(2, 6))


# ---------------------------------------------------------------------------------------------- G and W


@pytest.mark.parametrize(
    ("n", "ratio", "k"),
    [(10, 0.3, 3), (100, 0.29, 29), (5, 0.3, 2), (3, 0.1, 1), (7, 1.0, 7), (0, 0.3, 0), (2048, 0.3, 614)],
)
def test_topk_count_rounds_to_nearest_at_least_one(n, ratio, k):
    assert topk_count(n, ratio) == k


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_topk_ratio_outside_range(ratio):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        topk_count(10, ratio)


def test_select_topk_hand_example():
    # survivors: 0:0.9 2:0.5 3:0.7 5:0.8 6:0.2 7:0.6; pruned 1 and 4 carry the largest saliency of all
    fisher = torch.tensor([[0.9, 5.0, 0.5, 0.7], [4.0, 0.8, 0.2, 0.6]])
    mask = torch.tensor([[True, False, True, True], [False, True, True, True]])
    idx = select_topk(fisher, mask, 0.5)  # 6 survivors -> |G| = 3
    assert torch.equal(idx, torch.tensor([0, 3, 5]))
    g = selection_mask(fisher.shape, idx)
    assert int(g.sum()) == 3 and not bool((g & ~mask).any())
    assert torch.equal(select_topk(fisher, mask, 1.0), torch.tensor([0, 2, 3, 5, 6, 7]))


def test_select_topk_breaks_ties_by_lower_index():
    mask = torch.ones(6, dtype=torch.bool)
    assert torch.equal(select_topk(torch.ones(6), mask, 0.5), torch.tensor([0, 1, 2]))
    fisher = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0, 3.0])
    assert torch.equal(select_topk(fisher, mask, 0.5), torch.tensor([1, 2, 5]))


def test_rho_and_w_hand_example():
    fisher = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 4.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    rho = saliency_ratio(fisher, mask)
    assert rho == 1.0  # (6 + 4) / (1 + 2 + 3 + 4)
    sel = build_selection(fisher, mask, topk_ratio=0.5, alpha=0.1, max_scale=10.0)
    assert torch.equal(sel.indices, torch.tensor([2, 3]))  # F = 3 and 4
    # W_i = 1 + 0.1 * 1 * 2 * F_i / 7
    torch.testing.assert_close(sel.scale, torch.tensor([1 + 0.6 / 7, 1 + 0.8 / 7]), rtol=0, atol=1e-7)
    assert math.isclose(float(sel.scale.double().mean()), 1.1, abs_tol=1e-7)
    assert sel.n_selected == 2 and sel.selected_fraction == 2 / 6 and sel.sparsity == 2 / 6
    clipped = build_selection(fisher, mask, topk_ratio=0.5, alpha=0.1, max_scale=1.1)
    torch.testing.assert_close(clipped.scale, torch.tensor([1 + 0.6 / 7, 1.1]), rtol=0, atol=1e-7)
    assert clipped.n_clipped == 1


def test_w_mean_over_g_is_one_plus_alpha_rho_before_clipping():
    gen = torch.Generator().manual_seed(0)
    fisher = torch.rand(32, 48, generator=gen) ** 3
    mask = torch.rand(32, 48, generator=gen) > 0.5
    rho = saliency_ratio(fisher, mask)
    sel = build_selection(fisher, mask, topk_ratio=0.3, alpha=0.25, max_scale=math.inf)
    assert sel.n_selected == topk_count(int(mask.sum()), 0.3)
    assert not bool(selection_mask(mask.shape, sel.indices)[~mask].any())
    torch.testing.assert_close(sel.scale.double().mean().item(), 1 + 0.25 * rho, rtol=1e-6, atol=0)
    assert float(sel.scale.min()) >= 1.0


def test_w_is_one_on_a_dense_layer():
    fisher = torch.rand(4, 8, generator=torch.Generator().manual_seed(1))
    dense = torch.ones(4, 8, dtype=torch.bool)
    assert saliency_ratio(fisher, dense) == 0.0
    sel = build_selection(fisher, dense, topk_ratio=0.3, alpha=0.5)
    assert sel.scale is None and sel.n_selected == 10  # round(0.3 * 32) = 10
    assert torch.equal(redistribute(torch.tensor([1.0, 2.0]), 0.0, 0.5), torch.ones(2))


def test_w_edge_cases():
    # no saliency on G: the extra mass is spread evenly
    assert torch.equal(redistribute(torch.zeros(3), rho=2.0, alpha=0.1), torch.full((3,), 1.2))
    # survivors carry no saliency, pruned entries do: rho is inf and W sits at max_scale
    fisher = torch.tensor([0.0, 0.0, 5.0, 0.0])
    mask = torch.tensor([True, True, False, True])
    assert saliency_ratio(fisher, mask) == math.inf
    sel = build_selection(fisher, mask, 0.5, alpha=0.1, max_scale=4.0)
    assert torch.equal(sel.indices, torch.tensor([0, 1])) and torch.equal(sel.scale, torch.full((2,), 4.0))
    # no saliency at all: rho 0, W = 1
    assert build_selection(torch.zeros(4), mask, 0.5, alpha=0.1).scale is None
    with pytest.raises(ValueError, match="max_scale"):
        redistribute(torch.ones(2), 1.0, 0.1, max_scale=0.5)
