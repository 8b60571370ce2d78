"""Acceptance on the toy memorizer: SAU + GradDiff forgets the forget set and keeps the retain set."""

from __future__ import annotations

import pytest
import torch

from sau_compress.data import collate, load_qa, sequential_batches, tokenize_records
from sau_compress.losses import sequence_nll
from sau_compress.masking import capture_masks, prune_by_magnitude_, verify_masks
from sau_compress.unlearn import UnlearnConfig, unlearn


@torch.no_grad()
def _mean_nll(model, items, pad: int) -> float:
    total, tokens = 0.0, 0.0
    for idx in sequential_batches(len(items), 64):
        batch = collate([items[i] for i in idx], pad)
        nll, n = sequence_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["labels"])
        total += float(nll.sum())
        tokens += float(n.sum())
    return total / tokens


@pytest.mark.slow
def test_sau_grad_diff_forgets_far_more_than_it_loses_on_retain():
    from transformers import AutoTokenizer, LlamaForCausalLM

    from sau_compress.worlds import build_toy_world

    world = build_toy_world()
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    model = LlamaForCausalLM.from_pretrained(world.model_dir).eval()
    forget = tokenize_records(tokenizer, load_qa(world.data_dir / "forget.jsonl"), max_length=64)
    retain = tokenize_records(tokenizer, load_qa(world.data_dir / "retain.jsonl"), max_length=64)
    pad = tokenizer.pad_token_id
    prune_by_magnitude_(model, 0.5)
    masks = capture_masks(model)
    forget_before, retain_before = _mean_nll(model, forget, pad), _mean_nll(model, retain, pad)
    # measured (CPU, seed 0, toy world v2): forget 0.0004 -> 1.288, retain 0.0004 -> 0.069 (a rise 19x larger)
    cfg = UnlearnConfig(mode="sau", method="grad_diff", max_steps=20, batch_size=8, learning_rate=1e-3,
                        device="cpu", progress=False)
    result = unlearn(model, forget, retain, cfg, pad_token_id=pad)
    forget_after, retain_after = _mean_nll(model, forget, pad), _mean_nll(model, retain, pad)
    verify_masks(model, masks)
    assert result.steps == 20
    forget_rise, retain_rise = forget_after - forget_before, retain_after - retain_before
    assert forget_rise > 0.3, (forget_before, forget_after)
    assert forget_rise > 5 * max(retain_rise, 0.0), (forget_rise, retain_rise)
    assert retain_after < 0.2
