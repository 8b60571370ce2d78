"""The NaN/Inf guard of the unlearning loop, for every loss: a NaN injected into one batch (its logits, or its
gradient) stops the run at that step, names the step and what went wrong, and leaves every weight of the model
bit-identical to what it was after the step before."""

from __future__ import annotations

import math

import pytest
import torch

from sau_compress.losses import LOSSES
from sau_compress.masking import prune_by_magnitude_
from sau_compress.unlearn import NonFiniteLossError, UnlearnConfig, unlearn

#: (mode, method, retain_loss, what is poisoned, what the error names): every loss in ``sau`` (the scaled
#: optimizer), and ``dense`` (the projected torch optimizer, its own finiteness check) for one loss
CASES = [("sau", m, "nll", "forget batch", "the forget loss is nan") for m in sorted(LOSSES)]
CASES += [("sau", m, "nll", "forget gradient", "the gradient is nan") for m in sorted(LOSSES)]
CASES += [("sau", m, "nll", "retain batch", "the retain loss is nan") for m in sorted(LOSSES) if LOSSES[m].uses_retain]
CASES += [("sau", "grad_diff", "kl", "retain batch", "the retain loss is nan"),
          ("dense", "grad_diff", "nll", "forget batch", "the forget loss is nan"),
          ("dense", "grad_diff", "nll", "forget gradient", "the gradient is nan")]


def test_every_loss_is_covered():
    assert {c[1] for c in CASES} == set(LOSSES)


@pytest.mark.parametrize(("mode", "method", "retain_loss", "poisoned", "named"), CASES,
                         ids=["-".join(c[:3]) + "-" + c[3].replace(" ", "-") for c in CASES])
def test_nan_in_one_batch_stops_at_that_step_and_keeps_the_model(tiny_model, qa_items, mode, method, retain_loss,
                                                                   poisoned, named):
    data, pad = qa_items
    model = tiny_model
    prune_by_magnitude_(model, 0.5)
    snapshot: dict[str, torch.Tensor] = {}
    armed = {"calls": None}

    def after_step(step, net):
        if step == 2:  # the next training batches are step 3's
            snapshot.update({n: p.detach().clone() for n, p in net.state_dict().items()})
            armed["calls"] = 0
        return False

    def poison(_module, _inputs, output):
        if armed["calls"] is None:
            return None
        armed["calls"] += 1
        target = 2 if poisoned == "retain batch" else 1  # forward 1 of a step: forget; 2: retain
        if armed["calls"] != target:
            return None
        armed["calls"] = None  # one batch only
        if poisoned == "forget gradient":
            output.register_hook(lambda grad: torch.full_like(grad, math.nan))
            return output
        return torch.full_like(output, math.nan)

    handle = model.lm_head.register_forward_hook(poison)
    config = UnlearnConfig(method=method, retain_loss=retain_loss, mode=mode, max_steps=5, batch_size=1,
                           learning_rate=1e-3, device="cpu", progress=False)
    try:
        with pytest.raises(NonFiniteLossError, match=f"step 3: {named}"):
            unlearn(model, data[:2], data[2:], config, pad_token_id=pad, callback=after_step)
    finally:
        handle.remove()
    after = model.state_dict()
    assert set(after) == set(snapshot)
    for name, value in after.items():
        assert torch.equal(value, snapshot[name]), name  # the model as after step 2
    assert all(p.grad is None for p in model.parameters())
