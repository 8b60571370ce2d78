"""Tables and plots of the headline benchmark (from the runs' JSONL records)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PAIRED_COLUMNS", "TABLE_COLUMNS", "budget_effects", "comparison_rows", "decision_rows", "group_rows",
           "hypervolume", "hypervolumes", "matched_effects", "paired_interval",
           "paired_rows", "pareto_front", "plot_sweep", "plot_tradeoffs", "render_markdown", "verdict"]

#: columns of the main table (one row per world, setting, method and mode; mean ± std over seeds)
TABLE_COLUMNS = (
    "world", "setting", "method", "mode", "runs", "reached", "steps", "forget ROUGE-L", "log10 FQ",
    "model utility", "aggregate", "train s", "s/step", "peak MiB",
)
MODE_ORDER = {"dense": 0, "masked": 1, "topk": 2, "sau": 3, "naive": 4, "naive-reprune": 5, "unlearn→prune": 6,
              "sau-alpha1": 7, "sau-alpha4": 8, "contrastive": 9, "sau-contrastive": 10, "sau-refresh10": 11,
              "topk-k0.1": 12, "topk-k0.5": 13}


def _mean_std(values: Iterable[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _log_fq(fq: float | None) -> float | None:
    return None if fq is None else math.log10(max(fq, 1e-300))


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def _groups(records: Sequence[dict[str, Any]], kinds: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["kind"] in kinds:
            groups[(r["world"], r["setting"], r["method"], r["mode"])].append(r)
    return groups


def _reached(r: dict[str, Any]) -> bool:
    """Whether a run reached the forgetting target. A ``naive-reprune`` run's checks saw its model before the
    pruner ran again, so it counts only when the re-pruned model is at or below the target too (runs recorded
    before the record said so are judged here)."""
    if r["mode"] == "naive-reprune" and r.get("forget_rouge") is not None and r.get("target") is not None:
        return bool(r["reached"]) and r["forget_rouge"] <= r["target"]
    return bool(r["reached"])


def _memory_ok(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs whose peak memory is valid: ``peak_memory_undercounted`` marks CPU ``dense`` runs recorded before
    ``unlearn`` counted torch AdamW's lazily created state (their other figures are unaffected)."""
    return [r for r in runs if not r.get("peak_memory_undercounted")]


def _setting_order(setting: str) -> tuple:
    return (setting != "unpruned", setting)


def group_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Main-table rows: matrix runs and unlearn-then-sparsify, mean ± std over seeds."""
    rows = []
    groups = _groups(records, ("matrix", "unlearn_then_sparsify"))
    for (world, setting, method, mode), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], _setting_order(kv[0][1]), kv[0][2], MODE_ORDER.get(kv[0][3], 9))
    ):
        rows.append({
            "world": world,
            "setting": setting,
            "method": method,
            "mode": mode,
            "runs": str(len(runs)),
            "reached": f"{sum(_reached(r) for r in runs)}/{len(runs)}",
            "steps": _mean_std([r["steps"] for r in runs], 1),
            "forget ROUGE-L": _mean_std([r["forget_rouge"] for r in runs]),
            "log10 FQ": _mean_std([_log_fq(r["forget_quality"]) for r in runs], 2),
            "model utility": _mean_std([r["model_utility"] for r in runs]),
            "aggregate": _mean_std([r["aggregate"] for r in runs]),
            "train s": _mean_std([r["train_seconds"] for r in runs], 2),
            "s/step": _mean_std([r["seconds_per_step"] for r in runs], 3),
            "peak MiB": _mean_std([r["peak_memory_bytes"] / 2**20 for r in _memory_ok(runs)], 2),
        })
    return rows


COMPARISON_COLUMNS = (
    "world", "pruner", "method", "Δ log10 FQ (sau−dense)", "Δ utility", "Δ aggregate", "sau steps / dense",
    "sau time / dense", "sau memory / dense", "sau reached", "dense reached",
)


def _diff(a_runs: list[dict[str, Any]], b_runs: list[dict[str, Any]], key: str, f: Any = None) -> str:
    f = f or (lambda x: x)
    a, b = _mean([f(r[key]) for r in a_runs]), _mean([f(r[key]) for r in b_runs])
    return "–" if a is None or b is None else f"{a - b:+.3f}"


def _ratio(a_runs: list[dict[str, Any]], b_runs: list[dict[str, Any]], key: str) -> str:
    a, b = _mean([r[key] for r in a_runs]), _mean([r[key] for r in b_runs])
    return "–" if a is None or not b else f"{a / b:.2f}"


def comparison_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """SAU against the ``dense`` baseline per world, pruning method and base method (both structures pooled;
    differences of per-cell means, pooled over structures and seeds)."""
    per: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["kind"] != "matrix" or r["setting"] == "unpruned" or r["mode"] not in ("sau", "dense"):
            continue
        pruner = r["setting"].split(" ")[0]
        per[(r["world"], pruner, r["method"])][r["mode"]].append(r)
    rows = []
    for (world, pruner, method), by_mode in sorted(per.items()):
        sau, dense = by_mode.get("sau", []), by_mode.get("dense", [])
        if not sau or not dense:
            continue

        rows.append({
            "world": world, "pruner": pruner, "method": method,
            "Δ log10 FQ (sau−dense)": _diff(sau, dense, "forget_quality", _log_fq),
            "Δ utility": _diff(sau, dense, "model_utility"),
            "Δ aggregate": _diff(sau, dense, "aggregate"),
            "sau steps / dense": _ratio(sau, dense, "steps"),
            "sau time / dense": _ratio(sau, dense, "train_seconds"),
            "sau memory / dense": _ratio(_memory_ok(sau), _memory_ok(dense), "peak_memory_bytes"),
            "sau reached": f"{sum(r['reached'] for r in sau)}/{len(sau)}",
            "dense reached": f"{sum(r['reached'] for r in dense)}/{len(dense)}",
        })
    return rows


PAIRED_COLUMNS = (
    "world", "pruner", "pair", "pairs", "not reached", "Δ log10 FQ", "FQ higher", "Δ utility", "utility higher",
    "Δ utility 95% CI", "Δ aggregate", "relative", "aggregate higher", "Δ aggregate 95% CI", "verdict",
    "steps ratio", "time ratio", "memory ratio",
)
#: paired differences need at least this many pairs for a confidence interval
MIN_PAIRS_FOR_CI = 3


def paired_interval(deltas: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                    seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap confidence interval (percentile method, ``scipy.stats.bootstrap``) of the mean of paired
    differences; ``None`` below :data:`MIN_PAIRS_FOR_CI` pairs. Deterministic for a seed; identical deltas give
    the degenerate interval (d, d)."""
    if len(deltas) < MIN_PAIRS_FOR_CI:
        return None
    if max(deltas) == min(deltas):
        return float(deltas[0]), float(deltas[0])
    import numpy as np
    from scipy.stats import bootstrap

    res = bootstrap((np.asarray(deltas, dtype=float),), np.mean, confidence_level=confidence,
                    n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def verdict(interval: tuple[float, float] | None) -> str:
    """``win`` / ``loss`` when the interval lies above / below 0, ``no difference`` when it holds 0, ``–``
    without an interval."""
    if interval is None:
        return "–"
    low, high = interval
    return "win" if low > 0 else "loss" if high < 0 else "no difference"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (both maximised), sorted by the first, ascending."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(set(points), key=lambda pt: (-pt[0], -pt[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front[::-1]


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area dominated by ``points`` (both coordinates maximised) above ``reference``: the union of the
    rectangles from the reference to each point. Points not above the reference on both coordinates add
    nothing."""
    rx, ry = reference
    area, prev_y = 0.0, ry
    for x, y in reversed(pareto_front([(x, y) for x, y in points if x > rx and y > ry])):
        area += (x - rx) * (y - prev_y)
        prev_y = y
    return area


def hypervolumes(records: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], float]:
    """{(setting, method, variant, seed): hypervolume of all its points over the learning-rate grid}."""
    points: dict[tuple[str, str, str, int], list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        key = (r["setting"], r["method"], r["variant"], r["seed"])
        points[key] += [(p["fq_score"], p["model_utility"]) for p in r["points"]]
    return {key: hypervolume(pts) for key, pts in points.items()}


def _fmt_interval(interval: tuple[float, float] | None) -> str:
    return "–" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"

#: the configurations compared against each baseline, in table order
CANDIDATES = ("topk", "sau", "sau-alpha1", "sau-alpha4", "contrastive", "sau-contrastive", "sau-refresh10",
              "topk-k0.1", "topk-k0.5", "masked", "naive-reprune")
#: (a, b): each row compares mode a against mode b: every candidate against ``dense`` and against ``naive``,
#: then ``dense`` against the baselines without the toolkit and ``sau`` against ``topk`` (the redistribution);
#: where ``masked`` ran (the pretrained world: the product's default), every other configuration against it
PAIRS = (*((a, "dense") for a in CANDIDATES), ("naive", "dense"), *((a, "naive") for a in CANDIDATES if a != "masked"),
         ("dense", "naive"), ("dense", "naive-reprune"), ("sau", "topk"),
         *((a, "masked") for a in (*CANDIDATES, "dense", "naive") if a != "masked"))


def _group_of(setting: str, by: str) -> str:
    return setting if by == "setting" else setting.split(" ")[0]


def _matrix_cells(records: Sequence[dict[str, Any]]) -> list[tuple[tuple, dict[str, dict[str, Any]]]]:
    """The pruned matrix runs grouped by cell, (world, setting, base method, seed, learning rate) -> {mode: run},
    in key order: the runs a paired difference compares."""
    runs: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        if r["kind"] == "matrix" and r["setting"] != "unpruned":
            runs[(r["world"], r["setting"], r["method"], r["seed"], r["learning_rate"])][r["mode"]] = r
    return sorted(runs.items(), key=lambda kv: str(kv[0]))


#: two runs a paired difference compares
Pair = tuple[dict[str, Any], dict[str, Any]]


def _pairs(cells: list[dict[str, dict[str, Any]]], a: str, b: str) -> tuple[list[Pair], list[Pair]]:
    """(every (a, b) pair of runs in ``cells`` ({mode: run} each), the pairs where **both** reached the
    forgetting target): the pairs a paired difference at matched forgetting compares."""
    both = [(m[a], m[b]) for m in cells if a in m and b in m]
    return both, [(x, y) for x, y in both if _reached(x) and _reached(y)]


def paired_rows(records: Sequence[dict[str, Any]], by: str = "pruner") -> list[dict[str, str]]:
    """Paired differences a − b at matched forgetting: runs of the same world, pruning setting, base method,
    seed and learning rate, kept only when **both** reached the forgetting target (the pairs where either
    did not are counted in ``not reached``). One row per world x pruner (``by="pruner"``: structures pooled) or
    per world x pruning setting (``by="setting"``), base methods pooled, and per world over all settings.
    ``relative`` is the mean difference of the aggregate over b's mean aggregate. Ratios are ratios of sums
    (a / b) over the pairs."""
    ordered = _matrix_cells(records)
    rows = []
    worlds = sorted({k[0] for k, _ in ordered})
    for world in worlds:
        groups = sorted({_group_of(k[1], by) for k, _ in ordered if k[0] == world})
        for group in [*groups, "all"]:
            in_group = [m for k, m in ordered if k[0] == world and group in ("all", _group_of(k[1], by))]
            for a, b in PAIRS:
                both, ok = _pairs(in_group, a, b)
                if not both:
                    continue
                row = {col: "–" for col in PAIRED_COLUMNS}
                row.update({"world": world, "pruner": group, "pair": f"{a} − {b}", "pairs": str(len(ok)),
                            "not reached": str(len(both) - len(ok))})
                if ok:
                    for delta_col, wins_col, key in (("Δ log10 FQ", "FQ higher", "forget_quality"),
                                                     ("Δ utility", "utility higher", "model_utility"),
                                                     ("Δ aggregate", "aggregate higher", "aggregate")):
                        f = _log_fq if key == "forget_quality" else (lambda v: v)
                        deltas = [f(x[key]) - f(y[key]) for x, y in ok
                                  if x[key] is not None and y[key] is not None]
                        row[delta_col] = f"{statistics.fmean(deltas):+.3f}" if deltas else "–"
                        row[wins_col] = f"{sum(d > 0 for d in deltas)}/{len(deltas)}"
                        if key != "forget_quality":
                            interval = paired_interval(deltas)
                            row[f"{delta_col} 95% CI"] = _fmt_interval(interval)
                            if key == "aggregate":
                                row["verdict"] = verdict(interval)
                                base = _mean([y[key] for x, y in ok])
                                if deltas and base:
                                    row["relative"] = f"{statistics.fmean(deltas) / base:+.1%}"
                    for col, key in (("steps ratio", "steps"), ("time ratio", "train_seconds"),
                                     ("memory ratio", "peak_memory_bytes")):
                        use = [(x, y) for x, y in ok if key != "peak_memory_bytes" or len(_memory_ok([x, y])) == 2]
                        den = sum(y[key] or 0 for _, y in use)
                        row[col] = f"{sum(x[key] or 0 for x, _ in use) / den:.2f}" if den else "–"
                rows.append(row)
    return rows


#: what :func:`part_rows` compares beside the utility components: (column, record key, transform)
PART_FIGURES = (("log10 FQ", "forget_quality", "log"), ("forget ROUGE-L", "forget_rouge", None),
                ("utility", "model_utility", None))


#: how :func:`part_rows` names a utility component's metric (``prior_Q_A_ROUGE`` -> ``prior ROUGE-L``)
PART_LABELS = {"Q_A_Prob": "prob", "Q_A_Prob_normalised": "prob (normalised)", "Q_A_ROUGE": "ROUGE-L",
               "Truth_Ratio": "truth ratio"}


def _part_label(name: str) -> str:
    split, _, metric = name.partition("_")
    return f"{split} {PART_LABELS.get(metric, metric)}"


def part_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Paired differences a − b at matched forgetting (pairs as in :func:`paired_rows`, per pruning setting) of
    forget quality, forget ROUGE-L, model utility and **each component model utility is the harmonic mean of**
    (runs that recorded ``utility_components``): where pruning took one ROUGE-L component to 0, the harmonic
    mean is 0 for every run, and only the components (answer probabilities, truth ratios) still tell runs
    apart. Each cell: mean difference and its 95% bootstrap interval (:func:`paired_interval`)."""
    rows = []
    cells = _matrix_cells(records)
    for world, setting in sorted({(k[0], k[1]) for k, _ in cells}):
        in_setting = [m for k, m in cells if (k[0], k[1]) == (world, setting)]
        for a, b in PAIRS:
            _, ok = _pairs(in_setting, a, b)
            if not ok or not all(x.get("utility_components") and y.get("utility_components") for x, y in ok):
                continue
            row = {"world": world, "setting": setting, "pair": f"{a} − {b}", "pairs": str(len(ok))}
            names = sorted(set.intersection(*(set(x["utility_components"]) & set(y["utility_components"])
                                              for x, y in ok)))
            figures = [*PART_FIGURES, *((_part_label(n), n, "part") for n in names)]
            for column, key, how in figures:
                if how == "part":
                    deltas = [x["utility_components"][key] - y["utility_components"][key] for x, y in ok]
                else:
                    f = _log_fq if how == "log" else (lambda v: v)
                    deltas = [f(x[key]) - f(y[key]) for x, y in ok if x[key] is not None and y[key] is not None]
                row[f"Δ {column}"] = (f"{statistics.fmean(deltas):+.3f} {_fmt_interval(paired_interval(deltas))}"
                                      if deltas else "–")
            rows.append(row)
    return rows


#: the goal of a configuration against a baseline: at least this relative gain on the aggregate (matched
#: forgetting) or on the hypervolume (fixed budget), with a 95% interval above 0, on every pruning setting
GOAL = 0.15


def _relative(deltas: Sequence[float], base: float | None) -> tuple[float, tuple[float, float] | None] | None:
    if not deltas or not base:
        return None
    interval = paired_interval(deltas)
    scaled = None if interval is None else (interval[0] / base, interval[1] / base)
    return statistics.fmean(deltas) / base, scaled


def matched_effects(records: Sequence[dict[str, Any]], a: str, b: str,
                    by: str = "setting") -> dict[tuple[str, str], tuple[float, tuple[float, float] | None] | None]:
    """{(world, group): (relative gain, its 95% interval)} of configuration ``a`` over ``b`` on the aggregate at
    matched forgetting: the mean paired difference (pairs as in :func:`paired_rows`) over b's mean, and the
    bootstrap interval of the difference over the same mean; ``None`` without pairs."""
    pairs: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for key, by_mode in _matrix_cells(records):
        if a in by_mode and b in by_mode:
            x, y = by_mode[a], by_mode[b]
            # a group whose pairs all missed the target shows as None
            ok = pairs.setdefault((key[0], _group_of(key[1], by)), [])
            if _reached(x) and _reached(y) and x["aggregate"] is not None and y["aggregate"] is not None:
                ok.append((x, y))
    return {group: _relative([x["aggregate"] - y["aggregate"] for x, y in ok], _mean([y["aggregate"] for _, y in ok]))
            for group, ok in pairs.items()}


def budget_effects(budget_records: Sequence[dict[str, Any]], a: str,
                   b: str) -> dict[tuple[str, str], tuple[float, tuple[float, float] | None] | None]:
    """{(world, setting): (relative gain, its 95% interval)} of configuration ``a`` over ``b`` on the Pareto
    hypervolume of the fixed-budget protocol, paired by seed (:func:`hypervolumes`)."""
    by_world: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in budget_records:
        by_world[r["world"]].append(r)
    out = {}
    for world, recs in by_world.items():
        hv = hypervolumes(recs)
        for setting in sorted({k[0] for k in hv}):
            seeds = sorted({k[3] for k in hv if k[0] == setting and k[2] == a}
                           & {k[3] for k in hv if k[0] == setting and k[2] == b})
            method = next((k[1] for k in hv if k[0] == setting), None)
            if not seeds or method is None:
                continue
            deltas = [hv[(setting, method, a, s)] - hv[(setting, method, b, s)] for s in seeds]
            out[(world, setting)] = _relative(deltas, _mean([hv[(setting, method, b, s)] for s in seeds]))
    return out


def _effect_cell(effect: tuple[float, tuple[float, float] | None] | None) -> str:
    if effect is None:
        return "–"
    rel, interval = effect
    if interval is None:
        return f"{rel:+.1%}"
    return f"{rel:+.1%} [{interval[0]:+.1%}, {interval[1]:+.1%}] {verdict(interval)}"


def _goal_met(effects: Sequence[tuple[float, tuple[float, float] | None] | None], goal: float) -> bool:
    return bool(effects) and all(e is not None and e[1] is not None and e[0] >= goal and e[1][0] > 0
                                 for e in effects)


def decision_rows(records: Sequence[dict[str, Any]], budget_records: Sequence[dict[str, Any]] = (),
                  baselines: Sequence[str] = ("masked", "dense", "naive"), goal: float = GOAL) -> list[dict[str, str]]:
    """The decision table: for every configuration against each baseline, the relative gain with its 95%
    interval and verdict per pruning setting, at matched forgetting (aggregate) and on the fixed budget
    (hypervolume), and whether the goal holds: at least ``goal`` with an interval above 0 on every setting."""
    configs = [m for m in (*CANDIDATES, "dense", "naive") if any(r["mode"] == m for r in records)
               or any(r.get("variant") == m for r in budget_records)]
    rows = []
    for base in baselines:
        for config in configs:
            if config == base:
                continue
            for protocol, effects in (("matched (aggregate)", matched_effects(records, config, base)),
                                      ("budget (hypervolume)", budget_effects(budget_records, config, base))):
                if not effects:
                    continue
                row = {"configuration": f"{config} vs {base}", "protocol": protocol}
                for (world, group), effect in sorted(effects.items()):
                    row[f"{world}: {group}"] = _effect_cell(effect)
                row[f"≥{goal:.0%} everywhere"] = "yes" if _goal_met(list(effects.values()), goal) else "no"
                rows.append(row)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return [{c: row.get(c, "–") for c in columns} for row in rows]


SWEEP_COLUMNS = ("world", "setting", "method", "topk_ratio", "alpha", "runs", "reached", "steps", "log10 FQ",
                 "model utility", "aggregate")


def sweep_rows(records: Sequence[dict[str, Any]], sweep_setting: tuple[str, str, str]) -> list[dict[str, str]]:
    """The topk_ratio x alpha sweep (SAU mode on one world/setting/method; matrix runs with the same
    coordinates are included)."""
    world, setting, method = sweep_setting
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if (r["kind"] in ("sweep", "matrix") and r["mode"] == "sau" and r["world"] == world
                and r["setting"] == setting and r["method"] == method):
            groups[(r["topk_ratio"], r["alpha"])].append(r)
    rows = []
    for (k, a), runs in sorted(groups.items()):
        rows.append({
            "world": world, "setting": setting, "method": method, "topk_ratio": f"{k:g}", "alpha": f"{a:g}",
            "runs": str(len(runs)), "reached": f"{sum(r['reached'] for r in runs)}/{len(runs)}",
            "steps": _mean_std([r["steps"] for r in runs], 1),
            "log10 FQ": _mean_std([_log_fq(r["forget_quality"]) for r in runs], 2),
            "model utility": _mean_std([r["model_utility"] for r in runs]),
            "aggregate": _mean_std([r["aggregate"] for r in runs]),
        })
    return rows


def markdown_table(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(records: Sequence[dict[str, Any]], meta: dict[str, Any],
                    sweeps: Sequence[tuple[str, str, str]] = (), by: str = "pruner",
                    budget_records: Sequence[dict[str, Any]] = ()) -> str:
    """The whole Markdown report: scale, SAU-vs-dense comparison, paired differences (per pruner or per
    pruning setting: ``by``, see :func:`paired_rows`), main table, sweep."""
    parts = ["# Headline benchmark output", ""]
    parts += [f"- command: `{meta.get('command')}`", f"- seeds: {meta.get('seeds')}, device: {meta.get('device')}, "
              f"torch threads: {meta.get('threads')}, parallel processes: {meta.get('jobs')}, "
              f"wall time: {_wall(meta.get('wall_seconds'))}",
              f"- learning rate per method (AdamW, same for every mode): {meta.get('learning_rates')}, batch size "
              f"{meta.get('batch_size')}, forgetting checked every {meta.get('check_every')} steps"]
    busy = sum((r.get("train_seconds") or 0) + (r.get("check_seconds") or 0) + (r.get("eval_seconds") or 0)
               for r in records if r["kind"] != "unlearn_then_sparsify")
    busy += sum(r.get("prune_seconds") or 0 for r in records)
    parts.append(f"- {len(records)} recorded runs; their summed time (training + forgetting checks + evaluation "
                 f"+ pruning, all processes; evaluation after unlearn-then-sparsify not timed): {busy / 60:.1f} min "
                 f"(the wall time above is this invocation's: runs already recorded are skipped)")
    for world, plan in meta.get("plans", {}).items():
        cells = "; ".join(f"{m}: {', '.join(v)}" for m, v in plan["cells"].items())
        parts.append(f"- plan `{world}`: {cells}; modes {plan['modes']}; step cap {plan['max_steps']}")
    for w in meta.get("worlds", []):
        parts.append(
            f"- world `{w['world']}`: {w['parameters'] / 1e6:.2f}M parameters, forget {w['forget']} / retain "
            f"{w['retain']} (utility on {w['retain_eval']}) / holdout {w['holdout']} QA"
            + (f" / prior knowledge {w['prior']} (utility on {w['prior_eval']})" if w.get("prior") else "")
            + "; target forget ROUGE-L "
            f"<= {w['target_forget_rouge']:.3f}; memorizer ROUGE-L {_fmt_dict(w['memorizer_rouge'])}; retain "
            f"model {_fmt_dict(w['retain_model_rouge'])}"
        )
    for b in meta.get("starts", []):
        parts.append(
            f"- start `{b['world']}` / {b['setting']}: forget ROUGE-L {b['forget_rouge']:.3f}, log10 FQ "
            f"{_log_fq(b['forget_quality']):.2f}, utility {b['model_utility']:.3f}"
        )
    parts += ["", "## SAU against the dense baseline (per pruning method; both structures, all seeds)", ""]
    parts.append(markdown_table(comparison_rows(records), COMPARISON_COLUMNS))
    parts += ["", "## Paired differences at matched forgetting (same setting, method, seed; both runs reached the "
              "target)", ""]
    parts.append(markdown_table(paired_rows(records, by), PAIRED_COLUMNS))
    decisions = decision_rows(records, budget_records) if by == "setting" else []
    if decisions:
        columns = list(dict.fromkeys(c for row in decisions for c in row))
        parts += ["", f"## Decision: relative gain over each baseline per pruning setting (95% bootstrap interval; "
                  f"goal ≥{GOAL:.0%} with the interval above 0 on every setting)", ""]
        parts.append(markdown_table(decisions, columns))
    parts_table = part_rows(records)
    if parts_table:
        columns = list(dict.fromkeys(c for row in parts_table for c in row))
        parts += ["", "## Paired differences on each part of model utility at matched forgetting (mean, 95% "
                  "bootstrap interval; an interval needs 3 pairs)", ""]
        parts.append(markdown_table([{c: row.get(c, "–") for c in columns} for row in parts_table], columns))
    parts += ["", "## All cells (mean ± std over seeds)", ""]
    parts.append(markdown_table(group_rows(records), TABLE_COLUMNS))
    for sweep in sweeps:
        rows = sweep_rows(records, sweep)
        if rows:
            parts += ["", f"## topk_ratio × alpha sweep ({sweep[0]}, {sweep[1]}, {sweep[2]}, mode sau)", ""]
            parts.append(markdown_table(rows, SWEEP_COLUMNS))
    return "\n".join(parts) + "\n"


def _wall(seconds: float | None) -> str:
    return "not recorded (run cut short)" if seconds is None else f"{seconds:.0f} s"


def _fmt_dict(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in d.items())


# ------------------------------------------------------------------------------------------------ plots

_COLORS = {"dense": "tab:grey", "masked": "tab:blue", "topk": "tab:orange", "sau": "tab:red",
           "naive": "tab:brown", "naive-reprune": "tab:pink", "unlearn→prune": "tab:green", "unpruned": "black"}


def plot_tradeoffs(records: Sequence[dict[str, Any]], world: str, path: Path) -> bool:
    """Forget quality (log10, y) against model utility (x): one panel per base method, one large point per
    mode (mean over pruning settings and seeds), small points per pruning setting (mean over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [r for r in records if r["world"] == world and r["kind"] in ("matrix", "unlearn_then_sparsify")]
    methods = [m for m in ("grad_diff", "npo", "simnpo", "grad_ascent") if any(r["method"] == m for r in runs)]
    if not methods:
        return False
    fig = Figure(figsize=(4.2 * len(methods), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for i, method in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        sub = [r for r in runs if r["method"] == method]
        modes = sorted({("unpruned" if r["setting"] == "unpruned" else r["mode"]) for r in sub},
                       key=lambda m: MODE_ORDER.get(m, 8))
        for mode in modes:
            pts = [r for r in sub if ("unpruned" if r["setting"] == "unpruned" else r["mode"]) == mode]
            by_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in pts:
                by_setting[r["setting"]].append(r)
            xs = [_mean([r["model_utility"] for r in v]) for v in by_setting.values()]
            ys = [_mean([_log_fq(r["forget_quality"]) for r in v]) for v in by_setting.values()]
            color = _COLORS.get(mode, "tab:purple")
            ax.scatter(xs, ys, s=14, alpha=0.45, color=color)
            ax.scatter([_mean(xs)], [_mean(ys)], s=90, color=color, edgecolor="black", label=mode, zorder=3)
        ax.axhline(math.log10(0.05), color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{world}: {method}")
        ax.set_xlabel("model utility")
        if i == 0:
            ax.set_ylabel("log10 forget quality (KS p)")
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True


def plot_sweep(records: Sequence[dict[str, Any]], sweep_setting: tuple[str, str, str], path: Path) -> bool:
    """Heat maps of mean aggregate and mean steps over topk_ratio x alpha."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sweep_rows(records, sweep_setting)
    if not rows:
        return False
    ks = sorted({float(r["topk_ratio"]) for r in rows})
    alphas = sorted({float(r["alpha"]) for r in rows})
    world, setting, method = sweep_setting
    cells: dict[tuple[float, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if (r["kind"] in ("sweep", "matrix") and r["mode"] == "sau" and r["world"] == world
                and r["setting"] == setting and r["method"] == method):
            cells[(r["topk_ratio"], r["alpha"])].append(r)
    fig = Figure(figsize=(9, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    for j, (key, label) in enumerate((("aggregate", "aggregate"), ("steps", "steps to target"))):
        ax = fig.add_subplot(1, 2, j + 1)
        grid = [[_mean([r[key] for r in cells.get((k, a), [])]) or float("nan") for a in alphas] for k in ks]
        im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        for yi, row in enumerate(grid):
            for xi, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(xi, yi, f"{v:.3g}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(ks)), [f"{k:g}" for k in ks])
        ax.set_xlabel("alpha")
        ax.set_ylabel("topk_ratio")
        ax.set_title(f"{label}: {world} {setting} {method} sau", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True
