"""Register sau-compress's modifiers with llmcompressor whenever llmcompressor is imported.

llmcompressor has no entry points for third-party modifiers: a class must be passed to
``ModifierFactory.register`` before a YAML recipe naming it is parsed. Importing llmcompressor costs seconds
and rewires loguru, so ``import sau_compress`` does not import it. Instead it registers at once when
llmcompressor is already loaded, and otherwise leaves a one-shot import hook that registers right after
llmcompressor itself finishes importing, whoever imports it. Either way ``import sau_compress`` before
parsing a recipe is enough. llmcompressor's log sink is bound to stderr rather than stdout.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

__all__ = ["install"]

_TRIGGER = "llmcompressor"
#: each module registers its own modifier class with ``ModifierFactory`` when imported
_MODIFIER_MODULES = ("sau_compress.magnitude", "sau_compress.modifier")


def _register() -> None:
    try:
        for name in _MODIFIER_MODULES:
            importlib.import_module(name)
    except ImportError as err:  # llmcompressor partly installed: tell, but never break the user's import
        warnings.warn(f"SparsityAwareUnlearningModifier not registered with llmcompressor: {err}", stacklevel=3)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs llmcompressor's own loader, then registers our modifiers."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # llmcompressor replaces loguru's sinks with one on ``sys.stdout`` when imported; binding it to
        # stderr (loguru's own default) keeps stdout clean for program output such as ``--json``
        with contextlib.redirect_stdout(sys.stderr):
            self._inner.exec_module(module)
        from sau_compress import logs

        logs.reinstall()  # the CLI's sink and levels, when it set them (llmcompressor just removed every sink)
        _register()

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self._inner, name)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """A one-shot finder that wraps llmcompressor's loader."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != _TRIGGER:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    """Register now if llmcompressor is loaded, else when it is (idempotent)."""
    if _TRIGGER in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
