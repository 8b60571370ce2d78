"""``sau-compress audit``: load a model (and its retain model), its QA sets, run the audit's attacks, write
the report, and optionally record the verdicts in an export's ``sau_compress.json``."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from sau_compress.errors import OutputExistsError, UserError
from sau_compress.pipeline.models import TOY_MODELS, load_model_and_tokenizer, resolve_model

__all__ = ["NO_RETAIN_MODEL", "audit_model", "record_in_sidecar"]

#: ``--retain-model none``: no retain model, the reference level is the holdout set's
NO_RETAIN_MODEL = "none"


def record_in_sidecar(folder: str | os.PathLike[str], summary: dict[str, Any]) -> Path:
    """Append ``summary`` to the ``audits`` list of the export's ``sau_compress.json``, atomically (a new file
    renamed over the old one). Only this key changes; the weights and every other file stay as they are.

    :raises UserError: the folder has no ``sau_compress.json`` (not a sau-compress export)
    """
    from sau_compress.export import SIDECAR_NAME
    from sau_compress.export.metadata import read_sidecar

    sidecar = read_sidecar(folder)
    if sidecar is None:
        raise UserError(f"--record: '{folder}' has no {SIDECAR_NAME}; only a sau-compress export (run or export "
                        "output) records its audits")
    sidecar.setdefault("audits", []).append(summary)
    target = Path(folder) / SIDECAR_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{SIDECAR_NAME}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(sidecar, indent=2) + "\n")
        os.chmod(tmp, target.stat().st_mode & 0o777)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info(f"recorded the audit in {target}")
    return target


def _sets(model: str, forget: str | None, retain: str | None, holdout: str | None,
          world_defaults: bool) -> tuple[dict[str, list[dict[str, Any]]], bool]:
    """The QA sets; with the toy world's defaults, missing ones come from it (as ``eval`` does).

    :return: the sets and whether all of them are the toy world's own
    """
    from sau_compress.data import load_qa
    from sau_compress.evaluation import load_suite_data

    if world_defaults and None in (forget, retain, holdout):
        from sau_compress.worlds import build_toy_world

        default_data = forget is None and retain is None and holdout is None
        data_dir = build_toy_world().data_dir
        return load_suite_data("toy", data_dir, forget=forget, retain=retain, holdout=holdout), default_data
    if forget is None or retain is None:
        raise UserError(f"auditing '{model}' needs --forget and --retain (defaults exist only for the toy models)")
    return {"forget": load_qa(forget), "retain": load_qa(retain),
            "holdout": load_qa(holdout) if holdout is not None else []}, False


def audit_model(
    model: str,
    forget: str | None = None,
    retain: str | None = None,
    holdout: str | None = None,
    retain_model: str | None = None,
    attacks: str | Sequence[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    record: bool = False,
    world_defaults: bool | None = None,
    prompt_format: str = "auto",
    device: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Audit a model: every attack's verdict and the scores behind it.

    :param model: a model folder, or ``toy`` / ``toy-retain``
    :param forget: forget set (any source :func:`sau_compress.data.load_qa` reads); likewise ``retain`` and
        ``holdout``. With the toy world's defaults, missing sets are the toy world's
    :param retain_model: the reference model (folder or toy name); ``none`` for the holdout level. Default:
        ``toy-retain`` when the sets are all the toy world's, else none
    :param attacks: comma-separated names or a list (default: all, :data:`sau_compress.audit.ATTACKS`)
    :param output: folder for ``audit.json``, ``audit.md`` and ``audit.png`` (written atomically)
    :param record: append the summary to ``model``'s ``sau_compress.json`` (an export's sidecar); nothing
        else of the model folder is touched, and without ``record`` nothing at all
    :param world_defaults: use the toy world's sets for missing ones (default: when ``model`` is a toy name)
    :param settings: :class:`sau_compress.audit.AuditSettings` fields (margins, relearn steps ...)
    :return: ``model``, ``holds``, ``attacks`` (``name``, ``holds``, scores ...), ``reference``, ``settings``,
        ``seconds``, ``output``, ``recorded``
    """
    from sau_compress.audit import AuditSettings, Subject, audit, audit_summary, parse_attacks, write_audit
    from sau_compress.data import resolve_prompt_format
    from sau_compress.io import check_writable_parent

    start = time.perf_counter()
    names = parse_attacks(attacks)
    try:
        audit_settings = AuditSettings(**(settings or {}))
    except TypeError as err:
        raise UserError(f"unknown audit setting: {err}") from err
    if output is not None:
        check_writable_parent(output)
        if Path(output).exists() and not overwrite:
            raise OutputExistsError(f"output folder '{output}' already exists; pass --overwrite to replace it")
    path = resolve_model(model)
    if record and model in TOY_MODELS:
        raise UserError("--record writes into an export's sau_compress.json; the toy models are not exports")
    defaults = model in TOY_MODELS if world_defaults is None else world_defaults
    sets, default_data = _sets(model, forget, retain, holdout, defaults)
    if retain_model is None and default_data:
        retain_model = "toy-retain"
    if retain_model is not None and retain_model.lower() == NO_RETAIN_MODEL:
        retain_model = None
    net, tokenizer = load_model_and_tokenizer(path, device)
    fmt = resolve_prompt_format(tokenizer, prompt_format)
    reference = None
    if retain_model is not None:
        ref_net, ref_tok = load_model_and_tokenizer(resolve_model(retain_model), device)
        reference = Subject(ref_net, ref_tok, resolve_prompt_format(ref_tok, prompt_format))
    result = audit(Subject(net, tokenizer, fmt), sets, reference, names, audit_settings)
    result.update(model=str(path), retain_model=retain_model, prompt_format=fmt,
                  seconds=time.perf_counter() - start)
    result["output"] = str(write_audit(output, result, overwrite)) if output is not None else None
    result["recorded"] = str(record_in_sidecar(path, audit_summary(result))) if record else None
    return result
