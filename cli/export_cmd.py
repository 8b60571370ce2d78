"""``sau-compress export`` and ``sau-compress inspect``: write and describe checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from sau_compress.cli._choices import ExportFormat
from sau_compress.cli._common import JSON_OPTION, console, emit, kv_table, user_errors


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def _render_export(result: dict[str, Any]) -> None:
    sparsity = result["sparsity"]
    rows = {
        "output": result["output"],
        "format": result["format"],
        "quantization": result["quantization"] or "none",
        "compressed 2:4 layers": len(sparsity["compressed_layers"]),
        "Linear sparsity": sparsity["linear_sparsity"],
        "weight files": _mb(result["weight_bytes"]),
    }
    for i, line in enumerate(result["serving"]):
        rows["serving" if i == 0 else ""] = line
    console.print(kv_table("export", rows))


def _render_inspect(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['path']}  ({result['format']}"
                        f"{', ' + result['quantization'] if result['quantization'] else ''})")
    for col, justify in (("layer", "left"), ("shape", "right"), ("dtype", "left"), ("stored", "left"),
                         ("sparsity", "right"), ("2:4", "center"), ("bytes", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for layer in result["layers"]:
        stored = "2:4 bitmask" if layer["stored"] == "sparse-24-bitmask" else layer["stored"]
        table.add_row(layer["name"], "x".join(map(str, layer["shape"])), layer["dtype"], stored,
                      f"{layer['sparsity']:.3f}", "yes" if layer["is_2of4"] else "no", f"{layer['bytes']:,}")
    console.print(table)
    totals = result["totals"]
    rows = {
        "all tensors": _mb(totals["weight_bytes"]),
        "Linear layers (stored)": _mb(totals["linear_bytes"]),
        "Linear layers (dense)": _mb(totals["linear_dense_bytes"]),
        "stored / dense": totals["linear_ratio"],
        "Linear sparsity": totals["linear_sparsity"],
        "2:4 layers": f"{totals['layers_2of4']} of {totals['layers']} ({totals['layers_compressed']} compressed)",
    }
    for i, line in enumerate(result["vllm"]):
        rows["vLLM" if i == 0 else " " * i] = line
    for i, line in enumerate(result["warnings"]):
        rows["warning" if i == 0 else "  " + " " * i] = line
    if result.get("unlearning"):
        rec = result["unlearning"]
        rows["unlearning"] = f"{rec.get('method')} / {rec.get('mode')}, forget set {rec.get('forget_set_hash')}"
    console.print(kv_table("summary", rows))


def export(
    src: str = typer.Argument(..., help="Model folder to export, or 'toy' for the embedded toy memorizer."),
    fmt: ExportFormat = typer.Option(ExportFormat.sparse, "--format", "-f", case_sensitive=False,
                                     help="sparse-24-bitmask (compressed 2:4, vLLM <= 0.18.1) or dense "
                                          "(current vLLM)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to create."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    metadata: Path | None = typer.Option(None, "--metadata",
                                         help="JSON file whose object is recorded in the sidecar."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a checkpoint as sparse-24-bitmask or dense, atomically and verified, with a sidecar record."""
    from sau_compress.pipeline import export_model

    with user_errors():
        result = export_model(src, fmt.value, output, overwrite=overwrite, metadata=metadata)
    emit(result, as_json, _render_export)


def inspect(
    path: str = typer.Argument(..., help="Model folder to describe, or 'toy'."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Per-layer shape, sparsity and 2:4 validity, weight bytes, format, and which vLLM can serve it."""
    from sau_compress.pipeline import inspect_model

    with user_errors():
        result = inspect_model(path)
    emit(result, as_json, _render_inspect)


def register(app: typer.Typer) -> None:
    """Attach ``export`` and ``inspect``."""
    app.command("export")(export)
    app.command("inspect")(inspect)
