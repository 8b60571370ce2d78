"""The update-scaled optimizers: scaling semantics, frozen entries, agreement with torch's optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sau_compress.optim import ParamScale, ScaledAdamW, ScaledSGD, make_optimizer


def _param(values: list[float]) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values))


def _set_grad(opt, p: nn.Parameter, grad: torch.Tensor) -> None:
    """Produce ``grad`` on ``p`` through autograd, so the compact hooks run as in training."""
    (p * grad).sum().backward()


def test_adamw_w2_moves_twice_as_far_as_w1():
    p = _param([0.5, 0.5, 0.5, 0.25])
    opt = ScaledAdamW({"w": p}, {"w": ParamScale(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))},
                      lr=0.1, weight_decay=0.1)
    opt.attach()
    _set_grad(opt, p, torch.full((4,), 0.3))
    opt.step()
    delta = p.detach() - torch.tensor([0.5, 0.5, 0.5, 0.25])
    # first AdamW step: -lr*wd*theta - lr * g / (|g| + eps)
    expected_w1 = -0.1 * 0.1 * 0.5 - 0.1 * 0.3 / (0.3 + 1e-8)
    torch.testing.assert_close(delta[0].item(), expected_w1, rtol=1e-6, atol=0)
    torch.testing.assert_close(delta[1].item(), 2 * delta[0].item(), rtol=1e-6, atol=0)  # float32 rounding
    assert delta[2].item() == 0.0 and delta[3].item() == 0.0  # not selected: untouched
    assert p.grad is None and opt.slots[0].grad is not None  # the hook gathered and freed the gradient


def test_compact_state_holds_only_the_selected_entries():
    p = nn.Parameter(torch.randn(8, 16))
    idx = torch.tensor([3, 17, 40, 127])
    opt = ScaledAdamW({"w": p}, {"w": ParamScale(idx)})
    slot = opt.slots[0]
    assert slot.state["exp_avg"].shape == (4,) and slot.state["exp_avg_sq"].shape == (4,)
    assert slot.indices.dtype == torch.int32
    assert opt.state_bytes() == 4 * 4 + 4 * 4 + 4 * 4  # two fp32 moments + int32 indices
    opt.attach()
    (p**2).sum().backward()
    assert torch.equal(slot.grad, (2 * p.detach()).view(-1)[idx])
    assert p.grad is None
    opt.detach()
    (p**2).sum().backward()
    assert p.grad is not None  # hook removed


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_unselected_and_zero_entries_never_move(kind):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(6, 8, generator=gen)
    start[:, ::2] = 0.0  # "pruned"
    p = nn.Parameter(start.clone())
    survivors = (start != 0).view(-1).nonzero().squeeze(1)
    chosen = survivors[::3]
    opt = make_optimizer(kind, {"w": p}, {"w": ParamScale(chosen, torch.linspace(1, 3, len(chosen)))},
                         lr=1e-2, weight_decay=0.1)
    opt.attach()
    for _ in range(50):
        (p * torch.randn(6, 8, generator=gen)).sum().backward()
        opt.step()
        opt.zero_grad()
    moved = (p.detach() != start).view(-1)
    expected = torch.zeros(48, dtype=torch.bool)
    expected[chosen] = True
    assert torch.equal(moved, expected)
    assert torch.equal(p.detach()[:, ::2], torch.zeros(6, 4))


def test_full_layout_matches_torch_adamw():
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(5, 7, generator=gen)
    ours, ref = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    opt = ScaledAdamW({"w": ours}, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-6)
    torch_opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-6)
    for _ in range(30):
        g = torch.randn(5, 7, generator=gen)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    # same formula, different float32 operation order: a few ulps
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("nesterov", [False, True])
def test_full_layout_matches_torch_sgd(nesterov):
    gen = torch.Generator().manual_seed(2)
    start = torch.randn(4, 6, generator=gen)
    ours, ref = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    opt = ScaledSGD({"w": ours}, lr=1e-2, weight_decay=0.05, momentum=0.9, nesterov=nesterov)
    torch_opt = torch.optim.SGD([ref], lr=1e-2, weight_decay=0.05, momentum=0.9, nesterov=nesterov)
    for _ in range(30):
        g = torch.randn(4, 6, generator=gen)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-7)


def test_full_layout_bool_scale_ignores_non_finite_masked_gradients():
    p = _param([1.0, 2.0, 0.0])
    opt = ScaledAdamW({"w": p}, {"w": ParamScale(None, torch.tensor([True, True, False]))}, lr=0.1)
    p.grad = torch.tensor([0.5, -0.5, math.nan])
    assert opt.grads_finite()  # the NaN sits where the update is discarded
    opt.step()
    assert p.detach()[2].item() == 0.0
    assert p.detach()[0].item() < 1.0 and p.detach()[1].item() > 2.0
    p.grad = torch.tensor([math.inf, 0.5, 0.0])
    assert not opt.grads_finite()  # a used entry is not finite


def test_clip_grad_norm_on_the_selected_gradient():
    p = nn.Parameter(torch.zeros(4))
    opt = ScaledSGD({"w": p}, {"w": ParamScale(torch.tensor([0, 1]))}, lr=1.0, momentum=0.0)
    opt.attach()
    (p * torch.tensor([3.0, 4.0, 100.0, 100.0])).sum().backward()
    assert opt.grad_norm().item() == 5.0  # entries 2, 3 are not in G
    assert opt.clip_grad_norm_(1.0) == 5.0
    torch.testing.assert_close(opt.slots[0].grad, torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.6, -0.8, 0.0, 0.0]), rtol=1e-5, atol=0)


def test_bf16_parameter_math_in_fp32():
    p = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.bfloat16))
    opt = ScaledSGD({"w": p}, {"w": ParamScale(torch.tensor([0]), torch.tensor([2.0]))}, lr=0.25, momentum=0.0)
    opt.attach()
    (p * torch.tensor([1.0, 1.0], dtype=torch.bfloat16)).sum().backward()
    assert opt.slots[0].grad.dtype == torch.float32
    opt.step()
    assert p.dtype == torch.bfloat16 and p.detach().tolist() == [0.5, 1.0]


def test_bad_arguments():
    p = _param([1.0, 2.0])
    with pytest.raises(ValueError, match=r"unknown optimizer 'lion'; choose from \['adamw', 'sgd'\]"):
        make_optimizer("lion", {"w": p})
    with pytest.raises(ValueError, match="scale shape"):
        ScaledAdamW({"w": p}, {"w": ParamScale(torch.tensor([0]), torch.ones(2))})
    with pytest.raises(ValueError, match="indices outside"):
        ScaledAdamW({"w": p}, {"w": ParamScale(torch.tensor([2]))})
    with pytest.raises(KeyError, match="unknown parameters"):
        ScaledAdamW({"w": p}, {"v": ParamScale()})
