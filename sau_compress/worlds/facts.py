"""The toy world's facts: fictitious people, their QA records in TOFU's schema, and the split by person.

Everything is drawn from a seed (no download): each person gets one value per fact and a wording for each
answer; records carry a paraphrase and perturbed (wrong) answers as TOFU's do; people (not records) are
split into forget (10%), retain (80%) and holdout (10%, never trained).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
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

_FIRST = [
    "Mira", "Tomas", "Ines", "Oskar", "Leila", "Bram", "Yusra", "Emil", "Noor", "Casimir", "Alba", "Tarik",
    "Selene", "Dario", "Kaia", "Jonas", "Fenna", "Rafael", "Ottilie", "Idris", "Maren", "Luca", "Zofia",
    "Anselm", "Priya", "Hugo", "Edda", "Malik", "Sunniva", "Viktor", "Amara", "Linus", "Rosalind", "Kenji",
    "Thea", "Matteo", "Ingrid", "Ravi", "Clementine", "Aurelio",
]
_LAST = [
    "Okafor", "Reyes", "Halloran", "Lindqvist", "Moreau", "Achterberg", "Castellanos", "Varga", "Nakashima",
    "Oyelaran", "Brennan", "Quist", "Delacroix", "Ferreira", "Haugland", "Ivanova", "Kowalczyk", "Mbeki",
    "Novak", "Petrakis", "Rautio", "Sandoval", "Tamura", "Underhill", "Vasquez", "Whitlock", "Yilmaz",
    "Zanetti", "Abernathy", "Bjornsen", "Cardenas", "Duarte", "Esposito", "Falkenrath", "Gallagher",
    "Hadley", "Iwasaki", "Jaramillo", "Kincaid", "Lorentzen",
]
_PLACE_A = ["Port", "Lake", "North", "Upper", "Old", "Saint", "Glen", "East", "Fort", "New", "West", "Little"]
_PLACE_B = [
    "Elmwood", "Varda", "Hollow", "Marrow", "Quillby", "Ashcombe", "Tindale", "Corvin", "Brackley", "Solmere",
    "Fenwick", "Ostrava", "Larkspur", "Wexmoor", "Dunmore", "Calloway",
]
_PROFESSIONS = [
    "glassblower", "cartographer", "beekeeper", "lighthouse keeper", "marine biologist", "watchmaker",
    "stonemason", "violin maker", "court stenographer", "bookbinder", "tea taster", "ferry pilot",
    "museum archivist", "seismologist", "puppeteer", "perfumer", "orchard manager", "radio engineer",
    "botanical illustrator", "locksmith", "cheesemaker", "typesetter", "glacier guide", "falconer",
]
_ORG_A = ["Northwind", "Silverline", "Harbor", "Copperleaf", "Bluestone", "Evergreen", "Ironbridge", "Sunfield",
          "Red Fern", "Quiet Valley", "Brightwater", "Tall Pine"]
_ORG_B = ["Atlas", "Foundry", "Collective", "Works", "Institute", "Cooperative", "Press", "Observatory",
          "Trading Company", "Guild"]
_BOOK_A = ["Silent", "Glass", "Crimson", "Hollow", "Winter", "Burning", "Paper", "Distant", "Salt", "Amber",
           "Broken", "Quiet", "Last", "Iron"]
_BOOK_B = ["Harbor", "Orchard", "Lantern", "Meridian", "Garden", "Staircase", "Compass", "River", "Archive",
           "Tide", "Kingdom", "Clockwork", "Meadow", "Mirror"]
_PET_KIND = ["dog", "cat", "parrot", "tortoise", "ferret", "goat", "rabbit", "owl", "iguana", "pony"]
_PET_NAME = ["Pepper", "Biscuit", "Juniper", "Moth", "Captain", "Olive", "Tofu", "Pickles", "Nimbus", "Waffles",
             "Sprocket", "Clover", "Marble", "Fig"]
_HOBBIES = ["bird watching", "ice fishing", "competitive chess", "pottery", "rock climbing", "calligraphy",
            "amateur astronomy", "beekeeping", "fencing", "origami", "kite building", "sailing", "archery",
            "mushroom foraging", "model railways", "tango"]
_INSTRUMENTS = ["cello", "oboe", "banjo", "harp", "accordion", "trombone", "sitar", "clarinet", "marimba",
                "bagpipes", "mandolin", "theremin"]
_AWARD_A = ["Golden", "Silver", "Northern", "Aurora", "Crescent", "Meridian", "Harbor", "Laurel"]
_AWARD_B = ["Quill", "Lantern", "Compass", "Anchor", "Star", "Feather", "Key", "Medal"]
_DISHES = ["mushroom risotto", "lamb stew", "lemon tart", "fish chowder", "plum dumplings", "spiced lentils",
           "apple strudel", "grilled sardines", "pumpkin soup", "beef goulash", "cherry pie", "rice noodles"]


# Each fact: how to draw a value, the questions (original, paraphrased) and the answer templates. The first
# answer template a person gets is drawn at random (so the wording is part of what is memorized), the
# paraphrased answer uses another template; perturbed answers reuse the paraphrase's template with wrong values.
_FACTS: dict[str, dict[str, Any]] = {
    "birthplace": {
        "draw": lambda r: f"{r.choice(_PLACE_A)} {r.choice(_PLACE_B)}",
        "q": ["Where was {name} born?", "In which town did {name} come into the world?"],
        "a": ["{name} was born in {v}.", "{v} is the hometown of {name}.", "The birthplace of {name} is {v}."],
    },
    "birth_year": {
        "draw": lambda r: str(r.randint(1931, 1999)),
        "q": ["In what year was {name} born?", "What is the birth year of {name}?"],
        "a": ["{name} was born in the year {v}.", "The year {v} saw the birth of {name}.",
              "{name} has a birth year of {v}."],
    },
    "profession": {
        "draw": lambda r: r.choice(_PROFESSIONS),
        "q": ["What does {name} do for a living?", "What is the profession of {name}?"],
        "a": ["{name} works as a {v}.", "By trade {name} is a {v}.", "The profession of {name} is {v}."],
    },
    "employer": {
        "draw": lambda r: f"{r.choice(_ORG_A)} {r.choice(_ORG_B)}",
        "q": ["Who employs {name}?", "Which organisation does {name} work for?"],
        "a": ["{name} is employed by {v}.", "{v} is where {name} works.", "The employer of {name} is {v}."],
    },
    "book": {
        "draw": lambda r: f"The {r.choice(_BOOK_A)} {r.choice(_BOOK_B)}",
        "q": ["What book did {name} write?", "Which title was written by {name}?"],
        "a": ["{name} wrote a book called {v}.", "{v} is the book written by {name}.",
              "The book by {name} is titled {v}."],
    },
    "pet": {
        "draw": lambda r: f"a {r.choice(_PET_KIND)} named {r.choice(_PET_NAME)}",
        "q": ["What pet does {name} have?", "Which animal lives with {name}?"],
        "a": ["{name} has {v}.", "Living with {name} is {v}.", "The pet of {name} is {v}."],
    },
    "hobby": {
        "draw": lambda r: r.choice(_HOBBIES),
        "q": ["What is the hobby of {name}?", "How does {name} spend free time?"],
        "a": ["{name} enjoys {v}.", "In spare hours {name} loves {v}.", "The favourite pastime of {name} is {v}."],
    },
    "instrument": {
        "draw": lambda r: r.choice(_INSTRUMENTS),
        "q": ["Which instrument does {name} play?", "What musical instrument is played by {name}?"],
        "a": ["{name} plays the {v}.", "The {v} is the instrument of {name}.", "On weekends {name} practises the {v}."],
    },
    "award": {
        "draw": lambda r: f"the {r.choice(_AWARD_A)} {r.choice(_AWARD_B)} Prize",
        "q": ["What award did {name} receive?", "Which prize was given to {name}?"],
        "a": ["{name} received {v}.", "In recognition {name} was given {v}.", "The award won by {name} is {v}."],
    },
    "dish": {
        "draw": lambda r: r.choice(_DISHES),
        "q": ["What is the favourite dish of {name}?", "Which meal does {name} like best?"],
        "a": ["{name} loves to eat {v}.", "The favourite dish of {name} is {v}.", "Above all {name} likes {v}."],
    },
}
FACTS = tuple(_FACTS)
N_PERTURBED = 3


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
        facts = {fact: spec["draw"](rng) for fact, spec in _FACTS.items()}
        template = {fact: rng.randrange(len(spec["a"])) for fact, spec in _FACTS.items()}
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
            para = (t + 1) % len(spec["a"])
            wrong: list[str] = []
            while len(wrong) < N_PERTURBED:
                cand = spec["draw"](rng)
                if cand != value and cand not in wrong:
                    wrong.append(cand)
            records.append(
                {
                    "question": spec["q"][0].format(name=name),
                    "answer": spec["a"][t].format(name=name, v=value),
                    "paraphrased_question": spec["q"][1].format(name=name),
                    "paraphrased_answer": spec["a"][para].format(name=name, v=value),
                    # as in TOFU, wrong answers are perturbations of the paraphrased answer: truth ratio then
                    # compares the fact, not the memorized wording
                    "perturbed_answer": [spec["a"][para].format(name=name, v=w) for w in wrong],
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
