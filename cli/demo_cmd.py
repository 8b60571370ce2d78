"""``sau-compress demo``: the main job on the embedded default (the toy world)."""

from __future__ import annotations

from typing import Any

import typer

from sau_compress.cli._common import JSON_OPTION, console, emit, kv_table, user_errors


def _render(result: dict[str, Any]) -> None:
    world = result["toy_world"]
    rows = {f"memorizer ROUGE-L recall ({k})": v for k, v in world["rouge"].items()}
    rows["model"] = world["model_dir"]
    console.print(kv_table("sau-compress demo: toy world", rows))


def demo(as_json: bool = JSON_OPTION) -> None:
    """Run the main job on the embedded toy world (built on first use, no download)."""
    from sau_compress.toy import build_toy_world

    with user_errors():
        world = build_toy_world()
        result = {"toy_world": world.to_dict()}
    emit(result, as_json, _render)


def register(app: typer.Typer) -> None:
    """Attach ``demo``."""
    app.command("demo")(demo)
