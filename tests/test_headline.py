"""The headline benchmark's ``--quick`` run: the table has the expected shape and columns (not values)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "headline.py"

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_aggregate_score_hand_computed() -> None:
    from headline_core import aggregate_score

    # p = 1 -> fq score 1; HM(0.5, 1) = 2/3
    assert aggregate_score(0.5, 1.0) == pytest.approx(2 / 3, abs=1e-12)
    # p = 1e-10 -> fq score 1 - 10/20 = 0.5; HM(0.5, 0.5) = 0.5
    assert aggregate_score(0.5, 1e-10) == pytest.approx(0.5, abs=1e-12)
    # complete separation (p below 1e-20) -> 0
    assert aggregate_score(0.9, 1e-25) == 0.0
    assert aggregate_score(None, 0.5) is None
    assert aggregate_score(0.5, None) is None


def test_table_rows_from_records() -> None:
    from headline_report import TABLE_COLUMNS, comparison_rows, group_rows

    def rec(mode: str, seed: int, mu: float, fq: float) -> dict:
        return {"key": f"{mode}{seed}", "world": "toy", "kind": "matrix", "setting": "wanda 2:4",
                "method": "npo", "mode": mode, "seed": seed, "reached": True, "steps": 10 * (seed + 1),
                "forget_rouge": 0.3, "forget_quality": fq, "model_utility": mu, "aggregate": mu,
                "train_seconds": 2.0, "seconds_per_step": 0.1, "peak_memory_bytes": 2**20}

    records = [rec("dense", 0, 0.4, 1e-2), rec("dense", 1, 0.6, 1e-2), rec("sau", 0, 0.5, 1e-1),
               rec("sau", 1, 0.7, 1e-1)]
    rows = group_rows(records)
    assert [r["mode"] for r in rows] == ["dense", "sau"]
    assert set(rows[0]) == set(TABLE_COLUMNS)
    assert rows[0]["model utility"] == "0.500 ± 0.141"  # mean 0.5, sample std sqrt(0.02)
    assert rows[0]["steps"] == "15.0 ± 7.1"
    comp = comparison_rows(records)
    assert len(comp) == 1
    assert comp[0]["Δ log10 FQ (sau−dense)"] == "+1.000"
    assert comp[0]["Δ utility"] == "+0.100"
    assert comp[0]["sau steps / dense"] == "1.00"


@pytest.mark.slow
def test_quick_run_table_shape(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--methods", "grad_diff", "--modes", "dense,sau",
         "--pruners", "sparsegpt", "--structures", "2:4", "--no-sweep", "--max-steps", "10", "--out", str(tmp_path),
         "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "headline_table.md").read_text()
    from headline_report import COMPARISON_COLUMNS, TABLE_COLUMNS

    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    lines = table.splitlines()
    start = lines.index(header)
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append(line)
    # unpruned dense + (sparsegpt 2:4) x {dense, sau} + unlearn-then-sparsify
    assert len(body) == 4
    assert all(line.count("|") == len(TABLE_COLUMNS) + 1 for line in body)
    modes = [line.split("|")[4].strip() for line in body]
    assert modes == ["dense", "dense", "sau", "unlearn→prune"]
    assert "| " + " | ".join(COMPARISON_COLUMNS) + " |" in table
    runs = [json.loads(line) for line in (tmp_path / "headline_runs.jsonl").read_text().splitlines()]
    assert len(runs) == 4
    for r in runs:
        for key in ("forget_quality", "model_utility", "forget_rouge", "aggregate", "steps", "train_seconds",
                    "peak_memory_bytes"):
            assert key in r
    assert (tmp_path / "plots" / "headline_toy.png").stat().st_size > 0


def test_tofu_subset_selection() -> None:
    from sau_compress.worlds import select_tofu_subset
    from tests.conftest import TOFU_DIR

    splits = select_tofu_subset(TOFU_DIR, retain_authors=3)
    assert {k: len(v) for k, v in splits.items()} == {"forget": 40, "retain": 60, "holdout": 40}
    assert [r["author"] for r in splits["retain"]] == [i // 20 for i in range(60)]
    assert [r["index"] for r in splits["forget"]] == list(range(40))
    # forget rows carry TOFU's paraphrased and perturbed answers (5 per question)
    assert all(len(r["perturbed_answer"]) == 5 and r["paraphrased_answer"] for r in splits["forget"])
    forget_q = {r["question"] for r in splits["forget"]}
    assert forget_q.isdisjoint(r["question"] for r in splits["retain"] + splits["holdout"])
    with pytest.raises(ValueError, match="retain_authors"):
        select_tofu_subset(TOFU_DIR, retain_authors=0)


def test_parallel_parts_and_worker_arguments() -> None:
    import headline

    args = headline.build_parser().parse_args(["--full-matrix", "--worlds", "toy"])
    cells, modes = headline._plan(args, "toy")
    assert sorted(cells) == ["grad_ascent", "grad_diff", "npo", "simnpo"]
    assert len(cells["npo"]) == 6 and modes == ["dense", "masked", "topk", "sau"]
    # the default slice: only grad_diff runs on every pruning setting of the toy world
    default, _ = headline._plan(headline.build_parser().parse_args([]), "toy")
    assert [len(default[m]) for m in ("grad_diff", "npo", "simnpo", "grad_ascent")] == [6, 1, 1, 1]
    argv = ["--full-matrix", "--worlds", "tofu,toy", "--seeds=3", "--jobs", "4", "--fresh", "--lr", "npo=1e-3",
            "--out", "x", "--threads", "2"]
    args = headline.build_parser().parse_args(argv)
    assert (args.worker, args.part_method) == (False, None)
    part = headline._part_args(args, "toy", 2, "npo", 1, Path("y"))
    # the part: one world, one seed, one base method, its own threads; the rest as given
    assert (part.worlds, part.first_seed, part.seeds, part.part_method) == ("toy", 2, 3, "npo")
    assert (part.threads, part.jobs, part.worker, part.out) == (1, 1, True, "y")
    assert (part.full_matrix, part.lr, part.fresh) == (True, ["npo=1e-3"], True)
    assert vars(args)["worlds"] == "tofu,toy" and args.out == "x"  # a copy: the parsed arguments are unchanged
    assert set(vars(part)) == set(vars(args))
    cells, _ = headline._plan(part, "toy")
    assert len(cells["npo"]) == 6


def test_paired_rows_keep_only_pairs_that_both_reached_the_target() -> None:
    from headline_report import PAIRED_COLUMNS, paired_rows

    def rec(mode: str, seed: int, mu: float, fq: float, steps: int, reached: bool = True) -> dict:
        return {"world": "toy", "kind": "matrix", "setting": "wanda 2:4", "method": "npo", "mode": mode,
                "seed": seed, "learning_rate": 1e-3, "reached": reached, "steps": steps, "forget_quality": fq,
                "model_utility": mu, "aggregate": mu, "train_seconds": float(steps), "peak_memory_bytes": 100}

    records = [rec("dense", 0, 0.4, 1e-2, 10), rec("sau", 0, 0.5, 1e-1, 15),
               rec("dense", 1, 0.6, 1e-2, 10), rec("sau", 1, 0.5, 1e-3, 25),
               rec("dense", 2, 0.6, 1e-2, 10), rec("sau", 2, 0.9, 1.0, 120, reached=False)]
    rows = paired_rows(records)
    assert [(r["pruner"], r["pair"]) for r in rows] == [("wanda", "sau − dense"), ("all", "sau − dense")]
    row = rows[0]
    assert set(row) == set(PAIRED_COLUMNS)
    assert (row["pairs"], row["not reached"]) == ("2", "1")
    assert row["Δ utility"] == "+0.000"  # (+0.1 - 0.1) / 2
    assert row["utility higher"] == "1/2"
    assert row["Δ log10 FQ"] == "+0.000" and row["FQ higher"] == "1/2"  # +1 and -1 decades
    assert row["steps ratio"] == "2.00"  # (15 + 25) / (10 + 10)
    assert row["memory ratio"] == "1.00"


def test_paired_interval_and_verdict() -> None:
    from headline_report import paired_interval, verdict

    up = paired_interval([1.0, 1.1, 0.9, 1.2, 1.05])
    assert up is not None and 0.9 <= up[0] < 1.05 < up[1] <= 1.2 and verdict(up) == "win"
    assert paired_interval([1.0, 1.1, 0.9, 1.2, 1.05]) == up  # seeded
    mixed = paired_interval([1.0, -1.0, 0.5, -0.5])
    assert mixed[0] < 0 < mixed[1] and verdict(mixed) == "no difference"
    assert verdict(paired_interval([-1.0, -1.1, -0.9])) == "loss"
    assert paired_interval([0.2, 0.2, 0.2]) == (0.2, 0.2)
    assert paired_interval([1.0, 2.0]) is None and verdict(None) == "–"


def test_paired_rows_give_intervals_from_three_pairs() -> None:
    from headline_report import paired_rows

    def rec(mode: str, seed: int, mu: float) -> dict:
        return {"world": "toy", "kind": "matrix", "setting": "sparsegpt 2:4", "method": "grad_diff", "mode": mode,
                "seed": seed, "learning_rate": 1e-3, "reached": True, "steps": 10, "forget_quality": 0.1,
                "model_utility": mu, "aggregate": mu, "train_seconds": 1.0, "peak_memory_bytes": 100}

    records = [rec("naive", s, 0.5) for s in range(4)] + [rec("sau", s, 0.6 + 0.01 * s) for s in range(4)]
    row = next(r for r in paired_rows(records) if r["pruner"] == "sparsegpt")
    assert row["pair"] == "sau − naive" and row["pairs"] == "4"
    assert row["Δ aggregate"] == "+0.115" and row["verdict"] == "win"
    low, high = (float(v) for v in row["Δ aggregate 95% CI"].strip("[]").split(", "))
    assert 0.1 <= low <= 0.115 <= high <= 0.13
