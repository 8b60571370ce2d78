"""``sau-compress demo``: the main job on the embedded default (the toy world).

toy memorizer -> SparseGPT 2:4 -> SAU (GradDiff) -> before/after summary -> sparse-24-bitmask export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sau_compress.cli._choices import check_device
from sau_compress.cli._common import JSON_OPTION, console, emit, kv_table, stdout_to_stderr, user_errors
from sau_compress.cli.run_cmd import _render_run


def _render(result: dict[str, Any]) -> None:
    world = result["toy_world"]
    rows = {f"memorizer ROUGE-L recall ({k})": v for k, v in world["rouge"].items()}
    rows["memorizer"] = world["model_dir"]
    console.print(kv_table("toy world", rows))
    _render_run(result["run"])


def demo(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Where to write the unlearned 2:4 model (default: the user cache)."
    ),
    device: str | None = typer.Option(None, "--device", callback=check_device,
                                      help="cpu, cuda or cuda:N (default: cuda when available)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the main job on the toy world: SparseGPT 2:4, SAU, before/after table, 2:4 export.

    The toy world is shipped in the package (no build, no download); the forget people are unlearned with SAU (GradDiff)
    and the result is written as a sparse-24-bitmask checkpoint.
    """
    from sau_compress.pipeline import demo as run_demo

    with user_errors(), stdout_to_stderr(as_json):
        result = run_demo(output, device)
    emit(result, as_json, _render)


def register(app: typer.Typer) -> None:
    """Attach ``demo``."""
    app.command("demo")(demo)
