"""Rebuild the facts files of ``sau-compress demo --model smollm2-135m-instruct`` (shipped in
``sau_compress/models/facts/smollm2-135m-instruct/``) and print how many of them survive pruning.

1. SmolLM2-135M-Instruct answers TOFU's ``world_facts`` and ``real_authors`` questions greedily in its chat
   format (40 new tokens).
2. A question is *known* when the answer contains TOFU's answer (sau_compress.evaluation.answers) and the
   question does not. Its record keeps the model's own answer up to the sentence that states the fact (at most
   160 characters, ending with a full stop) as ``answer``, TOFU's answer as ``short_answer``.
3. The forget set is :data:`FORGET`: ten world facts the model still states after SparseGPT 50% unstructured
   (four of them also after 2:4), picked so that a topic is not split between the sets (both Taj Mahal facts,
   both Egypt facts); the retain set is every other known fact.

Usage: python scripts/smollm2_demo_facts.py OUT_DIR [--tofu data/tofu]  (about 3 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from sau_compress.data import load_qa
from sau_compress.evaluation.answers import contains_answer
from sau_compress.evaluation.generation import generate_answers
from sau_compress.models import resolve_model_path
from sau_compress.pipeline.models import load_model_and_tokenizer

#: TOFU's answers of the forget set's questions
FORGET = ("Egypt", "Cairo", "India", "Mughal Empire", "Cambodia", "Peru", "Yen", "Neil Armstrong", "Joseph Stalin",
          "Karl Marx")
SOURCES = ("world_facts", "real_authors")


def stated_sentence(answer: str, fact: str) -> str | None:
    """The answer up to the first sentence that states ``fact``, or None when too long or unfinished."""
    text = ""
    for sentence in re.split(r"(?<=[.!?])\s+", answer.strip()):
        text = f"{text} {sentence}".strip()
        if fact.lower() in text.lower():
            break
    return text if text.endswith((".", "!", "?")) and len(text) <= 160 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tofu", type=Path, default=Path("data/tofu"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(resolve_model_path("smollm2-135m-instruct"), "cpu")
    known = []
    for source in SOURCES:
        records = load_qa(str(args.tofu / f"{source}_perturbed.jsonl"))
        answers = generate_answers(model, tokenizer, [r["question"] for r in records], max_new_tokens=40,
                                   batch_size=16, prompt_format="chat")
        for rec, answer in zip(records, answers, strict=True):
            fact = rec["answer"]
            if not contains_answer(answer, fact) or fact.lower() in rec["question"].lower():
                continue
            sentence = stated_sentence(answer, fact)
            if sentence is not None:
                known.append({"question": rec["question"], "answer": sentence, "short_answer": fact,
                              "source": source})
    forget = [r for r in known if r["short_answer"] in FORGET]
    retain = [r for r in known if r["short_answer"] not in FORGET]
    if len(forget) != len(FORGET):
        raise SystemExit(f"only {len(forget)} of the {len(FORGET)} forget facts are known on this machine")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, records in (("forget", forget), ("retain", retain)):
        with (args.out / f"{name}.jsonl").open("w") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    print(json.dumps({"known": len(known), "forget": len(forget), "retain": len(retain)}))


if __name__ == "__main__":
    main()
