"""Saliency: exact squared-gradient means, fp32 buffers, pruned positions, cleanup, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sau_compress.saliency import FISHER_PRECISION, compute_fisher


def _layer(dtype: torch.dtype = torch.float32) -> nn.Linear:
    lin = nn.Linear(3, 2, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.0]]))  # zeros = "pruned"
    return lin


def test_fisher_is_the_mean_of_squared_gradients():
    lin = _layer()
    batches = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, -1.0])]
    # loss = sum(W x): dL/dW[i, j] = x[j], so F[i, j] = (x1[j]^2 + x2[j]^2) / 2 = [5, 2, 5], pruned entries included
    fisher = compute_fisher({"w": lin.weight}, batches, lambda x: lin(x).sum(), progress=False)
    assert list(fisher) == ["w"]
    assert torch.equal(fisher["w"], torch.tensor([[5.0, 2.0, 5.0], [5.0, 2.0, 5.0]]))
    assert lin.weight.grad is None


def test_fisher_buffer_is_fp32_for_bf16_weights_and_hooks_are_removed():
    lin = _layer(torch.bfloat16)
    x = torch.tensor([0.5, 1.5, -2.0], dtype=torch.bfloat16)
    fisher = compute_fisher({"w": lin.weight}, [x], lambda b: lin(b).float().sum(), progress=False)
    assert fisher["w"].dtype == FISHER_PRECISION
    assert torch.equal(fisher["w"], torch.tensor([[0.25, 2.25, 4.0], [0.25, 2.25, 4.0]]))
    lin(x).float().sum().backward()  # no saliency hook left: the gradient stays
    assert lin.weight.grad is not None and torch.equal(fisher["w"][0], torch.tensor([0.25, 2.25, 4.0]))


def test_loss_weights_batches_equally():
    lin = _layer()
    batches = [(torch.tensor([1.0, 0.0, 0.0]), 2.0), (torch.tensor([1.0, 0.0, 0.0]), 4.0)]
    fisher = compute_fisher({"w": lin.weight}, batches, lambda b: b[1] * lin(b[0]).sum(), progress=False)
    assert torch.equal(fisher["w"][:, 0], torch.tensor([10.0, 10.0]))  # (2^2 + 4^2) / 2


def test_errors():
    lin = _layer()
    with pytest.raises(ValueError, match="at least one batch"):
        compute_fisher({"w": lin.weight}, [], lambda b: lin(b).sum(), progress=False)
    with pytest.raises(FloatingPointError, match="batch 0"):
        compute_fisher({"w": lin.weight}, [torch.ones(3)], lambda b: lin(b).sum() * math.inf, progress=False)
    assert lin.weight.grad is None
    lin.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="require grad"):
        compute_fisher({"w": lin.weight}, [torch.ones(3)], lambda b: lin(b).sum(), progress=False)
    other = nn.Parameter(torch.ones(2))
    lin.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="no gradient for 1 parameter"):
        compute_fisher({"w": lin.weight, "other": other}, [torch.ones(3)], lambda b: lin(b).sum(), progress=False)
