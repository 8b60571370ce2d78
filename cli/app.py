"""Root Typer application: ``sau-compress <command>``.

Each command lives in its own module of this package, which exposes ``register(app)``.
"""

from __future__ import annotations

import importlib

import typer

from sau_compress import __version__

app = typer.Typer(
    name="sau-compress",
    help="Sparsity-Aware Unlearning for pruned LLMs: prune, unlearn, evaluate and export with llmcompressor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ("toy_cmd", "demo_cmd", "run_cmd", "eval_cmd", "export_cmd", "audit_cmd", "verify_cmd",
                   "unlearn_cmd")


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only (no progress bars)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Every log line, the libraries' INFO too."),
) -> None:
    """Sparsity-Aware Unlearning for pruned LLMs."""
    from sau_compress.logs import set_verbosity

    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose contradict each other; pass one")
    set_verbosity("quiet" if quiet else "verbose" if verbose else "normal")


for _name in COMMAND_MODULES:
    importlib.import_module(f"sau_compress.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
