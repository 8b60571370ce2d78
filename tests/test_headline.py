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
        [sys.executable, str(SCRIPT), "--quick", "--model-size", "tiny", "--methods", "grad_diff", "--modes",
         "dense,sau",
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
    # the tiny worlds' default slice: only grad_diff runs on every pruning setting of the toy world
    default, _ = headline._plan(headline.build_parser().parse_args(["--model-size", "tiny"]), "toy")
    assert [len(default[m]) for m in ("grad_diff", "npo", "simnpo", "grad_ascent")] == [6, 1, 1, 1]
    # the capacity world (the CPU default): grad_diff on every setting, each matched configuration, the ablations
    # on SparseGPT 2:4 and the fixed-budget protocol; one part per setting and one for the unpruned runs
    capacity = headline.build_parser().parse_args(["--model-size", "capacity"])
    cells, modes = headline._plan(capacity, "toy")
    assert list(cells) == ["grad_diff"] and len(cells["grad_diff"]) == 6 and modes == headline.MATCHED
    ablation, budget = headline._extras(capacity, "toy")
    assert ablation["setting"] == ("sparsegpt", "2:4") and budget["lrs"] == [1e-3, 3e-3]
    assert headline._extras(headline.build_parser().parse_args(["--model-size", "capacity", "--no-budget",
                                                                "--no-ablation"]), "toy") == (None, None)
    parts = headline._parts(capacity, "toy", 4)
    assert parts[:2] == [("toy", 4, "grad_diff", "unpruned"), ("toy", 4, "grad_diff", "magnitude 50%")]
    assert len(parts) == 7
    with pytest.raises(SystemExit, match="no tofu world"):
        headline._plan(capacity, "tofu")
    argv = ["--full-matrix", "--worlds", "tofu,toy", "--seeds=3", "--jobs", "4", "--fresh", "--lr", "npo=1e-3",
            "--out", "x", "--threads", "2"]
    args = headline.build_parser().parse_args(argv)
    assert (args.worker, args.part_method) == (False, None)
    part = headline._part_args(args, "toy", 2, "npo", "wanda 2:4", 1, Path("y"))
    # the part: one world, one seed, one base method, one setting, its own threads; the rest as given
    assert (part.worlds, part.first_seed, part.seeds, part.part_method) == ("toy", 2, 3, "npo")
    assert part.part_setting == "wanda 2:4" and args.part_setting is None
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


def test_a_reprune_run_counts_as_reached_only_after_the_pruner_ran_again() -> None:
    from headline_report import group_rows, paired_rows

    def rec(mode: str, seed: int, forget_rouge: float) -> dict:
        return {"world": "toy", "kind": "matrix", "setting": "magnitude 50%", "method": "grad_diff", "mode": mode,
                "seed": seed, "learning_rate": 1e-3, "reached": True, "steps": 30, "forget_quality": 0.1,
                "forget_rouge": forget_rouge, "target": 0.5, "model_utility": 0.6, "aggregate": 0.6,
                "train_seconds": 1.0, "seconds_per_step": 0.1, "peak_memory_bytes": 100}

    # the checks stopped both reprune runs at the target; re-pruning brought seed 1's answers back (0.61)
    records = [rec("dense", 0, 0.49), rec("dense", 1, 0.48), rec("naive-reprune", 0, 0.45),
               rec("naive-reprune", 1, 0.61)]
    row = next(r for r in paired_rows(records) if r["pair"] == "dense − naive-reprune")
    assert (row["pairs"], row["not reached"]) == ("1", "1")
    assert [r["reached"] for r in group_rows(records)] == ["2/2", "1/2"]


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
    assert row["relative"] == "+23.0%"  # 0.115 over naive's 0.5
    by_setting = [r["pruner"] for r in paired_rows(records, by="setting")]
    assert by_setting == ["sparsegpt 2:4", "all"]
    low, high = (float(v) for v in row["Δ aggregate 95% CI"].strip("[]").split(", "))
    assert 0.1 <= low <= 0.115 <= high <= 0.13
    # where masked ran (the pretrained world), every configuration is also paired against it
    masked = [dict(r, mode="masked", aggregate=0.55, model_utility=0.55) for r in records if r["mode"] == "naive"]
    pairs = [r["pair"] for r in paired_rows(records + masked) if r["pruner"] == "sparsegpt"]
    assert pairs == ["sau − naive", "sau − masked", "naive − masked"]
    masked_row = next(r for r in paired_rows(records + masked) if r["pair"] == "sau − masked")
    assert masked_row["Δ aggregate"] == "+0.065" and masked_row["pairs"] == "4"


def test_part_rows_compare_each_utility_component() -> None:
    from headline_report import part_rows

    def rec(mode: str, seed: int, prob: float, reached: bool = True, parts: bool = True) -> dict:
        r = {"world": "w", "kind": "matrix", "setting": "sparsegpt 50%", "method": "npo", "mode": mode,
             "seed": seed, "learning_rate": 5e-5, "reached": reached, "steps": 10, "forget_quality": 0.01,
             "forget_rouge": 0.3, "target": 0.4, "model_utility": 0.0, "aggregate": 0.0}
        if parts:
            r["utility_components"] = {"prior_Q_A_Prob": prob, "prior_Q_A_ROUGE": 0.0}
        return r

    # utility is 0 for every run (a ROUGE-L component at 0), the probability component still differs
    records = [rec("masked", s, 0.10) for s in range(3)] + [rec("sau", s, 0.12 + 0.01 * s) for s in range(3)]
    (row,) = part_rows(records)
    assert (row["pair"], row["pairs"], row["setting"]) == ("sau − masked", "3", "sparsegpt 50%")
    assert row["Δ utility"] == "+0.000 [+0.000, +0.000]" and row["Δ log10 FQ"] == "+0.000 [+0.000, +0.000]"
    assert row["Δ prior ROUGE-L"] == "+0.000 [+0.000, +0.000]"
    mean, interval = row["Δ prior prob"].split(" ", 1)
    low, high = (float(v) for v in interval.strip("[]").split(", "))
    assert mean == "+0.030" and 0.02 <= low < 0.03 < high <= 0.04
    # a pair where either run missed the target drops out; two pairs give no interval
    records[3] = rec("sau", 0, 0.5, reached=False)
    assert part_rows(records)[0]["Δ prior prob"] == "+0.035 –"
    # runs recorded before the components were kept give no row
    assert part_rows([rec("masked", 0, 0.1, parts=False), rec("sau", 0, 0.2)]) == []


def test_decision_rows_give_relative_gains_and_the_goal() -> None:
    from headline_report import decision_rows, matched_effects

    def rec(mode: str, setting: str, seed: int, agg: float, reached: bool = True) -> dict:
        return {"world": "w", "kind": "matrix", "setting": setting, "method": "grad_diff", "mode": mode,
                "seed": seed, "learning_rate": 1e-3, "reached": reached, "steps": 10, "forget_quality": 0.1,
                "forget_rouge": 0.4, "target": 0.5, "model_utility": agg, "aggregate": agg, "train_seconds": 1.0,
                "peak_memory_bytes": 100}

    records = []
    for seed in range(4):
        records += [rec("dense", "wanda 2:4", seed, 0.5), rec("topk", "wanda 2:4", seed, 0.6 + 0.01 * seed),
                    rec("dense", "magnitude 50%", seed, 0.5), rec("topk", "magnitude 50%", seed, 0.52)]
    records.append(rec("topk", "magnitude 50%", 4, 0.9, reached=False))  # no dense twin, and missed: ignored
    effects = matched_effects(records, "topk", "dense")
    rel, interval = effects[("w", "wanda 2:4")]
    assert rel == pytest.approx(0.23)  # +0.115 over 0.5
    assert 0.2 <= interval[0] <= 0.23 <= interval[1] <= 0.26
    assert effects[("w", "magnitude 50%")] == (pytest.approx(0.04), (pytest.approx(0.04), pytest.approx(0.04)))
    budget = [{"world": "w", "setting": "wanda 2:4", "method": "grad_diff", "variant": v, "seed": s,
               "points": [{"fq_score": 1.0, "model_utility": u}]}
              for s in range(3) for v, u in (("dense", 0.5), ("topk", 0.6))]
    rows = decision_rows(records, budget, baselines=("dense",))
    assert [(r["configuration"], r["protocol"]) for r in rows] == [("topk vs dense", "matched (aggregate)"),
                                                                    ("topk vs dense", "budget (hypervolume)")]
    assert rows[0]["w: magnitude 50%"] == "+4.0% [+4.0%, +4.0%] win" and rows[0]["≥15% everywhere"] == "no"
    assert rows[1]["w: wanda 2:4"] == "+20.0% [+20.0%, +20.0%] win" and rows[1]["w: magnitude 50%"] == "–"
    assert rows[1]["≥15% everywhere"] == "yes"  # the budget protocol ran on one setting, and gained 20% there


def test_configurations_are_modifier_fields() -> None:
    from headline_core import make_spec, variant_fields

    assert variant_fields("sau") == {"mode": "sau", "topk_ratio": 0.3, "alpha": 0.1}
    assert variant_fields("sau", 0.5, 0.2) == {"mode": "sau", "topk_ratio": 0.5, "alpha": 0.2}  # the sweep's cells
    assert variant_fields("sau-alpha4") == {"mode": "sau", "topk_ratio": 0.3, "alpha": 4.0}
    assert variant_fields("contrastive") == {"mode": "topk", "saliency": "contrastive", "topk_ratio": 0.3,
                                             "alpha": 0.1}
    assert variant_fields("naive-reprune")["mode"] == "unmasked" and variant_fields("masked")["mode"] == "masked"
    with pytest.raises(ValueError, match="unknown configuration 'sau-alpha9'"):
        variant_fields("sau-alpha9")
    spec = make_spec("toy", "matrix", "wanda 2:4", "grad_diff", "topk-k0.1", 0, 1e-3)
    assert (spec.mode, spec.topk_ratio, spec.alpha) == ("topk-k0.1", 0.1, 0.1)
    assert spec.key() == "toy|wanda 2:4|grad_diff|topk-k0.1|0|0.001|0.1|0.1"


def test_pareto_front_and_hypervolume_by_hand() -> None:
    from headline_report import hypervolume, pareto_front

    points = [(0.2, 0.9), (0.5, 0.7), (0.4, 0.6), (0.9, 0.3), (0.5, 0.7), (0.0, 1.0)]
    assert pareto_front(points) == [(0.0, 1.0), (0.2, 0.9), (0.5, 0.7), (0.9, 0.3)]
    # rectangles from (0, 0): 0.9 * 0.3 + 0.5 * (0.7 - 0.3) + 0.2 * (0.9 - 0.7); (0, 1) has no area
    assert hypervolume(points) == pytest.approx(0.51)
    # from (0.1, 0.25): 0.8 * 0.05 + 0.4 * (0.7 - 0.3) + 0.1 * (0.9 - 0.7); nothing lies above (0.5, 0.5)
    assert hypervolume(points, reference=(0.1, 0.25)) == pytest.approx(0.22)
    assert hypervolume(points, reference=(0.5, 0.5)) == 0.0
    assert hypervolume([]) == 0.0


def test_budget_report_pairs_hypervolumes_by_seed() -> None:
    from budget_sweep import report
    from headline_report import hypervolumes

    def rec(variant: str, seed: int, lr: float, pts: list[tuple[float, float]]) -> dict:
        return {"setting": "sparsegpt 2:4", "method": "grad_diff", "variant": variant, "seed": seed,
                "learning_rate": lr, "points": [{"fq_score": x, "model_utility": y} for x, y in pts]}

    records = []
    for seed in range(3):
        records += [rec("dense", seed, 1e-3, [(0.5, 0.5)]), rec("dense", seed, 3e-3, [(0.8, 0.2)]),
                    rec("naive", seed, 1e-3, [(0.4, 0.4)]),
                    rec("sau", seed, 1e-3, [(0.5, 0.6 + 0.01 * seed)]), rec("sau", seed, 3e-3, [(0.8, 0.2)])]
    hv = hypervolumes(records)
    assert hv[("sparsegpt 2:4", "grad_diff", "dense", 0)] == pytest.approx(0.5 * 0.5 + 0.3 * 0.2)  # both lrs
    assert hv[("sparsegpt 2:4", "grad_diff", "sau", 2)] == pytest.approx(0.5 * 0.62 + 0.3 * 0.2)
    text = report(records)
    sau_dense = next(line for line in text.splitlines() if "| sau − dense |" in line)
    assert "+0.0550" in sau_dense and "| win |" in sau_dense  # 0.5 * (0.10, 0.11, 0.12) paired
    assert "| naive − dense |" in text and "| sau − naive |" in text


@pytest.mark.slow
def test_budget_sweep_runs_and_resumes(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "budget_sweep.py"
    cmd = [sys.executable, str(script), "--variants", "naive,sau", "--lrs", "1e-3", "--seeds", "1", "--steps", "4",
           "--every", "2", "--threads", "1", "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in (tmp_path / "budget_runs.jsonl").read_text().splitlines()]
    assert [(r["variant"], [p["step"] for p in r["points"]]) for r in runs] == [("naive", [2, 4]), ("sau", [2, 4])]
    assert all(r["max_grad_norm"] == 1.0 and 0.0 <= p["fq_score"] <= 1.0 for r in runs for p in r["points"])
    assert "| sau − naive |" in (tmp_path / "budget.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert again.returncode == 0 and len((tmp_path / "budget_runs.jsonl").read_text().splitlines()) == 2


def test_pruning_damage_table_and_the_hurts_rule() -> None:
    from pruning_damage import hurts, table

    def row(setting: str, mu: float, fr: float, rr: float) -> dict:
        return {"world": "toy", "setting": setting, "model_utility": mu, "forget_rouge": fr, "retain_rouge": rr}

    rows = [row("unpruned", 0.85, 1.0, 1.0), row("magnitude 50%", 0.80, 0.95, 0.97),
            row("sparsegpt 2:4", 0.7, 0.9, 0.99)]
    for r in rows:
        for key in ("model_utility", "forget_rouge", "retain_rouge"):
            r[f"delta_{key}"] = r[key] - rows[0][key]
    assert hurts(rows, 0.10) and not hurts(rows, 0.16)  # SparseGPT costs 0.15 of utility
    lines = table(rows).splitlines()
    assert lines[2] == "| toy | unpruned | 0.850 | 1.000 | 1.000 | – | – | – | – | – |"
    assert lines[4] == "| toy | sparsegpt 2:4 | 0.700 | 0.900 | 0.990 | – | -0.150 | -0.100 | -0.010 | – |"
    # a world with prior knowledge: its ROUGE-L counts towards "hurts" too
    for r, prior in zip(rows, (0.9, 0.85, 0.65), strict=True):
        r["prior_rouge"], r["delta_prior_rouge"] = prior, prior - 0.9
    assert hurts(rows, 0.16) and not hurts(rows, 0.26)  # SparseGPT costs 0.25 of prior ROUGE-L
    assert table(rows).splitlines()[4] == ("| toy | sparsegpt 2:4 | 0.700 | 0.900 | 0.990 | 0.650 | -0.150 | -0.100 | "
                                           "-0.010 | -0.250 |")


def test_the_pretrained_world_runs_alone_on_its_own_profile() -> None:
    import headline
    import headline_core as core

    from sau_compress.unlearn import UnlearnConfig

    args = headline.build_parser().parse_args(["--worlds", "tofu-smollm2"])
    cells, modes = headline._plan(args, "tofu-smollm2")
    # NPO on SparseGPT 2:4 and 50%, every configuration the method question names; no unpruned part, no sweep
    assert cells == {"npo": [("sparsegpt", "2:4"), ("sparsegpt", "50%")]}
    assert modes == ["masked", "dense", "naive", "naive-reprune", "topk", "sau", "sau-alpha1", "contrastive"]
    assert headline._parts(args, "tofu-smollm2", 1) == [("tofu-smollm2", 1, "npo", "sparsegpt 2:4"),
                                                        ("tofu-smollm2", 1, "npo", "sparsegpt 50%")]
    assert not headline._sweeps(args, "tofu-smollm2") and headline._extras(args, "tofu-smollm2") == (None, None)
    quick, quick_modes = headline._plan(headline.build_parser().parse_args(["--worlds", "tofu-smollm2", "--quick"]),
                                        "tofu-smollm2")
    assert quick == {"npo": [("sparsegpt", "2:4")]} and quick_modes == ["masked", "sau"]
    # the learning rates and the stage are the modifier's defaults, not the toy's
    cfg = UnlearnConfig()
    assert headline._parse_lr(None, pretrained=True)["npo"] == cfg.learning_rate == 5e-5
    assert headline._parse_lr(["npo=1e-5"], pretrained=True)["npo"] == 1e-5
    assert headline._parse_lr(None)["npo"] == 2e-3
    assert core.PRETRAINED_STAGE == {"retain_weight": cfg.retain_weight, "max_grad_norm": cfg.max_grad_norm}
    assert core.PRETRAINED_STAGE == {"retain_weight": 15.0, "max_grad_norm": 1.0}
    assert headline.PRETRAINED_PROFILE["tofu-smollm2"]["batch_size"] == cfg.batch_size == 4
    assert core.world_label("tofu-smollm2", "capacity") == "tofu-smollm2"
    with pytest.raises(SystemExit, match="runs alone"):
        headline.main(["--worlds", "tofu-smollm2,toy"])
    with pytest.raises(SystemExit, match=r"unknown \['tofu-llama'\]"):
        headline.main(["--worlds", "tofu-llama"])


def test_the_pretrained_worlds_prior_is_tofus_real_authors_and_world_facts() -> None:
    import headline_core as core

    prior = core.pretrained_prior()
    assert len(prior) == 217  # 100 real authors, then 117 world facts
    assert prior[0]["question"] == "Who wrote the play 'Romeo and Juliet'?"
    assert prior[100]["question"] == "Where would you find the Eiffel Tower?" and prior[100]["answer"] == "Paris"
    assert all(len(r["perturbed_answer"]) == 3 for r in prior)


def test_a_start_is_evaluated_once_per_folder_world_and_sets(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    import headline_core as core
    import torch

    import sau_compress.export as export

    calls: list[str] = []
    monkeypatch.setattr(export, "load_model", lambda folder: torch.nn.Linear(1, 1))

    def fake_evaluate(model: torch.nn.Module, world: SimpleNamespace) -> dict:
        calls.append(world.forget[0]["question"])
        return {"model_utility": 0.5, "forget_rouge": 0.25}

    monkeypatch.setattr(core, "evaluate_model", fake_evaluate)
    qa = [{"question": "q1", "answer": "a"}]
    world = SimpleNamespace(forget=qa, forget_eval=qa, retain_eval=qa, holdout=qa, holdout_eval=qa, prior_eval=[],
                            weights_sha256={"model": "x"},
                            max_new_tokens=8)
    first = core.evaluate_start(tmp_path / "m", world, "cpu", tmp_path / "work")
    again = core.evaluate_start(tmp_path / "m", world, "cpu", tmp_path / "work")
    assert calls == ["q1"] and again == first and first["model_utility"] == 0.5 and first["eval_seconds"] >= 0
    assert [p.name.endswith(".json") for p in (tmp_path / "work" / "starts").iterdir()] == [True]
    # another folder, other weights or other questions: measured again
    core.evaluate_start(tmp_path / "other", world, "cpu", tmp_path / "work")
    world.weights_sha256 = {"model": "y"}
    core.evaluate_start(tmp_path / "m", world, "cpu", tmp_path / "work")
    world.forget = world.forget_eval = [{"question": "q2", "answer": "a"}]
    core.evaluate_start(tmp_path / "m", world, "cpu", tmp_path / "work")
    assert calls == ["q1", "q1", "q1", "q2"]


def test_a_pretrained_world_calibrates_its_pruners_on_the_fine_tuning_data(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import headline_core as core

    forget = [{"question": f"f{i}"} for i in range(40)]
    retain = [{"question": f"r{i}"} for i in range(100)]
    toy = SimpleNamespace(forget=forget, retain=retain, calibration="retain", root=tmp_path, name="w")
    assert [r["question"] for r in core.calibration_records(toy)][:3] == ["r0", "r1", "r3"]  # 64 of 100, spread
    assert len(core.calibration_records(toy)) == 64
    tofu = SimpleNamespace(forget=forget[:4], retain=retain[:20], calibration="train", root=tmp_path, name="w")
    assert [r["question"] for r in core.calibration_records(tofu)] == [*(f"f{i}" for i in range(4)),
                                                                       *(f"r{i}" for i in range(20))]
    # each calibration is pruned into a folder of its own
    assert core.pruned_path(toy, "sparsegpt", "2:4", tmp_path) != core.pruned_path(tofu, "sparsegpt", "2:4", tmp_path)
    toy.calibration = "train"
    assert core.pruned_path(toy, "sparsegpt", "2:4", tmp_path) == core.pruned_path(tofu, "sparsegpt", "2:4", tmp_path)


def test_the_sau_stage_takes_a_pretrained_worlds_retain_weight_and_clipping() -> None:
    from types import SimpleNamespace

    import headline_core as core

    item = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    world = SimpleNamespace(stage_fields=dict(core.PRETRAINED_STAGE), forget_items=[item], retain_items=[item],
                            tokenizer=SimpleNamespace(pad_token_id=0))
    npo = core._sau_stage(world, None, "npo", 5e-5, 10, 4, 0, "cpu", mode="masked")
    assert (npo.retain_weight, npo.max_grad_norm) == (15.0, 1.0)
    assert world.stage_fields == {"retain_weight": 15.0, "max_grad_norm": 1.0}  # read, not consumed
    assert core._sau_stage(world, None, "grad_ascent", 5e-5, 10, 4, 0, "cpu").retain_weight == 0.0
    # a field given to the stage wins over the world's; the toy worlds keep retain weight 1 and no clipping
    assert core._sau_stage(world, None, "npo", 5e-5, 10, 4, 0, "cpu", max_grad_norm=0.5).max_grad_norm == 0.5
    world.stage_fields = {}
    toy = core._sau_stage(world, None, "grad_diff", 1e-3, 10, 8, 0, "cpu")
    assert (toy.retain_weight, toy.max_grad_norm) == (1.0, None)


def test_audit_modes_on_the_pretrained_world_runs_the_headline_profile(tmp_path) -> None:
    import argparse

    import audit_modes

    from sau_compress.unlearn import UnlearnConfig

    cfg = UnlearnConfig()
    args = argparse.Namespace(world="tofu-smollm2", setting=None, lr=None, max_steps=None, attack_scores=None)
    assert audit_modes._plan(args) == {
        "setting": "sparsegpt 50%", "method": "npo", "lr": cfg.learning_rate, "max_steps": 40, "check_every": 5,
        "batch": cfg.batch_size, "retain_eval": 20,
        "audit": {"utility_records": 20, "max_new_tokens": 96, "relearn_steps": 10, "relearn_lr": cfg.learning_rate,
                  "relearn_batch_size": 4, "batch_size": 16, "attack_scores": "verdict"}}
    # the toy audit is as it was before the pretrained world: 16 utility records, the audit's own answer length,
    # every score measured under each attack
    toy = audit_modes._plan(argparse.Namespace(world="toy", setting=None, lr=None, max_steps=None, attack_scores=None))
    assert (toy["setting"], toy["method"], toy["lr"], toy["audit"]) == ("sparsegpt 2:4", "grad_diff", 1e-3,
                                                                        {"utility_records": 16, "attack_scores": "all"})
    # what the JSONL keeps of an attack: the relearn control and the retain model's score before the attack
    entry = {"name": "relearn", "holds": False, "score": "forget_rouge", "value": 0.4, "level": 0.27, "threshold": 0.37,
             "seconds": 5.0, "before": {"forget_rouge": 0.26, "forget_prob": None},
             "retain_model_before": {"forget_rouge": 0.25}, "control": {"forget_rouge": 0.3}}
    assert audit_modes._attack_row(entry) == {"name": "relearn", "holds": False, "value": 0.4, "level": 0.27,
                                              "threshold": 0.37, "seconds": 5.0, "before": 0.26,
                                              "level_before": 0.25, "control": 0.3}
    mia = {"name": "mia", "holds": True, "score": "mia_auc", "value": 0.55, "level": 0.5, "threshold": 0.6,
           "seconds": 0.0, "before": {"mia_auc": 0.52}, "retain_model_before": None}
    assert audit_modes._attack_row(mia)["before"] == 0.52 and audit_modes._attack_row(mia)["level_before"] is None
    runs = tmp_path / "audit.jsonl"
    runs.write_text("".join(json.dumps({"mode": m, "seed": seed, "steps": 10, "reached": True,
                                        "attacks": [dict(audit_modes._attack_row(entry), value=v, control=c)]}) + "\n"
                            for m, seed, v, c in [("masked", 0, 0.4, 0.3), ("sau", 0, 0.3, 0.2), ("sau", 1, 0.5, 0.4)]))
    table = audit_modes.report(runs)
    assert "| relearn | 0.400 (0.140), 0/1 | 0.400 ± 1.271 (0.140 ± 1.271), 0/2 |" in table
    assert "retain records), forget ROUGE-L: masked 0.300; sau 0.300 ± 1.271" in table
    runs.unlink()
    # the reference cache file: entries of two workers merge, nothing is lost, no temporary file stays
    path = tmp_path / "cache.json"
    audit_modes._save_cache(path, {"a": {"scores": 1}})
    audit_modes._save_cache(path, {"b": {"scores": 2}})
    assert audit_modes._load_cache(path) == {"a": {"scores": 1}, "b": {"scores": 2}}
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_a_quick_world_evaluates_a_few_records_and_trains_on_all(tmp_path, monkeypatch) -> None:
    import headline_core as core

    from sau_compress.export import load_model

    monkeypatch.setenv("SAU_COMPRESS_CACHE", str(tmp_path / "cache"))
    full = core.load_world("toy", 4, "cpu", work=tmp_path / "work")
    quick = core.load_world("toy", 4, "cpu", work=tmp_path / "work", eval_records=3)
    assert full.forget_eval == full.forget and full.holdout_eval == full.holdout and len(full.retain_eval) == 4
    step = len(full.forget) / 3
    assert quick.forget_eval == [full.forget[int(i * step)] for i in range(3)]
    assert len(quick.holdout_eval) == len(quick.retain_eval) == 3
    # training and calibration keep every record
    assert quick.forget == full.forget and len(quick.forget_items) == len(full.forget_items) == len(full.forget)
    assert core.calibration_records(quick) == core.calibration_records(full)
    # the target is the memorizer's recall on the evaluated holdout records, and a check answers 3 questions
    memorizer = load_model(quick.model_dir).eval()
    assert quick.target == core.forget_rouge(memorizer, quick, quick.holdout_eval)
    assert quick.target != full.target
    assert len(core._eval_sets(quick)["forget"]) == 3
    # the retain-band rule: the retain model's mean forget recall + 1.96 standard errors over the questions
    band = core.load_world("toy", 4, "cpu", work=tmp_path / "work", eval_records=3, target_rule="retain-band")
    scores = core.forget_rouges(load_model(band.retain_model_dir).eval(), band)
    assert len(scores) == 3 and band.target_rule == "retain-band" and quick.target_rule == "memorizer-holdout"
    assert band.target == core.retain_band(scores) and band.describe()["target_rule"] == "retain-band"
    with pytest.raises(ValueError, match="unknown target rule 'best'"):
        core.load_world("toy", 4, "cpu", target_rule="best")
    # a run's record keeps what model utility is the harmonic mean of (the toy world has no prior set)
    metrics = core.evaluate_model(memorizer, quick)
    parts = metrics["utility_components"]
    assert sorted(parts) == ["retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio"]
    assert metrics["model_utility"] == pytest.approx(3 / sum(1 / v for v in parts.values()), rel=1e-12)


def test_runs_recorded_with_another_target_are_refused(tmp_path: Path) -> None:
    import headline
    import headline_core as core

    world = core.World(name="w", root=tmp_path, model_dir=tmp_path, retain_model_dir=tmp_path, forget=[], retain=[],
                       holdout=[], retain_eval=[], tokenizer=None, max_new_tokens=8, target=0.3915,
                       target_rule="retain-band")
    same = [{"world": "w", "target": 0.3915}, {"world": "other", "target": 0.2}, {"world": "w"}]
    headline.check_targets(same, world, tmp_path / "runs.jsonl")  # nothing to refuse
    with pytest.raises(SystemExit, match=r"runs.jsonl: runs of w recorded with forgetting target 0.3264, this "
                                         r"world's is 0.3915 \(retain-band\); pass --fresh or another --out"):
        headline.check_targets([*same, {"world": "w", "target": 0.32637766}], world, tmp_path / "runs.jsonl")


def test_retain_band_hand_computed() -> None:
    from headline_worlds import retain_band

    # mean 0.5, sample standard deviation sqrt(1/6), 4 questions: 0.5 + 1.96 * sqrt(1/6) / 2
    assert retain_band([0.0, 1.0, 0.5, 0.5]) == pytest.approx(0.5 + 1.96 * (1 / 6) ** 0.5 / 2, abs=1e-12)
    assert retain_band([0.25, 0.25]) == 0.25
    with pytest.raises(ValueError, match="at least 2 questions, got 1"):
        retain_band([0.3])
