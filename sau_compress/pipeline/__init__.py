"""The library layer the front doors call: one function per command, each over the layers below.

- :func:`run`: recipe -> load once -> evaluate -> ``oneshot`` (prune -> SAU -> quantize) -> evaluate -> export
- :func:`unlearn_model`: the unlearning stage alone on a pruned model (one process, or sharded under torchrun;
  :func:`launch_sharded` starts torchrun)
- recipes: :func:`list_recipes`, :func:`read_recipe`, :func:`parse_overrides`, :func:`load_recipe`, ...
- :func:`build_world`, :func:`demo`, :func:`evaluate_model`, :func:`compare_runs`, :func:`export_model`,
  :func:`inspect_model`: the other commands
- :func:`audit_model`: ``sau-compress audit`` (attacks on an unlearned model, verdicts, report)
- :func:`build_pretrained_tofu_world`: the TOFU world on a pretrained base (the base named as any MODEL)
- :func:`run_oneshot`: the one way to apply a recipe to an in-memory model (shared with the benchmarks)
"""

from __future__ import annotations

from sau_compress.pipeline.audit import audit_model
from sau_compress.pipeline.commands import (
    DEMO_MODELS,
    DEMO_RECIPE,
    PRETRAINED_DEMO_RECIPE,
    build_world,
    compare_runs,
    default_recipe,
    demo,
    evaluate_model,
    export_model,
    fetch_model,
    inspect_model,
    packaged_models,
    verify_model,
)
from sau_compress.pipeline.models import TOY_MODELS, load_model_and_tokenizer, pick_device, resolve_model
from sau_compress.pipeline.oneshot import calibration_dataset, run_oneshot
from sau_compress.pipeline.recipes import (
    SAU_MODIFIER,
    apply_overrides,
    list_recipes,
    load_recipe,
    modifier_entries,
    parse_overrides,
    read_recipe,
    resolve_recipe,
)
from sau_compress.pipeline.run import EXPORT_FORMATS, run
from sau_compress.pipeline.unlearn import check_unlearn_args, launch_sharded, unlearn_model
from sau_compress.pipeline.worlds import build_pretrained_tofu_world

__all__ = [
    "DEMO_MODELS",
    "DEMO_RECIPE",
    "PRETRAINED_DEMO_RECIPE",
    "EXPORT_FORMATS",
    "SAU_MODIFIER",
    "TOY_MODELS",
    "apply_overrides",
    "audit_model",
    "build_pretrained_tofu_world",
    "build_world",
    "check_unlearn_args",
    "calibration_dataset",
    "compare_runs",
    "default_recipe",
    "demo",
    "evaluate_model",
    "export_model",
    "fetch_model",
    "inspect_model",
    "packaged_models",
    "launch_sharded",
    "list_recipes",
    "load_model_and_tokenizer",
    "load_recipe",
    "modifier_entries",
    "parse_overrides",
    "pick_device",
    "read_recipe",
    "resolve_model",
    "resolve_recipe",
    "run",
    "run_oneshot",
    "unlearn_model",
    "verify_model",
]
