"""One library function per CLI command besides ``run``: the toy world, the demo, evaluation, comparison,
export and inspection. Each takes plain values, does the work, and returns a JSON-able dict; the CLI only
parses arguments and renders that dict."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sau_compress.errors import OutputExistsError, UserError
from sau_compress.pipeline.models import TOY_MODELS, load_model_and_tokenizer, resolve_model
from sau_compress.pipeline.run import run

__all__ = [
    "DEMO_MODELS",
    "DEMO_RECIPE",
    "PRETRAINED_DEMO_RECIPE",
    "build_world",
    "compare_runs",
    "default_recipe",
    "demo",
    "evaluate_model",
    "export_model",
    "fetch_model",
    "inspect_model",
    "packaged_models",
    "verify_model",
]

#: the recipe of ``sau-compress demo`` on the toy world (the toy's own settings)
DEMO_RECIPE = "toy-sparsegpt-2of4-graddiff"
#: the recipe of ``sau-compress demo --model NAME`` for a real pretrained model (the bundled default)
PRETRAINED_DEMO_RECIPE = "sparsegpt-2of4-sau-npo"
#: the models ``sau-compress demo --model`` runs on
DEMO_MODELS = ("toy", "smollm2-135m-instruct")


def default_recipe(model: str) -> str:
    """The recipe ``run`` uses when none is named: the toy's own settings for ``toy``/``toy-retain``
    (:data:`DEMO_RECIPE`), else the bundled default for pretrained models (:data:`PRETRAINED_DEMO_RECIPE`)."""
    return DEMO_RECIPE if model in TOY_MODELS else PRETRAINED_DEMO_RECIPE


def build_world(people: int = 40, seed: int = 0, out: str | os.PathLike[str] | None = None,
                force: bool = False, prior_people: int = 0) -> dict[str, Any]:
    """Build (or reuse) the toy world (with ``prior_people`` people of prior knowledge); return where it is and
    how well its models remember."""
    from sau_compress.worlds import MIN_PEOPLE, build_toy_world

    if people < MIN_PEOPLE:
        raise UserError(f"--people must be at least {MIN_PEOPLE} (one person per split), got {people}")
    if prior_people < 0:
        raise UserError(f"--prior-people must be 0 or more, got {prior_people}")
    return build_toy_world(people=people, seed=seed, out=out, force=force, prior_people=prior_people).to_dict()


def demo(output: str | os.PathLike[str] | None = None, device: str | None = None, model: str = "toy") -> dict[str, Any]:
    """The main job on a bundled model: prune with SparseGPT 2:4, unlearn, before/after summary, export. The
    default output lives in the user cache and is replaced on each demo run; a folder the caller names is never
    overwritten.

    - ``toy``: the shipped toy world's memorizer forgets the world's forget people with GradDiff
      (:data:`DEMO_RECIPE`), on one CPU thread with torch's deterministic algorithms; the result is written as
      a ``sparse-24-bitmask`` checkpoint into the output folder;
    - ``smollm2-135m-instruct``: the real pretrained model (fetched on first use) forgets a handful of world
      facts it knows and keeps the rest and the real authors it knows (the facts files shipped with the
      package, :func:`sau_compress.models.demo_facts`), with the bundled default recipe
      (:data:`PRETRAINED_DEMO_RECIPE`: NPO with a retain term); the output folder gets ``dense/`` (what
      current vLLM serves) and ``sparse-24-bitmask/``.

    :return: ``model``, ``run`` (what :func:`run` returns), and ``toy_world`` (its description) for ``toy`` or
        ``exports`` (format -> folder) for a pretrained model
    :raises UserError: a model :data:`DEMO_MODELS` does not name
    """
    from sau_compress.io import cache_dir

    if model not in DEMO_MODELS:
        raise UserError(f"unknown demo model '{model}'; choose from {list(DEMO_MODELS)}")
    if model == "toy":
        from sau_compress.worlds import build_toy_world

        world = build_toy_world()
        target = Path(output) if output is not None else cache_dir() / "demo" / DEMO_RECIPE
        with _deterministic_torch():
            result = run("toy", DEMO_RECIPE, target, overwrite=output is None, device=device)
        return {"model": model, "toy_world": world.to_dict(), "run": result}
    from sau_compress.models import demo_facts

    facts = demo_facts(model)
    target = Path(output) if output is not None else cache_dir() / "demo" / model
    if output is not None and target.exists():
        raise OutputExistsError(f"output folder '{target}' already exists; name a new folder")
    exports = {fmt: target / fmt for fmt in ("dense", "sparse-24-bitmask")}
    # each export is written atomically; the folder holding them is an ordinary one
    result = run(model, PRETRAINED_DEMO_RECIPE, exports["dense"], forget=str(facts["forget"]),
                 retain=str(facts["retain"]), export_format="dense", overwrite=output is None, device=device)
    export_model(str(exports["dense"]), "sparse-24-bitmask", exports["sparse-24-bitmask"], overwrite=output is None)
    return {"model": model, "run": result, "exports": {fmt: str(path) for fmt, path in exports.items()}}


def fetch_model(name: str, force: bool = False) -> dict[str, Any]:
    """Fetch a packaged model into the cache (once) and describe it
    (:func:`sau_compress.models.fetch_packaged_model`)."""
    from sau_compress.models import fetch_packaged_model

    return fetch_packaged_model(name, force=force)


def packaged_models() -> list[dict[str, Any]]:
    """Each packaged model (:data:`sau_compress.models.PACKAGED_MODELS`) with its folder and whether it is
    cached."""
    from dataclasses import asdict

    from sau_compress.models import PACKAGED_MODELS, packaged_model_dir
    from sau_compress.models.packaged import SOURCE_FILE

    return [{**asdict(spec), "cached": (packaged_model_dir(name) / SOURCE_FILE).is_file(),
             "path": str(packaged_model_dir(name))} for name, spec in PACKAGED_MODELS.items()]


@contextmanager
def _deterministic_torch() -> Iterator[None]:
    """The demo's run as deterministic as torch allows (settings restored afterwards): one CPU thread, so its
    figures do not depend on the machine's core count (CPU reductions split by thread round differently: 1 and
    2 threads gave forget ROUGE-L 0.090 and 0.118 on one machine), and torch's deterministic algorithms (a
    kernel without a deterministic version warns instead of failing; cuBLAS gets the fixed workspace they need
    unless the environment sets one)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    threads = torch.get_num_threads()
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.set_num_threads(threads)


def _is_results(path: str) -> bool:
    """Whether ``path`` names saved results (an eval JSON, or a folder with eval.json and no model)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.suffix == ".json"
    return p.is_dir() and (p / "eval.json").is_file() and not (p / "config.json").is_file()


def evaluate_model(
    model: str,
    suite: str = "toy",
    data_dir: str | os.PathLike[str] | None = None,
    forget: str | os.PathLike[str] | None = None,
    retain: str | os.PathLike[str] | None = None,
    holdout: str | os.PathLike[str] | None = None,
    forget_split: str = "forget10",
    retain_model: str | None = None,
    text_set: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    prompt_format: str = "auto",
    device: str | None = None,
    name: str | None = None,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a model with the unlearning metrics (TOFU definitions); write ``eval.json`` and ``report.md``
    into ``output`` when given.

    With the toy suite and no data named, the data is the toy world's and the reference for forget quality
    is ``toy-retain``.

    :param retain_model: reference for forget quality / privleak: a model folder, a toy name, or saved results
    :param prompt_format: ``auto`` | ``plain`` | ``chat`` (:func:`sau_compress.data.resolve_prompt_format`);
        the resolved one is recorded in the settings
    :return: ``name``, ``model``, ``suite``, ``seconds``, ``output``, ``summary`` (headline metrics)
    """
    from sau_compress.data import resolve_prompt_format
    from sau_compress.evaluation import build_record, evaluate, load_metrics, write_eval
    from sau_compress.evaluation.suite import SUITES
    from sau_compress.io import check_writable_parent

    if suite not in SUITES:
        raise UserError(f"unknown suite '{suite}'; choose from {list(SUITES)}")
    if output is not None:
        check_writable_parent(output)
        if Path(output).exists() and not overwrite:
            raise OutputExistsError(f"output folder '{output}' already exists; pass --overwrite to replace it")
    start = time.perf_counter()
    default_data = data_dir is None and forget is None and retain is None and holdout is None
    if suite == "toy" and data_dir is None and None in (forget, retain, holdout):
        from sau_compress.worlds import build_toy_world

        data_dir = build_toy_world().data_dir
        retain_model = retain_model or ("toy-retain" if default_data else None)
    path = resolve_model(model)
    lm, tokenizer = load_model_and_tokenizer(path, device)
    fmt = resolve_prompt_format(tokenizer, prompt_format)
    reference = ref_model = ref_tokenizer = None
    if retain_model is not None and _is_results(retain_model):
        reference = load_metrics(retain_model)
    elif retain_model is not None:
        ref_model, ref_tokenizer = load_model_and_tokenizer(resolve_model(retain_model), device)
    metrics = evaluate(
        lm, tokenizer, suite, data_dir, forget=forget, retain=retain, holdout=holdout,
        forget_split=forget_split, limit=limit, text_set=text_set, batch_size=batch_size,
        max_new_tokens=max_new_tokens, prompt_format=fmt, retain_model=ref_model,
        retain_tokenizer=ref_tokenizer, reference=reference,
    )
    seconds = time.perf_counter() - start
    settings = {
        "data_dir": str(data_dir) if data_dir else "default",
        "forget": str(forget) if forget else None, "retain": str(retain) if retain else None,
        "holdout": str(holdout) if holdout else None, "text_set": str(text_set) if text_set else None,
        "forget_split": forget_split if suite == "tofu" else None, "limit": limit,
        "retain_model": retain_model, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "prompt_format": fmt, "device": str(next(lm.parameters()).device),
    }
    label = name or (model if model in TOY_MODELS else path.name)
    record = build_record(metrics, label, str(path), suite, settings, seconds)
    written = write_eval(output, record, overwrite) if output is not None else None
    return {"name": label, "model": str(path), "suite": suite, "seconds": seconds,
            "output": str(written) if written else None, "summary": record["summary"]}


def compare_runs(runs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Compare evaluation runs: rows of headline metrics, and ``compare.md`` + ``compare.png`` in ``output``.

    :return: ``output``, ``markdown``, ``chart``, ``rows``, and ``metrics`` (``[name, better]`` in table order)
    """
    from sau_compress.evaluation.report import HEADLINE_METRICS, compare_rows, load_eval, write_compare

    records = [load_eval(r) for r in runs]
    if output is not None:
        result = write_compare(records, output, overwrite)
    else:
        result = {"output": None, "markdown": None, "chart": None, "rows": compare_rows(records)}
    result["metrics"] = [[metric, better] for metric, better, _ in HEADLINE_METRICS]
    return result


def _source(src: str) -> Path:
    """A checkpoint folder, or a toy model name (:func:`resolve_model`: a missing path or a file is named as such)."""
    return resolve_model(src)


def export_model(src: str, format: str, output: str | os.PathLike[str], overwrite: bool = False,
                 metadata: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write ``src`` as ``sparse-24-bitmask`` or ``dense``, atomically and verified, with a sidecar record.

    :param src: a checkpoint folder, or a toy model name
    :param metadata: a JSON file whose object is recorded in the sidecar
    :return: the sidecar record, plus ``output`` (:func:`sau_compress.export.export_model`)
    """
    from sau_compress.export import check_format
    from sau_compress.export import export_model as export_folder

    check_format(format)  # before a toy name is resolved
    return export_folder(_source(src), output, format=format, metadata=metadata, overwrite=overwrite)


def inspect_model(path: str) -> dict[str, Any]:
    """Per-layer shape, sparsity and 2:4 validity, weight bytes, format, and which vLLM can serve it."""
    from sau_compress.export import inspect_checkpoint

    return inspect_checkpoint(_source(path))


def verify_model(export: str, engine: str = "transformers", forget: str | None = None, retain: str | None = None,
                 n: int = 5, max_new_tokens: int = 16) -> dict[str, Any]:
    """Load an export in ``engine`` and compare its greedy tokens with ours
    (:func:`sau_compress.export.verify.verify_export`); the prompts come from ``forget``/``retain``, by default
    the toy world's sets (the shipped world)."""
    from sau_compress.export.verify import ENGINES, verify_export

    if engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}'; choose from {list(ENGINES)}")
    if forget is None or retain is None:
        from sau_compress.worlds import toy_data_file

        forget = forget or str(toy_data_file("forget"))
        retain = retain or str(toy_data_file("retain"))
    return verify_export(_source(export), engine, forget=forget, retain=retain, n=n, max_new_tokens=max_new_tokens)
