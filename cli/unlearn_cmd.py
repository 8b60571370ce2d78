"""``sau-compress unlearn``: the unlearning stage alone on a pruned model, on one process or sharded (FSDP2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sau_compress.cli._choices import RunFormat, check_device
from sau_compress.cli._common import (
    JSON_OPTION,
    console,
    emit,
    err_console,
    kv_table,
    print_summary,
    stdout_to_stderr,
    user_errors,
)


def _render(result: dict[str, Any]) -> None:
    unlearned = result["unlearn"]
    rows: dict[str, Any] = {
        "output": result["output"],
        "format": result["format"],
        "prompt format": result.get("prompt_format"),
        "processes": result.get("world_size", 1),
        "mode / method": f"{unlearned['mode']} / {unlearned['method']}",
        "steps": unlearned["steps"],
        "selected entries": sum(layer["n_selected"] for layer in unlearned["layers"].values()),
        "sparsity (target layers)": result["sparsity"],
        "2:4 everywhere": result["two_four"],
        "pattern preserved": result["pattern_preserved"],
        "unlearning requests recorded": result["requests"],
        "seconds": result["seconds"],
    }
    console.print(kv_table("sau-compress unlearn", rows))
    if result.get("before") and result.get("after"):
        print_summary(result)


def unlearn(
    model: str = typer.Argument(..., help="A pruned model folder (plain HF, compressed-tensors, our exports)."),
    forget: str = typer.Option(..., "--forget", help="Forget set (JSON/JSONL/parquet, datasets folder, hub)."),
    retain: str | None = typer.Option(None, "--retain", help="Retain set (GradDiff/NPO's retain term, evaluation)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the result to (must not exist)."),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="A field of the SAU stage, key=value (max_steps=20, mode=topk, learning_rate=1e-4)."
    ),
    export_format: RunFormat = typer.Option(
        RunFormat.auto, "--format",
        help="auto (sparse-24-bitmask when all target layers are 2:4), sparse-24-bitmask, dense.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Before/after ROUGE-L recall and NLL."),
    eval_limit: int | None = typer.Option(None, "--eval-limit", help="Evaluate on the first N records of each set."),
    device: str | None = typer.Option(
        None, "--device", callback=check_device, help="cpu, cuda or cuda:N (default: cuda when available)."
    ),
    nproc: int | None = typer.Option(
        None, "--nproc", help="Shard over N processes (FSDP2; launches torchrun, one process per GPU)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Unlearn a forget set from an already pruned model (the SAU stage alone) and write the result."""
    from sau_compress.pipeline import check_unlearn_args, launch_sharded, unlearn_model

    export_format = export_format.value
    options = {"forget": forget, "retain": retain, "overrides": overrides or [], "export_format": export_format,
               "overwrite": overwrite, "device": device}
    if nproc is not None:
        with user_errors():
            check_unlearn_args(model, output, **options)
            args = [model, "--forget", forget, "--output", str(output), "--format", export_format]
            args += ["--retain", retain] if retain is not None else []
            args += [a for item in overrides or [] for a in ("--set", item)]
            args += ["--overwrite"] * overwrite + ["--no-eval"] * (not evaluate) + ["--json"] * as_json
            args += ["--eval-limit", str(eval_limit)] if eval_limit is not None else []
            args += ["--device", device] if device is not None else []
            code = launch_sharded(nproc, args)
        if code != 0:
            err_console.print(f"[bold red]error:[/] unlearn failed in one of the {nproc} processes (torchrun exit "
                              f"code {code}); no output was written")
            raise typer.Exit(code=1)
        return
    with user_errors(), stdout_to_stderr(as_json):
        result = unlearn_model(model, output, evaluate=evaluate, eval_limit=eval_limit, **options)
    if result.get("rank", 0) == 0:
        emit(result, as_json, _render)


def register(app: typer.Typer) -> None:
    """Attach ``unlearn``."""
    app.command("unlearn")(unlearn)
