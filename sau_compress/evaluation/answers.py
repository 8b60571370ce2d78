"""What greedy answers say, beyond ROUGE: does the answer contain the fact, is it empty, does it loop.

ROUGE-L recall of a sentence-answering instruct model against a bare reference answer ("Canberra") mostly
measures answer format, and a collapsed model that loops ("Peru\\nPeru\\nPeru...") can still score well. These
three checks tell knowledge from format and forgetting from collapse:

- **contains**: the normalised reference occurs in the normalised answer as whole words. Normalising folds
  case, strips accents (NFKD) and turns every run of non-alphanumerics into one space, so "García Márquez"
  matches "Garcia Marquez" and "Rome" does not match "Romeo". The reference is the record's ``short_answer``
  when it has one (a sentence-long ``answer`` in the model's own words, with the bare fact beside it), else
  its ``answer``;
- **empty**: nothing but white space;
- **loops**: a line (at least one word) stands three times or more, or a phrase of 1-8 words is said three
  times in a row.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

from sau_compress.evaluation.metrics import unlearning_metric

__all__ = [
    "CONTAINMENT_KEYS", "contains", "contains_answer", "empty_answers", "is_empty", "looping_answers", "loops",
    "normalise", "reference_of",
]

#: record fields the containment check reads, first present wins
CONTAINMENT_KEYS = ("short_answer", "answer")
#: longest phrase (in words) whose threefold repetition counts as a loop
MAX_LOOP_PHRASE = 8
#: how often a line or phrase must stand to count as a loop
LOOP_REPEATS = 3

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> str:
    """Lower case, accents stripped, every run of other characters than letters and digits one space."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    return _NON_ALNUM.sub(" ", plain).strip()


def reference_of(record: dict[str, Any]) -> str:
    """The text the containment check looks for (:data:`CONTAINMENT_KEYS`).

    :raises KeyError: the record has none of the fields
    """
    for key in CONTAINMENT_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise KeyError(f"record has none of {CONTAINMENT_KEYS} (fields: {sorted(record)})")


def contains_answer(generation: str, reference: str) -> bool:
    """Whether ``reference`` occurs in ``generation`` as whole words, after :func:`normalise`; an empty
    reference is never contained."""
    ref = normalise(reference)
    return bool(ref) and f" {ref} " in f" {normalise(generation)} "


def is_empty(generation: str) -> bool:
    """Nothing but white space."""
    return not generation.strip()


def loops(generation: str) -> bool:
    """A line (with at least one word) that stands :data:`LOOP_REPEATS` times or more, or a phrase of 1 to
    :data:`MAX_LOOP_PHRASE` words said that often in a row (words compared after :func:`normalise`)."""
    lines = Counter(normalise(line) for line in generation.splitlines())
    lines.pop("", None)
    if any(count >= LOOP_REPEATS for count in lines.values()):
        return True
    words = normalise(generation).split()
    for size in range(1, MAX_LOOP_PHRASE + 1):
        for start in range(len(words) - LOOP_REPEATS * size + 1):
            phrase = words[start:start + size]
            if all(words[start + k * size:start + (k + 1) * size] == phrase for k in range(1, LOOP_REPEATS)):
                return True
    return False


def _answer_check(ctx: Any, data: str, check: str, question_key: str = "question") -> dict[str, Any]:
    """One of the checks on every greedy answer of a set: the share of answers it holds for (``agg_value``)
    and, per record, the answer, its reference and the verdict."""
    records = ctx.records(data)
    generations = ctx.generations(data, question_key)
    by_index: dict[str, Any] = {}
    for pos, (rec, gen) in enumerate(zip(records, generations, strict=True)):
        if check == "contains":
            verdict = contains_answer(gen, reference_of(rec))
        else:
            verdict = is_empty(gen) if check == "empty" else loops(gen)
        by_index[ctx.index_of(rec, pos)] = {check: verdict, "generation": gen}
    share = sum(v[check] for v in by_index.values()) / len(by_index) if by_index else None
    return {"agg_value": share, "value_by_index": by_index}



@unlearning_metric("contains")
def contains(ctx: Any, data: str = "forget", question_key: str = "question") -> dict[str, Any]:
    """Share of greedy answers that contain their reference (:func:`contains_answer`, :func:`reference_of`)."""
    return _answer_check(ctx, data, "contains", question_key)


@unlearning_metric("empty_answers")
def empty_answers(ctx: Any, data: str = "forget", question_key: str = "question") -> dict[str, Any]:
    """Share of greedy answers that are empty (:func:`is_empty`)."""
    return _answer_check(ctx, data, "empty", question_key)


@unlearning_metric("looping_answers")
def looping_answers(ctx: Any, data: str = "forget", question_key: str = "question") -> dict[str, Any]:
    """Share of greedy answers that loop (:func:`loops`)."""
    return _answer_check(ctx, data, "loops", question_key)
