"""Loss registry: one test per entry, hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from sau_compress.losses import (
    LOSSES,
    answer_logprobs,
    get_loss,
    kl_to_reference,
    retain_nll,
    sequence_nll,
)


def test_sequence_nll_scores_only_labelled_positions():
    logits = torch.zeros(2, 4, 2)
    logits[1, 1] = torch.tensor([0.0, math.log(3.0)])  # p(token 1) = 3/4 at position 1
    labels = torch.tensor([[-100, 1, 0, -100], [-100, -100, 1, 0]])
    nll, n = sequence_nll(logits, labels)
    # row 0: two uniform predictions (ln 2 each); row 1: -ln(3/4) then ln 2
    torch.testing.assert_close(nll, torch.tensor([2 * math.log(2), -math.log(0.75) + math.log(2)]))
    assert torch.equal(n, torch.tensor([2.0, 2.0]))


def test_registry_contents():
    assert sorted(LOSSES) == ["grad_ascent", "grad_diff", "npo", "simnpo"]
    assert not LOSSES["grad_ascent"].uses_retain and LOSSES["grad_diff"].uses_retain
    assert LOSSES["npo"].needs_reference_nll and LOSSES["npo"].default_beta == 0.1
    assert LOSSES["simnpo"].default_beta == 4.5 and not LOSSES["simnpo"].needs_reference_nll


def test_unknown_loss_lists_choices():
    choices = r"\['grad_ascent', 'grad_diff', 'npo', 'simnpo'\]"
    with pytest.raises(ValueError, match=rf"unknown loss 'npo2'; choose from {choices}"):
        get_loss("npo2")


@pytest.mark.parametrize("name", ["grad_ascent", "grad_diff"])
def test_gradient_ascent_terms(name):
    nll, n = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])
    assert get_loss(name).forget(nll, n).item() == -1.5  # minus the token mean (2 + 4) / (1 + 3)


def test_npo():
    nll, n, ref = torch.tensor([2.0, 1.0]), torch.tensor([3.0, 3.0]), torch.tensor([1.0, 1.0])
    got = get_loss("npo").forget(nll, n, reference_nll=ref, beta=0.1).item()
    # -(2/b) mean log sigmoid(b (nll - ref)) = (2/b) mean log(1 + exp(-b (nll - ref)))
    expected = 20 * (math.log1p(math.exp(-0.1)) + math.log(2)) / 2
    assert math.isclose(got, expected, rel_tol=1e-6)
    assert math.isclose(get_loss("npo").forget(ref, n, reference_nll=ref).item(), 20 * math.log(2), rel_tol=1e-6)
    with pytest.raises(ValueError, match="reference NLLs"):
        get_loss("npo").forget(nll, n)


def test_simnpo():
    nll, n = torch.tensor([3.0]), torch.tensor([2.0])
    got = get_loss("simnpo").forget(nll, n, delta=0.5).item()  # default beta 4.5
    expected = (2 / 4.5) * math.log1p(math.exp(-4.5 * (1.5 - 0.5)))
    assert math.isclose(got, expected, rel_tol=1e-6)


def test_retain_nll_and_kl():
    nll, n = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])
    assert retain_nll(nll, n).item() == 1.5
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 1]])
    ref = answer_logprobs(logits, labels)
    assert [r.shape for r in ref] == [torch.Size([2, 2])]
    assert kl_to_reference(logits, labels, ref).item() == 0.0
    # reference p = (3/4, 1/4) at both positions, model uniform: KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    ref2 = [torch.log(torch.tensor([[0.75, 0.25], [0.75, 0.25]]))]
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert math.isclose(kl_to_reference(logits, labels, ref2).item(), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        kl_to_reference(logits, labels, [ref2[0][:1]])
