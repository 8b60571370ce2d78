"""The unlearning stage sharded with FSDP2: the exact top-k across shards, and 2 gloo processes on the CPU
(torchrun) against one process on a pruned tiny Llama."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from shard_harness import make_recorder

import sau_compress.unlearn as unlearn_package
from sau_compress.export import read_state_dict
from sau_compress.pipeline import unlearn_model
from sau_compress.selection import build_selection_compact, build_selection_sharded, contrastive_score

HARNESS = Path(__file__).with_name("shard_harness.py")
SETTINGS = ["mode=sau", "max_steps=4", "batch_size=2", "learning_rate=3e-3", "max_grad_norm=0.05", "progress=false"]


class ThreadGroup:
    """``world`` threads standing in for processes (sau_compress.selection.Collective), one object per rank."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.slots: list = [None] * world
        self.barrier = threading.Barrier(world)

    def rank(self, r: int):
        group = self

        class Comm:
            def _exchange(self, value):
                group.slots[r] = value
                group.barrier.wait()
                values = list(group.slots)
                group.barrier.wait()
                return values

            def all_sum(self, tensor):
                return tensor.copy_(torch.stack(self._exchange(tensor.clone())).sum(0))

            def all_max(self, tensor):
                return tensor.copy_(torch.stack(self._exchange(tensor.clone())).amax(0))

            def sum_before(self, value):
                return sum(self._exchange(int(value))[:r])

        return Comm()


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("redistribution", [True, False])
@pytest.mark.parametrize("levels", [2, 5])
@pytest.mark.parametrize("contrastive", [False, True])
def test_sharded_selection_equals_the_whole_layer_selection_with_ties(world, redistribution, levels, contrastive):
    torch.manual_seed(0)
    rows, cols = 10, 8  # 3 ranks: row blocks of 4, 4, 2 (torch.chunk)
    mask = torch.rand(rows, cols) > 0.5
    # few distinct values: the k-th largest is tied across the row blocks (levels=2: about half the survivors)
    fisher = torch.randint(0, levels, (rows, cols)).float() / 8
    # contrastive: G ranked by a score (forget F over retain F), W still from F
    retain = torch.randint(0, levels, (rows, cols)).float() / 4
    score = contrastive_score(fisher, retain) if contrastive else None
    whole = build_selection_compact(fisher[mask], float(fisher[~mask].double().sum()), mask, 0.3, 0.2, 1.5,
                                    redistribution, score=None if score is None else score[mask])
    blocks = torch.arange(rows).chunk(world)
    group = ThreadGroup(world)
    out: dict[int, tuple] = {}

    def run(r: int) -> None:
        f, m = fisher[blocks[r]], mask[blocks[r]]
        out[r] = build_selection_sharded(f[m], float(f[~m].double().sum()), m, 0.3, 0.2, 1.5, redistribution,
                                         group.rank(r), score=None if score is None else score[blocks[r]][m])

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    indices = torch.cat([out[r][0].indices.long() + int(blocks[r][0]) * cols for r in range(world)])
    assert torch.equal(indices, whole.indices.long())
    if redistribution:
        # a rank whose part of G all has W = 1 keeps no scale (None means ones)
        scales = torch.cat([out[r][0].scale if out[r][0].scale is not None else torch.ones(out[r][0].n_selected)
                            for r in range(world)])
        torch.testing.assert_close(scales, whole.scale, rtol=1e-6, atol=0)
    summary = whole.summary()
    for r in range(world):
        got = out[r][1]
        assert {k: got[k] for k in ("n_selected", "n_surviving", "n_clipped")} == {
            k: summary[k] for k in ("n_selected", "n_surviving", "n_clipped")}
        assert got["rho"] == pytest.approx(summary["rho"], rel=1e-12)
        assert got["w_mean"] == pytest.approx(summary["w_mean"], rel=1e-6)
        assert got["w_max"] == pytest.approx(summary["w_max"], rel=1e-6)


def _torchrun(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(HARNESS), *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tokenizer, qa_records):
    """A pruned tiny Llama folder (2:4 by magnitude; 4 layers so that each rank holds whole blocks) and the
    forget/retain files."""
    import json

    from conftest import make_tiny_llama
    from sau_compress.masking import prune_by_magnitude_

    root = tmp_path_factory.mktemp("sharded")
    model = make_tiny_llama(len(tokenizer), layers=4)
    with torch.no_grad():
        prune_by_magnitude_(model, 0.5, "2:4")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for name, rows in (("forget", qa_records[:2]), ("retain", qa_records[2:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_and_hold_half_the_state(pruned, tmp_path, monkeypatch):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.setattr(unlearn_package, "unlearn", make_recorder(unlearn_package.unlearn, tmp_path / "one", 0))
    single = unlearn_model(pruned / "model", tmp_path / "A", str(pruned / "forget.jsonl"),
                           str(pruned / "retain.jsonl"), SETTINGS, evaluate=False, device="cpu")
    run = _torchrun(str(pruned / "model"), str(tmp_path / "B"), str(pruned / "forget.jsonl"),
                    str(pruned / "retain.jsonl"), str(tmp_path / "two"), *[a for s in SETTINGS for a in ("--set", s)])
    assert run.returncode == 0, run.stderr[-4000:]
    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in range(2)]

    # the selection G of every layer is the single process's, split by rows
    assert set(ranks[0]["selected"]) == set(one["selected"]) and len(one["selected"]) == 28
    for name, indices in one["selected"].items():
        assert torch.equal(torch.cat([ranks[0]["selected"][name], ranks[1]["selected"][name]]), indices.long())
    for name, layer in one["layers"].items():
        assert ranks[0]["layers"][name]["n_selected"] == layer["n_selected"]
        assert ranks[1]["layers"][name]["rho"] == pytest.approx(layer["rho"], rel=1e-12)
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-7)

    # the written weights: the pattern bit for bit, the values within fp32 tolerance
    a, b = read_state_dict(tmp_path / "A"), read_state_dict(tmp_path / "B")
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name] == 0, b[name] == 0), name
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)
    assert single["requests"] == 1 and (tmp_path / "B" / "sau_compress.json").is_file()

    # each rank holds half the masks and target weights, and about half the selection and optimizer state
    for r in ranks:
        assert r["mask_bytes"] * 2 == one["mask_bytes"]
        assert r["target_weight_bytes"] * 2 == one["target_weight_bytes"]
        assert 0.35 < r["optimizer_state_bytes"] / one["optimizer_state_bytes"] < 0.65
    assert sum(r["optimizer_state_bytes"] for r in ranks) == one["optimizer_state_bytes"]


@pytest.mark.slow
def test_a_rank_killed_mid_run_fails_the_job_and_leaves_no_output(pruned, tmp_path):
    run = _torchrun(str(pruned / "model"), str(tmp_path / "out"), str(pruned / "forget.jsonl"),
                    str(pruned / "retain.jsonl"), str(tmp_path), "--kill-step", "2",
                    *[a for s in SETTINGS for a in ("--set", s)])
    assert run.returncode != 0
    assert "SIGKILL" in run.stderr or "Signal 9" in run.stderr, run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary folder, no record
