"""A TOFU world on a pretrained base model: the base fine-tuned into a memorizer and a retain model, cached.

The counterpart of :mod:`sau_compress.worlds.tofu` (a tiny Llama trained from scratch) on a real pretrained
model, as TOFU itself does it: the same splits by author (:func:`~sau_compress.worlds.tofu.select_tofu_subset`:
``forget`` = TOFU's forget01, ``retain`` = the first ``retain_authors`` authors of retain_perturbed,
``holdout`` = holdout01, authors never trained on), and two full fine-tunes of the base with one recipe:

- the *memorizer*: the base fine-tuned on forget + retain until it knows them;
- the *retain model*: the base fine-tuned on retain only (the reference of forget quality).

Fine-tuning keeps the base's own tokenizer and prompt format (its chat template where it has one: ``auto``,
what every evaluation asks in) and trains the answer tokens and the tokenizer's EOS only
(:func:`sau_compress.worlds.training.train_memorizer`: AdamW, warmup then cosine decay, clipped gradients).
The folder layout and ``world.json`` are the toy world's (:mod:`sau_compress.worlds.cache`), so every consumer
of a :class:`~sau_compress.worlds.cache.ToyWorld` reads it unchanged; ``world.json`` also names the base, its
weights' SHA-256, and both models' ``weights_sha256``. The world is cached under a key of every parameter,
the base's weights included.

Front doors name the base by any MODEL argument through
:func:`sau_compress.pipeline.build_pretrained_tofu_world`; this module takes the base's folder.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from sau_compress.data import resolve_prompt_format
from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.worlds.cache import ToyWorld, WorldCacheSpec, reuse_world, weights_checksum
from sau_compress.worlds.tofu import check_retain_authors, find_tofu_folder, select_tofu_subset
from sau_compress.worlds.training import finish_world, train_memorizer

__all__ = [
    "ANSWER_TOKENS",
    "DEFAULT_RETAIN_AUTHORS",
    "PRETRAINED_TOFU_VERSION",
    "FineTuneConfig",
    "base_weights_sha256",
    "default_finetune_config",
    "finetune_tofu_world",
    "load_base_model",
    "pretrained_tofu_location",
]

#: Bump when the subset selection or the fine-tuning procedure changes: it is part of the cache key.
PRETRAINED_TOFU_VERSION = 1
#: Retain authors of the default world: with forget's 2 authors, the CPU build of SmolLM2-135M's world (110
#: steps of 8 QA pairs, then 200 scored answers) takes 30 to 40 minutes on one thread; a second retain author
#: adds 40 steps (docs/pretrained-world.md has the measurements).
DEFAULT_RETAIN_AUTHORS = 1
#: Longest greedy answer scored: TOFU's longest answer is 94 SmolLM2 tokens (full.jsonl), plus EOS.
ANSWER_TOKENS = 96
#: The record a converted model folder keeps of its origin (``sau_compress.models.packaged.SOURCE_FILE``; the
#: worlds do not import the models layer).
BASE_SOURCE_FILE = "source.json"


@dataclass
class FineTuneConfig:
    """How a pretrained base is fine-tuned into a world's models (part of the cache key).

    The defaults are TOFU's recipe scaled to a 135M model: TOFU fine-tunes 7B models for 5 epochs at 1e-5
    (weight decay 0.01); a small model needs a higher rate and more epochs to recite its answers (measured on
    SmolLM2-135M: 8 epochs at 5e-5 left a loss of 0.38 and a forget ROUGE-L recall of 0.63, the base's being
    0.48), so 10 epochs at 1e-4, the top of the range fine-tunes on TOFU use.

    :ivar epochs: passes over the training records
    :ivar batch_size: QA pairs per optimizer step
    :ivar learning_rate: AdamW's peak rate (after ``warmup_steps``, then cosine decay to 5% of it)
    :ivar weight_decay: AdamW's decoupled weight decay
    :ivar warmup_steps: steps of linear warmup
    :ivar max_length: longest tokenized QA pair (TOFU's longest takes about 130 SmolLM2 tokens in chat format)
    :ivar bf16: bfloat16 autocast of the forward passes (for GPUs; the weights stay float32)
    """

    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 5
    max_length: int = 256
    bf16: bool = False


def default_finetune_config() -> FineTuneConfig:
    """The fine-tuning recipe :func:`finetune_tofu_world` uses when none is given."""
    return FineTuneConfig()


def base_weights_sha256(base_dir: str | os.PathLike[str]) -> str:
    """SHA-256 of a base model's weights: the ``weights_sha256`` its ``source.json`` records (a converted
    packaged or GGUF model), else :func:`~sau_compress.worlds.cache.weights_checksum` of its
    ``*.safetensors`` files.

    :raises InputNotFoundError: the folder holds neither a source record nor a safetensors file
    """
    folder = Path(base_dir)
    try:
        recorded = json.loads((folder / BASE_SOURCE_FILE).read_text()).get("weights_sha256")
    except (OSError, json.JSONDecodeError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and recorded:
        return recorded
    try:
        return weights_checksum(folder)
    except FileNotFoundError as err:
        raise InputNotFoundError(f"base model folder '{folder}' holds no *.safetensors weights") from err


def _folder_label(base_name: str) -> str:
    """A base's name as a cache folder name: its last path part, other characters than ``[A-Za-z0-9_.-]`` as
    ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(base_name).name).strip("-.") or "base"


def pretrained_tofu_location(
    base_dir: str | os.PathLike[str],
    base_name: str | None = None,
    retain_authors: int = DEFAULT_RETAIN_AUTHORS,
    seed: int = 0,
    config: FineTuneConfig | None = None,
    device: str = "cpu",
    out: str | os.PathLike[str] | None = None,
) -> tuple[str, Path, str]:
    """The cache key and folder of the world :func:`finetune_tofu_world` builds with these parameters, and the
    base's weights SHA-256 (in the key): ``<cache>/tofu-<base>/retain<N>-seed<S>-<key>``.

    :return: ``(key, folder, base_sha256)``
    """
    sha = base_weights_sha256(base_dir)
    spec = WorldCacheSpec(folder=f"tofu-{_folder_label(base_name or str(base_dir))}",
                          version=PRETRAINED_TOFU_VERSION, size_field="retain_authors", size_label="retain")
    key, root = spec.location(retain_authors, seed, config or default_finetune_config(), device, out,
                              extra={"base_sha256": sha})
    return key, root, sha


def load_base_model(base_dir: str | os.PathLike[str]) -> tuple[Any, Any]:
    """The base model (float32, on the CPU) and its tokenizer, read from its folder; a tokenizer without a
    padding token pads with EOS.

    :raises UserError: the folder does not hold a causal LM and its tokenizer, or the tokenizer has no EOS
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(base_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"base model '{folder}': cannot load a causal LM and its tokenizer ({first})") from err
    if tokenizer.eos_token_id is None:
        raise UserError(f"base model '{folder}': its tokenizer has no EOS token, which ends every trained answer")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def finetune_tofu_world(
    base_dir: str | os.PathLike[str],
    base_name: str | None = None,
    tofu_dir: str | os.PathLike[str] | None = None,
    retain_authors: int = DEFAULT_RETAIN_AUTHORS,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    config: FineTuneConfig | None = None,
    device: str = "cpu",
    max_new_tokens: int = ANSWER_TOKENS,
) -> ToyWorld:
    """Build (or reuse) the TOFU world on the pretrained model in ``base_dir``.

    :param base_dir: the base model's folder (a causal LM with its tokenizer; safetensors weights)
    :param base_name: what the user called the base (recorded in ``world.json``, names the cache folder);
        default: the folder's path
    :param tofu_dir: folder of TOFU's data files (default ``$SAU_COMPRESS_TOFU_DIR``; not needed when the
        world is cached)
    :param retain_authors: number of retain authors (20 QA pairs each; 1 to 20)
    :param seed: seed of the data order
    :param out: folder to build into (default: the cache folder under a key of the parameters)
    :param force: rebuild even when a matching world exists
    :param config: the fine-tuning recipe (default :func:`default_finetune_config`)
    :param device: where the models are fine-tuned and scored (``cpu``, ``cuda``); part of the key off the CPU
    :param max_new_tokens: longest greedy answer when scoring ROUGE-L
    :return: the world (``people``: its number of authors, forget + retain + holdout); ``rouge`` and
        ``retain_model_rouge`` are the two models' greedy-answer ROUGE-L recall per split
    :raises UserError: ``retain_authors`` out of range, no TOFU folder given or set, a base that does not load
    :raises InputNotFoundError: the base folder, its weights, the TOFU folder or one of its files is missing
    """
    check_retain_authors(retain_authors)
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise InputNotFoundError(f"base model folder '{base_dir}' not found")
    base_name = base_name or str(base_dir)
    config = config or default_finetune_config()
    start = time.perf_counter()
    key, root, base_sha = pretrained_tofu_location(base_dir, base_name, retain_authors, seed, config, device, out)
    label = f"TOFU on {base_name}"
    cached = reuse_world(root, key, force, start, label)
    if cached is not None:
        return cached

    splits = select_tofu_subset(find_tofu_folder(tofu_dir), retain_authors)
    authors = 2 + retain_authors + 2
    torch.manual_seed(seed)
    model, tokenizer = load_base_model(base_dir)
    fmt = resolve_prompt_format(tokenizer, "auto")
    logger.info(f"{label}: fine-tuning a memorizer on {len(splits['forget'])} forget + {len(splits['retain'])} "
                f"retain QA pairs and a retain model on the retain pairs ({config})")
    memorizer = train_memorizer(splits["forget"] + splits["retain"], tokenizer, config, seed, f"{label}: memorizer",
                                device, model)
    retain_model = train_memorizer(splits["retain"], tokenizer, config, seed, f"{label}: retain model", device,
                                   load_base_model(base_dir)[0])
    meta = {
        "version": PRETRAINED_TOFU_VERSION,
        "source": "TOFU (locuslab/TOFU, MIT): forget01_perturbed, retain_perturbed[:20*retain_authors], holdout01",
        "authors": authors,
        "retain_authors": retain_authors,
        "base": base_name,
        "base_sha256": base_sha,
        "prompt_format": fmt,
        "recipe": "full fine-tuning of the base: AdamW on the answer tokens and EOS, warmup then cosine decay",
    }
    return finish_world(root, key, splits, tokenizer, memorizer, retain_model, config, seed=seed, people=authors,
                        meta=meta, start=start, label=f"{label}: ", max_new_tokens=max_new_tokens, device=device,
                        record_weights=True)
