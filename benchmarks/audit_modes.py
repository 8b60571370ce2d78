"""Does SAU's forgetting survive quantization better than dense unlearning's? The audit at matched forgetting.

For each seed and mode (``dense``, ``topk``, ``sau``), the toy memorizer pruned by SparseGPT 2:4 (the
headline benchmark's cached pruned folder) is unlearned with GradDiff until its forget ROUGE-L recall reaches
the world's target (the memorizer's holdout level), exactly as ``benchmarks/headline.py`` does
(:func:`headline_core.run_unlearning`), and then audited (:func:`sau_compress.audit.audit`) against the retain
model. One JSON line per run goes to ``--out`` (resumable: runs already there are skipped), and
Model utility in the audit uses 16 retain records. ``--report``
prints the attack x mode table (mean and 95% t-interval over seeds of the attacked forget
ROUGE-L recall and its rise over the unattacked model, and how many seeds hold).

    python benchmarks/audit_modes.py --seeds 0,1,2    # attacks: quant-fp8,quant-int8,quant-int4,prune-more
    python benchmarks/audit_modes.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import headline_core as core  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "audit_modes.jsonl"


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run(args: argparse.Namespace) -> None:
    from sau_compress.audit import AuditSettings, Subject, audit
    from sau_compress.export import load_model

    torch.set_num_threads(args.threads)
    world = core.load_world("toy", 40, "cpu")
    folder = core.pruned_dir(world, "sparsegpt", "2:4", core.default_work_dir())
    sets = {"forget": world.forget, "retain": world.retain, "holdout": world.holdout}
    retain = Subject(load_model(world.retain_model_dir).eval(), world.tokenizer, "plain")
    done = {(r["mode"], r["seed"]) for r in _read(args.out)}
    for seed in args.seeds:
        for mode in args.modes:
            if (mode, seed) in done:
                continue
            spec = core.RunSpec("toy", "matrix", "sparsegpt 2:4", "grad_diff", mode, seed, args.lr)
            start = time.perf_counter()
            record, model = core.run_unlearning(spec, world, folder, args.max_steps, 3, 8, "cpu", keep_model=True)
            result = audit(Subject(model.eval(), world.tokenizer, "plain"), sets, retain, args.attacks,
                           AuditSettings(seed=seed, utility_records=16))
            row = {"mode": mode, "seed": seed, "steps": record["steps"], "reached": record["reached"],
                   "forget_rouge": record["forget_rouge"], "model_utility": record.get("model_utility"),
                   "seconds": time.perf_counter() - start,
                   "attacks": [{k: a.get(k) for k in ("name", "holds", "value", "level", "threshold")}
                               | {"before": a["before"]["forget_rouge"] if a["score"] == "forget_rouge"
                                  else a["before"].get("mia_auc")} for a in result["attacks"]]}
            core.append_record(args.out, row)
            print(json.dumps({k: row[k] for k in ("mode", "seed", "steps", "reached", "seconds")}), flush=True)


def _interval(values: list[float]) -> str:
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return f"{mean:.3f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return f"{mean:.3f} ± {half:.3f}"


def report(path: Path) -> str:
    rows = _read(path)
    modes = [m for m in ("dense", "topk", "sau") if any(r["mode"] == m for r in rows)]
    attacks = list(dict.fromkeys(a["name"] for r in rows for a in r["attacks"]))
    lines = ["| attack | " + " | ".join(f"{m}: after (rise), holds" for m in modes) + " |",
             "|---" * (len(modes) + 1) + "|"]
    for name in attacks:
        cells = []
        for m in modes:
            got = [a for r in rows if r["mode"] == m for a in r["attacks"] if a["name"] == name]
            after = [a["value"] for a in got]
            rise = [a["value"] - a["before"] for a in got]
            cells.append(f"{_interval(after)} ({_interval(rise)}), {sum(bool(a['holds']) for a in got)}/{len(got)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in rows})
    steps = {m: [r["steps"] for r in rows if r["mode"] == m] for m in modes}
    lines += ["", f"seeds {seeds}; steps to target per mode: {steps}; all reached: "
              f"{all(r['reached'] for r in rows)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--modes", default="dense,topk,sau")
    p.add_argument("--attacks", default="quant-fp8,quant-int8,quant-int4,prune-more")
    p.add_argument("--lr", type=float, default=core_lr())
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--report", action="store_true", help="print the table of the runs in --out")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.out))
        return 0
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.modes = args.modes.split(",")
    args.attacks = args.attacks.split(",")
    run(args)
    print(report(args.out))
    return 0


def core_lr() -> float:
    """GradDiff's learning rate in the headline benchmark."""
    return 1e-3


if __name__ == "__main__":
    raise SystemExit(main())
