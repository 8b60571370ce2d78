"""The unlearning loop on the tiny Llama pruned to 50% by magnitude."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from pydantic import ValidationError

from conftest import clone_model
from sau_compress.errors import UserError
from sau_compress.masking import capture_masks, prune_by_magnitude_, resolve_targets
from sau_compress.selection import selection_mask
from sau_compress.unlearn import NonFiniteLossError, UnlearnConfig, unlearn


@pytest.fixture()
def pruned(tiny_model):
    prune_by_magnitude_(tiny_model, 0.5)
    return tiny_model


@pytest.fixture(scope="module")
def items(qa_items):
    return qa_items


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: layer.weight.detach().clone() for name, layer in resolve_targets(model).items()}


def _cfg(**kw) -> UnlearnConfig:
    # SAU without clipping: these tests check exact trajectories (the defaults are mode masked, clipping at 1.0)
    # GradDiff with retain weight 1 (the defaults before pretrained models chose NPO and 5): exact trajectories
    base = {"mode": "sau", "method": "grad_diff", "retain_weight": 1.0,
            "max_grad_norm": None, "max_steps": 3, "batch_size": 2, "learning_rate": 1e-3,
            "device": "cpu", "progress": False}
    base.update(kw)
    return UnlearnConfig(**base)


@pytest.mark.parametrize("mode", ["sau", "topk", "masked", "dense"])
def test_200_adamw_steps_keep_pruned_zero_and_unselected_bit_identical(pruned, items, mode):
    data, pad = items
    before = _weights(pruned)
    masks = capture_masks(pruned)
    cfg = _cfg(mode=mode, method="grad_ascent", max_steps=200, batch_size=1, weight_decay=0.1, optimizer="adamw")
    result = unlearn(pruned, data[:2], None, cfg, pad_token_id=pad)
    assert result.steps == 200 and result.pattern_preserved
    assert list(result.masks) == list(masks)
    after = _weights(pruned)
    for name, w in after.items():
        mask = masks[name]
        assert torch.equal(result.masks[name].unpack(), mask), name  # the run hands back the masks it kept
        assert torch.equal(w[~mask], torch.zeros(int((~mask).sum()))), name
        moved = (w != before[name]) & mask
        assert int(moved.sum()) > 0, name
        if mode in ("sau", "topk"):
            g = selection_mask(mask.shape, result.selected[name])
            assert int(g.sum()) == result.layers[name]["n_selected"]
            assert not bool((g & ~mask).any())
            assert torch.equal(w[mask & ~g], before[name][mask & ~g]), name  # bit-identical
        else:
            assert result.selected == {}


def test_masked_and_dense_give_the_same_survivor_trajectory(tiny_model, items):
    data, pad = items
    prune_by_magnitude_(tiny_model, 0.5)
    twin = type(tiny_model)(tiny_model.config)
    twin.load_state_dict(tiny_model.state_dict())
    cfg = {"method": "grad_diff", "max_steps": 20, "weight_decay": 0.1}
    unlearn(tiny_model, data[:2], data[2:], _cfg(mode="masked", **cfg), pad_token_id=pad)
    unlearn(twin, data[:2], data[2:], _cfg(mode="dense", **cfg), pad_token_id=pad)
    # same AdamW formula in a different float32 operation order: agreement to float rounding
    for (name, a), b in zip(_weights(tiny_model).items(), _weights(twin).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_sau_w_differs_from_topk_and_result_numbers(pruned, items):
    data, pad = items
    twin = type(pruned)(pruned.config)
    twin.load_state_dict(pruned.state_dict())
    sau = unlearn(pruned, data[:2], data[2:], _cfg(mode="sau", alpha=0.5), pad_token_id=pad)
    topk = unlearn(twin, data[:2], data[2:], _cfg(mode="topk"), pad_token_id=pad)
    name = "model.layers.0.mlp.up_proj"
    assert torch.equal(sau.selected[name], topk.selected[name])  # same G (same saliency)
    info = sau.layers[name]
    assert info["sparsity"] == 0.5 and info["n_selected"] == round(0.3 * 0.5 * 64 * 128)
    assert info["selected_fraction"] == info["n_selected"] / (64 * 128)
    assert info["rho"] > 0 and info["w_mean"] > 1.0 and topk.layers[name]["w_mean"] == 1.0
    assert not torch.equal(pruned.get_submodule(name).weight, twin.get_submodule(name).weight)
    assert len(sau.losses) == len(sau.forget_losses) == len(sau.retain_losses) == 3
    assert sau.device == "cpu" and sau.memory_measure == "cpu_rss_peak"
    # the CPU figure is the model's bytes plus the measured rise of resident memory
    assert sau.peak_memory_bytes >= sum(p.numel() * 4 for p in pruned.parameters())
    assert sau.tokens > 0 and sau.saliency_seconds > 0 and sau.seconds >= sau.train_seconds
    json.dumps(sau.to_dict())
    assert "selected" not in sau.to_dict()


def test_sau_optimizer_state_is_a_fraction_of_dense(tiny_model, items):
    data, pad = items
    prune_by_magnitude_(tiny_model, 0.5)
    state = tiny_model.state_dict()
    sizes = {}
    for mode in ("sau", "dense"):
        tiny_model.load_state_dict(state)
        sizes[mode] = unlearn(tiny_model, data[:2], data[2:], _cfg(mode=mode, max_steps=1), pad_token_id=pad)
    numel = sum(w.numel() for w in _weights(tiny_model).values())
    # torch AdamW: two fp32 moments per entry and one fp32 step counter per parameter
    assert sizes["dense"].optimizer_state_bytes == 8 * numel + 4 * 14
    # sau: (2 moments + int32 index + fp32 W) per selected entry, 15% of the entries
    n_sel = sum(v["n_selected"] for v in sizes["sau"].layers.values())
    assert sizes["sau"].optimizer_state_bytes == 16 * n_sel
    assert sizes["sau"].optimizer_state_bytes < 0.35 * sizes["dense"].optimizer_state_bytes


def test_npo_and_kl_start_from_the_reference(pruned, items):
    data, pad = items
    r = unlearn(pruned, data[:2], data[2:], _cfg(method="npo", retain_loss="kl", max_steps=2), pad_token_id=pad)
    # at step 1 the model is the reference: NPO = (2/beta) ln 2 and KL = 0
    assert math.isclose(r.forget_losses[0], 20 * math.log(2), rel_tol=1e-5)
    assert abs(r.retain_losses[0]) < 1e-5
    assert r.forget_losses[1] < r.forget_losses[0]  # the NPO loss falls as the forget NLL rises
    s = unlearn(pruned, data[:2], data[2:], _cfg(method="simnpo", optimizer="sgd", max_steps=2), pad_token_id=pad)
    assert all(math.isfinite(x) for x in s.losses)


def test_deterministic_for_a_seed(tiny_model, items):
    data, pad = items
    prune_by_magnitude_(tiny_model, 0.5)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    finals = []
    for seed in (3, 3, 4):
        tiny_model.load_state_dict(state)
        unlearn(tiny_model, data[:3], data[3:], _cfg(seed=seed, batch_size=1), pad_token_id=pad)
        finals.append(_weights(tiny_model))
    assert all(torch.equal(finals[0][n], finals[1][n]) for n in finals[0])
    assert not all(torch.equal(finals[0][n], finals[2][n]) for n in finals[0])


def test_nan_stops_and_leaves_the_model_as_before_that_step(pruned, items):
    data, pad = items
    snapshot: dict[str, torch.Tensor] = {}

    def poison(step, model):
        if step == 2:
            snapshot.update(_weights(model))
            with torch.no_grad():
                model.model.embed_tokens.weight.fill_(math.nan)  # not a target: the next forward is NaN
        return False

    with pytest.raises(NonFiniteLossError, match="step 3: the forget loss is nan"):
        unlearn(pruned, data[:2], data[2:], _cfg(max_steps=5, batch_size=1), pad_token_id=pad, callback=poison)
    after = _weights(pruned)
    assert all(torch.equal(after[n], snapshot[n]) for n in after)
    assert pruned.model.embed_tokens.weight.requires_grad  # flags restored after the error


def test_callback_stops_early_and_state_is_restored(pruned, items):
    data, pad = items
    pruned.train(False)
    flags = {n: p.requires_grad for n, p in pruned.named_parameters()}
    r = unlearn(pruned, data[:2], data[2:], _cfg(max_steps=5, batch_size=1), pad_token_id=pad,
                callback=lambda step, model: step == 2)
    assert r.steps == 2 and r.stopped_early and r.extra["planned_steps"] == 5
    assert {n: p.requires_grad for n, p in pruned.named_parameters()} == flags
    assert not pruned.training and next(pruned.parameters()).device.type == "cpu"
    assert all(p.grad is None for p in pruned.parameters())


@pytest.mark.parametrize("mode", ["sau", "dense"])
def test_dense_model_is_refused_naming_layers_and_sparsity(tiny_model, items, mode):
    data, pad = items
    with pytest.raises(UserError, match=r"model\.layers\.0\.self_attn\.q_proj \(sparsity 0\.000\)"):
        unlearn(tiny_model, data[:2], data[2:], _cfg(mode=mode), pad_token_id=pad)


def test_sau_on_dense_layers_is_exactly_its_topk_selection(tiny_model, items):
    data, pad = items
    twin = copy.deepcopy(tiny_model)
    r_sau = unlearn(tiny_model, data[:2], data[2:], _cfg(allow_dense=True), pad_token_id=pad)
    r_topk = unlearn(twin, data[:2], data[2:], _cfg(mode="topk", allow_dense=True), pad_token_id=pad)
    assert r_sau.mode == "sau" and r_sau.steps == r_topk.steps == 3
    for name, layer in r_sau.layers.items():
        assert layer["rho"] == 0.0 and layer["w_mean"] == 1.0 and layer["w_max"] == 1.0, name
        assert torch.equal(r_sau.selected[name], r_topk.selected[name]), name
        assert bool(r_sau.masks[name].unpack().all()), name
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), twin.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_input_errors(pruned, items):
    data, pad = items
    with pytest.raises(ValueError, match="forget set is empty"):
        unlearn(pruned, [], data, _cfg(), pad_token_id=pad)
    with pytest.raises(ValueError, match="needs a retain set"):
        unlearn(pruned, data[:2], None, _cfg(method="grad_diff"), pad_token_id=pad)
    with pytest.raises(KeyError, match="labels"):
        unlearn(pruned, [{"input_ids": [1, 2]}], None, _cfg(method="grad_ascent"), pad_token_id=pad)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "npo2", r"unknown loss 'npo2'; choose from \['grad_ascent', 'grad_diff', 'npo', 'simnpo'\]"),
        ("mode", "sparse", r"mode\n  Input should be 'sau', 'dense', 'masked', 'topk', 'naive' or 'unmasked'"),
        ("topk_ratio", 0.0, r"topk_ratio\n  Input should be greater than 0"),
        ("topk_ratio", 1.5, r"topk_ratio\n  Input should be less than or equal to 1"),
        ("retain_loss", "mse", r"Input should be 'nll' or 'kl'"),
        ("optimizer", "lion", r"Input should be 'adamw' or 'sgd'"),
        ("momentum", 1.0, r"momentum\n  Input should be less than 1"),
        ("alpha", float("inf"), r"alpha\n  Input should be a finite number"),
        ("adam_betas", (0.9, 1.0), r"adam_betas\.1\n  Input should be less than 1"),
        ("device", "mps", "not supported"),
        ("device", "tpu", "not a torch device"),
        ("learning_rate", 0.0, "greater than 0"),
        ("topk_rato", 0.3, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(field, value, message):
    with pytest.raises(ValidationError, match=message):
        UnlearnConfig(**{field: value})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_path_returns_the_model_to_cpu(pruned, items, dtype):
    data, pad = items
    pruned.to(dtype)
    masks = capture_masks(pruned)
    r = unlearn(pruned, data[:2], data[2:], _cfg(device="cuda", max_steps=3, weight_decay=0.1), pad_token_id=pad)
    assert next(pruned.parameters()).device.type == "cpu" and next(pruned.parameters()).dtype == dtype
    assert r.device.startswith("cuda") and r.memory_measure == "cuda_max_allocated" and r.peak_memory_bytes > 0
    assert all(math.isfinite(x) for x in r.losses)
    for name, w in _weights(pruned).items():
        assert not bool(w[~masks[name]].any()), name


def test_naive_is_unmasked_training_masked_once_at_the_end(pruned, items):
    data, pad = items
    masks = capture_masks(pruned)
    unmasked, dense = clone_model(pruned), clone_model(pruned)
    seen = []

    def callback(step, model):  # naive hands the callback the model as it would be delivered: re-masked
        seen.append(all(torch.equal(w[~masks[n]], torch.zeros(int((~masks[n]).sum())))
                        for n, w in _weights(model).items()))
        return False

    cfg = {"method": "grad_diff", "max_steps": 10, "weight_decay": 0.1}
    naive = unlearn(pruned, data[:2], data[2:], _cfg(mode="naive", **cfg), pad_token_id=pad, callback=callback)
    free = unlearn(unmasked, data[:2], data[2:], _cfg(mode="unmasked", **cfg), pad_token_id=pad)
    unlearn(dense, data[:2], data[2:], _cfg(mode="dense", **cfg), pad_token_id=pad)
    assert seen == [True] * 10
    assert naive.pattern_preserved and not free.pattern_preserved
    assert naive.layers[next(iter(masks))]["n_selected"] == masks[next(iter(masks))].numel()
    for (name, w), u, d in zip(_weights(pruned).items(), _weights(unmasked).values(), _weights(dense).values(),
                               strict=True):
        mask = masks[name]
        assert int((u[~mask] != 0).sum()) > 0, name  # unmasked: the pruned entries moved and stay
        assert torch.equal(w, u * mask), name  # naive = the same training, re-masked once (the callback undone)
        assert not torch.allclose(w[mask], d[mask], rtol=1e-4, atol=1e-6), name  # not the projected dense run
