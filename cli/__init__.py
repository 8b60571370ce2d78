"""The ``sau-compress`` command line (shipped as :mod:`sau_compress.cli`): thin Typer commands, no logic."""
