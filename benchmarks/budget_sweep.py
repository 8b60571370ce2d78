"""The fixed-budget protocol: each configuration's Pareto front of (forget quality, utility) and its hypervolume.

Matched forgetting (``headline.py``) compares methods at one point. This protocol compares whole trade-off
curves: for each configuration (``headline_core.VARIANTS``: a mode and its options), every learning rate of a
grid runs a fixed number of steps with gradient clipping (``--max-grad-norm``, 1.0 as open-unlearning's
trainers), the model is evaluated every ``--every`` steps, and all those points (forget-quality score on
[0, 1], ``headline_core.fq_score``; model utility) form one front per (setting, base method, seed). Its
hypervolume above (0, 0) is the configuration's score for that seed. Configurations are compared by paired
differences over seeds with a 95% bootstrap interval (``headline_report.paired_interval``): a ``win`` only
when the interval excludes 0.

Runs are appended to ``budget_runs.jsonl`` under ``--out`` and skipped when already there, so a stopped sweep
resumes. Usage::

    python benchmarks/budget_sweep.py --variants dense,naive,topk,sau,contrastive --seeds 5
    python benchmarks/budget_sweep.py --report-only --out docs/results/budget
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import headline_core as core  # noqa: E402
from headline_report import hypervolumes, markdown_table, paired_interval, verdict  # noqa: E402

BASELINES = ("dense", "naive")


def report(records: list[dict[str, Any]]) -> str:
    """Markdown: hypervolume per configuration (mean ± std over seeds) and paired differences against each
    baseline with their intervals and verdicts."""
    hv = hypervolumes(records)
    groups: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for (setting, method, variant, seed), value in hv.items():
        groups[(setting, method, variant)][seed] = value
    rows = []
    for (setting, method, variant), by_seed in sorted(groups.items()):
        values = list(by_seed.values())
        rows.append({"setting": setting, "method": method, "variant": variant, "seeds": str(len(values)),
                     "hypervolume": f"{statistics.fmean(values):.4f}"
                     + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")})
    parts = [markdown_table(rows, ("setting", "method", "variant", "seeds", "hypervolume")), ""]
    paired = []
    for (setting, method, variant), by_seed in sorted(groups.items()):
        for base in BASELINES:
            ref = groups.get((setting, method, base))
            if variant == base or ref is None:
                continue
            deltas = [by_seed[s] - ref[s] for s in sorted(set(by_seed) & set(ref))]
            if not deltas:
                continue
            interval = paired_interval(deltas)
            mean_ref = statistics.fmean(ref[s] for s in by_seed if s in ref)
            paired.append({
                "setting": setting, "method": method, "pair": f"{variant} − {base}", "seeds": str(len(deltas)),
                "Δ hypervolume": f"{statistics.fmean(deltas):+.4f}",
                "relative": f"{statistics.fmean(deltas) / mean_ref:+.1%}" if mean_ref else "–",
                "95% CI": "–" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]",
                "verdict": verdict(interval),
            })
    parts += [markdown_table(paired, ("setting", "method", "pair", "seeds", "Δ hypervolume", "relative", "95% CI",
                                      "verdict")), ""]
    return "\n".join(parts)


def run_cell(world: core.World, folder: Path, setting: str, method: str, variant: str, seed: int, lr: float,
             steps: int, every: int, batch_size: int, device: str, clip: float | None,
             done: set[str]) -> dict[str, Any] | None:
    """One fixed-budget run (:func:`headline_core.run_budget`) as a record, or ``None`` when its key is in
    ``done`` (already recorded)."""
    key = f"{world.name}|{setting}|{method}|{variant}|{seed}|{lr:g}|{steps}|every{every}|{clip}"
    if key in done:
        return None
    t = time.perf_counter()
    pts = core.run_budget(world, folder, variant, method, seed, lr, steps, every, batch_size, device, clip)
    return {"key": key, "world": world.name, "setting": setting, "method": method, "variant": variant, "seed": seed,
            "learning_rate": lr, "steps": steps, "every": every, "max_grad_norm": clip, "points": pts,
            "seconds": time.perf_counter() - t, "world_weights_sha256": world.weights_sha256.get("model")}


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="toy", choices=["toy", "tofu"])
    p.add_argument("--size", default="tiny", choices=list(core.MODEL_SIZES))
    p.add_argument("--settings", default="sparsegpt 2:4", help="comma list of '<pruner> <structure>'")
    p.add_argument("--method", default="grad_diff", choices=list(core.METHODS))
    p.add_argument("--variants", default="dense,naive,topk,sau", help=f"comma list of {','.join(core.VARIANTS)}")
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="comma list of learning rates (the grid)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=10, help="steps between evaluations")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--retain-eval", type=int, default=40)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/results/budget")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    runs_path = out / "budget_runs.jsonl"
    records = _read(runs_path)
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        done = {r["key"] for r in records}
        world = core.load_world(args.world, args.retain_eval, args.device, size=args.size)
        clip = args.max_grad_norm or None
        for setting in args.settings.split(","):
            pruner, structure = setting.split(" ")
            folder = core.pruned_dir(world, pruner, structure, core.default_work_dir())
            for seed in range(args.seeds):
                for variant in args.variants.split(","):
                    for lr in (float(v) for v in args.lrs.split(",")):
                        rec = run_cell(world, folder, setting, args.method, variant, seed, lr, args.steps,
                                       args.every, args.batch_size, args.device, clip, done)
                        if rec is None:
                            continue
                        core.append_record(runs_path, rec)
                        records.append(rec)
    text = report(records)
    print(text)
    if records:
        tmp = out / f".budget.md.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / "budget.md")


if __name__ == "__main__":
    main()
