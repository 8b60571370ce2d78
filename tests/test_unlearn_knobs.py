"""Trainer knobs of the unlearning loop: the split backward, gradient accumulation, learning-rate schedules
and gradient checkpointing, on the tiny Llama pruned to 50%."""

from __future__ import annotations

import copy

import pytest
import torch

from sau_compress.data import collate
from sau_compress.errors import UserError
from sau_compress.losses import retain_nll, sequence_nll
from sau_compress.masking import capture_masks, prune_by_magnitude_, resolve_targets
from sau_compress.unlearn import UnlearnConfig, unlearn


@pytest.fixture(scope="module")
def items(qa_items):
    return qa_items


@pytest.fixture()
def pruned(tiny_model):
    prune_by_magnitude_(tiny_model, 0.5)
    return tiny_model


def _weights(model):
    return {name: layer.weight.detach().clone() for name, layer in resolve_targets(model).items()}


def _cfg(**kw):
    base = {"mode": "sau", "method": "grad_diff", "retain_weight": 1.0,
            "max_grad_norm": None, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
            "learning_rate": 1e-2, "batch_size": 2, "max_steps": 1, "device": "cpu", "progress": False}
    base.update(kw)
    return UnlearnConfig(**base)


def _nll(model, items, pad):
    batch = collate(items, pad)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return retain_nll(*sequence_nll(logits, batch["labels"]))


def test_split_backward_gives_the_gradient_of_the_combined_loss(pruned, items):
    """forget backward, then retain backward == one backward of gamma * forget + retain_weight * retain."""
    data, pad = items
    reference = copy.deepcopy(pruned)
    masks = capture_masks(pruned)
    # one forget item and one retain item, so the plan cannot pick others
    unlearn(pruned, data[:1], data[1:2], _cfg(mode="dense", gamma=0.7, retain_weight=1.3), pad_token_id=pad)
    layers = resolve_targets(reference)
    for p in reference.parameters():
        p.requires_grad_(False)
    for layer in layers.values():
        layer.weight.requires_grad_(True)
    loss = 0.7 * -_nll(reference, data[:1], pad) + 1.3 * _nll(reference, data[1:2], pad)
    loss.backward()
    after = _weights(pruned)
    for name, layer in layers.items():
        expected = (layer.weight.detach() - 1e-2 * layer.weight.grad) * masks[name]
        torch.testing.assert_close(after[name], expected, rtol=0, atol=1e-6, msg=name)
        assert float((after[name] - layer.weight.detach()).abs().max()) > 1e-5, name  # it did move


def test_accumulating_two_micro_batches_of_one_item_is_one_batch_of_it(pruned, items):
    data, pad = items
    twin = copy.deepcopy(pruned)
    one = unlearn(pruned, data[:1], None, _cfg(method="grad_ascent", batch_size=1), pad_token_id=pad)
    # the same item twice, one per micro-batch, averaged: the same gradient, one optimizer step
    two = unlearn(twin, [data[0], data[0]], None, _cfg(method="grad_ascent", batch_size=1, grad_accum_steps=2),
                  pad_token_id=pad)
    assert one.steps == two.steps == 1 and two.tokens == 2 * one.tokens
    assert two.forget_losses == pytest.approx(one.forget_losses, rel=1e-6)
    for name, w in _weights(pruned).items():
        torch.testing.assert_close(_weights(twin)[name], w, rtol=0, atol=1e-7, msg=name)


def test_grad_accum_counts_optimizer_steps(pruned, items):
    data, pad = items
    r = unlearn(pruned, data[:4], data[4:], _cfg(batch_size=1, grad_accum_steps=3, max_steps=2), pad_token_id=pad)
    assert r.steps == 2 and r.extra["planned_steps"] == 2 and len(r.losses) == 2
    # epochs: 4 forget items at batch 1 = 4 micro-batches = 2 steps of 3 and 1
    r = unlearn(pruned, data[:4], data[4:], _cfg(batch_size=1, grad_accum_steps=3, max_steps=None, epochs=1),
                pad_token_id=pad)
    assert r.steps == 2


def test_linear_schedule_with_warmup_and_a_zero_first_step(pruned, items):
    data, pad = items
    start = _weights(pruned)
    seen = {}

    def callback(step, model):
        seen[step] = _weights(model)
        return False

    cfg = _cfg(optimizer="adamw", learning_rate=1e-3, max_steps=5, lr_scheduler="LINEAR", warmup_steps=2)
    r = unlearn(pruned, data[:2], data[2:], cfg, pad_token_id=pad, callback=callback)
    assert r.extra["learning_rates"] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3], rel=1e-12)
    for name in start:  # warmup starts at lr 0: the first step changes nothing
        assert torch.equal(seen[1][name], start[name]), name
    assert any(not torch.equal(seen[2][n], start[n]) for n in start)


def test_cosine_schedule_rates(pruned, items):
    data, pad = items
    cfg = _cfg(learning_rate=1.0e-3, max_steps=4, lr_scheduler="cosine", warmup_steps=0)
    r = unlearn(pruned, data[:2], data[2:], cfg, pad_token_id=pad)
    # 0.5 * (1 + cos(pi * t / 4)) for t = 0..3
    assert r.extra["learning_rates"] == pytest.approx([1e-3, 0.8535533905932737e-3, 0.5e-3, 0.14644660940672624e-3])


def test_gradient_checkpointing_gives_the_same_run_and_is_turned_off_after(pruned, items):
    data, pad = items
    twin = copy.deepcopy(pruned)
    during = []

    def callback(step, model):
        during.append(model.is_gradient_checkpointing)
        return False

    cfg = {"mode": "sau", "optimizer": "adamw", "learning_rate": 1e-3, "max_steps": 2}
    plain = unlearn(pruned, data[:2], data[2:], _cfg(**cfg), pad_token_id=pad)
    ckpt = unlearn(twin, data[:2], data[2:], _cfg(**cfg, gradient_checkpointing=True), pad_token_id=pad,
                   callback=callback)
    assert during == [True, True] and not twin.is_gradient_checkpointing
    assert ckpt.forget_losses == pytest.approx(plain.forget_losses, rel=1e-5)
    for name in plain.selected:
        assert torch.equal(ckpt.selected[name], plain.selected[name]), name
    for name, w in _weights(pruned).items():
        torch.testing.assert_close(_weights(twin)[name], w, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_on_a_model_without_it_is_a_user_error(items):
    data, pad = items

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4))])

    with pytest.raises(UserError, match="gradient_checkpointing: Bare does not support it"):
        unlearn(Bare(), data[:1], None, _cfg(method="grad_ascent", gradient_checkpointing=True, allow_dense=True),
                pad_token_id=pad)


def test_logits_are_cut_to_the_scored_positions_with_the_same_nll(tiny_model, items):
    from sau_compress.unlearn.batching import Batcher

    data, pad = items
    io = Batcher(tiny_model, torch.device("cpu"), pad, autocast=False)
    assert io.trims  # LlamaForCausalLM takes logits_to_keep
    batch = io.batch(data[:3])
    length = batch["labels"].shape[1]
    first = batch["first_label"]
    assert first == min(next(i for i, x in enumerate(it["labels"]) if x != -100) for it in data[:3])
    with torch.no_grad():
        logits, labels = io.scored(batch)
        full = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert logits.shape[1] == labels.shape[1] == length - first + 1 < length
        torch.testing.assert_close(logits, full[:, first - 1:], rtol=0, atol=1e-5)
        cut_nll, cut_tokens = sequence_nll(logits, labels)
        full_nll, full_tokens = sequence_nll(full, batch["labels"])
        torch.testing.assert_close(cut_nll, full_nll, rtol=1e-6, atol=1e-5)
        assert torch.equal(cut_tokens, full_tokens)
        io.trims = False  # a model without logits_to_keep is scored on the whole sequence
        logits, labels = io.scored(batch)
        assert logits.shape[1] == length and labels is batch["labels"]
