"""Ready llmcompressor recipes shipped with sau-compress (``importlib.resources.files("sau_compress.recipes")``).

Each ``*.yaml`` begins with a one-line ``#`` comment that ``sau-compress recipes`` shows.
"""
