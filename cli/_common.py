"""Shared CLI helpers: ``--json`` output, rich tables, error reporting."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=False)
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width

JSON_OPTION = typer.Option(False, "--json", help="Print one JSON object on stdout instead of a table.")


def emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    """Print ``result`` as one JSON object (``--json``) or through ``render`` as rich output."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=None, default=str) + "\n")
        sys.stdout.flush()
    else:
        render(result)


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    """A two-column table of ``rows``."""
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        table.add_row(str(key), f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def before_after_table(result: dict[str, Any]) -> Table:
    """The before/after summary of ``run`` and ``unlearn``: per set ROUGE-L recall, answer NLL and the shares of
    greedy answers that contain the reference, are empty or loop; a ``pruned`` column when the run evaluated
    the model right after pruning."""
    stages = [name for name in ("before", "pruned", "after") if result.get(name)]
    table = Table(title=" / ".join(stages))
    base = "pruned" if "pruned" in stages else stages[0]
    for col in ("metric", *stages, f"after - {base}"):
        table.add_column(col)
    first, last = result[base], result["after"]
    for key, value in last.items():
        if not isinstance(value, float):
            continue
        cells = [f"{result[stage][key]:.4f}" for stage in stages]
        table.add_row(key, *cells, f"{value - first[key]:+.4f}")
    return table


def print_summary(result: dict[str, Any]) -> None:
    """The before/after table of ``run`` and ``unlearn`` and, when recorded, their sample answers."""
    console.print(before_after_table(result))
    samples = samples_table(result)
    if samples is not None:
        console.print(samples)


def samples_table(result: dict[str, Any]) -> Table | None:
    """A few questions of each set with their greedy answers at each stage (``None`` when not recorded)."""
    stages = [name for name in ("before", "pruned", "after") if (result.get(name) or {}).get("samples")]
    if not stages:
        return None
    table = Table(title="sample answers")
    for col in ("set", "question", *stages):
        table.add_column(col, overflow="fold")
    for split in ("forget", "retain"):
        for i, sample in enumerate(result[stages[0]]["samples"][split]):
            answers = [result[stage]["samples"][split][i]["answer"][:80] for stage in stages]
            table.add_row(split, sample["question"], *answers)
    return table


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause (:class:`sau_compress.errors.SauCompressError`) into a one-line
    message and exit code 2; anything else is a bug and shows its traceback."""
    from sau_compress.errors import SauCompressError

    try:
        yield
    except SauCompressError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(code=2) from err


@contextmanager
def stdout_to_stderr(active: bool) -> Iterator[None]:
    """Send file descriptor 1 to stderr for the duration (``--json``: stdout carries the JSON object alone).

    llmcompressor logs to ``sys.stdout`` (it replaces loguru's sinks when imported) and its modifier factory
    prints import errors; at the descriptor level none of that can reach stdout while the job runs.
    """
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
