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

On the pretrained world (``--world tofu-smollm2``) the unlearning is the headline's pretrained profile (NPO at
the modifier's settings, ``headline.PRETRAINED_PROFILE``) on ``--setting`` (default SparseGPT 50%), the
attacks add ``relearn`` (10 steps at the unlearning learning rate, batch 4), and each run's headline record
is also appended to ``--runs`` (the headline's JSONL of that world: the audited runs are its matched-forgetting
runs too, at the same keys). The retain model's attacked measurements are the same for every mode and seed,
so they are measured once and kept in ``--reference-cache``:

    python benchmarks/audit_modes.py --world tofu-smollm2 --modes masked,dense,sau,naive --seeds 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import headline_core as core  # noqa: E402

from sau_compress.audit import ATTACK_SCORES  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "audit_modes.jsonl"


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


PRETRAINED_OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "headline_pretrained"


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    """The unlearning and audit settings of ``args.world`` (toy: GradDiff on SparseGPT 2:4, as before)."""
    if args.world == "toy":
        return {"setting": args.setting or "sparsegpt 2:4", "method": "grad_diff", "lr": args.lr or core_lr(),
                "max_steps": args.max_steps or 120, "check_every": 3, "batch": 8, "retain_eval": 40,
                "audit": {"utility_records": 16, "attack_scores": args.attack_scores or "all"}}
    from headline import PRETRAINED_LR, PRETRAINED_PROFILE

    from sau_compress.worlds.pretrained import ANSWER_TOKENS

    profile = PRETRAINED_PROFILE[args.world]
    (method,) = profile["cells"]
    lr = args.lr or PRETRAINED_LR[method]
    return {"setting": args.setting or "sparsegpt 50%", "method": method, "lr": lr,
            "max_steps": args.max_steps or profile["max_steps"], "check_every": profile["check_every"],
            "batch": profile["batch_size"], "retain_eval": profile["retain_eval"],
            "audit": {"utility_records": profile["retain_eval"], "max_new_tokens": ANSWER_TOKENS, "relearn_steps": 10,
                      "relearn_lr": lr, "relearn_batch_size": 4, "batch_size": 16,
                      "attack_scores": args.attack_scores or "verdict"}}


def _load_cache(path: Path | None) -> dict[str, Any]:
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _save_cache(path: Path | None, cache: dict[str, Any]) -> None:
    """Merge ``cache`` into the file (another worker may have added entries) and replace it atomically."""
    if path is None:
        return
    merged = {**_load_cache(path), **cache}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(merged))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> None:
    from sau_compress.audit import AuditSettings, Subject, audit
    from sau_compress.data import resolve_prompt_format
    from sau_compress.export import load_model

    torch.set_num_threads(args.threads)
    plan = _plan(args)
    work = core.default_work_dir()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    world = core.load_world(args.world, plan["retain_eval"], device, None, "tiny", work)
    pruner, structure = plan["setting"].split(" ")
    folder = core.pruned_dir(world, pruner, structure, work)
    sets = {"forget": world.forget, "retain": world.retain, "holdout": world.holdout}
    fmt = resolve_prompt_format(world.tokenizer, "auto", log=False)
    retain = Subject(load_model(world.retain_model_dir).to(device).eval(), world.tokenizer, fmt)
    done = {(r["mode"], r["seed"]) for r in _read(args.out) if r.get("setting", "sparsegpt 2:4") == plan["setting"]}
    runs_done = {r["key"] for r in _read(args.runs)} if args.runs else set()
    if args.runs:  # the audited runs join the headline's: they must have stopped at the same target
        from headline import check_targets

        check_targets(_read(args.runs), world, args.runs)
    for seed in args.seeds:
        for mode in args.modes:
            if (mode, seed) in done:
                continue
            spec = core.make_spec(world.name, "matrix", plan["setting"], plan["method"], mode, seed, plan["lr"])
            start = time.perf_counter()
            record, model = core.run_unlearning(spec, world, folder, plan["max_steps"], plan["check_every"],
                                                plan["batch"], device, keep_model=True)
            if args.runs and spec.key() not in runs_done:
                core.append_record(args.runs, record)
            cache = _load_cache(args.reference_cache)
            settings = AuditSettings(seed=seed, **plan["audit"])
            result = audit(Subject(model.eval(), world.tokenizer, fmt), sets, retain, args.attacks, settings,
                           reference_cache=cache)
            _save_cache(args.reference_cache, cache)
            row = {"world": world.name, "setting": plan["setting"], "method": plan["method"], "mode": mode,
                   "seed": seed, "learning_rate": plan["lr"], "steps": record["steps"], "reached": record["reached"],
                   "forget_rouge": record["forget_rouge"], "model_utility": record.get("model_utility"),
                   "world_weights_sha256": world.weights_sha256.get("model"),
                   "attack_scores": settings.attack_scores,
                   "seconds": time.perf_counter() - start,
                   "attacks": [_attack_row(a) for a in result["attacks"]]}
            core.append_record(args.out, row)
            print(json.dumps({k: row[k] for k in ("mode", "seed", "steps", "reached", "seconds")}), flush=True)
            del model


def _attack_row(a: dict[str, Any]) -> dict[str, Any]:
    """One attack's figures kept in the JSONL: verdict, attacked value, level and threshold, the model's and the
    retain model's score before it (``level_before``) and, for ``relearn``, the control's forget ROUGE-L."""
    score = a["score"]
    row = {k: a.get(k) for k in ("name", "holds", "value", "level", "threshold", "seconds")}
    row["before"] = a["before"].get(score)
    row["level_before"] = (a.get("retain_model_before") or {}).get(score)
    if a.get("control") is not None:
        row["control"] = a["control"].get("forget_rouge")
    return row


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
    modes = [m for m in ("masked", "dense", "naive", "naive-reprune", "topk", "sau", "sau-alpha1", "contrastive")
             if any(r["mode"] == m for r in rows)]
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
    controls = {m: [a["control"] for r in rows if r["mode"] == m for a in r["attacks"] if a.get("control") is not None]
                for m in modes}
    if any(controls.values()):
        lines += ["", "relearn control (the same fine-tune on as many retain records), forget ROUGE-L: "
                  + "; ".join(f"{m} {_interval(v)}" for m, v in controls.items() if v)]
    seeds = sorted({r["seed"] for r in rows})
    steps = {m: [r["steps"] for r in rows if r["mode"] == m] for m in modes}
    lines += ["", f"seeds {seeds}; steps to target per mode: {steps}; all reached: "
              f"{all(r['reached'] for r in rows)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="toy", choices=["toy", *core.PRETRAINED_WORLDS])
    p.add_argument("--setting", help="pruner and structure, e.g. 'sparsegpt 2:4' (default: the world's)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--modes", default=None, help="default: dense,topk,sau (toy), masked,dense,sau,naive (pretrained)")
    p.add_argument("--attacks", default=None,
                   help="default: quant-fp8,quant-int8,quant-int4,prune-more (+relearn on a pretrained world)")
    p.add_argument("--attack-scores", choices=ATTACK_SCORES, default=None,
                   help="what is measured under each attack (AuditSettings.attack_scores; default: all on the toy, "
                        "verdict on a pretrained world, where a full measurement takes minutes)")
    p.add_argument("--lr", type=float, default=None, help="default: the world's (toy 1e-3; pretrained: NPO's)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"default {DEFAULT_OUT} (toy), {PRETRAINED_OUT}/audit_modes.jsonl (pretrained)")
    p.add_argument("--runs", type=Path, default=None, help="where the headline records go (pretrained default: "
                   f"{PRETRAINED_OUT}/headline_runs.jsonl; toy: none)")
    p.add_argument("--reference-cache", type=Path, default=None,
                   help="the retain model's attacked measurements (default: beside --out)")
    p.add_argument("--report", action="store_true", help="print the table of the runs in --out")
    args = p.parse_args(argv)
    pretrained = args.world != "toy"
    args.out = args.out or (PRETRAINED_OUT / "audit_modes.jsonl" if pretrained else DEFAULT_OUT)
    if args.report:
        print(report(args.out))
        return 0
    if pretrained:
        args.runs = args.runs or PRETRAINED_OUT / "headline_runs.jsonl"
    args.reference_cache = args.reference_cache or args.out.with_name(f"{args.out.stem}_reference_cache.json")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.modes = (args.modes or ("masked,dense,sau,naive" if pretrained else "dense,topk,sau")).split(",")
    args.attacks = (args.attacks or "quant-fp8,quant-int8,quant-int4,prune-more"
                    + (",relearn" if pretrained else "")).split(",")
    run(args)
    print(report(args.out))
    return 0


def core_lr() -> float:
    """GradDiff's learning rate in the headline benchmark."""
    return 1e-3


if __name__ == "__main__":
    raise SystemExit(main())
