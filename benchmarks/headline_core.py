"""The headline benchmark's machinery: worlds, cached pruning, matched-forgetting runs, evaluation.

Used by ``benchmarks/headline.py`` (the command); see that file for what is measured and why.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from headline_prune import (  # noqa: F401  (re-exported: core.pruned_dir, core.PRUNERS, ...)
    CALIBRATION_SAMPLES,
    PRUNERS,
    STRUCTURES,
    calibration_records,
    default_work_dir,
    evenly,
    make_pruner,
    prune,
    pruned_dir,
    pruned_path,
)
from headline_worlds import (  # noqa: F401  (re-exported: core.MODEL_SIZES, core.world_label, ...)
    BUNDLED_TOFU_DIR,
    MODEL_SIZES,
    MODIFIER_DEFAULTS,
    PRETRAINED_PRIOR_FILES,
    PRETRAINED_RETAIN_EVAL,
    PRETRAINED_STAGE,
    PRETRAINED_WORLDS,
    TARGET_RULES,
    WORLD_PEOPLE,
    WORLD_PRIOR,
    build_world,
    headline_tofu_data_dir,
    pretrained_prior,
    retain_band,
    world_label,
)
from loguru import logger

from sau_compress.data import load_qa, tokenize_records

__all__ = [
    "DEFAULT_MODES",
    "FQ_DECADES",
    "METHODS",
    "MODEL_SIZES",
    "MODES",
    "PRUNERS",
    "STRUCTURES",
    "VARIANTS",
    "RunSpec",
    "World",
    "aggregate_score",
    "append_record",
    "evaluate_model",
    "evaluate_start",
    "forget_rouge",
    "fq_score",
    "load_world",
    "make_spec",
    "prune",
    "pruned_dir",
    "pruned_path",
    "run_budget",
    "run_unlearning",
    "unlearn_then_sparsify",
    "variant_fields",
    "world_label",
]

METHODS = ("grad_diff", "npo", "simnpo", "grad_ascent")
#: every mode the benchmark can run: the toolkit's modes, plus the baselines a practitioner gets without it
#: (``naive``: no mask while training, the original mask re-applied at the end; ``naive-reprune``: no mask, then
#: the same pruner run again on the unlearned model)
MODES = ("dense", "masked", "topk", "sau", "naive", "naive-reprune")
#: the modes a profile runs unless told otherwise
DEFAULT_MODES = ("dense", "masked", "topk", "sau")
#: forget quality is a KS p-value; its log-scaled score reaches 0 at this many decades below 1 (two fully
#: separated samples of 40 truth ratios give p ~ 1e-20)
FQ_DECADES = 20.0
#: sequences per forward pass / ``generate`` call in evaluations and forgetting checks: a whole forget set of
#: the capacity world in one call (on one CPU thread 240 answers take 0.28 s at once against 0.49 s in
#: batches of 64; generation is batch-size independent, tests/test_evaluation.py)
EVAL_BATCH = 256


@dataclass
class World:
    """A benchmark world: model folders, QA sets, tokenizer, forgetting target and retain-model reference.

    :ivar target: forgetting target (:data:`TARGET_RULES`): the memorizer's ROUGE-L recall on the holdout set
        (people/authors it never saw: a model that has forgotten should answer forget questions no better than
        unseen ones), or on a pretrained world the upper end of the retain model's own 95% band on the forget set
    :ivar reference: the retain model's ``forget_truth_ratio`` result (the reference of forget quality)
    """

    name: str
    root: Path
    model_dir: Path
    retain_model_dir: Path
    forget: list[dict[str, Any]]
    retain: list[dict[str, Any]]
    holdout: list[dict[str, Any]]
    retain_eval: list[dict[str, Any]]
    tokenizer: Any
    max_new_tokens: int
    parameters: int = 0
    train_device: str = "cpu"
    target: float = 0.0
    reference: dict[str, Any] = field(default_factory=dict)
    memorizer_rouge: dict[str, float] = field(default_factory=dict)
    retain_model_rouge: dict[str, float] = field(default_factory=dict)
    forget_items: list[dict[str, Any]] = field(default_factory=list)
    retain_items: list[dict[str, Any]] = field(default_factory=list)
    #: prior knowledge (facts learnt before the world's people; none in the tiny worlds) and the part of it
    #: model utility is measured on
    prior: list[dict[str, Any]] = field(default_factory=list)
    prior_eval: list[dict[str, Any]] = field(default_factory=list)
    #: the forget and holdout records the evaluations, the forgetting checks and the target use: all of them,
    #: or a few evenly spaced ones in a quick profile (``eval_records``); training and calibration use all
    forget_eval: list[dict[str, Any]] = field(default_factory=list)
    holdout_eval: list[dict[str, Any]] = field(default_factory=list)
    #: SHA-256 of the memorizer's and the retain model's weights (builds differ across machines)
    weights_sha256: dict[str, str] = field(default_factory=dict)
    #: the evaluation sets tokenized once for every evaluation and forgetting check of the world's runs
    tokens: Any = field(default=None, repr=False)
    #: forget ROUGE-L recall of each model folder as loaded (a run's start; every run from a folder shares it)
    start_rouge: dict[str, float] = field(default_factory=dict)
    #: the SAU stage's fields where the world differs from the benchmark's own (a pretrained world: the
    #: modifier's defaults for ``retain_weight`` and ``max_grad_norm``, :data:`PRETRAINED_STAGE`)
    stage_fields: dict[str, Any] = field(default_factory=dict)
    #: what the pruners calibrate on: ``retain`` (the toy worlds) or ``train`` (forget + retain, the data the
    #: memorizer was fine-tuned on: a pretrained world, pruned before any deletion request arrives)
    calibration: str = "retain"
    #: how :attr:`target` was set (a key of :data:`TARGET_RULES`)
    target_rule: str = "memorizer-holdout"

    def describe(self) -> dict[str, Any]:
        """JSON-able summary of the world's scale."""
        return {
            "world": self.name,
            "root": str(self.root),
            "train_device": self.train_device,
            "parameters": self.parameters,
            "forget": len(self.forget),
            "retain": len(self.retain),
            "retain_eval": len(self.retain_eval),
            "holdout": len(self.holdout),
            "prior": len(self.prior),
            "prior_eval": len(self.prior_eval),
            "target_forget_rouge": self.target,
            "target_rule": self.target_rule,
            "memorizer_rouge": self.memorizer_rouge,
            "retain_model_rouge": self.retain_model_rouge,
            "max_new_tokens": self.max_new_tokens,
            "weights_sha256": self.weights_sha256,
        }


def load_world(name: str, retain_eval: int, device: str, tofu_dir: str | None = None, size: str = "tiny",
               work: Path | None = None, eval_records: int | None = None, target_rule: str | None = None) -> World:
    """Build or reuse a world, measure its forgetting target and the retain model's reference.

    :param name: ``toy`` (:func:`sau_compress.worlds.build_toy_world`), ``tofu``
        (:func:`sau_compress.worlds.build_tofu_world`) or a pretrained world of :data:`PRETRAINED_WORLDS`
        (``tofu-smollm2``: :func:`sau_compress.pipeline.build_pretrained_tofu_world`, fine-tuned on ``device``;
        ``size`` does not apply to it)
    :param retain_eval: retain records used for model utility (evenly spaced: every person/author counts); as
        many prior-knowledge records join them where the world has prior knowledge
    :param device: where the reference evaluations run (and where a non-tiny world is trained)
    :param tofu_dir: TOFU data folder (default :func:`headline_tofu_data_dir`)
    :param size: a key of :data:`MODEL_SIZES`
    :param work: where to cache the target and the reference (:func:`_cached`; every worker process of the
        headline loads the world, and on a pretrained world they take minutes); ``None``: measured each time
    :param eval_records: evaluate on this many evenly spaced forget, holdout, retain and prior records (a quick
        profile's smoke run: its target and reference are measured on them too); ``None``: every record
    :param target_rule: a key of :data:`TARGET_RULES`; ``None``: ``retain-band`` on a pretrained world,
        ``memorizer-holdout`` elsewhere
    :raises ValueError: unknown world, size or target rule
    """
    from transformers import AutoTokenizer

    from sau_compress.evaluation import TokenizedSets
    from sau_compress.export import load_model

    rule = target_rule or ("retain-band" if name in PRETRAINED_WORLDS else "memorizer-holdout")
    if rule not in TARGET_RULES:
        raise ValueError(f"unknown target rule '{rule}'; choose from {list(TARGET_RULES)}")
    built, max_new_tokens, train_device = build_world(name, size, device, tofu_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(built.model_dir))
    sets = {s: load_qa(str(built.data_dir / f"{s}.jsonl")) for s in ("forget", "retain", "holdout")}
    prior_file = built.data_dir / "prior.jsonl"
    if prior_file.is_file():
        prior = load_qa(str(prior_file))
    else:  # a pretrained world: utility as TOFU's, on the real authors and world facts the base model knew
        prior = pretrained_prior(tofu_dir) if name in PRETRAINED_WORLDS else []
    world = World(
        name=world_label(name, size),
        root=built.root,
        model_dir=built.model_dir,
        retain_model_dir=built.retain_model_dir,
        forget=sets["forget"],
        retain=sets["retain"],
        holdout=sets["holdout"],
        retain_eval=evenly(sets["retain"], min(retain_eval, eval_records or retain_eval)),
        prior=prior,
        prior_eval=evenly(prior, min(retain_eval, eval_records or retain_eval)) if prior else [],
        forget_eval=evenly(sets["forget"], eval_records or len(sets["forget"])),
        holdout_eval=evenly(sets["holdout"], eval_records or len(sets["holdout"])),
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        parameters=built.parameters,
        train_device=train_device,
        memorizer_rouge=dict(built.rouge),
        retain_model_rouge=dict(built.retain_model_rouge),
        weights_sha256=dict(built.weights_sha256),
        tokens=TokenizedSets(),
        stage_fields=dict(PRETRAINED_STAGE) if name in PRETRAINED_WORLDS else {},
        calibration="train" if name in PRETRAINED_WORLDS else "retain",
    )
    world.forget_items = tokenize_records(tokenizer, world.forget, max_length=256)
    world.retain_items = tokenize_records(tokenizer, world.retain, max_length=256)

    def measure() -> dict[str, Any]:
        from sau_compress.evaluation import evaluate

        memorizer = load_model(built.model_dir).to(device).eval()
        target = forget_rouge(memorizer, world, world.holdout_eval)
        retain_model = load_model(built.retain_model_dir).to(device).eval()
        ref = evaluate(retain_model, tokenizer, "toy", datasets=_eval_sets(world), metrics=["forget_truth_ratio"],
                       batch_size=EVAL_BATCH, max_new_tokens=max_new_tokens)
        return {"target": target, "reference": {"forget_truth_ratio": ref["forget_truth_ratio"]}}

    ident = ["reference", str(built.root), world.weights_sha256, max_new_tokens, device,
             [r["question"] for r in world.forget_eval], [r["question"] for r in world.holdout_eval]]
    measured = measure() if work is None else _cached(work, ident, measure)
    world.target, world.reference, world.target_rule = measured["target"], measured["reference"], rule
    if rule == "retain-band":

        def band() -> dict[str, Any]:
            scores = forget_rouges(load_model(built.retain_model_dir).to(device).eval(), world)
            return {"target": retain_band(scores), "retain_forget_rouge": sum(scores) / len(scores)}

        world.target = (band() if work is None else _cached(work, ["retain-band", *ident], band))["target"]
    logger.info(f"world {name}: target forget ROUGE-L recall <= {world.target:.4f} ({rule})")
    return world


def _eval_sets(world: World) -> dict[str, list[dict[str, Any]]]:
    sets = {"forget": world.forget_eval, "retain": world.retain_eval, "holdout": world.holdout_eval}
    if world.prior_eval:
        sets["prior"] = world.prior_eval  # model utility then covers it (the toy suite's prior block)
    return sets


def forget_rouge(model: torch.nn.Module, world: World, records: list[dict[str, Any]] | None = None) -> float:
    """Mean ROUGE-L recall of greedy answers to ``records`` (default: the forget set as evaluated)."""
    scores = forget_rouges(model, world, records)
    return sum(scores) / len(scores)


@torch.no_grad()
def forget_rouges(model: torch.nn.Module, world: World, records: list[dict[str, Any]] | None = None) -> list[float]:
    """ROUGE-L recall of the greedy answer to each of ``records`` (default: the forget set as evaluated)."""
    from sau_compress.data import resolve_prompt_format
    from sau_compress.evaluation import generate_answers, rouge_l_recall

    records = world.forget_eval if records is None else records
    was_training = model.training
    model.eval()
    fmt = resolve_prompt_format(world.tokenizer, "auto", log=False)
    prompts = None if world.tokens is None else world.tokens.prompts(world.tokenizer, records, "question", fmt)
    answers = generate_answers(model, world.tokenizer, [r["question"] for r in records],
                               max_new_tokens=world.max_new_tokens, batch_size=EVAL_BATCH, prompts=prompts)
    model.train(was_training)
    return [rouge_l_recall(a, r["answer"]) for a, r in zip(answers, records, strict=True)]


def fq_score(forget_quality: float | None) -> float:
    """Forget quality on [0, 1]: ``1 + log10(FQ) / FQ_DECADES``, clipped (the score inside :func:`aggregate_score`)."""
    if forget_quality is None or forget_quality <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 + math.log10(forget_quality) / FQ_DECADES))


def aggregate_score(model_utility: float | None, forget_quality: float | None) -> float | None:
    """The benchmark's single number: harmonic mean of model utility and log-scaled forget quality.

    ``fq_score = clip(1 + log10(forget_quality) / FQ_DECADES, 0, 1)``: 1 when the forget truth ratios are
    indistinguishable from the retain model's (p = 1), 0.935 at p = 0.05, 0.5 at p = 1e-10, 0 at complete
    separation. Both parts are in [0, 1]; the harmonic mean is high only when both are.
    """
    if model_utility is None or forget_quality is None or not math.isfinite(model_utility):
        return None
    score = fq_score(forget_quality)
    if score <= 0.0 or model_utility <= 0.0:
        return 0.0
    return 2.0 * model_utility * score / (model_utility + score)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, world: World, forget_answers: bool = True) -> dict[str, Any]:
    """Forget quality (KS vs the retain model), model utility (retain set, and prior knowledge where the world
    has it), ROUGE-L recalls, aggregate.

    :param forget_answers: generate answers to the forget questions for their ROUGE-L (else ``forget_rouge`` is
        ``None``; forget quality and utility do not need them)
    """
    from sau_compress.evaluation import evaluate

    model.eval()
    wanted = ["forget_quality", "model_utility", "retain_Q_A_ROUGE", "prior_Q_A_ROUGE"]
    res = evaluate(model, world.tokenizer, "toy", datasets=_eval_sets(world),
                   metrics=wanted + (["forget_Q_A_ROUGE"] if forget_answers else []),
                   batch_size=EVAL_BATCH, max_new_tokens=world.max_new_tokens, reference=world.reference,
                   tokens=world.tokens)
    out = {
        "forget_quality": res["forget_quality"]["agg_value"],
        "model_utility": res["model_utility"]["agg_value"],
        "forget_rouge": res["forget_Q_A_ROUGE"]["agg_value"] if forget_answers else None,
        "retain_rouge": res["retain_Q_A_ROUGE"]["agg_value"],
        # prior knowledge's ROUGE-L recall (None in a world without it)
        "prior_rouge": res["prior_Q_A_ROUGE"]["agg_value"] if "prior_Q_A_ROUGE" in res else None,
        # what model utility is the harmonic mean of (probabilities and truth ratios stay informative where
        # pruning took a ROUGE-L component, and with it the harmonic mean, to 0)
        "utility_components": res["model_utility"].get("components"),
    }
    out["aggregate"] = aggregate_score(out["model_utility"], out["forget_quality"])
    return out


def evaluate_start(folder: Path, world: World, device: str, work: Path) -> dict[str, Any]:
    """:func:`evaluate_model` of the model in ``folder`` as loaded (the memorizer, or a pruned folder of
    :func:`pruned_dir`), cached under ``work/starts``: keyed by the folder, the world's weights and its
    evaluation sets, so ``pruning_damage.py`` and ``headline.py`` measure each starting point once (on a
    pretrained world one evaluation takes minutes on the CPU). ``eval_seconds`` is the measured time."""
    from sau_compress.export import load_model

    def measure() -> dict[str, Any]:
        start = time.perf_counter()
        row = evaluate_model(load_model(folder).to(device).eval(), world)
        row["eval_seconds"] = time.perf_counter() - start
        return row

    sets = _eval_sets(world)
    return _cached(work, [str(folder), world.weights_sha256, world.max_new_tokens, device,
                          {k: [r["question"] for r in v] for k, v in sets.items()}], measure)


def _cached(work: Path, ident: Any, compute: Any) -> dict[str, Any]:
    """``compute()``'s JSON result, cached in ``work/starts`` under the SHA-256 of ``ident`` (JSON) and written
    atomically (parallel processes may race to write it; each writes a whole file)."""
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    path = work / "starts" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
    return value


# ------------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class RunSpec:
    """One unlearning run. ``setting`` is ``unpruned`` or ``<pruner> <structure>``."""

    world: str
    kind: str  # "matrix" | "sweep"
    setting: str
    method: str
    mode: str
    seed: int
    learning_rate: float
    topk_ratio: float = 0.3
    alpha: float = 0.1

    def key(self) -> str:
        return (f"{self.world}|{self.setting}|{self.method}|{self.mode}|{self.seed}|{self.learning_rate:g}|"
                f"{self.topk_ratio:g}|{self.alpha:g}")


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to the JSONL file ``path`` in one ``write`` (parallel workers share the file, and a
    stopped benchmark resumes from the lines already there)."""
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def make_spec(world: str, kind: str, setting: str, method: str, variant: str, seed: int,
              learning_rate: float) -> RunSpec:
    """The run of configuration ``variant`` (:func:`variant_fields`), its topk_ratio and alpha in the spec (and
    so in its key and record)."""
    fields = variant_fields(variant)
    return RunSpec(world, kind, setting, method, variant, seed, learning_rate, fields["topk_ratio"], fields["alpha"])


def _sau_stage(world: World, callback: Any, method: str, learning_rate: float, max_steps: int, batch_size: int,
               seed: int, device: str, **fields: Any) -> Any:
    """The benchmark's SAU stage, as a recipe would hold it: the base method's retain weight, no progress bars,
    assigned a job with the world's tokenized sets and ``callback``; ``fields`` are further modifier fields.
    Without clipping unless ``fields`` or the world's ``stage_fields`` set ``max_grad_norm`` (the toy worlds'
    matched-forgetting runs were all recorded so; a pretrained world clips as the modifier does)."""
    from sau_compress.modifier import SparsityAwareUnlearningModifier
    from sau_compress.unlearn import UnlearnJob

    stage = dict(world.stage_fields)
    retain_weight = stage.pop("retain_weight", 1.0)
    if method == "grad_ascent":  # no retain term
        retain_weight = 0.0
    fields = {**stage, **fields}
    fields.setdefault("max_grad_norm", None)

    modifier = SparsityAwareUnlearningModifier(
        method=method, learning_rate=learning_rate, max_steps=max_steps, batch_size=batch_size,
        retain_weight=retain_weight, seed=seed, device=device, progress=False, **fields,
    )
    modifier.assign(UnlearnJob(world.forget_items, world.retain_items, world.tokenizer.pad_token_id, callback))
    return modifier


def run_unlearning(
    spec: RunSpec,
    world: World,
    model_dir: Path,
    max_steps: int,
    check_every: int,
    batch_size: int,
    device: str,
    keep_model: bool = False,
) -> tuple[dict[str, Any], torch.nn.Module | None]:
    """Unlearn from a fresh load of ``model_dir`` until forget ROUGE-L recall <= the world's target.

    The run goes through the recipe path ``sau-compress run`` uses: a
    :class:`~sau_compress.modifier.SparsityAwareUnlearningModifier` stage applied with
    :func:`sau_compress.pipeline.run_oneshot`, assigned an :class:`~sau_compress.unlearn.UnlearnJob` that holds
    the world's tokenized sets and the forgetting check (its callback). The unpruned runs set ``allow_dense``.

    The forgetting check (greedy answers to the forget questions) runs every ``check_every`` steps; its
    time is measured and subtracted from the training wall time.

    :return: the run's record, and the model when ``keep_model``
    """
    from sau_compress.export import load_model
    from sau_compress.pipeline import run_oneshot

    model = load_model(model_dir).to(device)
    if str(model_dir) not in world.start_rouge:  # the same for every run from this folder
        world.start_rouge[str(model_dir)] = forget_rouge(model, world)
    start_rouge = world.start_rouge[str(model_dir)]
    checks: list[tuple[int, float]] = [(0, start_rouge)]
    check_seconds = 0.0

    def callback(step: int, net: torch.nn.Module) -> bool:
        nonlocal check_seconds
        if step % check_every:
            return False
        t = time.perf_counter()
        value = forget_rouge(net, world)
        check_seconds += time.perf_counter() - t
        checks.append((step, value))
        return value <= world.target

    reached_at_start = start_rouge <= world.target
    result = None
    reprune = spec.mode == "naive-reprune"
    if reprune and spec.setting == "unpruned":
        raise ValueError("naive-reprune needs a pruned setting")
    if not reached_at_start:
        # the recipe path users run: the SAU stage inside oneshot, fed the world's tokenized sets; naive-reprune
        # is the stage in mode 'unmasked' followed by the setting's pruner (calibrated as in `prune`)
        modifier = _sau_stage(world, callback, spec.method, spec.learning_rate, max_steps, batch_size, spec.seed,
                              device, allow_dense=spec.setting == "unpruned",
                              **variant_fields(spec.mode, spec.topk_ratio, spec.alpha))
        if reprune:
            pruner, structure = spec.setting.split(" ")
            run_oneshot(model, world.tokenizer, [modifier, make_pruner(pruner, structure)],
                        calibration=calibration_records(world),
                        num_calibration_samples=CALIBRATION_SAMPLES, max_seq_length=256)
        else:
            run_oneshot(model, world.tokenizer, [modifier])
        result = modifier.result
    model.to(device)
    steps = 0 if result is None else result.steps
    # the last check saw the model as it ended: its answers are this model's (not so after naive-reprune's second
    # pruning), and the run stopped because of it when it was at the target
    stopped_at_check = checks[-1][0] == steps
    checked_last = stopped_at_check and not reprune
    t = time.perf_counter()
    metrics = evaluate_model(model, world, forget_answers=not checked_last)
    if checked_last:
        metrics["forget_rouge"] = checks[-1][1]
    eval_seconds = time.perf_counter() - t
    reached = reached_at_start or (result is not None and stopped_at_check and checks[-1][1] <= world.target)
    if reprune:  # the checks saw the model before the pruner ran again: what counts is the re-pruned model
        reached = reached and metrics["forget_rouge"] <= world.target
    train_seconds = 0.0 if result is None else max(0.0, result.seconds - check_seconds)
    record = {
        "key": spec.key(),
        "world": spec.world,
        "kind": spec.kind,
        "setting": spec.setting,
        "method": spec.method,
        "mode": spec.mode,
        "seed": spec.seed,
        "learning_rate": spec.learning_rate,
        "topk_ratio": spec.topk_ratio,
        "alpha": spec.alpha,
        "start_forget_rouge": start_rouge,
        "target": world.target,
        "reached": bool(reached),
        "steps": steps,
        "checks": checks,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / steps if steps else None,
        "saliency_seconds": 0.0 if result is None else result.saliency_seconds,
        "check_seconds": check_seconds,
        "eval_seconds": eval_seconds,
        "peak_memory_bytes": 0 if result is None else result.peak_memory_bytes,
        "memory_measure": None if result is None else result.memory_measure,
        "optimizer_state_bytes": 0 if result is None else result.optimizer_state_bytes,
        "pattern_preserved": True if result is None else result.pattern_preserved or reprune,
        "world_weights_sha256": world.weights_sha256.get("model"),
        "device": device,
        **metrics,
    }
    if not keep_model:
        del model
        gc.collect()
        return record, None
    return record, model


def unlearn_then_sparsify(
    model: torch.nn.Module, world: World, base: dict[str, Any], pruner: str, structure: str
) -> dict[str, Any]:
    """Prune an already unlearned dense model (a copy) and evaluate it: the order SAU argues against."""
    import copy

    net = copy.deepcopy(model).cpu()
    start = time.perf_counter()
    prune(net, world, pruner, structure)
    prune_seconds = time.perf_counter() - start
    metrics = evaluate_model(net.to(base["device"]), world)
    del net
    gc.collect()
    return {
        **{k: base[k] for k in ("world", "method", "seed", "learning_rate", "steps", "reached", "train_seconds",
                                "seconds_per_step", "peak_memory_bytes", "optimizer_state_bytes", "device",
                                "world_weights_sha256", "target")},
        "key": f"uts|{base['key']}|{pruner} {structure}",
        "kind": "unlearn_then_sparsify",
        "setting": f"{pruner} {structure}",
        "mode": "unlearn→prune",
        "topk_ratio": None,
        "alpha": None,
        "prune_seconds": prune_seconds,
        "dense_forget_rouge": base["forget_rouge"],
        **metrics,
    }


# ------------------------------------------------------------------------------------------ fixed budget

#: configurations the benchmark compares: name -> SparsityAwareUnlearningModifier fields. A matched-forgetting
#: run's ``mode`` is one of these names (or ``naive-reprune``: mode ``unmasked`` followed by the setting's
#: pruner); the fixed-budget protocol runs them too. ``topk`` and ``sau`` keep topk_ratio 0.3 and alpha 0.1.
VARIANTS: dict[str, dict[str, Any]] = {
    "dense": {"mode": "dense"},
    "naive": {"mode": "naive"},
    "masked": {"mode": "masked"},
    "topk": {"mode": "topk"},
    "sau": {"mode": "sau"},
    "sau-alpha1": {"mode": "sau", "alpha": 1.0},
    "sau-alpha4": {"mode": "sau", "alpha": 4.0},
    "contrastive": {"mode": "topk", "saliency": "contrastive"},
    "sau-contrastive": {"mode": "sau", "saliency": "contrastive"},
    "sau-refresh10": {"mode": "sau", "saliency_refresh_steps": 10},
    "topk-k0.1": {"mode": "topk", "topk_ratio": 0.1},
    "topk-k0.5": {"mode": "topk", "topk_ratio": 0.5},
}


def variant_fields(name: str, topk_ratio: float = 0.3, alpha: float = 0.1) -> dict[str, Any]:
    """The modifier fields of configuration ``name`` (:data:`VARIANTS`; ``naive-reprune`` is mode ``unmasked``;
    a plain mode name outside it is that mode), on top of ``topk_ratio`` and ``alpha``.

    :raises ValueError: ``name`` is neither a variant nor a mode of :data:`MODES`
    """
    if name == "naive-reprune":
        fields: dict[str, Any] = {"mode": "unmasked"}
    elif name in VARIANTS:
        fields = dict(VARIANTS[name])
    elif name in MODES:
        fields = {"mode": name}
    else:
        raise ValueError(f"unknown configuration '{name}'; choose from {[*VARIANTS, 'naive-reprune']}")
    return {"topk_ratio": topk_ratio, "alpha": alpha, **fields}


def run_budget(
    world: World,
    model_dir: Path,
    variant: str,
    method: str,
    seed: int,
    learning_rate: float,
    steps: int,
    every: int,
    batch_size: int,
    device: str,
    max_grad_norm: float | None = 1.0,
) -> list[dict[str, Any]]:
    """One fixed-budget run: ``steps`` optimizer steps from a fresh load of ``model_dir`` (clipping at
    ``max_grad_norm``, as open-unlearning's trainers do), never stopped early; the model is evaluated
    (:func:`evaluate_model`, without forget answers) every ``every`` steps. In mode ``naive`` the evaluated model is
    the re-masked one.

    :return: one point per evaluation: ``step``, the metrics, and the forget-quality score of
        :func:`aggregate_score` (``fq_score``)
    """
    from sau_compress.export import load_model
    from sau_compress.pipeline import run_oneshot

    fields = variant_fields(variant)
    model = load_model(model_dir).to(device)
    points: list[dict[str, Any]] = []

    def callback(step: int, net: torch.nn.Module) -> bool:
        if step % every == 0:
            metrics = evaluate_model(net, world, forget_answers=False)
            net.train()
            points.append({"step": step, **metrics, "fq_score": fq_score(metrics["forget_quality"])})
        return False

    modifier = _sau_stage(world, callback, method, learning_rate, steps, batch_size, seed, device,
                          max_grad_norm=max_grad_norm, **fields)
    run_oneshot(model, world.tokenizer, [modifier])
    del model
    gc.collect()
    return points

