"""How much the command line says: ``quiet`` (warnings and errors), ``normal``, ``verbose``.

One stderr sink for loguru carries our messages and llmcompressor's (llmcompressor replaces every loguru sink
with its own when it is imported; :mod:`sau_compress._registration` puts this one back right after). At the
default level our INFO lines show and the libraries' INFO and METRIC lines (llmcompressor's per-layer
SparseGPT reports, its pipeline choices) do not; their warnings show once each. ``quiet`` also turns off the
progress bars (tqdm, transformers, datasets) and ``verbose`` shows everything down to DEBUG.

Nothing here runs unless :func:`set_verbosity` is called (the CLI does; a library user keeps their own
logging setup).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from loguru import logger

__all__ = ["VERBOSITIES", "progress_disabled", "reinstall", "set_verbosity", "verbosity"]

VERBOSITIES = ("quiet", "normal", "verbose")
#: Python loggers whose warnings are about library internals the user cannot act on (torch.fx: llmcompressor's
#: tracing helpers calling a deprecated check); shown with ``verbose`` only
_INTERNAL_LOGGERS = ("torch.fx",)
_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSS} | {function} | {level} - {message}"
_OWN = "sau_compress"

_state: dict[str, Any] = {"verbosity": None, "sink": None}
_seen: set[tuple[str, str]] = set()


def verbosity() -> str | None:
    """The level set by :func:`set_verbosity`, or None when it was never called."""
    return _state["verbosity"]


def progress_disabled(default: bool = False) -> bool:
    """Whether a progress bar should stay off: ``default``, or always under ``quiet``."""
    return default or _state["verbosity"] == "quiet"


def _show(record: Any) -> bool:
    level = record["level"]
    name = record["name"] or ""
    if _state["verbosity"] == "verbose":
        return True
    own = name == _OWN or name.startswith(_OWN + ".")
    if own:
        return level.no >= (logging.WARNING if _state["verbosity"] == "quiet" else logging.INFO)
    # another library: its warnings and errors, each distinct one once (llmcompressor repeats "No
    # accelerator available!" at every stage); METRIC (level 38) is a report, not a warning
    if level.no < logging.WARNING or level.name == "METRIC":
        return False
    key = (name, record["message"])
    if key in _seen:
        return False
    _seen.add(key)
    return True


def reinstall() -> None:
    """Put the sink back after a library replaced loguru's sinks (llmcompressor does on import: every sink
    there now is its own); nothing before :func:`set_verbosity`."""
    if _state["verbosity"] is None:
        return
    logger.remove()
    _state["sink"] = logger.add(sys.stderr, level=0, format=_FORMAT, filter=_show)


def _install() -> None:
    """Our sink in place of loguru's default one (id 0) and of the one we added before; sinks someone else
    added (a test's, an application's) stay."""
    for handler in {0, _state.get("sink")} - {None}:
        try:
            logger.remove(handler)
        except ValueError:  # already gone
            pass
    _state["sink"] = logger.add(sys.stderr, level=0, format=_FORMAT, filter=_show)


def set_verbosity(level: str) -> None:
    """Set how much is logged, for the rest of the process: ``quiet`` | ``normal`` | ``verbose``.

    :raises ValueError: another level name (a programming error: the CLI offers only these)
    """
    if level not in VERBOSITIES:
        raise ValueError(f"verbosity must be one of {VERBOSITIES}, got {level!r}")
    _state["verbosity"] = level
    for name in _INTERNAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "verbose" else logging.ERROR)
    if level == "quiet":
        # read when these libraries are imported (tqdm's defaults, the hub's and datasets' switches) ...
        for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ[var] = "1"
        # ... and switched off here too when they already are
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if "datasets" in sys.modules:
            import datasets

            datasets.disable_progress_bars()
    _install()
