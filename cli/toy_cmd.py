"""``sau-compress toy ...``: the embedded toy world."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sau_compress.cli._common import JSON_OPTION, console, emit, kv_table, user_errors

toy_app = typer.Typer(help="The embedded toy world: fictitious people and a tiny Llama that memorized them.",
                      no_args_is_help=True)


def _render(result: dict[str, Any]) -> None:
    rows = {
        "model_dir": result["model_dir"],
        "retain_model_dir": result["retain_model_dir"],
        "data_dir": result["data_dir"],
        "people": result["people"],
        "parameters": f"{result['parameters']:,}",
    }
    for split, value in result["rouge"].items():
        rows[f"memorizer ROUGE-L recall ({split})"] = value
    for split, value in result["retain_model_rouge"].items():
        rows[f"retain model ROUGE-L recall ({split})"] = value
    for name, digest in result["weights_sha256"].items():
        rows[f"weights sha256 ({name})"] = digest
    if result["matches_shipped"] is not None:
        rows["same weights as the shipped world"] = "yes" if result["matches_shipped"] else "no"
    rows["built in"] = f"{result['build_seconds']:.1f}s"
    source = " (shipped)" if result["shipped"] else " (cached)" if result["cached"] else ""
    rows["this call"] = f"{result['seconds']:.1f}s{source}"
    console.print(kv_table("toy world", rows))


@toy_app.command("build")
def build(
    people: int = typer.Option(40, "--people", help="Number of fictitious people (at least 10)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the world, the splits and the training."),
    out: Path | None = typer.Option(None, "--out", help="Folder to build into (default: the user cache)."),
    force: bool = typer.Option(False, "--force", help="Build even if the world is shipped or cached, and say whether "
                               "the weights match the shipped ones."),
    prior_people: int = typer.Option(0, "--prior-people", help="People of prior knowledge: learnt first, then "
                                     "rehearsed, in no forget/retain split; scored in model utility (default 0)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Build (or reuse) the toy world and print where it is and how well the memorizer remembers.

    The default world (40 people, seed 0) is shipped in the package and returned at once; --force rebuilds it.
    """
    from sau_compress.pipeline import build_world

    with user_errors():
        result = build_world(people=people, seed=seed, out=out, force=force, prior_people=prior_people)
    emit(result, as_json, _render)


def register(app: typer.Typer) -> None:
    """Attach the ``toy`` command group."""
    app.add_typer(toy_app, name="toy")
