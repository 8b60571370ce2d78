"""``sau-compress run`` (prune -> SAU -> export with an llmcompressor recipe) and ``sau-compress recipes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from sau_compress.cli._choices import RunFormat, check_device
from sau_compress.cli._common import (
    JSON_OPTION,
    console,
    emit,
    kv_table,
    print_summary,
    stdout_to_stderr,
    user_errors,
)


def _render_run(result: dict[str, Any]) -> None:
    rows: dict[str, Any] = {
        "output": result["output"],
        "format": result["format"],
        "prompt format": result.get("prompt_format"),
        "answers end with (EOS)": result.get("eos_token"),
        "modifiers": " -> ".join(result["modifiers"]),
        "sparsity (target layers)": result["sparsity"],
        "2:4 everywhere": result["two_four"],
        "pattern preserved by SAU": "no SAU stage" if result["pattern_preserved"] is None
        else result["pattern_preserved"],
        "seconds": result["seconds"],
    }
    for split, kept in (result.get("kept") or {}).items():
        rows[f"{split} facts the pruned model stated, still stated"] = f"{kept['still']} of {kept['stated']}"
    console.print(kv_table("sau-compress run", rows))
    if result.get("before") and result.get("after"):
        print_summary(result)
    if result.get("audit"):
        from sau_compress.cli.audit_cmd import render_audit

        render_audit(result["audit"])


def run(
    model: str = typer.Argument(..., help="Model folder, or 'toy' (the embedded toy memorizer)."),
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        "-r",
        help="Bundled recipe name (see `recipes`) or a recipe file (default: sparsegpt-2of4-sau-npo, the "
             "pretrained-model settings; for toy models toy-sparsegpt-2of4-graddiff, the toy's own).",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder to write the result to (must not exist)."
    ),
    forget: str | None = typer.Option(
        None, "--forget", help="Forget set (JSON/JSONL/parquet, datasets folder, hub)."
    ),
    retain: str | None = typer.Option(
        None, "--retain", help="Retain set; also the default calibration data."
    ),
    overrides: list[str] | None = typer.Option(
        None,
        "--set",
        help="Override a SAU field (max_steps=20) or another modifier's (SparseGPTModifier.sparsity=0.6).",
    ),
    calibration: str | None = typer.Option(
        None, "--calibration", help="QA set to calibrate SparseGPT/Wanda with."
    ),
    num_calibration_samples: int = typer.Option(512, "--num-calibration-samples", help="Calibration rows."),
    export_format: RunFormat = typer.Option(
        RunFormat.auto,
        "--format",
        case_sensitive=False,
        help="auto (sparse-24-bitmask when all target layers are 2:4), sparse-24-bitmask, dense.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Before/after ROUGE-L recall and NLL."),
    eval_limit: int | None = typer.Option(
        None, "--eval-limit", help="Evaluate on the first N records of each set."
    ),
    device: str | None = typer.Option(
        None, "--device", callback=check_device,
        help="Where to evaluate and unlearn: cpu, cuda or cuda:N (default: cuda when available).",
    ),
    audit: bool = typer.Option(
        False, "--audit", help="Then audit the output model (sau-compress audit); recorded in its sau_compress.json."
    ),
    audit_holdout: str | None = typer.Option(None, "--audit-holdout", help="Holdout set for --audit."),
    audit_retain_model: str | None = typer.Option(None, "--audit-retain-model", help="Retain model for --audit."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Prune, unlearn and export a model with an llmcompressor recipe; print a before/after summary."""
    from sau_compress.pipeline import default_recipe
    from sau_compress.pipeline import run as run_pipeline

    with user_errors(), stdout_to_stderr(as_json):
        result = run_pipeline(
            model,
            recipe or default_recipe(model),
            output,
            forget=forget,
            retain=retain,
            overrides=overrides or [],
            calibration=calibration,
            num_calibration_samples=num_calibration_samples,
            export_format=export_format.value,
            overwrite=overwrite,
            evaluate=evaluate,
            eval_limit=eval_limit,
            device=device,
        )
        if audit:
            from sau_compress.pipeline import TOY_MODELS, audit_model

            result["audit"] = audit_model(
                str(output), forget=forget, retain=retain, holdout=audit_holdout, retain_model=audit_retain_model,
                record=True, world_defaults=model in TOY_MODELS, device=device,
            )
    emit(result, as_json, _render_run)


def _render_recipes(result: dict[str, Any]) -> None:
    table = Table(title="bundled recipes (sau-compress run MODEL --recipe NAME)")
    table.add_column("name", style="bold")
    table.add_column("description")
    for row in result["recipes"]:
        table.add_row(row["name"], row["description"])
    console.print(table)


def recipes(as_json: bool = JSON_OPTION) -> None:
    """List the bundled recipes with their one-line descriptions."""
    from sau_compress.pipeline import list_recipes

    emit({"recipes": list_recipes()}, as_json, _render_recipes)


def register(app: typer.Typer) -> None:
    """Attach ``run`` and ``recipes``."""
    app.command("run")(run)
    app.command("recipes")(recipes)
