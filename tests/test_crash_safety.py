"""Recovery after a crash: leftovers of killed runs are reported and removed by the next run, only ours and only
stale; a run killed (SIGKILL) during export leaves the output untouched and the rerun succeeds, leaving nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sau_compress.io import atomic_output_dir, clean_stale_outputs


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_stale_leftovers_are_reported_and_removed_only_ours_and_only_dead(tmp_path, warnings):
    dead = _dead_pid()
    stale_tmp = tmp_path / f".out.tmp-{dead}-abc123_x"
    stale_tmp.mkdir()
    (stale_tmp / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "other").mkdir()
    stale_old = tmp_path / f".other.old-{dead}"  # replaced, and the new one is in place: only the removal missed
    stale_old.mkdir()
    live = tmp_path / f".out.tmp-{os.getppid()}-zzz999"  # another process's, still running
    live.mkdir()
    not_ours = [tmp_path / ".out.tmp-notapid", tmp_path / f".out.tmp-{dead}", tmp_path / "out.tmp-1-abc"]
    for path in not_ours:
        path.mkdir()

    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("new")

    assert (tmp_path / "out" / "a.txt").read_text() == "new"
    assert not stale_tmp.exists() and not stale_old.exists()
    assert live.is_dir() and all(p.is_dir() for p in not_ours)
    assert (tmp_path / "other").is_dir()
    text = "\n".join(warnings)
    assert f"removing '{stale_tmp}'" in text and f"process {dead}" in text and f"removing '{stale_old}'" in text
    assert len(warnings) == 2
    live.rmdir()
    for path in not_ours:
        path.rmdir()


def test_replaced_folder_whose_replacement_never_arrived_is_put_back(tmp_path, warnings):
    dead = _dead_pid()
    old = tmp_path / f".out.old-{dead}"
    old.mkdir()
    (old / "weights").write_text("previous")
    new = tmp_path / f".out.tmp-{dead}-abcdef12"
    new.mkdir()
    assert clean_stale_outputs(tmp_path) == [old, new]
    assert (tmp_path / "out" / "weights").read_text() == "previous"
    assert _litter(tmp_path) == []
    assert any("put back" in w for w in warnings)


def test_overwrite_onto_a_file_leaves_no_old_entry(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file where the folder goes")
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_onto_a_folder_leaves_no_old_entry(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


#: the export command, stopped for good once its files are written and before the rename (a test-only patch)
_BLOCKED_EXPORT = """
import os, sys, time
import sau_compress.export.write as write
original = write._write
def blocked(tmp, *args, **kwargs):
    original(tmp, *args, **kwargs)
    open(os.environ["SAU_TEST_READY"], "w").close()
    time.sleep(600)
write._write = blocked
from sau_compress.cli.app import main
sys.argv = ["sau-compress", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_sigkill_during_export_then_rerun_succeeds_and_leaves_nothing(tmp_path, tiny_model_dir, warnings):
    from typer.testing import CliRunner

    from sau_compress.cli.app import app

    out, ready = tmp_path / "exported", tmp_path / "ready"
    args = ["export", str(tiny_model_dir), "--format", "dense", "-o", str(out)]
    env = dict(os.environ, SAU_TEST_READY=str(ready))
    proc = subprocess.Popen([sys.executable, "-c", _BLOCKED_EXPORT, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert proc.poll() is None, "the export ended before it was killed"
            assert time.monotonic() < deadline, "the export never reached its writing step"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = _litter(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".exported.tmp-{proc.pid}-")  # killed mid-export
    assert not out.exists()
    source_files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()}

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert _litter(tmp_path) == []
    assert any(f"process {proc.pid}" in w and left[0] in w for w in warnings)
    assert {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()} == source_files  # the input never changes
