"""The audit: attack a model, measure what it still knows of the forget set, and give each attack a verdict.

Every attack is measured on the model and, when one is given, on the retain model (trained without the
forget set) attacked the same way. An attack's verdict is ``holds`` when the attacked model's forget score is
at most the reference level plus a margin (:class:`AuditSettings`):

- forget score: ROUGE-L recall of the greedy forget answers (``forget_Q_A_ROUGE``); for ``mia`` the
  membership AUC of forget against holdout (the larger of min-k% and zlib, ``mia_min_k``/``mia_zlib``);
- reference level: the retain model's score under the same attack, or, without a retain model, the
  attacked model's own score on the holdout set (people it never saw), asked the same way (``mia``: 0.5).

Scores are computed with :mod:`sau_compress.evaluation` (the TOFU definitions): forget ROUGE-L, answer
probability, truth ratio, forget quality (KS p-value against the retain model's truth ratios under the same
attack) and model utility (harmonic mean over the retain set's probability, ROUGE and truth ratio).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loguru import logger
from torch import nn

from sau_compress.audit.attacks import (
    finetuned_copy,
    paraphrase_variants,
    prune_more_copy,
    quantized_copy,
    split_by_person,
)
from sau_compress.audit.quant import QUANT_SCHEMES
from sau_compress.errors import UserError
from sau_compress.evaluation import EvalContext, get_metric
from sau_compress.evaluation.suite import required_metrics, run_specs, suite_specs

__all__ = ["ATTACKS", "ATTACK_SCORES", "AuditSettings", "Subject", "audit", "measure", "parse_attacks"]

#: every attack, in the order they run (also the default list)
ATTACKS = ("quant-fp8", "quant-int8", "quant-int4", "prune-more", "paraphrase", "relearn", "mia")

#: what is measured under an attack (:attr:`AuditSettings.attack_scores`)
ATTACK_SCORES = ("all", "verdict")

#: audit score name -> the suite metric it is read from
SCORE_METRICS = {
    "forget_rouge": "forget_Q_A_ROUGE",
    "forget_prob": "forget_Q_A_Prob",
    "forget_truth_ratio": "forget_truth_ratio",
    "forget_quality": "forget_quality",
    "model_utility": "model_utility",
    "mia_loss": "mia_loss",
    "mia_min_k": "mia_min_k",
    "mia_zlib": "mia_zlib",
}


@dataclass
class AuditSettings:
    """The thresholds and attack strengths of an audit.

    :ivar rouge_margin: an attack holds when the forget ROUGE-L recall is at most the reference level plus
        this (absolute; 0.1 = one answer word in ten)
    :ivar mia_margin: ``mia`` holds when the membership AUC is at most the reference AUC plus this
    :ivar relearn_steps: fine-tuning steps of the relearning attack (and of its control)
    :ivar relearn_lr: their AdamW learning rate
    :ivar relearn_batch_size: records per step
    :ivar utility_records: retain records (evenly spread over the set) behind model utility; ``None``: all
    :ivar shots: worked examples (retain records) in the few-shot prompt variant
    :ivar batch_size: sequences per forward pass / generate call (64: the toy model is small; fewer calls)
    :ivar max_new_tokens: longest generated answer
    :ivar seed: seed of the fine-tuning order
    :ivar attack_scores: ``all``: every score (probabilities, truth ratio, forget quality, utility) of the model
        and the retain model under each attack; ``verdict``: under each attack only the score the verdict reads
        (forget ROUGE-L recall), the unattacked measurement still in full. Verdicts are the same; on a 135M
        model it is several times faster (``docs/audit.md``).
    """

    rouge_margin: float = 0.1
    mia_margin: float = 0.1
    relearn_steps: int = 20
    relearn_lr: float = 1e-3
    relearn_batch_size: int = 8
    utility_records: int | None = 40
    shots: int = 3
    batch_size: int = 64
    max_new_tokens: int = 64
    seed: int = 0
    attack_scores: str = "all"

    def __post_init__(self) -> None:
        for name in ("relearn_steps", "relearn_batch_size", "shots", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"audit setting {name} must be at least 1, got {getattr(self, name)}")
        for name in ("rouge_margin", "mia_margin"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"audit setting {name} must be in [0, 1], got {getattr(self, name)}")
        if self.relearn_lr <= 0:
            raise UserError(f"audit setting relearn_lr must be positive, got {self.relearn_lr}")
        if self.attack_scores not in ATTACK_SCORES:
            raise UserError(f"audit setting attack_scores must be one of {list(ATTACK_SCORES)}, "
                            f"got {self.attack_scores!r}")


@dataclass
class Subject:
    """A model with its tokenizer and resolved prompt format (``plain`` or ``chat``)."""

    model: nn.Module
    tokenizer: Any
    prompt_format: str


def parse_attacks(value: str | Sequence[str] | None) -> list[str]:
    """Attack names from a comma-separated string or a list (``None`` or ``all``: every attack, in order).

    :raises UserError: an unknown name, or an empty list
    """
    if value is None:
        return list(ATTACKS)
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    if names == ["all"]:
        return list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise UserError(f"--attacks: unknown attack(s) {unknown or names}; choose from {list(ATTACKS)} or 'all'")
    return [n for n in ATTACKS if n in names]


def measure(
    subject: Subject,
    sets: dict[str, list[dict[str, Any]]],
    settings: AuditSettings,
    reference: dict[str, Any] | None = None,
    utility: bool = True,
    mia: bool = False,
    holdout_rouge: bool = True,
    verdict_only: bool = False,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The audit's scores of one model on ``sets`` (``forget``, ``retain``, optional ``holdout``).

    :param reference: the retain model's results (``forget_truth_ratio``) for forget quality
    :param utility: also model utility on the retain set
    :param mia: also the membership AUCs (needs a holdout set)
    :param holdout_rouge: also the ROUGE-L recall of greedy answers on the holdout set (the holdout level)
    :param verdict_only: only the forget ROUGE-L recall (and ``holdout_rouge``): ``reference``, ``utility`` and
        ``mia`` are ignored
    :return: scores (:data:`SCORE_METRICS` names plus ``holdout_rouge``; absent ones ``None``) and the raw
        metric results (for use as a reference)
    """
    has_holdout = bool(sets.get("holdout"))
    names = ["forget_Q_A_ROUGE"]
    if not verdict_only:
        names += ["forget_Q_A_Prob", "forget_truth_ratio"]
        if reference is not None:
            names.append("forget_quality")
        if utility:
            names.append("model_utility")
        if mia and has_holdout:
            names += ["mia_loss", "mia_min_k", "mia_zlib"]
    used = {k: v for k, v in sets.items() if v}
    if "retain" in used:
        used["retain"] = _spread(used["retain"], settings.utility_records)
    ctx = EvalContext(subject.model, subject.tokenizer, used,
                      batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                      prompt_format=subject.prompt_format)
    results = run_specs(ctx, required_metrics(suite_specs("toy"), names), reference)
    scores: dict[str, float | None] = {
        short: (results[name]["agg_value"] if name in results else None) for short, name in SCORE_METRICS.items()
    }
    scores["holdout_rouge"] = (float(get_metric("rouge")(ctx, data="holdout")["agg_value"])
                               if has_holdout and holdout_rouge else None)
    return scores, results


def _spread(records: list[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """``n`` records evenly spread over ``records`` (all of them when ``n`` is ``None`` or not smaller)."""
    if n is None or n >= len(records):
        return records
    if n < 1:
        raise UserError(f"utility_records must be at least 1, got {n}")
    return [records[i * len(records) // n] for i in range(n)]


def _verdict(score: float | None, level: float | None, margin: float) -> bool | None:
    if score is None or level is None:
        return None
    return bool(score <= level + margin)


class _Auditor:
    """Runs the attacks on one model (and its retain model), sharing the unattacked measurements."""

    def __init__(self, subject: Subject, sets: dict[str, list[dict[str, Any]]], retain: Subject | None,
                 settings: AuditSettings, reference_cache: MutableMapping[str, Any] | None = None) -> None:
        self.subject, self.sets, self.retain, self.settings = subject, sets, retain, settings
        self.cache = reference_cache
        self._base: dict[str, Any] = {}

    def cache_key(self, name: str, sets: dict[str, list[dict[str, Any]]], utility: bool, mia: bool) -> str:
        """The key of the retain model's measurement under attack ``name``: the attack, the settings and a
        digest of the records measured (a change to any of them is a different measurement)."""
        blob = json.dumps([name, asdict(self.settings), utility, mia, sets], sort_keys=True, default=str)
        return f"{name}|{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def pair(self, transform: Callable[[Subject], Subject] | None, sets: dict[str, list[dict[str, Any]]],
             utility: bool = True, mia: bool = False, name: str = "base") -> dict[str, Any]:
        """Measure the retain model, then the model, each after ``transform`` (``None``: as they are).

        With a reference cache the retain model's measurement under attack ``name`` is read from it when
        there, else measured and stored in it. Under an attack (``name`` other than ``base``) with
        ``attack_scores: verdict`` only the verdict's score is measured."""
        out: dict[str, Any] = {"model": None, "retain_model": None}
        lean = self.lean(name)
        ref_results = None
        if self.retain is not None:
            key = self.cache_key(name, sets, utility, mia) if self.cache is not None else ""
            if self.cache is not None and key in self.cache:
                out["retain_model"], ref_results = self.cache[key]["scores"], self.cache[key]["results"]
                logger.info(f"audit: the retain model under {name} read from the reference cache")
            else:
                ref = transform(self.retain) if transform else self.retain
                out["retain_model"], ref_results = measure(ref, sets, self.settings, None, utility, mia, False, lean)
                if self.cache is not None:
                    self.cache[key] = {"scores": out["retain_model"], "results": ref_results}
        subject = transform(self.subject) if transform else self.subject
        out["model"], _ = measure(subject, sets, self.settings, ref_results, utility, mia, self.retain is None, lean)
        return out

    def lean(self, name: str) -> bool:
        """Whether the measurement ``name`` is an attacked one that measures only the verdict's score."""
        return self.settings.attack_scores == "verdict" and name != "base"

    def base(self) -> dict[str, Any]:
        if not self._base:
            logger.info("audit: measuring the unattacked model")
            self._base = self.pair(None, self.sets, utility=True, mia=True)
        return self._base

    def verdict(self, name: str, before: dict[str, Any], after: dict[str, Any], score: str = "forget_rouge",
                **details: Any) -> dict[str, Any]:
        """One attack's entry: scores before/after, the reference level, the margin and ``holds``."""
        margin = self.settings.mia_margin if score == "mia_auc" else self.settings.rouge_margin
        if self.retain is not None:
            level, basis = after["retain_model"].get(score), "retain_model"
        elif score == "mia_auc":
            level, basis = 0.5, "chance"
        else:
            level, basis = after["model"].get("holdout_rouge"), "holdout"
        value = after["model"].get(score)
        holds = _verdict(value, level, margin)
        if holds is None:
            logger.warning(f"{name}: no reference level (no retain model and no holdout set); no verdict")
        return {
            "name": name, "holds": holds, "score": score, "value": value, "level": level, "level_basis": basis,
            "margin": margin, "threshold": None if level is None else level + margin,
            "before": before["model"], "after": after["model"],
            "retain_model_before": before["retain_model"], "retain_model_after": after["retain_model"],
            **details,
        }

    # -------------------------------------------------------------------------------------- attacks

    def quant(self, name: str) -> dict[str, Any]:
        scheme = QUANT_SCHEMES[name]
        after = self.pair(lambda s: Subject(quantized_copy(s.model, scheme), s.tokenizer, s.prompt_format), self.sets,
                          name=name)
        return self.verdict(name, self.base(), after, scheme=asdict(scheme))

    def prune_more(self) -> dict[str, Any]:
        info: dict[str, Any] = {}

        def transform(s: Subject) -> Subject:
            variant, stats = prune_more_copy(s.model)
            info.setdefault("model" if s is self.subject else "retain_model", stats)
            return Subject(variant, s.tokenizer, s.prompt_format)

        after = self.pair(transform, self.sets, name="prune-more")
        if self.cache is not None and self.retain is not None:  # the retain model's pruning, kept beside its scores
            entry = self.cache[self.cache_key("prune-more", self.sets, True, False)]
            info.setdefault("retain_model", entry.setdefault("pruning", info.get("retain_model")))
        return self.verdict("prune-more", self.base(), after, pruning=info)

    def paraphrase(self) -> dict[str, Any]:
        variants = paraphrase_variants(self.sets, self.subject.tokenizer, self.subject.prompt_format,
                                       self.settings.shots)
        measured = {v: self.pair(None, dict(self.sets, **vsets), utility=False, name=f"paraphrase:{v}")
                    for v, vsets in variants.items()}
        entries = {v: self.verdict(f"paraphrase:{v}", self.base(), m) for v, m in measured.items()}
        # the verdict is the worst variant's: the one whose forget score exceeds its level the most
        worst = max(entries, key=lambda v: -1e9 if entries[v]["value"] is None or entries[v]["level"] is None
                    else entries[v]["value"] - entries[v]["level"])
        out = dict(entries[worst], name="paraphrase", variant=worst)
        out["variants"] = {v: {k: e[k] for k in ("holds", "value", "level", "threshold", "after",
                                                 "retain_model_after")} for v, e in entries.items()}
        if any(e["holds"] is False for e in entries.values()):
            out["holds"] = False
        return out

    def relearn(self) -> dict[str, Any]:
        train, test = split_by_person(self.sets["forget"])
        st = self.settings
        test_sets = dict(self.sets, forget=test)
        n_control = len(train)

        def tuned(records: list[dict[str, Any]]) -> Callable[[Subject], Subject]:
            return lambda s: Subject(finetuned_copy(s.model, s.tokenizer, records, st.relearn_steps, st.relearn_lr,
                                                    st.relearn_batch_size, s.prompt_format, st.seed),
                                     s.tokenizer, s.prompt_format)

        before = self.pair(None, test_sets, utility=False, name="relearn:before")
        after = self.pair(tuned(train), test_sets, name="relearn")
        control_records = self.sets["retain"][:n_control]
        control_model = tuned(control_records)(self.subject)
        control, _ = measure(control_model, test_sets, st, utility=False, verdict_only=self.lean("relearn"))
        return self.verdict("relearn", before, after, train_records=len(train), test_records=len(test),
                            steps=st.relearn_steps, learning_rate=st.relearn_lr, control=control,
                            control_records=len(control_records))

    def mia(self) -> dict[str, Any]:
        base = self.base()
        if not self.sets.get("holdout"):
            raise UserError("the mia attack needs a holdout set (--holdout)")

        def with_auc(side: dict[str, Any] | None, attack: bool) -> dict[str, Any] | None:
            if side is None:
                return None
            auc = max(side["mia_min_k"], side["mia_zlib"]) if attack else side["mia_loss"]
            return dict(side, mia_auc=auc)

        before = {k: with_auc(v, False) for k, v in base.items()}
        after = {k: with_auc(v, True) for k, v in base.items()}
        return self.verdict("mia", before, after, score="mia_auc")


def audit(
    subject: Subject,
    sets: dict[str, list[dict[str, Any]]],
    retain: Subject | None = None,
    attacks: Sequence[str] | None = None,
    settings: AuditSettings | None = None,
    reference_cache: MutableMapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``attacks`` on ``subject`` and give each a verdict (see the module docstring).

    :param subject: the model to audit (never modified: weight attacks work on copies)
    :param sets: QA sets ``forget``, ``retain`` and (for ``mia`` and the holdout level) ``holdout``
    :param retain: the retain model, the reference level; ``None``: the holdout level
    :param attacks: attack names (default: every one of :data:`ATTACKS`)
    :param reference_cache: the retain model's measurements per attack, read when there and stored when not
        (keyed by attack, settings and records): auditing many models against one retain model measures it
        once per attack. The caller keeps one cache per retain model; it must hold JSON-like values only.
    :return: ``attacks`` (one entry per attack: ``name``, ``holds``, ``score``, ``value``, ``level``,
        ``threshold``, ``before``/``after`` scores ...), ``holds`` (all attacks hold), ``settings``,
        ``reference`` (``retain_model`` or ``holdout``), ``seconds``
    """
    settings = settings or AuditSettings()
    names = parse_attacks(attacks)
    for name in ("forget", "retain"):
        if not sets.get(name):
            raise UserError(f"the audit needs a non-empty {name} set (--{name})")
    if retain is None and not sets.get("holdout"):
        raise UserError("the audit needs a reference: pass --retain-model or --holdout")
    auditor = _Auditor(subject, sets, retain, settings, reference_cache)
    entries = []
    for name in names:
        start = time.perf_counter()
        logger.info(f"audit: attack {name}")
        if name.startswith("quant-"):
            entry = auditor.quant(name)
        elif name == "prune-more":
            entry = auditor.prune_more()
        else:
            entry = getattr(auditor, name)()
        entry["seconds"] = time.perf_counter() - start
        logger.info(f"audit: {name} {'holds' if entry['holds'] else 'FAILS'} "
                    f"({entry['score']} {entry['value']} vs threshold {entry['threshold']})")
        entries.append(entry)
    verdicts = [e["holds"] for e in entries]
    return {
        "holds": all(v is True for v in verdicts),
        "attacks": entries,
        "reference": "retain_model" if retain is not None else "holdout",
        "settings": asdict(settings),
        "sizes": {k: len(v) for k, v in sets.items() if v},
    }
