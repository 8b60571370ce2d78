"""The toy world's facts: fictitious people, their QA records in TOFU's schema, and the split by person.

Everything is drawn from a seed (no download): each person gets one value per fact and a wording for each
answer; records carry a paraphrase and perturbed (wrong) answers as TOFU's do; people (not records) are
split into forget (10%), retain (80%) and holdout (10%, never trained).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

from sau_compress.errors import UserError

__all__ = [
    "FACTS",
    "MIN_PEOPLE",
    "N_PERTURBED",
    "make_people",
    "make_records",
    "qa_corpus",
    "split_people",
]

#: Fewest people for which every split (10% forget, 80% retain, 10% holdout) holds at least one person.
MIN_PEOPLE = 10

#: Wrong answers per record (as in TOFU's perturbed sets).
N_PERTURBED = 3

# The generator's data (names, value pools, question and answer templates) lives in ``facts.json``. Each fact
# has a draw (a template whose ``{pool}`` fields are filled left to right with ``random.choice`` from the pool,
# or ``{"randint": [low, high]}``), two questions (original, paraphrased) and answer templates. The first
# answer template a person gets is drawn at random (so the wording is part of what is memorized), the
# paraphrased answer uses another template; perturbed answers reuse the paraphrase's template with wrong values.
# Changing the file changes every toy world: bump ``sau_compress.worlds.toy.TOY_VERSION`` with it.
_DATA: dict[str, Any] = json.loads(resources.files(__package__).joinpath("facts.json").read_text(encoding="utf-8"))
_FIRST: list[str] = _DATA["first_names"]
_LAST: list[str] = _DATA["last_names"]
_POOLS: dict[str, list[str]] = _DATA["pools"]
_FACTS: dict[str, dict[str, Any]] = _DATA["facts"]
_FIELD = re.compile(r"\{(\w+)\}")
#: The facts every person has, in record order.
FACTS = tuple(_FACTS)


def _draw(fact: str, rng: random.Random) -> str:
    """One value of ``fact``, drawn with ``rng``."""
    spec = _FACTS[fact]["draw"]
    if isinstance(spec, dict):
        low, high = spec["randint"]
        return str(rng.randint(low, high))
    return _FIELD.sub(lambda match: rng.choice(_POOLS[match.group(1)]), spec)


def make_people(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Draw ``n`` fictitious people with distinct names and one value per fact.

    :param n: number of people (at least :data:`MIN_PEOPLE`, at most ``len(first names) * len(last names)``)
    :param seed: random seed; the same seed gives the same people
    :return: one dict per person: ``name``, ``facts`` {fact: value}, ``template`` {fact: answer template index}
    :raises UserError: ``n`` out of range
    """
    if n < MIN_PEOPLE:
        raise UserError(f"people must be at least {MIN_PEOPLE} (one person per split), got {n}")
    if n > len(_FIRST) * len(_LAST):
        raise UserError(f"people must be at most {len(_FIRST) * len(_LAST)}, got {n}")
    rng = random.Random(f"sau-toy-people-{seed}")
    names = rng.sample([f"{f} {last}" for f in _FIRST for last in _LAST], n)
    people = []
    for name in names:
        facts = {fact: _draw(fact, rng) for fact in _FACTS}
        template = {fact: rng.randrange(len(spec["answers"])) for fact, spec in _FACTS.items()}
        people.append({"name": name, "facts": facts, "template": template})
    return people


def make_records(people: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Render people as QA records in TOFU's schema (one record per person and fact).

    Fields: ``question``, ``answer``, ``paraphrased_question``, ``paraphrased_answer``, ``perturbed_answer``
    (a list of :data:`N_PERTURBED` wrong answers in the paraphrased answer's wording, as in TOFU), plus
    ``person``, ``fact``.

    :param people: people from :func:`make_people`
    :param seed: random seed of the perturbed answers
    :return: one record per person and fact, people in order
    """
    rng = random.Random(f"sau-toy-records-{seed}")
    records = []
    for person in people:
        name = person["name"]
        for fact, spec in _FACTS.items():
            value = person["facts"][fact]
            t = person["template"][fact]
            para = (t + 1) % len(spec["answers"])
            wrong: list[str] = []
            while len(wrong) < N_PERTURBED:
                cand = _draw(fact, rng)
                if cand != value and cand not in wrong:
                    wrong.append(cand)
            records.append(
                {
                    "question": spec["questions"][0].format(name=name),
                    "answer": spec["answers"][t].format(name=name, v=value),
                    "paraphrased_question": spec["questions"][1].format(name=name),
                    "paraphrased_answer": spec["answers"][para].format(name=name, v=value),
                    # as in TOFU, wrong answers are perturbations of the paraphrased answer: truth ratio then
                    # compares the fact, not the memorized wording
                    "perturbed_answer": [spec["answers"][para].format(name=name, v=w) for w in wrong],
                    "person": name,
                    "fact": fact,
                }
            )
    return records


def split_people(people: list[dict[str, Any]], seed: int = 0) -> dict[str, list[str]]:
    """Split people (not records) into forget 10%, holdout 10% and retain 80% (at least one each).

    :param people: people from :func:`make_people`
    :param seed: random seed of the split
    :return: split name -> sorted names
    """
    names = [p["name"] for p in people]
    rng = random.Random(f"sau-toy-split-{seed}")
    rng.shuffle(names)
    k = max(1, round(0.1 * len(names)))
    return {"forget": sorted(names[:k]), "holdout": sorted(names[k : 2 * k]), "retain": sorted(names[2 * k :])}


def qa_corpus(records: Iterable[dict[str, Any]]) -> list[str]:
    """Tokenizer training texts of QA records: each prompt+answer, and the paraphrase and perturbed answers
    where a record has them (TOFU schema).

    :param records: QA records (toy or TOFU)
    :return: the texts, in record order
    """
    corpus = []
    for r in records:
        corpus.append(f"Question: {r['question']}\nAnswer: {r['answer']}")
        if "paraphrased_answer" in r:
            corpus.append(f"Question: {r['paraphrased_question']}\nAnswer: {r['paraphrased_answer']}")
            corpus.extend(r["perturbed_answer"])
    return corpus
