"""``sau-compress eval`` and ``sau-compress compare``: the unlearning metric suite and run comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from loguru import logger
from rich.table import Table

from sau_compress.cli._choices import ForgetSplit, PromptFormat, Suite, check_device
from sau_compress.cli._common import JSON_OPTION, console, emit, user_errors
from sau_compress.errors import UserError


def _render_eval(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['name']} ({result['suite']} suite)")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for metric, value in result["summary"].items():
        table.add_row(metric, "n/a" if value is None else f"{value:.4g}")
    console.print(table)
    if result.get("output"):
        console.print(f"wrote {result['output']}/eval.json and report.md")
    console.print(f"{result['seconds']:.1f}s")


def eval_command(
    model: str = typer.Argument(..., help="Model folder, or 'toy' / 'toy-retain' for the bundled toy models."),
    suite: Suite = typer.Option(Suite.toy, "--suite", case_sensitive=False, help="Metric suite: toy or tofu."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with the suite's files "
                                         "(tofu: $SAU_COMPRESS_TOFU_DIR or the hub; toy: the toy world)."),
    forget: Path | None = typer.Option(None, "--forget", help="Forget set file (TOFU schema) replacing the suite's."),
    retain: Path | None = typer.Option(None, "--retain", help="Retain set file replacing the suite's."),
    holdout: Path | None = typer.Option(None, "--holdout", help="Holdout set file replacing the suite's."),
    forget_split: ForgetSplit = typer.Option(ForgetSplit.forget10, "--forget-split", case_sensitive=False,
                                             help="TOFU forget split: forget01/05/10."),
    retain_model: str | None = typer.Option(
        None, "--retain-model",
        help="Reference for forget quality/privleak: a model folder, 'toy-retain', or its eval.json "
             "(default for the toy suite on the toy world: toy-retain).",
    ),
    text_set: Path | None = typer.Option(
        None, "--text-set", help="Text file (.txt lines or JSON 'text') for perplexity."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Use the first N records of every set."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per forward pass / generate call."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Longest generated answer."),
    prompt_format: PromptFormat = typer.Option(
        PromptFormat.auto, "--prompt-format", case_sensitive=False,
        help="auto (the tokenizer's chat template when it has one, else plain), plain ('Question: ...\\nAnswer:') "
             "or chat (the chat template; an error without one).",
    ),
    chat_template: bool = typer.Option(
        False, "--chat-template", hidden=True, help="Deprecated: same as --prompt-format chat."
    ),
    device: str | None = typer.Option(None, "--device", callback=check_device,
                                      help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    name: str | None = typer.Option(None, "--name", help="Label of this run in comparisons."),
    output: Path | None = typer.Option(None, "--output", help="Folder to write eval.json and report.md into."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output folder."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Evaluate a model with the unlearning metrics (TOFU definitions) and write eval.json + report.md."""
    from sau_compress.pipeline import evaluate_model

    with user_errors():
        fmt = prompt_format.value
        if chat_template:
            if fmt not in ("auto", "chat"):
                raise UserError(f"--chat-template contradicts --prompt-format {fmt}; use --prompt-format only")
            logger.warning("--chat-template is deprecated: use --prompt-format chat")
            fmt = "chat"
        result = evaluate_model(
            model, suite.value, data_dir, forget=forget, retain=retain, holdout=holdout,
            forget_split=forget_split.value,
            retain_model=retain_model, text_set=text_set, limit=limit, batch_size=batch_size,
            max_new_tokens=max_new_tokens, prompt_format=fmt, device=device, name=name,
            output=output, overwrite=overwrite,
        )
    emit(result, as_json, _render_eval)


def _render_compare(result: dict[str, Any]) -> None:
    rows = result["rows"]
    # one column per run: a few runs fit a terminal, a dozen metrics side by side do not
    table = Table(title="comparison")
    table.add_column("metric", style="bold")
    table.add_column("better")
    for row in rows:
        table.add_column(row["name"], justify="right")
    for metric, better in result["metrics"]:
        if any(r.get(metric) is not None for r in rows):
            table.add_row(metric, better, *("n/a" if r.get(metric) is None else f"{r[metric]:.4g}" for r in rows))
    console.print(table)
    if result.get("output"):
        console.print(f"wrote {result['markdown']}" + (f" and {result['chart']}" if result.get("chart") else ""))


def compare_command(
    runs: list[Path] = typer.Argument(..., help="eval.json files, or folders holding one."),
    output: Path | None = typer.Option(None, "--output", help="Folder to write compare.md and compare.png into."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output folder."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare evaluation runs: a Markdown table and a chart of forget quality against model utility."""
    from sau_compress.pipeline import compare_runs

    with user_errors():
        result = compare_runs(runs, output, overwrite)
    emit(result, as_json, _render_compare)


def register(app: typer.Typer) -> None:
    """Attach ``eval`` and ``compare``."""
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
