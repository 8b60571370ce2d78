"""Atomic output folders: ordinary permissions once finished, nothing left behind on error."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from sau_compress.io import atomic_output_dir


def _modes(root):
    out = {}
    for folder, _, files in os.walk(root):
        out[os.path.relpath(folder, root)] = stat.S_IMODE(os.stat(folder).st_mode)
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return out


@pytest.mark.parametrize(("umask", "folder", "file"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_finished_output_has_the_permissions_of_the_umask(tmp_path, umask, folder, file):
    old = os.umask(umask)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            private = tmp / "sub" / "weights.bin"
            torch.save(torch.ones(3), private)
            os.chmod(private, 0o600)  # as some writers create their files
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    modes = _modes(tmp_path / "out")
    assert modes == {".": folder, "sub": folder, "sub/weights.bin": file, "config.json": file}


def test_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
