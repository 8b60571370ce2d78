"""Filesystem helpers: atomic output folders and the user cache folder.

Every output of sau-compress is written into a temporary sibling folder and renamed into place, so a crash
never leaves a half-written result and an existing folder is never overwritten unless asked.

The temporary names carry the writing process's id: ``.NAME.tmp-PID-XXXXXXXX`` (the new content) and
``.NAME.old-PID`` (the folder being replaced, for a moment). A process killed mid-write (SIGKILL, power loss)
leaves them behind; the next output written into the same parent folder reports and removes those whose
process is gone (:func:`clean_stale_outputs`), and puts back a replaced folder whose replacement never
arrived.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loguru import logger

from sau_compress.errors import OutputExistsError, OutputNotWritableError

__all__ = ["OutputExistsError", "atomic_output_dir", "cache_dir", "check_writable_parent", "clean_stale_outputs"]

#: the names :func:`atomic_output_dir` gives its temporary folders: ``.NAME.tmp-PID-RANDOM``, ``.NAME.old-PID``
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:tmp-(?P<tmp_pid>\d+)-[a-z0-9_]+|old-(?P<old_pid>\d+))$")


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
    blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputNotWritableError(f"output folder '{out}' cannot be created: '{blocker}' is a file, not a folder")
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


def _pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this machine (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_outputs(parent: str | os.PathLike[str]) -> list[Path]:
    """Report (a loguru warning each) and remove the temporary folders :func:`atomic_output_dir` left in
    ``parent`` when its process was killed: only entries named as it names them (``.NAME.tmp-PID-XXXXXXXX``,
    ``.NAME.old-PID``) whose process ``PID`` no longer runs. A ``.NAME.old-PID`` whose ``NAME`` is missing is
    the folder an interrupted ``overwrite`` was replacing: it is put back as ``NAME`` instead.

    :param parent: the folder an output is about to be written into
    :return: the entries removed or put back
    """
    folder = Path(parent)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    handled: list[Path] = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None:
            continue
        pid = int(match["tmp_pid"] or match["old_pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        final = folder / match["name"]
        if match["old_pid"] is not None and not final.exists() and not final.is_symlink():
            os.replace(entry, final)
            logger.warning(f"'{final}' was being replaced by process {pid}, which stopped before the new content "
                           f"was in place: put back from '{entry.name}'")
        else:
            what = "unfinished output" if match["tmp_pid"] is not None else "replaced output"
            logger.warning(f"removing '{entry}': the {what} of process {pid}, which stopped before finishing")
            _remove(entry)
        handled.append(entry)
    return handled


@contextmanager
def atomic_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success rename it to ``path``.

    On error the temporary folder is removed and ``path`` is left as it was. With ``overwrite`` an existing
    ``path`` (a folder or a file) is replaced only after the new content is complete. The finished folder gets
    ordinary permissions (0755 folders, 0644 files under umask 022), not ``mkdtemp``'s 0700. Leftovers of
    killed runs in the parent folder are reported and removed first (:func:`clean_stale_outputs`).

    :param path: final output folder
    :param overwrite: replace an existing folder
    :raises OutputExistsError: ``path`` exists and ``overwrite`` is false
    """
    out = check_writable_parent(path)
    clean_stale_outputs(out.parent)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output folder '{out}' already exists; pass overwrite (--overwrite) to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
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
        _remove(old)
