"""Training a world's models: the tiny Llama, the memorizer recipe, and the memorization figures.

:func:`train_world` trains a world's byte-level BPE tokenizer, its *memorizer* (forget + retain, until it
has memorized them) and its *retain model* (retain only: the reference of forget quality), scores both with
greedy-answer ROUGE-L recall per split, and writes the world folder (:func:`sau_compress.worlds.cache.write_world`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from tqdm.auto import tqdm

from sau_compress.data import collate, tokenize_records
from sau_compress.errors import UserError
from sau_compress.evaluation import generate_answers, rouge_l_recall
from sau_compress.worlds.cache import ToyWorld, write_world
from sau_compress.worlds.tokenizer import train_bpe_tokenizer

__all__ = ["ToyTrainConfig", "finish_world", "rouge_by_split", "train_memorizer", "train_world"]


@dataclass
class ToyTrainConfig:
    """How the tiny Llama is built and trained (part of the cache key)."""

    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    vocab_size: int = 1024
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 30
    max_length: int = 64


def _llama(config: ToyTrainConfig, vocab_size: int, tokenizer: Any, seed: int):  # noqa: ANN202
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


def train_memorizer(
    records: list[dict[str, Any]],
    tokenizer: Any,
    config: Any = None,
    seed: int = 0,
    desc: str = "memorizer",
    device: str = "cpu",
    model: Any = None,
):  # noqa: ANN201 - returns a LlamaForCausalLM
    """Train a tiny Llama from scratch (or further: ``model``) on ``records`` (answer tokens only) until it has
    memorized them.

    Each record is tokenized in the tokenizer's own prompt format (``auto``: its chat template where it has
    one, :func:`sau_compress.data.tokenize_records`), labels on the answer and EOS only. AdamW, linear warmup
    then cosine decay to 5% of the rate, gradients clipped at norm 1.

    :param records: QA records with ``question`` and ``answer``
    :param tokenizer: the world's tokenizer
    :param config: architecture and training hyperparameters (a :class:`ToyTrainConfig`; with ``model``, any
        config with ``epochs``, ``batch_size``, ``learning_rate``, ``weight_decay``, ``warmup_steps``,
        ``max_length`` and optionally ``bf16``: bfloat16 autocast of the forward passes)
    :param seed: seed for initialisation and data order
    :param desc: progress-bar label
    :param device: where to train (``cpu``, ``cuda``); the model is returned on the CPU
    :param model: a model of this config to train further (in place; a fresh optimizer and schedule); default:
        a new one initialised from ``seed``
    :return: the trained model in eval mode, with ``losses`` (per epoch mean) attached as ``model.train_losses``
    :raises UserError: no records
    """
    if not records:
        raise UserError("cannot train a memorizer on an empty record set")
    config = config or ToyTrainConfig()
    items = tokenize_records(tokenizer, records, max_length=config.max_length)
    model = (model if model is not None else _llama(config, len(tokenizer), tokenizer, seed)).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                            betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(items) / config.batch_size)
    total = steps_per_epoch * config.epochs

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                              enabled=bool(getattr(config, "bf16", False)))
    gen = torch.Generator().manual_seed(seed)
    epoch_losses: list[float] = []
    bar = tqdm(total=total, desc=f"training {desc}", unit="step", leave=False)
    for _ in range(config.epochs):
        order = torch.randperm(len(items), generator=gen).tolist()
        running = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = collate([items[i] for i in order[start : start + config.batch_size]], tokenizer.pad_token_id)
            batch.pop("index", None)
            with autocast:
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += float(loss.detach())
            bar.update(1)
        epoch_losses.append(running / steps_per_epoch)
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
    bar.close()
    model.cpu().eval()
    model.train_losses = epoch_losses
    logger.info(f"trained {desc}: {total} steps, final epoch loss {epoch_losses[-1]:.4f}")
    return model


def rouge_by_split(
    model: Any, tokenizer: Any, splits: dict[str, list[dict[str, Any]]], max_new_tokens: int = 48
) -> dict[str, float]:
    """Mean greedy-answer ROUGE-L recall of ``model`` on each split.

    :param model: a causal LM (evaluated on its current device)
    :param tokenizer: its tokenizer
    :param splits: split name -> QA records (``question``, ``answer``)
    :param max_new_tokens: longest generated answer
    :return: split name -> mean recall
    """
    out = {}
    for name, records in splits.items():
        answers = generate_answers(model, tokenizer, [r["question"] for r in records], max_new_tokens=max_new_tokens,
                                   batch_size=64)
        scores = [rouge_l_recall(a, r["answer"]) for a, r in zip(answers, records, strict=True)]
        out[name] = sum(scores) / len(scores)
    return out


def train_world(
    root: Path,
    key: str,
    splits: dict[str, list[dict[str, Any]]],
    corpus: list[str],
    config: ToyTrainConfig,
    seed: int,
    people: int,
    meta: dict[str, Any],
    start: float,
    desc: str = "",
    max_new_tokens: int = 48,
    device: str = "cpu",
    prior_epochs: int = 20,
) -> ToyWorld:
    """Train a world's tokenizer, memorizer (forget+retain) and retain model, score them, save atomically.

    With a ``prior`` split (prior knowledge), training has two stages: one model learns the prior records alone
    for ``prior_epochs``; the memorizer and the retain model both start from a copy of it and learn their sets
    with the prior records rehearsed alongside.

    :param root: folder to write (replaced atomically)
    :param key: cache key stored in ``world.json`` (:func:`~sau_compress.worlds.cache.load_cached_world` checks it)
    :param splits: ``forget``, ``retain``, ``holdout`` QA records (written as ``data/<split>.jsonl``)
    :param corpus: texts the tokenizer is trained on
    :param config: architecture and training hyperparameters
    :param seed: seed of initialisation and data order
    :param people: number of people (or authors) in the world
    :param meta: extra fields for ``world.json``
    :param start: ``time.perf_counter()`` when the build started (for ``build_seconds``)
    :param desc: label prefix for progress bars and logs
    :param max_new_tokens: longest generated answer when scoring ROUGE-L
    :param device: where the models are trained (``world.json`` records it)
    :param prior_epochs: epochs of the first stage (used only with a ``prior`` split)
    :return: the world, with its figures
    """
    label = f"{desc} " if desc else ""
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=config.vocab_size)
    sizes = {k: len(v) for k, v in splits.items()}
    logger.info(f"{label}world: {people} people, {sizes} QA records, tokenizer of {len(tokenizer)} tokens")
    prior = list(splits.get("prior", []))
    start_model = None
    if prior:
        start_model = train_memorizer(prior, tokenizer, replace(config, epochs=prior_epochs), seed,
                                      f"{label}prior knowledge", device)
    memorizer = train_memorizer(splits["forget"] + splits["retain"] + prior, tokenizer, config, seed,
                                f"{label}memorizer", device, copy.deepcopy(start_model))
    retain_model = train_memorizer(splits["retain"] + prior, tokenizer, config, seed, f"{label}retain model",
                                   device, copy.deepcopy(start_model))
    tail = {"prior_losses": start_model.train_losses} if start_model is not None else {}
    return finish_world(root, key, splits, tokenizer, memorizer, retain_model, config, seed=seed, people=people,
                        meta=meta, start=start, label=label, max_new_tokens=max_new_tokens, device=device, tail=tail)


def finish_world(
    root: Path,
    key: str,
    splits: dict[str, list[dict[str, Any]]],
    tokenizer: Any,
    memorizer: Any,
    retain_model: Any,
    config: Any,
    *,
    seed: int,
    people: int,
    meta: dict[str, Any],
    start: float,
    label: str = "",
    max_new_tokens: int = 48,
    device: str = "cpu",
    tail: dict[str, Any] | None = None,
    record_weights: bool = False,
) -> ToyWorld:
    """Score a world's two trained models (greedy-answer ROUGE-L recall per split), write its folder
    atomically (:func:`~sau_compress.worlds.cache.write_world`) and return it.

    :param memorizer: the model trained on forget + retain (with ``train_losses``)
    :param retain_model: the model trained on retain only (with ``train_losses``)
    :param config: the training config (a dataclass, recorded under ``train``)
    :param meta: extra fields for ``world.json`` (after the common ones)
    :param label: prefix of log messages (``"TOFU "``)
    :param tail: fields for ``world.json`` after the losses
    :param record_weights: also record each model's ``weights_sha256`` in ``world.json``
    :return: the world, with its figures
    """
    rouge = rouge_by_split(memorizer.to(device), tokenizer, splits, max_new_tokens)
    retain_rouge = rouge_by_split(retain_model.to(device), tokenizer, splits, max_new_tokens)
    memorizer.cpu()
    retain_model.cpu()
    parameters = sum(p.numel() for p in memorizer.parameters())
    build_seconds = time.perf_counter() - start
    record = {
        "key": key,
        "people": people,
        "seed": seed,
        "train": asdict(config),
        "sizes": {k: len(v) for k, v in splits.items()},
        "train_device": str(device),
        **meta,
        "rouge": rouge,
        "retain_model_rouge": retain_rouge,
        "parameters": parameters,
        "build_seconds": build_seconds,
        "memorizer_losses": memorizer.train_losses,
        "retain_model_losses": retain_model.train_losses,
        **(tail or {}),
    }
    write_world(root, tokenizer, memorizer, retain_model, splits, record, record_weights=record_weights)
    logger.info(
        f"{label}world built in {build_seconds:.1f}s at {root}: ROUGE-L recall forget {rouge['forget']:.3f}, "
        f"retain {rouge['retain']:.3f}, holdout {rouge['holdout']:.3f}"
    )
    return ToyWorld.at(
        root,
        people=people,
        seed=seed,
        rouge=rouge,
        retain_model_rouge=retain_rouge,
        parameters=parameters,
        seconds=time.perf_counter() - start,
        build_seconds=build_seconds,
    )
