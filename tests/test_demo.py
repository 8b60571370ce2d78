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
from sau_compress.errors import OutputExistsError, UserError
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


def test_the_pretrained_demo_runs_the_default_recipe_on_the_shipped_facts_and_exports_both(tmp_path, monkeypatch):
    from sau_compress.models import demo_facts
    from sau_compress.pipeline import PRETRAINED_DEMO_RECIPE

    calls = []

    def run_spy(model, recipe, output, **kwargs):
        calls.append(("run", model, recipe, output, kwargs))
        return {"after": {}}

    def export_spy(src, fmt, output, overwrite=False):
        calls.append(("export", src, fmt, output, overwrite))

    monkeypatch.setattr(commands, "run", run_spy)
    monkeypatch.setattr(commands, "export_model", export_spy)
    facts = demo_facts("smollm2-135m-instruct")
    out = tmp_path / "smol"
    result = commands.demo(out, "cpu", model="smollm2-135m-instruct")
    assert calls == [
        ("run", "smollm2-135m-instruct", PRETRAINED_DEMO_RECIPE, out / "dense",
         {"forget": str(facts["forget"]), "retain": str(facts["retain"]), "export_format": "dense",
          "overwrite": False, "device": "cpu"}),
        ("export", str(out / "dense"), "sparse-24-bitmask", out / "sparse-24-bitmask", False),
    ]
    assert result == {"model": "smollm2-135m-instruct", "run": {"after": {}},
                      "exports": {"dense": str(out / "dense"), "sparse-24-bitmask": str(out / "sparse-24-bitmask")}}
    out.mkdir(exist_ok=True)  # a folder the caller names is never overwritten
    with pytest.raises(OutputExistsError, match="already exists"):
        commands.demo(out, "cpu", model="smollm2-135m-instruct")
    with pytest.raises(UserError, match=r"unknown demo model 'gpt2'; choose from \['toy', 'smollm2-135m-instruct'\]"):
        commands.demo(out, "cpu", model="gpt2")
