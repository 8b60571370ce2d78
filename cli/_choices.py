"""The command line's closed choices as enums, so Typer rejects a bad value (exit code 2, the choices listed)
before any heavy import. Their values mirror the library's constants; ``tests/test_cli_options.py`` checks
that they stay equal (importing those constants here would import torch at start-up)."""

from __future__ import annotations

import re
from enum import Enum

import typer

__all__ = ["DemoModel", "Engine", "ExportFormat", "ForgetSplit", "PromptFormat", "RunFormat", "Suite", "check_device"]


class ExportFormat(str, Enum):
    """``sau_compress.export.FORMATS``."""

    sparse = "sparse-24-bitmask"
    dense = "dense"


class RunFormat(str, Enum):
    """``sau_compress.pipeline.EXPORT_FORMATS``."""

    auto = "auto"
    sparse = "sparse-24-bitmask"
    dense = "dense"


class DemoModel(str, Enum):
    """``sau_compress.pipeline.DEMO_MODELS``."""

    toy = "toy"
    smollm2 = "smollm2-135m-instruct"


class Suite(str, Enum):
    """``sau_compress.evaluation.suite.SUITES``."""

    toy = "toy"
    tofu = "tofu"


class ForgetSplit(str, Enum):
    """``sau_compress.evaluation.suite.FORGET_SPLITS``."""

    forget01 = "forget01"
    forget05 = "forget05"
    forget10 = "forget10"


class PromptFormat(str, Enum):
    """``sau_compress.data.PROMPT_FORMATS``."""

    auto = "auto"
    plain = "plain"
    chat = "chat"


class AttackScores(str, Enum):
    """``sau_compress.audit.ATTACK_SCORES``."""

    all = "all"
    verdict = "verdict"


class Engine(str, Enum):
    """``sau_compress.export.verify.ENGINES``."""

    transformers = "transformers"
    vllm = "vllm"
    ct014 = "compressed-tensors-0.14"


_DEVICE = re.compile(r"(cpu|cuda(:\d+)?)")


def check_device(value: str | None) -> str | None:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N`` (any case), checked before the command starts."""
    if value is None:
        return None
    device = value.strip().lower()
    if not _DEVICE.fullmatch(device):
        raise typer.BadParameter(f"'{value}' is not a device: use cpu, cuda or cuda:N")
    return device
