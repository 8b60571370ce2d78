"""The audit's attacks: each makes a variant of a model (on a copy) or of the questions asked.

Nothing here changes the model it is given: weight attacks return a deep copy. The variants are

- :func:`quantized_copy`: round-to-nearest fake quantization of every target layer (:mod:`.quant`);
- :func:`prune_more_copy`: a further unstructured magnitude pruning step (:func:`prune_more_target`);
- :func:`paraphrase_variants`: the questions' paraphrased forms, and a few-shot prefix from the retain set;
- :func:`finetuned_copy`: ``steps`` of plain fine-tuning (the relearning attack, and its control), on the
  records split off by :func:`split_by_person`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from typing import Any

import torch
from loguru import logger
from torch import nn
from tqdm.auto import tqdm

from sau_compress.audit.quant import QuantScheme, fake_quantize_tokens, fake_quantize_weight
from sau_compress.data import PROMPT_TEMPLATE, collate, format_prompt, pad_token_id, tokenize_records
from sau_compress.errors import UserError
from sau_compress.masking import all_2of4, mean_sparsity, prune_by_magnitude_, resolve_targets

__all__ = [
    "PERSON_KEYS",
    "finetuned_copy",
    "few_shot_question",
    "paraphrase_variants",
    "prune_more_copy",
    "prune_more_target",
    "quantized_copy",
    "split_by_person",
    "target_weights",
]

#: record fields that name whom a QA record is about (toy world: ``person``; TOFU-style sets: ``author``)
PERSON_KEYS = ("person", "author")


def target_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the layers an attack touches: every ``nn.Linear`` of the decoder blocks (``lm_head``
    and embeddings excluded, as in the bundled recipes' ``ignore``)."""
    return {name: layer.weight for name, layer in resolve_targets(model).items()}


@torch.no_grad()
def quantized_copy(model: nn.Module, scheme: QuantScheme) -> nn.Module:
    """A copy of ``model`` whose target layers compute with ``scheme``'s fake-quantized weights (and, for a
    dynamic-activation scheme, fake-quantized inputs, through a forward pre-hook)."""
    variant = copy.deepcopy(model)
    for layer in resolve_targets(variant).values():
        layer.weight.copy_(fake_quantize_weight(layer.weight, scheme)[0])
        if scheme.dynamic_activations:
            layer.register_forward_pre_hook(lambda _m, args, s=scheme: (fake_quantize_tokens(args[0], s), *args[1:]))
    return variant


def prune_more_target(sparsity: float, two_four: bool) -> float:
    """The sparsity of the next pruning step: 2:4 -> 60% unstructured; below 25% (dense) -> 50%; otherwise
    20 points more (50% -> 70%), at most 90%."""
    if two_four:
        return 0.6
    if sparsity < 0.25:
        return 0.5
    return min(round(sparsity + 0.2, 6), 0.9)


@torch.no_grad()
def prune_more_copy(model: nn.Module, target: float | None = None) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``model`` magnitude-pruned (unstructured, per layer) to ``target`` sparsity
    (default :func:`prune_more_target` of its present sparsity); weights already zero are pruned first.

    :return: the copy and ``{"sparsity_before", "two_four_before", "target"}``
    """
    weights = target_weights(model)
    before = mean_sparsity({k: w.detach() for k, w in weights.items()})
    two_four = all_2of4(w.detach() for w in weights.values()) and before > 0
    goal = prune_more_target(before, two_four) if target is None else float(target)
    variant = copy.deepcopy(model)
    prune_by_magnitude_(variant, goal, "unstructured")
    return variant, {"sparsity_before": before, "two_four_before": bool(two_four), "target": goal}


def few_shot_question(question: str, shots: Sequence[dict[str, Any]], tokenizer: Any, prompt_format: str) -> str:
    """A question field whose prompt carries ``shots`` (QA records) as worked examples before ``question``.

    Plain format: the prompt becomes ``Question: q1\\nAnswer: a1\\n\\n...Question: q\\nAnswer:``, exactly the
    training prompt repeated. Chat format: the examples are written in that plain form inside the user turn.
    """
    examples = "".join(f"{PROMPT_TEMPLATE.format(question=s['question'])} {s['answer']}\n\n" for s in shots)
    if prompt_format != "plain":
        return examples + question
    head = PROMPT_TEMPLATE.split("{question}")[0]
    text = examples[len(head):] + head + question
    assert format_prompt(text, tokenizer, "plain") == examples + format_prompt(question, tokenizer, "plain")
    return text


def paraphrase_variants(
    sets: dict[str, list[dict[str, Any]]], tokenizer: Any, prompt_format: str, shots: int = 3
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The forget (and holdout) sets asked differently.

    - ``paraphrased``: each record's ``paraphrased_question`` (left out, with a warning, when a record of the
      forget set has none);
    - ``few_shot``: the question after ``shots`` worked examples, the first records of the retain set.

    :return: variant name -> ``{"forget": [...], "holdout": [...]}`` (holdout only when the sets have one)
    """
    names = [n for n in ("forget", "holdout") if sets.get(n)]
    variants: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if all("paraphrased_question" in r for r in sets["forget"]):
        variants["paraphrased"] = {
            n: [dict(r, question=r.get("paraphrased_question", r["question"])) for r in sets[n]] for n in names
        }
    else:
        logger.warning("paraphrase: forget records lack 'paraphrased_question'; only the few-shot variant runs")
    examples = list(sets["retain"][:shots])
    if examples:
        variants["few_shot"] = {
            n: [dict(r, question=few_shot_question(r["question"], examples, tokenizer, prompt_format)) for r in sets[n]]
            for n in names
        }
    if not variants:
        raise UserError("paraphrase: no paraphrased questions in the forget set and no retain records for few-shot")
    return variants


def split_by_person(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split a forget set in two halves by whom the records are about (:data:`PERSON_KEYS`), in order of
    first appearance; records that name no one are split by position (first half, second half).

    :return: ``(train, test)``: the relearning attack trains on the first and measures the second
    :raises UserError: fewer than two people (or fewer than two records)
    """
    key = next((k for k in PERSON_KEYS if all(k in r for r in records)), None)
    if key is None:
        half = len(records) // 2
        if half < 1:
            raise UserError(f"relearn needs at least 2 forget records, got {len(records)}")
        return list(records[:half]), list(records[half:])
    people = list(dict.fromkeys(r[key] for r in records))
    if len(people) < 2:
        raise UserError(f"relearn needs a forget set about at least 2 people ('{key}'), got {len(people)}")
    first = set(people[: len(people) // 2])
    return [r for r in records if r[key] in first], [r for r in records if r[key] not in first]


def finetuned_copy(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    steps: int = 20,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    prompt_format: str = "plain",
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` fine-tuned for ``steps`` AdamW steps on ``records`` (answer tokens only, the
    training loss of the memorizer), cycling through them in a seeded order."""
    if steps < 1:
        raise UserError(f"relearn steps must be at least 1, got {steps}")
    if not records:
        raise UserError("cannot fine-tune on an empty record set")
    items = tokenize_records(tokenizer, records, prompt_format=prompt_format)
    variant = copy.deepcopy(model)
    variant.train()
    device = next(variant.parameters()).device
    opt = torch.optim.AdamW(variant.parameters(), lr=learning_rate)
    rng = random.Random(seed)
    order: list[int] = []
    pad = pad_token_id(tokenizer)
    for _ in tqdm(range(steps), desc="relearn", leave=False):
        if len(order) < batch_size:
            order += rng.sample(range(len(items)), len(items))
        picked, order = order[:batch_size], order[batch_size:]
        batch = collate([{"input_ids": items[i]["input_ids"], "labels": items[i]["labels"]} for i in picked], pad)
        loss = variant(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return variant.eval()
