"""Filesystem helpers: atomic output folders and the user cache folder.

Every output of sau-compress is written into a temporary sibling folder and renamed into place, so a crash
never leaves a half-written result and an existing folder is never overwritten unless asked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sau_compress.errors import OutputExistsError, OutputNotWritableError

__all__ = ["OutputExistsError", "atomic_output_dir", "cache_dir", "check_writable_parent"]


def cache_dir() -> Path:
    """Return the user cache folder for sau-compress (``$SAU_COMPRESS_CACHE`` or ``~/.cache/sau-compress``)."""
    root = os.environ.get("SAU_COMPRESS_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sau-compress"


def check_writable_parent(path: str | os.PathLike[str]) -> Path:
    """Make sure ``path``'s parent folder exists (creating it) and is writable; raise naming the path if not.

    :param path: the output folder that will be created
    :return: the output path, absolute
    """
    out = Path(path).expanduser().absolute()
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputNotWritableError(f"output folder '{out}' cannot be created: {err.strerror or err}") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"output folder '{out}' is not writable: no write permission on '{parent}'")
    return out


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ordinary_permissions(root: Path) -> None:
    """Give a finished output the permissions a plain ``mkdir``/``open`` would have given it (0755 folders and
    0644 files under umask 022): ``mkdtemp`` and some writers create 0700/0600, which another account (a
    serving user) cannot read."""
    mask = _current_umask()
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success rename it to ``path``.

    On error the temporary folder is removed and ``path`` is left as it was. With ``overwrite`` an existing
    ``path`` is replaced only after the new content is complete. The finished folder gets ordinary
    permissions (0755 folders, 0644 files under umask 022), not ``mkdtemp``'s 0700.

    :param path: final output folder
    :param overwrite: replace an existing folder
    :raises OutputExistsError: ``path`` exists and ``overwrite`` is false
    """
    out = check_writable_parent(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output folder '{out}' already exists; pass overwrite (--overwrite) to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _ordinary_permissions(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
