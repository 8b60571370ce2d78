"""Root Typer application: ``sau-compress <command>``.

Each command lives in its own module of this package, which exposes ``register(app)``.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

try:  # typer vendors click from 0.2x on; its own copy raises the errors
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as _click_errors

from sau_compress import __version__


class _OneLineUsageErrors(TyperGroup):
    """The root group: a usage error (a bad option value, a missing argument, an unknown command) is one line,
    ``error: ...`` on stderr with exit code 2, like every other input error of the command line, instead of
    a usage banner and a framed box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # noqa: ANN201 - click's signature
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _click_errors.NoArgsIsHelpError as err:  # no command given: the help, as before
            err.show()
            sys.exit(err.exit_code)
        except _click_errors.UsageError as err:
            message = err.format_message().replace("Value error, ", "")
            where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            typer.echo(f"error: {message}{where}", err=True)
            sys.exit(err.exit_code)
        except _click_errors.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except _click_errors.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="sau-compress",
    help="Sparsity-Aware Unlearning for pruned LLMs: prune, unlearn, evaluate and export with llmcompressor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ("toy_cmd", "demo_cmd", "run_cmd", "eval_cmd", "export_cmd", "audit_cmd", "verify_cmd",
                   "unlearn_cmd", "model_cmd")


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
