"""Importing sau_compress is cheap and still registers the modifiers with llmcompressor."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_import_does_not_load_llmcompressor_but_registers_when_it_loads():
    out = _run(
        """
        import sys
        import sau_compress, sau_compress.masking, sau_compress.unlearn, sau_compress.evaluation
        import sau_compress.export
        before = "llmcompressor" in sys.modules
        from llmcompressor.modifiers import ModifierFactory
        from llmcompressor.recipe import Recipe
        recipe = Recipe.create_instance(
            "unlearn_stage:\\n  unlearn_modifiers:\\n    SparsityAwareUnlearningModifier: "
            "{forget: f.jsonl, retain: r.jsonl, max_steps: 3}\\n"
        )
        print(before, type(recipe.modifiers[0]).__name__, recipe.modifiers[0].max_steps)
        """
    )
    assert out == "False SparsityAwareUnlearningModifier 3"


def test_registers_when_llmcompressor_was_imported_first():
    out = _run(
        """
        import llmcompressor
        import sau_compress
        from llmcompressor.recipe import Recipe
        recipe = Recipe.create_instance(
            "unlearn_stage:\\n  unlearn_modifiers:\\n    OneShotMagnitudePruningModifier: {sparsity: 0.5}\\n"
        )
        print(type(recipe.modifiers[0]).__name__)
        """
    )
    assert out == "OneShotMagnitudePruningModifier"


def test_importing_a_modifier_module_first_registers_both_without_warning():
    # sau_compress.magnitude imports llmcompressor itself: the registration that import triggers must not
    # trip over the half-imported module (it did: a circular-import warning and no registration)
    out = _run(
        """
        import warnings
        warnings.simplefilter("error")
        import sau_compress.magnitude
        from llmcompressor.modifiers import ModifierFactory
        names = ("SparsityAwareUnlearningModifier", "OneShotMagnitudePruningModifier")
        print(all(name in ModifierFactory._registered_registry for name in names))
        """
    )
    assert out == "True"
