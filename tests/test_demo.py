"""``sau-compress demo``: the main job on the shipped toy world, run on one CPU thread with torch's
deterministic algorithms, the caller's settings restored afterwards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sau_compress.cli.app import app
from sau_compress.pipeline import DEMO_RECIPE, commands
from sau_compress.worlds import SHIPPED_DIR

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_demo_runs_deterministically_on_one_thread_and_restores_the_settings(tmp_path, monkeypatch):
    seen = {}

    def spy(model, recipe, output, overwrite, device):
        seen.update(model=model, recipe=recipe, output=output, overwrite=overwrite, threads=torch.get_num_threads(),
                    deterministic=torch.are_deterministic_algorithms_enabled(),
                    warn_only=torch.is_deterministic_algorithms_warn_only_enabled())
        if model == "fail":
            raise RuntimeError("stopped")
        return {"after": {}}

    monkeypatch.setattr(commands, "run", spy)
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = commands.demo(tmp_path / "out", "cpu")
        assert seen == {"model": "toy", "recipe": DEMO_RECIPE, "output": tmp_path / "out", "overwrite": False,
                        "threads": 1, "deterministic": True, "warn_only": True}
        assert result["toy_world"]["shipped"] is True
        assert result["toy_world"]["root"] == str(next(SHIPPED_DIR.glob("people40-seed0-*")))
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
        # restored after an error too
        monkeypatch.setattr(commands, "run", lambda *a, **k: spy("fail", *a[1:], **k))
        with pytest.raises(RuntimeError, match="stopped"):
            commands.demo(tmp_path / "out", "cpu")
        assert seen["threads"] == 1 and seen["deterministic"]
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(original)


@pytest.mark.slow
def test_the_demo_gives_the_figures_the_readme_states(tmp_path):
    """README's line on the demo's forget and retain ROUGE-L holds within 0.02 (the machines' rounding)."""
    lines = re.findall(r"^The demo on the shipped world gives forget ROUGE-L 1\.000 -> ([0-9.]+), "
                       r"retain ROUGE-L 1\.000 -> ([0-9.]+)", README.read_text(), flags=re.M)
    assert len(lines) == 1, "README states the demo's figures once"
    forget, retain = (float(x) for x in lines[0])
    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "demo"), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)["run"]["after"]
    assert abs(after["forget_rouge"] - forget) <= 0.02, (after, forget)
    assert abs(after["retain_rouge"] - retain) <= 0.02, (after, retain)
    assert (tmp_path / "demo" / "config.json").is_file()
