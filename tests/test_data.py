"""Forget/retain step planning and sequential batching (additions to sau_compress.data)."""

from __future__ import annotations

import pytest
import torch

from sau_compress.data import pair_forget_retain, sequential_batches


def test_each_epoch_visits_every_forget_item_once():
    plan = pair_forget_retain(5, 100, batch_size=2, generator=torch.Generator().manual_seed(0), epochs=2)
    assert [len(f) for f, _ in plan] == [2, 2, 1, 2, 2, 1]
    for epoch in (plan[:3], plan[3:]):
        assert sorted(i for f, _ in epoch for i in f) == [0, 1, 2, 3, 4]
    assert all(len(r) == len(f) and all(0 <= j < 100 for j in r) for f, r in plan)
    assert plan[0][0] != plan[3][0] or plan[1][0] != plan[4][0]  # a fresh order per epoch


def test_plan_is_deterministic_for_a_seed_and_max_steps_overrides_epochs():
    a = pair_forget_retain(7, 9, 3, torch.Generator().manual_seed(4), epochs=1, max_steps=8)
    b = pair_forget_retain(7, 9, 3, torch.Generator().manual_seed(4), epochs=5, max_steps=8)
    c = pair_forget_retain(7, 9, 3, torch.Generator().manual_seed(5), epochs=1, max_steps=8)
    assert a == b and len(a) == 8 and a != c


def test_no_retain_set_and_errors():
    plan = pair_forget_retain(3, 0, 2, torch.Generator().manual_seed(0))
    assert [r for _, r in plan] == [[], []]
    with pytest.raises(ValueError, match="forget set is empty"):
        pair_forget_retain(0, 3, 2, torch.Generator())
    with pytest.raises(ValueError, match="batch_size"):
        pair_forget_retain(3, 3, 0, torch.Generator())
    with pytest.raises(ValueError, match="max_steps"):
        pair_forget_retain(3, 3, 1, torch.Generator(), max_steps=0)


def test_sequential_batches():
    assert sequential_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert sequential_batches(5, 2, limit=2) == [[0, 1], [2, 3]]
    assert sequential_batches(0, 3) == []
