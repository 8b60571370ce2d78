"""What pruning costs each benchmark world before any unlearning: utility and ROUGE-L before and after each pruner.

SAU exists because pruning removes knowledge. A world where pruning costs nothing cannot show it helping, so
every world the headline benchmark reports needs this table: the memorizer's model utility, forget and retain
ROUGE-L recall, then the same after each (pruner, structure), pruned once with the headline's own path
(``headline_core.pruned_dir``: llmcompressor's ``oneshot``, 64 evenly spaced retain records for calibration)
and cached there. A world "where pruning hurts" loses at least ``--hurts`` (0.10) of utility or of a ROUGE-L
recall to at least one pruner.

Usage::

    python benchmarks/pruning_damage.py                                 # toy world, tiny and capacity models
    python benchmarks/pruning_damage.py --worlds toy,tofu --sizes tiny --out docs/results/pruning_damage

Prints one Markdown table per world and writes ``damage.json`` and ``damage.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import headline_core as core  # noqa: E402

COLUMNS = ("world", "setting", "model utility", "forget ROUGE-L", "retain ROUGE-L", "prior ROUGE-L", "Δ utility",
           "Δ forget ROUGE-L", "Δ retain ROUGE-L", "Δ prior ROUGE-L")
#: the figures compared before and after pruning (``prior_rouge`` is None in a world without prior knowledge)
KEYS = ("model_utility", "forget_rouge", "retain_rouge", "prior_rouge")


def damage(world: core.World, settings: list[tuple[str, str]], work: Path, device: str) -> list[dict[str, Any]]:
    """The memorizer's and each pruned model's evaluation (``headline_core.evaluate_start``: cached beside the
    headline's pruned folders, so the headline's starting points are these), one row each."""

    def measure(folder: Path, setting: str) -> dict[str, Any]:
        return {"world": world.name, "setting": setting, **core.evaluate_start(folder, world, device, work)}

    rows = [measure(world.model_dir, "unpruned")]
    for pruner, structure in settings:
        folder = core.pruned_dir(world, pruner, structure, work)
        row = measure(folder, f"{pruner} {structure}")
        prune_file = folder / "prune.json"
        row["prune_seconds"] = json.loads(prune_file.read_text())["seconds"] if prune_file.is_file() else None
        rows.append(row)
    base = rows[0]
    for row in rows:
        for key in KEYS:
            row[f"delta_{key}"] = None if row.get(key) is None else row[key] - base[key]
    return rows


def hurts(rows: list[dict[str, Any]], threshold: float) -> bool:
    """Whether some pruner costs at least ``threshold`` of utility or of a ROUGE-L recall."""
    return any(row.get(f"delta_{key}") is not None and -row[f"delta_{key}"] >= threshold
               for row in rows[1:] for key in KEYS)


def _cell(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        cells = [r["world"], r["setting"], *(_cell(r.get(k)) for k in KEYS)]
        cells += ["–"] * len(KEYS) if r["setting"] == "unpruned" else [
            _cell(r.get(f"delta_{k}"), signed=True) for k in KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", default="toy",
                   help="comma list of toy,tofu,tofu-smollm2 (a pretrained world; --sizes does not apply to it)")
    p.add_argument("--sizes", default="tiny,capacity", help=f"comma list of {','.join(core.MODEL_SIZES)}")
    p.add_argument("--pruners", default=",".join(core.PRUNERS))
    p.add_argument("--structures", default=",".join(core.STRUCTURES))
    p.add_argument("--retain-eval", type=int, default=None,
                   help="retain records (and as many prior-knowledge records) for model utility (default 40; "
                        "a pretrained world headline_worlds.PRETRAINED_RETAIN_EVAL)")
    p.add_argument("--hurts", type=float, default=0.10, help="loss that makes a world one where pruning hurts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="cache of pruned folders (default: the headline's)")
    p.add_argument("--out", default=None, help="write damage.json and damage.md here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else core.default_work_dir()
    settings = [(pr, st) for pr in args.pruners.split(",") for st in args.structures.split(",")]
    results, parts = [], []
    for name in args.worlds.split(","):
        for size in ["tiny"] if name in core.PRETRAINED_WORLDS else args.sizes.split(","):
            t = time.perf_counter()
            retain_eval = args.retain_eval or (core.PRETRAINED_RETAIN_EVAL if name in core.PRETRAINED_WORLDS else 40)
            world = core.load_world(name, retain_eval, args.device, size=size, work=work)
            rows = damage(world, settings, work, args.device)
            verdict = hurts(rows, args.hurts)
            results.append({"world": world.describe(), "rows": rows, "pruning_hurts": verdict,
                            "seconds": time.perf_counter() - t})
            parts += [f"### {world.name} ({world.parameters / 1e6:.2f}M parameters, {len(world.forget)} forget / "
                      f"{len(world.retain)} retain QA; weights {world.weights_sha256.get('model', '')[:8]})", "",
                      table(rows), "",
                      f"Pruning hurts (a loss of at least {args.hurts:.2f}): {'yes' if verdict else 'no'}.", ""]
    text = "\n".join(parts)
    print(text)
    if args.out:
        from sau_compress.io import atomic_output_dir

        with atomic_output_dir(Path(args.out), overwrite=True) as tmp:
            (tmp / "damage.json").write_text(json.dumps(results, indent=2, default=str))
            (tmp / "damage.md").write_text(text)


if __name__ == "__main__":
    main()
