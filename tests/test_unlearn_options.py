"""Method options: contrastive saliency, the saliency batch size, per-method γ, and the selection statistics."""

from __future__ import annotations

import pytest
import torch

from conftest import clone_model
from sau_compress.errors import UserError
from sau_compress.masking import prune_by_magnitude_
from sau_compress.selection import build_selection_compact, contrastive_score, selection_stats
from sau_compress.unlearn import UnlearnConfig, unlearn


def test_contrastive_score_divides_by_the_retain_fisher_plus_a_relative_eps():
    forget = torch.tensor([1.0, 2.0, 3.0, 4.0])
    retain = torch.tensor([0.0, 1.0, 0.0, 3.0])  # mean 1, so the floor is 0.1
    score = contrastive_score(forget, retain, eps=0.1)
    torch.testing.assert_close(score, torch.tensor([10.0, 2.0 / 1.1, 30.0, 4.0 / 3.1]))
    # the ranking is scale-free in the retain Fisher
    torch.testing.assert_close(contrastive_score(forget, 1000 * retain, eps=0.1).argsort(), score.argsort())
    # nothing to contrast with: F itself
    assert torch.equal(contrastive_score(forget, torch.zeros(4)), forget)
    with pytest.raises(ValueError, match="shape"):
        contrastive_score(forget, retain[:3])


def test_selection_ranks_by_the_score_and_scales_by_the_forget_fisher():
    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])  # survivors 0, 1, 4, 5
    fisher = torch.tensor([1.0, 2.0, 3.0, 4.0])  # F on the survivors, row-major
    score = contrastive_score(fisher, torch.tensor([0.0, 1.0, 0.0, 3.0]))
    sel = build_selection_compact(fisher, 5.0, mask, 0.5, alpha=1.0, max_scale=10.0, score=score)
    assert sel.indices.tolist() == [0, 4]  # the score's top 2 (survivors 0 and 2), not F's (2 and 3)
    rho = 5.0 / 10.0
    # W from F on G = {F 1, F 3}: 1 + alpha * rho * |G| * F_i / sum F[G]
    torch.testing.assert_close(sel.scale, torch.tensor([1 + rho * 2 * 1 / 4, 1 + rho * 2 * 3 / 4]))
    plain = build_selection_compact(fisher, 5.0, mask, 0.5, alpha=1.0, max_scale=10.0)
    assert plain.indices.tolist() == [4, 5]


def test_selection_stats_summarise_rho_w_and_clipping():
    layers = {
        "a": {"rho": 0.5, "w_mean": 1.05, "w_max": 2.0, "n_clipped": 0, "n_selected": 30, "n_surviving": 100},
        "b": {"rho": 1.5, "w_mean": 1.15, "w_max": 10.0, "n_clipped": 3, "n_selected": 30, "n_surviving": 100},
        "c": {"rho": 1.0, "w_mean": 1.10, "w_max": 3.0, "n_clipped": 0, "n_selected": 40, "n_surviving": 100},
    }
    stats = selection_stats(layers)
    assert stats["layers"] == 3
    assert stats["rho_mean"] == pytest.approx(1.0) and stats["rho_median"] == 1.0 and stats["rho_max"] == 1.5
    assert stats["w_mean"] == pytest.approx(1.10) and stats["w_max"] == 10.0
    assert stats["clipped_share"] == pytest.approx(0.03) and stats["selected_share"] == pytest.approx(1 / 3)
    dense = selection_stats({"a": {"sparsity": 0.5, "rho": None, "selected_fraction": 1.0, "n_selected": 8}})
    assert dense["rho_mean"] is None and dense["w_mean"] is None and dense["clipped_share"] is None


@pytest.fixture()
def pruned(tiny_model):
    prune_by_magnitude_(tiny_model, 0.5)
    return tiny_model


def _cfg(**kw) -> UnlearnConfig:
    base = {"method": "grad_diff", "retain_weight": 1.0,
            "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "device": "cpu", "progress": False,
            "mode": "topk"}
    base.update(kw)
    return UnlearnConfig(**base)


def test_contrastive_saliency_changes_g_and_needs_a_retain_set(pruned, qa_items):
    data, pad = qa_items
    twin = clone_model(pruned)
    forget = unlearn(pruned, data[:2], data[2:6], _cfg(), pad_token_id=pad)
    contrastive = unlearn(twin, data[:2], data[2:6], _cfg(saliency="contrastive"), pad_token_id=pad)
    assert [len(v) for v in forget.selected.values()] == [len(v) for v in contrastive.selected.values()]
    differ = [n for n in forget.selected if not torch.equal(forget.selected[n], contrastive.selected[n])]
    assert len(differ) == len(forget.selected)  # every layer picks other entries
    # grad_ascent ignores the retain set in its loss but contrastive saliency still reads it
    unlearn(clone_model(pruned), data[:2], data[2:6], _cfg(method="grad_ascent", saliency="contrastive"),
            pad_token_id=pad)
    with pytest.raises(UserError, match="contrastive' needs a retain set"):
        unlearn(clone_model(pruned), data[:2], None, _cfg(method="grad_ascent", saliency="contrastive"),
                pad_token_id=pad)


def test_contrastive_reads_as_many_retain_batches_as_forget_batches_spread_over_the_retain_set(
        pruned, qa_items, monkeypatch):
    import sau_compress.unlearn.modes as modes
    from sau_compress.data import spread_batches

    assert spread_batches(10, 3, 2) == [[0, 1, 3], [5, 6, 8]]
    assert spread_batches(5, 4, 3) == [[0, 1, 2, 3], [4]]  # a smaller set: all of it
    data, pad = qa_items
    seen: list[tuple[str, list[list[int]]]] = []
    real = modes.compute_fisher

    def spy(params, batches, nll, **kw):
        seen.append((kw["desc"], [list(b) for b in batches]))
        return real(params, batches, nll, **kw)

    monkeypatch.setattr(modes, "compute_fisher", spy)
    unlearn(clone_model(pruned), data[:2], data[2:6], _cfg(saliency="contrastive"), pad_token_id=pad)
    assert seen == [("saliency", [[0, 1]]), ("saliency (retain)", [[0, 2]])]
    seen.clear()
    unlearn(clone_model(pruned), data[:2], data[2:6], _cfg(saliency="contrastive", saliency_batch_size=1),
            pad_token_id=pad)
    assert seen == [("saliency", [[0], [1]]), ("saliency (retain)", [[0], [2]])]


def test_per_example_saliency_differs_from_the_batch_mean(pruned, qa_items):
    data, pad = qa_items
    twin = clone_model(pruned)
    batch = unlearn(pruned, data[:2], data[2:4], _cfg(), pad_token_id=pad)  # one batch of 2: F = (mean g)^2
    per_example = unlearn(twin, data[:2], data[2:4], _cfg(saliency_batch_size=1), pad_token_id=pad)  # mean g^2
    assert any(not torch.equal(batch.selected[n], per_example.selected[n]) for n in batch.selected)


def test_simnpo_weighs_its_forget_term_with_open_unlearnings_gamma(pruned, qa_items):
    data, pad = qa_items
    assert UnlearnConfig(method="simnpo").effective_gamma() == 0.125
    assert UnlearnConfig(method="grad_diff").effective_gamma() == 1.0
    assert UnlearnConfig(method="simnpo", gamma=0.5).effective_gamma() == 0.5
    result = unlearn(pruned, data[:2], data[2:4], _cfg(method="simnpo"), pad_token_id=pad)
    assert result.extra["gamma"] == 0.125
    for total, f, r in zip(result.losses, result.forget_losses, result.retain_losses, strict=True):
        assert total == pytest.approx(0.125 * f + r, rel=1e-12)
    stats = result.extra["selection_stats"]
    assert stats["layers"] == len(result.layers) and stats["w_mean"] == 1.0  # topk: W = 1
    assert stats["selected_share"] == pytest.approx(0.3, abs=0.01)


def test_reselect_carries_the_state_of_entries_that_stay_in_g():
    from sau_compress.optim import ParamScale, ScaledAdamW

    w = torch.nn.Parameter(torch.arange(8, dtype=torch.bfloat16).reshape(2, 4))
    opt = ScaledAdamW({"w": w}, {"w": ParamScale(indices=torch.tensor([1, 3, 6]))}, lr=0.1)
    slot = opt.slots[0]
    slot.state["exp_avg"].copy_(torch.tensor([10.0, 30.0, 60.0]))
    slot.state["exp_avg_sq"].copy_(torch.tensor([1.0, 3.0, 6.0]))
    slot.master.copy_(torch.tensor([1.25, 3.25, 6.25]))  # finer than bf16 holds
    opt.reselect({"w": ParamScale(indices=torch.tensor([0, 3, 6, 7]), scale=torch.tensor([1.0, 2.0, 3.0, 4.0]))})
    assert opt.slots[0] is slot and slot.indices.tolist() == [0, 3, 6, 7]
    assert slot.state["exp_avg"].tolist() == [0.0, 30.0, 60.0, 0.0]
    assert slot.state["exp_avg_sq"].tolist() == [0.0, 3.0, 6.0, 0.0]
    assert slot.master.tolist() == [0.0, 3.25, 6.25, 7.0]  # new entries start from the weight
    assert slot.scale.tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(KeyError, match="unknown"):
        opt.reselect({"v": ParamScale(indices=torch.tensor([0]))})


def test_saliency_refresh_selects_from_the_weights_at_the_refresh(pruned, qa_items):
    data, pad = qa_items
    one_step, start = clone_model(pruned), clone_model(pruned)
    refreshed = unlearn(pruned, data[:2], data[2:4], _cfg(max_steps=2, saliency_refresh_steps=1), pad_token_id=pad)
    assert refreshed.extra["saliency_refreshes"] == 1
    # the same first step, then a fresh saliency pass on its weights: the G the refresh must have chosen
    unlearn(one_step, data[:2], data[2:4], _cfg(max_steps=1), pad_token_id=pad)
    expected = unlearn(one_step, data[:2], data[2:4], _cfg(max_steps=1), pad_token_id=pad)
    initial = unlearn(start, data[:2], data[2:4], _cfg(max_steps=1), pad_token_id=pad)
    for name, idx in refreshed.selected.items():
        assert torch.equal(idx, expected.selected[name]), name
    assert any(not torch.equal(refreshed.selected[n], initial.selected[n]) for n in initial.selected)
    assert refreshed.pattern_preserved
