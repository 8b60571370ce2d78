"""``sau-compress audit``: does the forgetting last under quantization, further pruning, paraphrase,
relearning and membership inference?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from sau_compress.cli._choices import AttackScores, PromptFormat, check_device
from sau_compress.cli._common import JSON_OPTION, console, emit, stdout_to_stderr, user_errors


def _value(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_audit(result: dict[str, Any]) -> None:
    """The verdict table of an audit (also used by ``run --audit``)."""
    basis = "retain model" if result["reference"] == "retain_model" else "holdout"
    table = Table(title=f"audit of {result['model']} (level: {basis} under the same attack)")
    for col in ("attack", "holds", "score", "before", "after", "level", "threshold", "s"):
        table.add_column(col, justify="left" if col in ("attack", "score") else "right")
    for a in result["attacks"]:
        holds = "[green]yes[/]" if a["holds"] else "[red]NO[/]" if a["holds"] is False else "n/a"
        table.add_row(a["name"], holds, a["score"], _value((a.get("before") or {}).get(a["score"])),
                      _value(a["value"]), _value(a["level"]), _value(a["threshold"]), f"{a['seconds']:.0f}")
    console.print(table)
    console.print("every attack holds" if result["holds"] else "[red]forgetting does not hold[/] under some attack")
    if result.get("output"):
        console.print(f"wrote {result['output']}/audit.json, audit.md and audit.png")
    if result.get("recorded"):
        console.print(f"recorded in {result['recorded']}")


def audit_command(
    model: str = typer.Argument(..., help="Model folder, or 'toy' / 'toy-retain' for the bundled toy models."),
    forget: str | None = typer.Option(None, "--forget", help="Forget set (toy models: the toy world's)."),
    retain: str | None = typer.Option(None, "--retain", help="Retain set (utility, few-shot examples, control)."),
    holdout: str | None = typer.Option(None, "--holdout", help="Holdout set: never-trained people (mia; the "
                                       "reference level without a retain model)."),
    retain_model: str | None = typer.Option(
        None, "--retain-model",
        help="Reference model trained without the forget set (folder or 'toy-retain'); 'none' for the holdout "
             "level. Default for the toy world's own sets: toy-retain.",
    ),
    attacks: str | None = typer.Option(
        None, "--attacks",
        help="Comma-separated: quant-fp8,quant-int8,quant-int4,prune-more,paraphrase,relearn,mia (default: all).",
    ),
    relearn_steps: int = typer.Option(20, "--relearn-steps", help="Fine-tuning steps of the relearn attack."),
    rouge_margin: float = typer.Option(0.1, "--rouge-margin", help="Margin over the reference forget ROUGE-L."),
    mia_margin: float = typer.Option(0.1, "--mia-margin", help="Margin over the reference membership AUC."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sequences per forward pass / generate call."),
    attack_scores: AttackScores = typer.Option(
        AttackScores.all, "--attack-scores",
        help="all: every score under each attack; verdict: only the forget ROUGE-L the verdicts read (faster).",
    ),
    prompt_format: PromptFormat = typer.Option(PromptFormat.auto, "--prompt-format", help="auto, plain or chat."),
    device: str | None = typer.Option(
        None, "--device", callback=check_device, help="cpu, cuda or cuda:N (default: cuda if available)."
    ),
    output: Path | None = typer.Option(None, "--output", help="Folder to write audit.json, audit.md, audit.png."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output folder."),
    record: bool = typer.Option(False, "--record", help="Also append the verdicts to MODEL's sau_compress.json "
                                "(an export's record; nothing else in MODEL changes)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Attack an unlearned model and check that the forget set stays forgotten (docs/audit.md)."""
    from sau_compress.pipeline import audit_model

    with user_errors(), stdout_to_stderr(as_json):
        result = audit_model(
            model, forget=forget, retain=retain, holdout=holdout, retain_model=retain_model, attacks=attacks,
            output=output, overwrite=overwrite, record=record, prompt_format=prompt_format.value, device=device,
            settings={"relearn_steps": relearn_steps, "rouge_margin": rouge_margin, "mia_margin": mia_margin,
                      "batch_size": batch_size, "attack_scores": attack_scores.value},
        )
    emit(result, as_json, render_audit)


def register(app: typer.Typer) -> None:
    """Attach ``audit``."""
    app.command("audit")(audit_command)
