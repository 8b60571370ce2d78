"""``sau-compress verify``: load an export in a serving engine and compare its greedy tokens with ours."""

from __future__ import annotations

import typer

from sau_compress.cli._choices import Engine


def verify(
    export: str = typer.Argument(..., help="Export folder."),
    engine: Engine = typer.Option(Engine.transformers, "--engine", case_sensitive=False, help="Engine to load it in."),
) -> None:
    """Load an export in an engine and compare its greedy tokens with the project's own model."""
    raise NotImplementedError


def register(app: typer.Typer) -> None:
    """Attach ``verify``."""
    app.command("verify")(verify)
