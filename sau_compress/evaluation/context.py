"""What a metric handler sees: the model, its tokenizer, the named QA sets and memoised model outputs.

Several metrics read the same model outputs (the forget answers' scores feed answer probability, extraction
strength, exact memorization and three MIA attacks; one set of greedy answers feeds ROUGE against the answer
and the paraphrased answer). :class:`EvalContext` computes each of them once per (set, fields).

Evaluations repeated on the same sets (a model evaluated every k steps of a run, many runs on one world) can
share a :class:`TokenizedSets`: each set is then tokenized once, not once per evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sau_compress.data import pad_token_id, prompt_ids, resolve_prompt_format
from sau_compress.errors import UserError
from sau_compress.evaluation.generation import generate_answers
from sau_compress.evaluation.scoring import AnswerScore, score_items, tokenize_answers

__all__ = ["EvalContext", "TokenizedSets"]


class TokenizedSets:
    """Tokenized QA sets kept from one evaluation to the next.

    An entry is keyed by what its tokens depend on: the tokenizer object, the records list object (and its
    length), the fields read, the prompt format and ``max_length``. A lookup with another tokenizer or another
    list tokenizes afresh, so sharing one cache across models with different tokenizers is safe; records
    changed *in place* between evaluations are not noticed (pass a new list instead). It keeps the newest
    :attr:`capacity` entries.
    """

    capacity = 64

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[Any, list[dict[str, Any]], Any]] = {}

    def _get(self, key: tuple[Any, ...], tokenizer: Any, records: list[dict[str, Any]], make: Any) -> Any:
        full = (id(tokenizer), id(records), len(records), *key)
        hit = self._entries.get(full)
        # the entry holds both objects, so their ids cannot be reused by others while it lives
        if hit is not None and hit[0] is tokenizer and hit[1] is records:
            return hit[2]
        value = make()
        self._entries[full] = (tokenizer, records, value)
        while len(self._entries) > self.capacity:
            del self._entries[next(iter(self._entries))]
        return value

    def answers(self, tokenizer: Any, records: list[dict[str, Any]], question_key: str, answer_key: str,
                prompt_format: str, max_length: int) -> tuple[list[dict[str, list[int]]], list[list[int]]]:
        """:func:`~sau_compress.evaluation.scoring.tokenize_answers` of ``records``, computed once."""
        return self._get(("answers", question_key, answer_key, prompt_format, max_length), tokenizer, records,
                         lambda: tokenize_answers(tokenizer, records, question_key, answer_key, prompt_format,
                                                  max_length))

    def prompts(self, tokenizer: Any, records: list[dict[str, Any]], question_key: str,
                prompt_format: str) -> list[list[int]]:
        """The generation prompts (:func:`sau_compress.data.prompt_ids`) of ``records``, computed once."""
        return self._get(("prompts", question_key, prompt_format), tokenizer, records,
                         lambda: [prompt_ids(tokenizer, rec[question_key], prompt_format) for rec in records])

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class EvalContext:
    """Model, tokenizer, named QA sets and the settings shared by every metric of one evaluation.

    :ivar datasets: set name (``forget``, ``retain``, ``holdout``, ``real_authors``, ...) -> QA records
    :ivar batch_size: sequences per forward pass / ``generate`` call
    :ivar max_new_tokens: longest generated answer
    :ivar prompt_format: ``auto`` | ``plain`` | ``chat``; resolved for the tokenizer when the context is made
        (:func:`sau_compress.data.resolve_prompt_format`), so every metric prompts and scores the same way
    :ivar max_length: longest tokenized prompt + answer
    :ivar tokens: tokenized sets shared with other evaluations of the same sets (``None``: tokenize here)
    """

    model: nn.Module
    tokenizer: Any
    datasets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    batch_size: int = 16
    max_new_tokens: int = 64
    prompt_format: str = "auto"
    max_length: int = 512
    tokens: TokenizedSets | None = None
    _scores: dict[tuple[str, str, str], list[list[AnswerScore]]] = field(default_factory=dict, repr=False)
    _generations: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.prompt_format = resolve_prompt_format(self.tokenizer, self.prompt_format)

    def records(self, data: str) -> list[dict[str, Any]]:
        """The QA records of set ``data``.

        :raises KeyError: no set of that name (names the sets available)
        """
        if data not in self.datasets:
            raise KeyError(f"no QA set named '{data}' in this evaluation (sets: {sorted(self.datasets)})")
        return self.datasets[data]

    @staticmethod
    def index_of(record: dict[str, Any], position: int) -> str:
        """The key of a record in ``value_by_index``: its ``index`` field (else its position), as a string."""
        return str(record.get("index", position))

    def scores(self, data: str, question_key: str = "question", answer_key: str = "answer") -> list[list[AnswerScore]]:
        """Teacher-forced scores of every answer of every record (a list per record: one per answer option)."""
        key = (data, question_key, answer_key)
        if key not in self._scores:
            tokens = self.tokens if self.tokens is not None else TokenizedSets()
            try:
                items, groups = tokens.answers(
                    self.tokenizer, self.records(data), question_key, answer_key, self.prompt_format, self.max_length
                )
            except UserError as err:  # name the set
                raise UserError(f"the {data} set: {err}") from err
            flat = score_items(
                self.model, items, pad_token_id(self.tokenizer), self.batch_size, desc=f"scoring {data}:{answer_key}"
            )
            self._scores[key] = [[flat[p] for p in positions] for positions in groups]
        return self._scores[key]

    def generations(self, data: str, question_key: str = "question") -> list[str]:
        """Greedy answers to every question of set ``data``."""
        key = (data, question_key)
        if key not in self._generations:
            records = self.records(data)
            for i, rec in enumerate(records):
                if question_key not in rec:
                    raise UserError(f"{data}: record {i} has no field '{question_key}' (fields: {sorted(rec)})")
            prompts = None if self.tokens is None else self.tokens.prompts(
                self.tokenizer, records, question_key, self.prompt_format)
            self._generations[key] = generate_answers(
                self.model,
                self.tokenizer,
                [rec[question_key] for rec in records],
                prompts=prompts,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                prompt_format=self.prompt_format,
                desc=f"generating {data}",
            )
        return self._generations[key]
