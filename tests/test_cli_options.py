"""The root options (``--quiet``/``--verbose``), choice options as enums rejected before heavy imports, the log
filter, and ``run`` with recipes that have no SAU stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger
from typer.testing import CliRunner

from sau_compress import logs
from sau_compress.cli import _choices
from sau_compress.cli.app import app
from sau_compress.evaluation import SUMMARY_KEYS

PRUNE_ONLY = """# prune only
sparsity_stage:
  sparsity_modifiers:
    SparseGPTModifier: {sparsity: 0.5, mask_structure: "2:4", ignore: ["re:.*lm_head"]}
"""
PRUNE_QUANTIZE = PRUNE_ONLY + """quant_stage:
  quant_modifiers:
    QuantizationModifier: {targets: ["Linear"], scheme: FP8_DYNAMIC, ignore: ["re:.*lm_head"]}
"""


def test_choice_enums_mirror_the_library():
    from sau_compress.audit import ATTACK_SCORES
    from sau_compress.data import PROMPT_FORMATS
    from sau_compress.evaluation.suite import FORGET_SPLITS, SUITES
    from sau_compress.export import FORMATS
    from sau_compress.export.verify import ENGINES
    from sau_compress.pipeline import DEMO_MODELS, EXPORT_FORMATS

    assert tuple(e.value for e in _choices.ExportFormat) == FORMATS
    assert tuple(e.value for e in _choices.RunFormat) == EXPORT_FORMATS
    assert tuple(e.value for e in _choices.Suite) == SUITES
    assert tuple(e.value for e in _choices.ForgetSplit) == FORGET_SPLITS
    assert tuple(e.value for e in _choices.PromptFormat) == PROMPT_FORMATS
    assert tuple(e.value for e in _choices.Engine) == ENGINES
    assert tuple(e.value for e in _choices.AttackScores) == ATTACK_SCORES
    assert tuple(e.value for e in _choices.DemoModel) == DEMO_MODELS


BAD_CHOICES = [
    ["export", "toy", "--format", "zip", "-o", "x"],
    ["run", "toy", "--format", "zip", "-o", "x"],
    ["run", "toy", "--device", "gpu", "-o", "x"],
    ["eval", "toy", "--suite", "muse"],
    ["eval", "toy", "--prompt-format", "xml"],
    ["verify", "x", "--engine", "tgi"],
    ["unlearn", "x", "--forget", "f", "-o", "y", "--format", "zip"],
    ["unlearn", "x", "--forget", "f", "-o", "y", "--device", "gpu"],
    ["audit", "toy", "--prompt-format", "xml"],
    ["audit", "toy", "--device", "gpu"],
    ["audit", "toy", "--attack-scores", "some"],
    ["-q", "-v", "recipes"],
]


def test_bad_choices_exit_2_before_torch_is_imported():
    """Typer rejects each value while parsing: torch (and llmcompressor) are never imported. One fresh
    interpreter for all the cases (each case runs the app again, in the same process)."""
    code = (
        "import sys\nfrom sau_compress.cli.app import app\n"
        f"for args in {BAD_CHOICES!r}:\n"
        "    try:\n        app(args)\n    except SystemExit as e:\n"
        "        print(e.code, 'torch' in sys.modules, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"] * len(BAD_CHOICES), out.stdout + out.stderr
    assert out.stderr.count("Invalid value") == len(BAD_CHOICES)
    assert "--quiet and --verbose contradict each other" in " ".join(out.stderr.split())


def test_choices_read_case_insensitively():
    assert _choices.check_device(" CUDA:1 ") == "cuda:1" and _choices.check_device(None) is None
    res = CliRunner().invoke(app, ["export", "--help"])
    assert res.exit_code == 0 and "sparse-24-bitmask" in res.output


def _record(name: str, level: str, message: str) -> dict:
    return {"name": name, "level": logger.level(level), "message": message}


def test_log_filter_levels():
    """Our INFO shows by default; the libraries' INFO and METRIC only with -v; their warnings once each."""
    if "METRIC" not in [lvl.name for lvl in logger._core.levels.values()]:  # llmcompressor adds it on import
        logger.level("METRIC", no=38)
    saved = logs._state["verbosity"]
    try:
        logs._state["verbosity"] = "normal"
        logs._seen.clear()
        assert logs._show(_record("sau_compress.unlearn.driver", "INFO", "a"))
        assert not logs._show(_record("sau_compress.unlearn.driver", "DEBUG", "a"))
        assert not logs._show(_record("llmcompressor.core", "INFO", "b"))
        assert not logs._show(_record("llmcompressor.modifiers.pruning", "METRIC", "error 3.1"))
        assert logs._show(_record("llmcompressor.utils", "WARNING", "No accelerator"))
        assert not logs._show(_record("llmcompressor.utils", "WARNING", "No accelerator"))  # repeated
        assert logs._show(_record("llmcompressor.utils", "WARNING", "something else"))
        logs._state["verbosity"] = "quiet"
        assert not logs._show(_record("sau_compress.pipeline.run", "INFO", "c"))
        assert logs._show(_record("sau_compress.pipeline.run", "WARNING", "c"))
        assert logs.progress_disabled() and logs.progress_disabled(True)
        logs._state["verbosity"] = "verbose"
        assert logs._show(_record("llmcompressor.core", "DEBUG", "d"))
        assert not logs.progress_disabled()
    finally:
        logs._state["verbosity"] = saved
    with pytest.raises(ValueError, match="verbosity must be one of"):
        logs.set_verbosity("loud")


@pytest.mark.slow
def test_run_quiet_prune_only_prints_one_json_line(tiny_model_dir, qa_files, tmp_path):
    """Acceptance: ``run -q --json`` with a recipe without SAU prints the JSON object and nothing else
    (this machine has no accelerator: llmcompressor's one warning about that is allowed)."""
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(PRUNE_ONLY)
    out = tmp_path / "pruned"
    exe = Path(sys.executable).with_name("sau-compress")
    res = subprocess.run(
        [str(exe), "-q", "run", str(tiny_model_dir), "--recipe", str(recipe), "-o", str(out),
         "--forget", str(qa_files["forget"]), "--retain", str(qa_files["retain"]), "--device", "cpu",
         "--eval-limit", "1", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["modifiers"] == ["SparseGPTModifier"] and summary["format"] == "sparse-24-bitmask"
    assert summary["pattern_preserved"] is None and summary["unlearn"] is None
    assert summary["two_four"] is True and summary["sparsity"] == 0.5
    keys = {f"{s}_{k}" for s in ("forget", "retain") for k in SUMMARY_KEYS} | {"samples", "contained"}
    assert set(summary["before"]) == keys
    assert summary["pruned"] is None  # no SAU stage: no model right before unlearning
    # warnings only: no INFO or METRIC line, no progress bar
    assert all(" | WARNING - " in line for line in res.stderr.splitlines()), res.stderr
    sidecar = json.loads((out / "sau_compress.json").read_text())
    assert sidecar["unlearning"] is None and "SparseGPTModifier" in sidecar["recipe"]


def test_run_prune_and_quantize_without_sau_exports_dense(tiny_model_dir, qa_files, tmp_path):
    from sau_compress.export import load_model
    from sau_compress.pipeline import run

    recipe = tmp_path / "pq.yaml"
    recipe.write_text(PRUNE_QUANTIZE)
    summary = run(tiny_model_dir, recipe, tmp_path / "pq", forget=str(qa_files["forget"]),
                  retain=str(qa_files["retain"]), evaluate=False, device="cpu")
    assert summary["modifiers"] == ["SparseGPTModifier", "QuantizationModifier"]
    assert summary["quantized"] is True and summary["format"] == "dense" and summary["sparsity"] == 0.5
    config = json.loads((tmp_path / "pq" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "float-quantized"
    assert load_model(tmp_path / "pq") is not None
    # without a retain set there is nothing to calibrate SparseGPT with: a user error naming the fix
    from sau_compress.errors import UserError

    with pytest.raises(UserError, match="need calibration data"):
        run(tiny_model_dir, recipe, tmp_path / "pq2", evaluate=False, device="cpu")
