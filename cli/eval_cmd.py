"""``sau-compress eval`` and ``sau-compress compare``: the unlearning metric suite and run comparisons."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from sau_compress.cli._common import JSON_OPTION, console, emit, user_errors


def _is_results(path: str) -> bool:
    """Whether ``path`` names saved results (an eval JSON, or a folder with eval.json and no model)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.suffix == ".json"
    return p.is_dir() and (p / "eval.json").is_file() and not (p / "config.json").is_file()


def _load(name_or_path: str, device: str | None) -> tuple[Any, Any, Path]:
    """Load a model folder (``toy`` and ``toy-retain`` name the bundled toy models) and its tokenizer."""
    import torch
    from loguru import logger
    from transformers import AutoTokenizer

    from sau_compress.toy import resolve_model_path

    path = resolve_model_path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"model '{name_or_path}' is not a folder")
    try:
        from sau_compress.export import load_model
    except ImportError:  # export lands separately; plain HF folders load either way
        from transformers import AutoModelForCausalLM

        logger.warning("sau_compress.export.load_model is not available; loading with AutoModelForCausalLM")
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        model = load_model(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(target).eval(), tokenizer, path


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
    suite: str = typer.Option("toy", "--suite", help="Metric suite: toy or tofu."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with the suite's files "
                                         "(tofu: $SAU_COMPRESS_TOFU_DIR or the hub; toy: the toy world)."),
    forget: Path | None = typer.Option(None, "--forget", help="Forget set file (TOFU schema) replacing the suite's."),
    retain: Path | None = typer.Option(None, "--retain", help="Retain set file replacing the suite's."),
    holdout: Path | None = typer.Option(None, "--holdout", help="Holdout set file replacing the suite's."),
    forget_split: str = typer.Option("forget10", "--forget-split", help="TOFU forget split: forget01/05/10."),
    retain_model: str | None = typer.Option(
        None, "--retain-model",
        help="Reference for forget quality/privleak: a model folder, 'toy-retain', or its eval.json "
             "(default for the toy suite on the toy world: toy-retain).",
    ),
    text_set: Path | None = typer.Option(None, "--text-set", help="Text file (.txt lines or JSON 'text') for perplexity."),
    limit: int | None = typer.Option(None, "--limit", help="Use the first N records of every set."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per forward pass / generate call."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Longest generated answer."),
    chat_template: bool = typer.Option(False, "--chat-template", help="Prompt with the tokenizer's chat template."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    name: str | None = typer.Option(None, "--name", help="Label of this run in comparisons."),
    output: Path | None = typer.Option(None, "--output", help="Folder to write eval.json and report.md into."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output folder."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Evaluate a model with the unlearning metrics (TOFU definitions) and write eval.json + report.md."""
    from sau_compress.evaluation import build_record, evaluate, load_metrics, write_eval
    from sau_compress.evaluation.suite import SUITES
    from sau_compress.io import check_writable_parent

    with user_errors():
        if suite not in SUITES:
            raise typer.BadParameter(f"unknown suite '{suite}'; choose from {list(SUITES)}", param_hint="--suite")
        if output is not None:
            check_writable_parent(output)
            if output.exists() and not overwrite:
                raise FileExistsError(f"output folder '{output}' already exists; pass --overwrite to replace it")
        start = time.perf_counter()
        default_data = data_dir is None and forget is None and retain is None and holdout is None
        if retain_model is None and suite == "toy" and default_data:
            retain_model = "toy-retain"
        lm, tokenizer, path = _load(model, device)
        reference = ref_model = ref_tokenizer = None
        if retain_model is not None and _is_results(retain_model):
            reference = load_metrics(retain_model)
        elif retain_model is not None:
            ref_model, ref_tokenizer, _ = _load(retain_model, device)
        metrics = evaluate(
            lm, tokenizer, suite, data_dir, forget=forget, retain=retain, holdout=holdout,
            forget_split=forget_split, limit=limit, text_set=text_set, batch_size=batch_size,
            max_new_tokens=max_new_tokens, chat_template=chat_template, retain_model=ref_model,
            retain_tokenizer=ref_tokenizer, reference=reference,
        )
        seconds = time.perf_counter() - start
        settings = {
            "data_dir": str(data_dir) if data_dir else ("toy world" if suite == "toy" else "default"),
            "forget": str(forget) if forget else None, "retain": str(retain) if retain else None,
            "holdout": str(holdout) if holdout else None, "text_set": str(text_set) if text_set else None,
            "forget_split": forget_split if suite == "tofu" else None, "limit": limit,
            "retain_model": retain_model, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "chat_template": chat_template, "device": str(next(lm.parameters()).device),
        }
        label = name or (model if model in ("toy", "toy-retain") else path.name)
        record = build_record(metrics, label, str(path), suite, settings, seconds)
        written = write_eval(output, record, overwrite) if output is not None else None
    emit(
        {"name": label, "model": str(path), "suite": suite, "seconds": seconds,
         "output": str(written) if written else None, "summary": record["summary"]},
        as_json, _render_eval,
    )


def _render_compare(result: dict[str, Any]) -> None:
    from sau_compress.evaluation.report import HEADLINE_METRICS

    rows = result["rows"]
    # one column per run: a few runs fit a terminal, a dozen metrics side by side do not
    table = Table(title="comparison")
    table.add_column("metric", style="bold")
    table.add_column("better")
    for row in rows:
        table.add_column(row["name"], justify="right")
    for metric, better, _ in HEADLINE_METRICS:
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
    from sau_compress.evaluation.report import compare_rows, load_eval, write_compare

    with user_errors():
        records = [load_eval(run) for run in runs]
        if output is not None:
            result = write_compare(records, output, overwrite)
        else:
            result = {"output": None, "markdown": None, "chart": None, "rows": compare_rows(records)}
    emit(result, as_json, _render_compare)


def register(app: typer.Typer) -> None:
    """Attach ``eval`` and ``compare``."""
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
