"""What greedy answers say: containment of the reference, empty answers, loops (exact cases)."""

from __future__ import annotations

import pytest

from sau_compress.evaluation.answers import contains_answer, is_empty, loops, normalise, reference_of


def test_normalise_folds_case_accents_and_punctuation():
    assert normalise("  García  Márquez, Gabriel!  ") == "garcia marquez gabriel"
    assert normalise("J.K. Rowling") == "j k rowling"
    assert normalise("") == ""


@pytest.mark.parametrize(("generation", "reference", "expected"), [
    ("The capital of Australia is Canberra.", "Canberra", True),
    ("the capital of australia is CANBERRA", "Canberra", True),
    ("It was written by Gabriel Garcia Marquez.", "Gabriel García Márquez", True),
    ("The Harry Potter series was written by J.K. Rowling.", "J.K. Rowling", True),
    ("Romeo and Juliet is a play.", "Rome", False),  # whole words only
    ("The capital of Australia is known as Sydney.", "Canberra", False),
    ("", "Canberra", False),
    ("anything", "  ", False),  # an empty reference is never contained
])
def test_contains_answer(generation, reference, expected):
    assert contains_answer(generation, reference) is expected


def test_reference_prefers_the_short_answer():
    assert reference_of({"answer": "The capital is Canberra.", "short_answer": "Canberra"}) == "Canberra"
    assert reference_of({"answer": "Canberra"}) == "Canberra"
    assert reference_of({"answer": "Canberra", "short_answer": ""}) == "Canberra"
    with pytest.raises(KeyError, match="short_answer"):
        reference_of({"question": "?"})


def test_is_empty():
    assert is_empty("") and is_empty("   \n\t ")
    assert not is_empty(" x ")


@pytest.mark.parametrize(("generation", "expected"), [
    ("Peru\nPeru\nPeru\nPeru", True),  # a line three times or more
    ("Peru\n\nPeru\n\nPeru", True),
    ("the the the end", True),  # a one-word phrase three times in a row
    ("is a classic is a classic is a classic", True),  # a three-word phrase
    ("a b c d e f g h a b c d e f g h a b c d e f g h", True),  # eight words, the longest phrase checked
    ("a b c d e f g h i a b c d e f g h i a b c d e f g h i", False),  # nine words: too long to count
    ("Peru\nPeru", False),  # twice is not a loop
    ("To Kill a Mockingbird by Harper Lee is the novel written by Harper Lee.", False),
    ("The capital of Australia is Canberra.", False),
    ("", False),
    ("   \n \n \n", False),  # blank lines are not a repeated line
])
def test_loops(generation, expected):
    assert loops(generation) is expected


def test_kept_facts_compares_fact_by_fact():
    from sau_compress.evaluation import kept_facts

    start = {"contained": {"forget": [True, True, False, True], "retain": [False, False]}}
    end = {"contained": {"forget": [False, True, True, False], "retain": [True, False]}}
    assert kept_facts(start, end) == {
        "forget": {"stated": 3, "still": 1, "share": 1 / 3},  # the third fact came back but was not stated before
        "retain": {"stated": 0, "still": 0, "share": None},
    }
    with pytest.raises(ValueError):  # the same sets, in the same order, or nothing to compare
        kept_facts(start, {"contained": {"forget": [True], "retain": [True, True]}})
