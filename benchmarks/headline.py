"""The headline benchmark: SAU against standard unlearning on pruned models, at matched forgetting and on a
fixed budget.

One command reproduces each table in ``docs/results.md``::

    python benchmarks/headline.py                 # the default: the capacity world (CPU; time in docs/results.md)
    python benchmarks/headline.py --quick         # a small subset (under 3 minutes), for smoke tests
    python benchmarks/headline.py --model-size tiny   # the earlier tiny tofu/toy worlds (FULL_PROFILE)
    python benchmarks/headline.py --full-matrix --device cuda   # every cell, on a GPU
    python benchmarks/headline.py --worlds tofu-smollm2          # the pretrained world (PRETRAINED_PROFILE)
    python benchmarks/headline.py --worlds tofu-smollm2 --quick  # its smoke run (8 records per set)
    python benchmarks/headline.py --worlds tofu-smollm2 --device cuda --jobs 8 --threads 1   # the same on a GPU
    python benchmarks/headline.py --worlds tofu-llama-3.2-1b --device cuda --jobs 4 --threads 1   # Llama-3.2-1B

The default on the CPU (:data:`CAPACITY_PROFILE`) is the ``capacity`` toy world: 0.21M parameters for 240 people
and 48 people of prior knowledge (learnt first, rehearsed, in no split that unlearning touches; model utility
includes them), a world where every pruner costs 0.10 to 0.27 of utility. It runs, with 5 seeds:

- the memorizer pruned once per (pruner, structure) with llmcompressor's ``oneshot`` (``run_oneshot``):
  {magnitude, Wanda, SparseGPT} x {50% unstructured, 2:4}, calibrated on retain records; folders cached;
- **matched forgetting**: grad_diff on every pruned model with each configuration of :data:`MATCHED`
  (``dense``, ``naive``, ``naive-reprune``, ``topk``, ``sau`` at alpha 0.1, 1 and 4, ``contrastive``; see
  ``headline_core.VARIANTS``), each from a fresh load of the pruned folder through
  ``SparsityAwareUnlearningModifier`` in ``oneshot`` (the recipe stage ``sau-compress run`` applies). Every
  ``--check-every`` steps the forget questions are answered greedily; the run stops as soon as forget ROUGE-L
  recall <= the memorizer's ROUGE-L recall on holdout people it never saw (the target), or at ``--max-steps``
  (then the cell is reported as not reached). Utility, forget quality and the aggregate are measured there;
- the ablations on SparseGPT 2:4: topk_ratio 0.1 and 0.5, saliency refreshed every 10 steps, contrastive SAU;
- the unpruned memorizer (mode dense) and *unlearn then sparsify* (each unpruned unlearned model pruned);
- **fixed budget**: each configuration of the profile's ``budget`` at every learning rate of its grid for a
  fixed number of steps with clipping at 1.0, evaluated every few steps; all points of one (setting,
  configuration, seed) form its Pareto front of (forget-quality score, utility), compared by hypervolume
  (``budget_sweep.py``); written to ``budget_runs.jsonl``.

The tiny worlds (``--model-size tiny``; ``tofu``: a tiny Llama memorizer of a TOFU subset, ``toy``: the
synthetic world) run :data:`FULL_PROFILE` instead: base methods {grad_diff, npo, simnpo, grad_ascent} x modes
{dense, masked, topk, sau} on a slice of the settings, and a topk_ratio x alpha sweep. Seeds are the data order;
runs are appended to ``headline_runs.jsonl`` as they finish and a rerun skips runs already there (``--fresh``
starts over).

Per run: forget quality (KS p-value of forget truth ratios against the retain model), model utility
(harmonic mean of retain, and prior-knowledge, probability, ROUGE-L and truth ratio), forget ROUGE-L recall,
the aggregate (:func:`headline_core.aggregate_score`), steps to target, training wall time (forgetting checks
excluded), peak memory (CUDA: max allocated; CPU: model bytes + measured rise of resident memory).

Outputs in ``--out`` (default ``docs/results/headline`` for the tiny worlds, ``docs/results/headline_<size>``
otherwise): ``headline_runs.jsonl``, ``budget_runs.jsonl``, ``headline_meta.json``, ``headline_table.md``,
``plots/headline_<world>.png``, ``plots/headline_sweep_<world>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("TQDM_DISABLE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import headline_core as core  # noqa: E402
import headline_report as report  # noqa: E402

#: learning rate per base method (AdamW), the same for every mode of that method
DEFAULT_LR = {"grad_diff": 1e-3, "npo": 2e-3, "simnpo": 5e-3, "grad_ascent": 1e-3}
#: the same on a pretrained world, as users run pretrained models: NPO at the modifier's default (5e-5, measured
#: on SmolLM2 in docs/pretrained.md), the others at open-unlearning's TOFU rate (1e-5)
PRETRAINED_LR = {"grad_diff": 1e-5, "npo": core.MODIFIER_DEFAULTS["learning_rate"], "simnpo": 1e-5,
                 "grad_ascent": 1e-5}
#: what ``--modes`` accepts: the benchmark's modes and the named configurations of ``headline_core.VARIANTS``
CONFIGURATIONS = (*core.MODES, *(v for v in core.VARIANTS if v not in core.MODES))
SWEEP_TOPK = (0.1, 0.3, 0.5)
SWEEP_ALPHA = (0.05, 0.1, 0.2)


def _settings(pruners: list[str], structures: list[str]) -> list[tuple[str, str]]:
    return [(p, s) for p in pruners for s in structures]


def _parse_lr(items: list[str] | None, pretrained: bool = False) -> dict[str, float]:
    lrs = dict(PRETRAINED_LR if pretrained else DEFAULT_LR)
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--lr expects METHOD=VALUE, got '{item}'")
        method, value = item.split("=", 1)
        if method not in lrs:
            raise SystemExit(f"--lr: unknown method '{method}'; choose from {list(lrs)}")
        lrs[method] = float(value)
    return lrs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="small subset: toy world, grad_diff on SparseGPT 2:4 and magnitude 50%%, 1 seed")
    p.add_argument("--worlds", default=None,
                   help="comma list of worlds: toy, tofu, or the pretrained world tofu-smollm2 (alone; its own "
                        "profile, learning rates and output folder) (default: toy; tiny size: tofu,toy)")
    p.add_argument("--pruners", default=None, help="comma list of magnitude,wanda,sparsegpt")
    p.add_argument("--structures", default=None, help="comma list of 50%%,2:4")
    p.add_argument("--methods", default=None, help="comma list of grad_diff,npo,simnpo,grad_ascent")
    p.add_argument("--modes", default=None,
                   help="comma list of modes or configurations: dense,masked,topk,sau,naive,naive-reprune and "
                        "headline_core.VARIANTS (sau-alpha4, contrastive, ...) (default: per world)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 5 at size capacity, else 3; "
                                                           "quick 1)")
    p.add_argument("--lr", action="append", help="METHOD=LR (repeatable); defaults: %s" % DEFAULT_LR)
    p.add_argument("--max-steps", type=int, default=None,
                   help="step cap per run (default: capacity world 150, toy 120, tofu 80, pretrained world: its "
                        "profile's)")
    p.add_argument("--check-every", type=int, default=None,
                   help="steps between forgetting checks (default 3; pretrained world: its profile's)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8; pretrained world: its profile's")
    p.add_argument("--retain-eval", type=int, default=None,
                   help="retain records (and as many prior-knowledge records) for model utility (default 40; "
                        "pretrained world: its profile's)")
    p.add_argument("--no-sweep", action="store_true", help="skip the topk_ratio x alpha sweep")
    p.add_argument("--no-uts", action="store_true", help="skip unlearn-then-sparsify")
    p.add_argument("--no-ablation", action="store_true", help="skip the profile's ablations (capacity world)")
    p.add_argument("--no-budget", action="store_true",
                   help="skip the profile's fixed-budget protocol (Pareto hypervolume; capacity world)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--model-size", choices=list(core.MODEL_SIZES), default=None,
                   help="world model size (default: capacity on CPU, large on CUDA; see headline_core.MODEL_SIZES)")
    p.add_argument("--report-only", action="store_true",
                   help="render the table and plots from the runs and meta already in --out; run nothing")
    p.add_argument("--out", default=None, help="output folder (default: docs/results/headline; quick: "
                                               "<cache>/headline/quick)")
    p.add_argument("--work", default=None, help="cache of pruned folders (default: <cache>/headline)")
    p.add_argument("--tofu-dir", default=None,
                   help="TOFU data folder (default: $SAU_COMPRESS_TOFU_DIR, else the bundled data/tofu)")
    p.add_argument("--target-rule", choices=core.TARGET_RULES, default=None,
                   help="forgetting target: memorizer-holdout (default) or retain-band (default on a pretrained "
                        "world); see headline_worlds.TARGET_RULES")
    p.add_argument("--fresh", action="store_true", help="ignore runs already recorded in the output")
    p.add_argument("--json", action="store_true", help="print the comparison rows as JSON at the end")
    p.add_argument("--jobs", type=int, default=None,
                   help="(world, seed, base method) parts run in this many worker processes, 1 torch thread each "
                        "(default: 2 on CPU, 1 on CUDA)")
    p.add_argument("--full-matrix", action="store_true",
                   help="every pruner x structure x method x default mode in every world (GPU-sized); "
                        "naive and naive-reprune only through --modes")
    p.add_argument("--first-seed", type=int, default=0,
                   help="start at this seed (to share seeds between processes appending to the same output)")
    p.add_argument("--sweep-seeds", type=int, default=1, help="seeds of the topk_ratio x alpha sweep")
    # set only on a worker's copy of the arguments (_part_args): run one base method, write no world meta
    p.set_defaults(worker=False, part_method=None, part_setting=None)
    return p


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


#: What each world runs when no flag narrows it, sized so that the full command fits about 45 minutes on 2
#: CPU cores shared with other work (measured: ~3 toy runs and ~1.4 TOFU runs per minute with the two worlds
#: in parallel). ``cells``: base method -> the pruning settings it runs on.
#: - toy: grad_diff on every pruner x structure; npo, simnpo and grad_ascent on SparseGPT 2:4; modes
#:   dense/topk/sau. ``masked`` follows the same trajectory as ``dense`` (elementwise AdamW, no clipping; see
#:   docs/design.md), which the TOFU world shows run by run.
#: - tofu (3-4x longer sequences): grad_diff on every pruner at 2:4, all four modes.
#: ``--full-matrix`` runs every pruner x structure x method x default mode in both worlds (a GPU-sized job); any of
#: --pruners/--structures/--methods also switches to the rectangular product of the given lists.
_ALL_SETTINGS = [(p, s) for p in core.PRUNERS for s in core.STRUCTURES]
FULL_PROFILE: dict[str, dict[str, Any]] = {
    "toy": {"modes": ["dense", "topk", "sau"],
            "cells": {"grad_diff": _ALL_SETTINGS, "npo": [("sparsegpt", "2:4")], "simnpo": [("sparsegpt", "2:4")],
                      "grad_ascent": [("sparsegpt", "2:4")]}},
    "tofu": {"modes": list(core.DEFAULT_MODES),
             "cells": {"grad_diff": [(p, "2:4") for p in core.PRUNERS]}},
}
QUICK_PROFILE: dict[str, dict[str, Any]] = {
    "toy": {"modes": list(core.DEFAULT_MODES),
            "cells": {"grad_diff": [("sparsegpt", "2:4"), ("magnitude", "50%")]}},
    "tofu": {"modes": list(core.DEFAULT_MODES), "cells": {"grad_diff": [("sparsegpt", "2:4")]}},
}
#: The default on the CPU: the ``capacity`` toy world (``headline_core.MODEL_SIZES``: 0.21M parameters for 240
#: people and 48 people of prior knowledge), where every 2:4 pruner costs 0.16-0.22 of utility, so a method that
#: spares what pruning left has something to show. grad_diff on every pruner x structure, each configuration
#: of :data:`MATCHED` at matched forgetting; the ablations (topk_ratio 0.1/0.5, saliency refresh, contrastive
#: SAU) on SparseGPT 2:4; and the fixed-budget protocol (``budget``: each configuration at every learning rate of
#: a grid for a fixed number of steps, clipped at 1.0, evaluated every ``every`` steps, its Pareto front's
#: hypervolume; see budget_sweep.py). The budget leaves ``sau-alpha4`` out (measured at matched forgetting;
#: on the budget it lost to ``dense`` and to ``sau-alpha1`` in every setting when it last ran, docs/results.md)
#: and evaluates at steps 15 and 30, so that the whole command fits 60 minutes on 2 cores.
MATCHED = ["dense", "naive", "naive-reprune", "topk", "sau", "sau-alpha1", "sau-alpha4", "contrastive"]
CAPACITY_PROFILE: dict[str, dict[str, Any]] = {
    "toy": {"modes": MATCHED, "cells": {"grad_diff": _ALL_SETTINGS},
            "ablation": {"setting": ("sparsegpt", "2:4"),
                         "variants": ["topk-k0.1", "topk-k0.5", "sau-refresh10", "sau-contrastive"]},
            "budget": {"variants": ["dense", "naive", "topk", "sau", "sau-alpha1", "contrastive"],
                       "lrs": [1e-3, 3e-3], "steps": 30, "every": 15}},
}
CAPACITY_QUICK: dict[str, dict[str, Any]] = {
    "toy": {"modes": ["dense", "naive", "topk", "sau"],
            "cells": {"grad_diff": [("sparsegpt", "2:4"), ("magnitude", "2:4")]},
            "ablation": None,
            "budget": {"variants": ["dense", "sau"], "lrs": [1e-3], "steps": 20, "every": 10}},
}
#: the sweep's setting per world (SAU mode); the full run sweeps the toy world only (``SWEEP_WORLDS``)
SWEEP_SETTING = {"toy": ("sparsegpt 2:4", "grad_diff"), "tofu": ("sparsegpt 2:4", "grad_diff")}
SWEEP_WORLDS = ("toy",)


#: The pretrained world (``tofu-smollm2``: SmolLM2-135M-Instruct fine-tuned on TOFU authors,
#: ``headline_worlds.PRETRAINED_WORLDS``) answers the method question where users are: NPO at the modifier's
#: settings (:data:`PRETRAINED_LR`, ``headline_worlds.PRETRAINED_STAGE``: retain weight 15, clipping 1.0, batch
#: 4) on SparseGPT 2:4 and 50%, every configuration of the issue's list at matched forgetting, 3 seeds. No
#: unpruned run and no unlearn-then-sparsify (``naive-reprune`` is that order on the pruned model), no ablations
#: and no fixed budget by default (``budget`` runs them when set; each point is a full evaluation, 6 to 12
#: minutes on one CPU thread here). One 135M step costs seconds on the CPU, a forgetting check (40 greedy
#: answers of up to 96 tokens) about 40 s: checked every 5 steps, at most 40 steps. The quick profile is a smoke
#: run of the same machinery: SparseGPT 2:4 alone, ``masked`` and ``sau``, one seed, 4 steps checked every 2,
#: evaluated on 8 evenly spaced records of each set (its target and reference too; training uses every record),
#: so its figures are not the full profile's.
PRETRAINED_MATCHED = ["masked", "dense", "naive", "naive-reprune", "topk", "sau", "sau-alpha1", "contrastive"]
PRETRAINED_PROFILE: dict[str, dict[str, Any]] = {
    name: {"modes": PRETRAINED_MATCHED, "cells": {"npo": [("sparsegpt", "2:4"), ("sparsegpt", "50%")]},
           "ablation": None, "budget": None, "unpruned": False,
           "batch_size": core.MODIFIER_DEFAULTS["batch_size"], "check_every": 5, "max_steps": 40,
           "seeds": 3, "retain_eval": core.PRETRAINED_RETAIN_EVAL}
    for name in core.PRETRAINED_WORLDS  # one profile: the 1B world runs what the 135M world runs
}
PRETRAINED_QUICK: dict[str, dict[str, Any]] = {
    name: {**profile, "modes": ["masked", "sau"], "cells": {"npo": [("sparsegpt", "2:4")]}, "max_steps": 4,
           "check_every": 2, "seeds": 1, "eval_records": 8}
    for name, profile in PRETRAINED_PROFILE.items()
}


def _profile(args: argparse.Namespace, world: str) -> dict[str, Any]:
    """The profile of ``world`` at the arguments' model size (a pretrained world: :data:`PRETRAINED_PROFILE`;
    ``capacity``: :data:`CAPACITY_PROFILE`, else :data:`FULL_PROFILE`; their quick versions with ``--quick``)."""
    if world in core.PRETRAINED_WORLDS:
        return (PRETRAINED_QUICK if args.quick else PRETRAINED_PROFILE)[world]
    if args.model_size == "capacity":
        profiles = CAPACITY_QUICK if args.quick else CAPACITY_PROFILE
        if world not in profiles:
            raise SystemExit(f"--model-size capacity: no {world} world at that size; choose from {list(profiles)}")
        return profiles[world]
    return (QUICK_PROFILE if args.quick else FULL_PROFILE)[world]


def _plan(args: argparse.Namespace, world: str) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """({method: settings}, modes) for ``world`` from the profile and the flags."""
    profile = _profile(args, world)
    pruners, structures, methods = _csv(args.pruners), _csv(args.structures), _csv(args.methods)
    if args.full_matrix or pruners or structures or methods:
        settings = [(p, s) for p in (pruners or core.PRUNERS) for s in (structures or core.STRUCTURES)]
        cells = {m: settings for m in (methods or (core.METHODS if args.full_matrix else list(profile["cells"])))}
    else:
        cells = {m: list(v) for m, v in profile["cells"].items()}
    modes = _csv(args.modes) or (list(core.DEFAULT_MODES) if args.full_matrix else list(profile["modes"]))
    for name, values, allowed in (("--pruners", [p for v in cells.values() for p, _ in v], core.PRUNERS),
                                  ("--structures", [s for v in cells.values() for _, s in v], core.STRUCTURES),
                                  ("--methods", list(cells), core.METHODS), ("--modes", modes, CONFIGURATIONS)):
        bad = sorted({v for v in values if v not in allowed})
        if bad:
            raise SystemExit(f"{name}: unknown {bad}; choose from {list(allowed)}")
    return cells, modes


def _extras(args: argparse.Namespace, world: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(ablation, budget) of ``world``'s profile, each ``None`` when the profile has none or a flag turns it
    off (``--no-ablation``, ``--no-budget``; narrowing flags such as ``--modes`` keep them)."""
    profile = _profile(args, world)
    ablation = None if args.no_ablation else profile.get("ablation")
    budget = None if args.no_budget else profile.get("budget")
    return ablation, budget


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by an interrupted run: that run is redone
            continue
    return records


def _setup_process(threads: int) -> None:
    """torch's CPU threads, and one log sink on stderr: INFO and up, the libraries' own INFO lines left out."""
    torch.set_num_threads(threads)
    from loguru import logger

    logger.remove()
    noisy = ("sau_compress", "llmcompressor", "compressed_tensors")
    logger.add(sys.stderr, level="INFO",
               filter=lambda r: r["level"].no >= 30 or not (r["name"] or "").startswith(noisy))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    quick = args.quick
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.model_size or ("capacity" if device == "cpu" else "large")
    args.model_size = size
    worlds = _csv(args.worlds) or (["toy"] if quick or size == "capacity" else ["tofu", "toy"])
    known = ["tofu", "toy", *core.PRETRAINED_WORLDS]
    bad = [w for w in worlds if w not in known]
    if bad:
        raise SystemExit(f"--worlds: unknown {bad}; choose from {known}")
    pretrained = any(w in core.PRETRAINED_WORLDS for w in worlds)
    if pretrained and len(worlds) > 1:
        raise SystemExit(f"--worlds: a pretrained world runs alone (its own profile and learning rates), got {worlds}")
    profile = _profile(args, worlds[0]) if pretrained else {}
    _setup_process(args.threads)
    args.batch_size = args.batch_size or profile.get("batch_size", 8)
    args.check_every = args.check_every or profile.get("check_every", 3)
    args.retain_eval = args.retain_eval or profile.get("retain_eval", 40)
    bad = [m for m in (_csv(args.modes) or []) if m not in CONFIGURATIONS]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; choose from {list(CONFIGURATIONS)}")
    default_seeds = profile.get("seeds") or (1 if quick else 5 if size == "capacity" else 3)
    seeds = list(range(args.first_seed, args.seeds if args.seeds is not None else default_seeds))
    lrs = _parse_lr(args.lr, pretrained)
    labels = [core.world_label(w, size) for w in worlds]
    results = Path("docs") / "results"
    pretrained_out = "headline_pretrained" if worlds[0] == "tofu-smollm2" else f"headline_{worlds[0]}"
    default_out = (results / pretrained_out if pretrained else results / "headline" if size == "tiny"
                   else results / f"headline_{size}")
    out = Path(args.out) if args.out else (core.default_work_dir() / "quick" if quick else default_out)
    work = Path(args.work) if args.work else core.default_work_dir()
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "headline_runs.jsonl"
    if args.fresh:
        runs_path.unlink(missing_ok=True)
        (out / "budget_runs.jsonl").unlink(missing_ok=True)
        for old in out.glob("headline_meta_*.json"):
            old.unlink()
        argv = [a for a in argv if a != "--fresh"]
    jobs = args.jobs if args.jobs is not None else (2 if device == "cpu" else 1)
    started = time.perf_counter()
    tasks = [task for w in worlds for s in seeds for task in _parts(args, w, s)]
    if not args.report_only:
        if jobs > 1 and len(tasks) > 1:
            _run_parallel(args, worlds, tasks, jobs, lrs, device, out, work, quick)
        else:
            for world in worlds:
                _run_world(args, world, seeds, lrs, device, out, work, quick)
    command = "python benchmarks/headline.py " + " ".join(shlex.quote(a) for a in argv)
    threads, wall = args.threads, time.perf_counter() - started
    batch_size, check_every = args.batch_size, args.check_every
    if args.report_only:
        # the last report's command and settings; without one (a run cut short), this invocation's flags
        previous = out / "headline_meta.json"
        if previous.is_file():
            old = json.loads(previous.read_text())
            command, seeds, device, threads, jobs = (old[k] for k in ("command", "seeds", "device", "threads", "jobs"))
            lrs, wall, labels = old["learning_rates"], old["wall_seconds"], [w["world"] for w in old["worlds"]]
            batch_size, check_every = old["batch_size"], old["check_every"]
            # the worlds' names (older reports lack them: a label is then <name>-<size>)
            worlds = old.get("world_names") or [label.split("-")[0] for label in labels]
        else:
            command = command.replace(" --report-only", "") + "  (cut short; report rendered afterwards)"
            wall = None
    # the command's own runs: records made with another learning rate (an earlier grid) stay in the file
    records = [r for r in _read_records(runs_path) if r.get("learning_rate") == lrs.get(r["method"])]
    metas = [json.loads((out / f"headline_meta_{w}.json").read_text()) for w in labels
             if (out / f"headline_meta_{w}.json").is_file()]
    meta = {
        "command": command, "seeds": seeds, "device": device, "threads": threads, "jobs": jobs,
        "world_names": worlds,
        "learning_rates": lrs, "batch_size": batch_size, "check_every": check_every,
        "worlds": [m["world"] for m in metas], "starts": [s for m in metas for s in m["starts"]],
        "plans": {m["world"]["world"]: m["plan"] for m in metas},
        "wall_seconds": wall,
    }
    (out / "headline_meta.json").write_text(json.dumps(meta, indent=2))
    sweeps = [(label, *SWEEP_SETTING[w]) for w, label in zip(worlds, labels, strict=True) if _sweeps(args, w)]
    budget_records = _read_records(out / "budget_runs.jsonl")
    text = report.render_markdown(records, meta, sweeps,
                                  by="setting" if size == "capacity" or pretrained else "pruner",
                                  budget_records=budget_records)
    if budget_records:
        from budget_sweep import report as budget_report

        text += ("\n## Fixed budget: Pareto hypervolume (clipping 1.0, every learning rate of the grid; paired by "
                 "seed)\n\n" + budget_report(budget_records))
    (out / "headline_table.md").write_text(text)
    for wname in labels:
        report.plot_tradeoffs(records, wname, out / "plots" / f"headline_{wname}.png")
    for sw in sweeps:
        report.plot_sweep(records, sw, out / "plots" / f"headline_sweep_{sw[0]}.png")
    sys.stdout.write(text)
    if args.json:
        sys.stdout.write(json.dumps(report.comparison_rows(records)) + "\n")
    return 0


def check_targets(records: Any, world: core.World, runs_path: Path) -> None:
    """Refuse to resume runs of ``world`` recorded with another forgetting target (another target rule, or a
    world built on another machine): they would be skipped as done and paired with runs that stopped elsewhere.

    :raises SystemExit: some record of the world has another ``target``
    """
    other = sorted({r["target"] for r in records if r.get("world") == world.name and r.get("target") is not None
                    and r["target"] != world.target})
    if other:
        raise SystemExit(f"{runs_path}: runs of {world.name} recorded with forgetting target "
                         f"{', '.join(f'{t:.4f}' for t in other)}, this world's is {world.target:.4f} "
                         f"({world.target_rule}); pass --fresh or another --out")


def _part_args(args: argparse.Namespace, world: str, seed: int, method: str, setting: str, threads: int,
               out: Path) -> argparse.Namespace:
    """A copy of ``args`` for one (world, seed, base method, setting) part run by a worker process."""
    part = argparse.Namespace(**vars(args))
    part.worlds, part.first_seed, part.seeds, part.part_method = world, seed, seed + 1, method
    part.part_setting = setting
    part.threads, part.jobs, part.worker, part.out = threads, 1, True, str(out)
    return part


def _run_part(part: argparse.Namespace, lrs: dict[str, float], device: str, work: Path, quick: bool) -> None:
    """A worker process's part (:func:`_part_args`): the process's threads and logging as in :func:`main`,
    then the part's runs (:func:`_run_world`)."""
    _setup_process(part.threads)
    _run_world(part, part.worlds, list(range(part.first_seed, part.seeds)), lrs, device, Path(part.out), work,
               quick)


def _run_parallel(args: argparse.Namespace, worlds: list[str], tasks: list[tuple[str, int, str, str]], jobs: int,
                  lrs: dict[str, float], device: str, out: Path, work: Path, quick: bool) -> None:
    """Prepare every world here (prune, evaluate the starting points), then run each (world, seed, base
    method, setting) part in a worker process (:func:`_run_part`), at most ``jobs`` at a time, base method by
    base method.

    Tiny models do not scale with threads, one-thread processes do; workers append to the same JSONL file
    (one ``write`` per line, in append mode). Each worker is a spawned process that runs part after part and
    loads each world once (:func:`_load_world`); every run loads its model afresh from its folder.

    :raises SystemExit: some parts failed (listed in part order; each failure's traceback is logged). A
        worker killed outright (out of memory, a signal) breaks the pool: the parts not finished by then are
        listed too; a rerun skips the runs already recorded
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from loguru import logger

    for world in worlds:
        _run_world(args, world, sorted({t[1] for t in tasks}), lrs, device, out, work, quick, prepare_only=True)
    threads = max(1, args.threads // jobs) if device == "cpu" else args.threads
    # whole base methods first (a run stopped early then lacks whole methods, not scattered cells); within a
    # method seed by seed, the longer TOFU part first
    # SimNPO last: on pruned models it mostly runs to the step cap (see docs/results.md)
    order = ("grad_diff", "npo", "grad_ascent", "simnpo")
    parts = sorted(tasks, key=lambda t: (order.index(t[2]), t[1], t[0] != "tofu"))
    failed: list[tuple[str, int, str, str]] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_part, _part_args(args, *part, threads, out), lrs, device, work, quick)
                   for part in parts]
        for part, future in zip(parts, futures, strict=True):
            error = future.exception()
            if error is not None:
                failed.append(part)
                logger.opt(exception=error).error(f"part {part} failed")
    if failed:
        raise SystemExit(f"parts failed (world, seed, method, setting): {failed}")


def _run_world(args: argparse.Namespace, wname: str, seeds: list[int], lrs: dict[str, float], device: str,
               out: Path, work: Path, quick: bool, prepare_only: bool = False) -> None:
    """Every run of one world, appended to ``headline_runs.jsonl``; runs already there are skipped.

    The world's meta file (scale, starting points, plan) is written unless this is a worker's part;
    ``prepare_only`` stops after it (the pruned folders exist then)."""
    runs_path = out / "headline_runs.jsonl"
    done = {r["key"]: r for r in _read_records(runs_path)}
    all_cells, modes = _plan(args, wname)
    cells = {m: v for m, v in all_cells.items() if args.part_method in (None, m)}
    settings = sorted({st for v in (cells if args.worker else all_cells).values() for st in v})
    profile = _profile(args, wname)
    max_steps = args.max_steps or profile.get("max_steps") or (
        150 if args.model_size == "capacity" else 120 if wname == "toy" else 80)
    unpruned = profile.get("unpruned", True)

    def record(rec: dict[str, Any]) -> dict[str, Any]:
        done[rec["key"]] = rec
        core.append_record(runs_path, rec)
        core_log(rec)
        return rec

    w = _load_world(wname, args.retain_eval, device, args.tofu_dir, args.model_size, work,
                    profile.get("eval_records"), args.target_rule)
    label = w.name
    check_targets(done.values(), w, runs_path)
    meta_path = out / f"headline_meta_{label}.json"
    known = {s["setting"]: s for s in json.loads(meta_path.read_text())["starts"]} if meta_path.is_file() else {}
    starts = [known.get("unpruned") or {"world": label, "setting": "unpruned",
                                        **core.evaluate_start(w.model_dir, w, device, work)}]
    for pruner, structure in settings:
        folder = core.pruned_dir(w, pruner, structure, work)
        name = f"{pruner} {structure}"
        starts.append(known.get(name) or {"world": label, "setting": name,
                                          **core.evaluate_start(folder, w, device, work)})
    sweep_grid: list[tuple[float, float]] = []
    if _sweeps(args, wname):
        sweep_grid = [(0.1, 0.1), (0.5, 0.1)] if quick else [(k, a) for k in SWEEP_TOPK for a in SWEEP_ALPHA]
    ablation, budget = _extras(args, wname)
    if not args.worker:
        plan = {"cells": {m: [f"{p} {s}" for p, s in v] for m, v in all_cells.items()}, "modes": modes,
                "seeds": seeds, "max_steps": max_steps,
                "sweep": None if not sweep_grid else {"setting": SWEEP_SETTING[wname], "grid": sweep_grid},
                "ablation": None if not ablation else {"setting": " ".join(ablation["setting"]),
                                                       "variants": ablation["variants"]},
                "budget": budget}
        tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"world": w.describe(), "starts": starts, "plan": plan}, indent=2))
        os.replace(tmp, meta_path)  # atomic: parallel parts read it
    if prepare_only:
        return

    def run(spec: core.RunSpec, folder: Path, keep: bool = False) -> tuple[dict[str, Any], Any]:
        return core.run_unlearning(spec, w, folder, max_steps, args.check_every, args.batch_size, device, keep)

    budget_path = out / "budget_runs.jsonl"
    budget_done = {r["key"] for r in _read_records(budget_path)}
    for seed in seeds:
        for method, msettings in cells.items():
            if unpruned and args.part_setting in (None, "unpruned"):
                spec = core.RunSpec(label, "matrix", "unpruned", method, "dense", seed, lrs[method])
                uts_keys = [] if args.no_uts else [f"uts|{spec.key()}|{p} {s}" for p, s in msettings]
                need_uts = any(k not in done for k in uts_keys)
                if spec.key() not in done or need_uts:
                    rec, model = run(spec, w.model_dir, keep=need_uts)
                    rec = done[spec.key()] if spec.key() in done else record(rec)
                    for (p, s), key in zip(msettings, uts_keys, strict=False):
                        if key not in done:
                            record(core.unlearn_then_sparsify(model, w, rec, p, s))
                    del model
            for pruner, structure in msettings:
                setting = f"{pruner} {structure}"
                if args.part_setting not in (None, setting):
                    continue
                folder = core.pruned_dir(w, pruner, structure, work)
                extra = ablation["variants"] if ablation and (pruner, structure) == tuple(ablation["setting"]) else []
                for mode in [*modes, *(v for v in extra if v not in modes)]:
                    spec = core.make_spec(label, "matrix", setting, method, mode, seed, lrs[method])
                    if spec.key() not in done:
                        record(run(spec, folder)[0])
                if budget:
                    from budget_sweep import run_cell

                    for variant in budget["variants"]:
                        for lr in budget["lrs"]:
                            rec = run_cell(w, folder, setting, method, variant, seed, lr, budget["steps"],
                                           budget["every"], args.batch_size, device, 1.0, budget_done)
                            if rec is not None:
                                core.append_record(budget_path, rec)
                                budget_done.add(rec["key"])
        if (sweep_grid and seed < args.sweep_seeds and args.part_method in (None, SWEEP_SETTING[wname][1])
                and args.part_setting in (None, SWEEP_SETTING[wname][0])):
            setting, method = SWEEP_SETTING[wname]
            pruner, structure = setting.split(" ")
            folder = core.pruned_dir(w, pruner, structure, work)
            for k, a in sweep_grid:
                spec = core.RunSpec(label, "sweep", setting, method, "sau", seed, lrs[method], k, a)
                twin = core.RunSpec(label, "matrix", setting, method, "sau", seed, lrs[method], k, a)
                if spec.key() not in done and twin.key() not in done:
                    record(run(spec, folder)[0])


#: worlds loaded in this process: a worker runs many parts of the same world and loads it once
_WORLDS: dict[tuple[Any, ...], core.World] = {}


def _load_world(name: str, retain_eval: int, device: str, tofu_dir: str | None, size: str,
                work: Path | None = None, eval_records: int | None = None,
                target_rule: str | None = None) -> core.World:
    """:func:`headline_core.load_world`, once per process and arguments (its tokenized sets and the start of
    each pruned folder are then measured once too; its target and reference cached in ``work``)."""
    key = (name, retain_eval, device, tofu_dir, size, eval_records, target_rule)
    if key not in _WORLDS:
        _WORLDS[key] = core.load_world(name, retain_eval, device, tofu_dir, size, work, eval_records, target_rule)
    return _WORLDS[key]


def _sweeps(args: argparse.Namespace, world: str) -> bool:
    """Whether ``world`` runs the topk_ratio x alpha sweep (not at size capacity: its ablations cover it)."""
    return (not args.no_sweep and args.model_size != "capacity" and world in SWEEP_SETTING
            and (args.quick or world in SWEEP_WORLDS))


def _parts(args: argparse.Namespace, world: str, seed: int) -> list[tuple[str, int, str, str]]:
    """The (world, seed, base method, setting) parts of one seed, run by worker processes: per base method the
    unpruned run (with unlearn-then-sparsify; not on a profile with ``unpruned: False``) and one part per pruning
    setting."""
    cells, _ = _plan(args, world)
    first = ["unpruned"] if _profile(args, world).get("unpruned", True) else []
    return [(world, seed, method, setting) for method, settings in cells.items()
            for setting in [*first, *(f"{p} {s}" for p, s in settings)]]


def core_log(rec: dict[str, Any]) -> None:
    from loguru import logger

    fq = rec.get("forget_quality")
    logger.info(
        f"[{rec['world']}] {rec['setting']} {rec['method']} {rec['mode']} seed {rec['seed']}: "
        f"steps {rec['steps']} reached {rec['reached']} forget ROUGE {rec['forget_rouge']:.3f} "
        f"FQ {fq if fq is None else f'{fq:.3g}'} MU {rec['model_utility']:.3f} agg {rec['aggregate']}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
