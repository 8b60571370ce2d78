"""Prompt formats and tokenization with label masking, for unlearning, saliency and evaluation alike.

One prompt format is used everywhere (toy training, unlearning, saliency, evaluation), so that what a model
learnt is what it is asked. ``prompt_format`` names it:

- ``plain``: :data:`PROMPT_TEMPLATE` (``"Question: {q}\nAnswer:"``), the answer after one space;
- ``chat``: the tokenizer's chat template, the question as the user turn and the generation prompt
  (``add_generation_prompt=True``) opening the assistant turn, the answer right after it;
- ``auto`` (the default): ``chat`` when the tokenizer has a chat template, else ``plain``
  (:func:`resolve_prompt_format`).

The answer is tokenized separately from the prompt and appended, followed by the tokenizer's EOS token, in
both formats; labels are -100 on the prompt (in ``chat``: everything the template renders before the answer,
its generation prompt included) and on padding (as in open-unlearning's ``data/qa.py``). In ``chat`` the
labelled tokens are therefore the answer and EOS: chat-tuned tokenizers set EOS to their end-of-turn token
(Qwen's ``<|im_end|>``, Llama-3-Instruct's ``<|eot_id|>``), the token their template closes the assistant turn
with; whatever the template writes after it (a newline, the next turn) is not part of the sequence. When the
template closes the turn with something else, :func:`resolve_prompt_format` warns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from loguru import logger

from sau_compress.data.loading import QARecord
from sau_compress.errors import UserError
from sau_compress.losses import IGNORE_INDEX

__all__ = [
    "PROMPT_FORMATS",
    "PROMPT_TEMPLATE",
    "PromptFormat",
    "format_prompt",
    "has_chat_template",
    "pad_token_id",
    "prompt_ids",
    "resolve_prompt_format",
    "tokenize_qa",
    "tokenize_records",
]

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
#: what ``prompt_format`` accepts (read case-insensitively); ``auto`` resolves to ``plain`` or ``chat``
PROMPT_FORMATS = ("auto", "plain", "chat")
PromptFormat = Literal["auto", "plain", "chat"]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (a non-empty ``chat_template``)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _tokenizer_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", None)
    return f"'{name}'" if name else type(tokenizer).__name__


def resolve_prompt_format(tokenizer: Any, prompt_format: str = "auto", *, log: bool = True) -> str:
    """The concrete prompt format for ``tokenizer``: ``plain`` or ``chat``.

    ``auto`` is ``chat`` when the tokenizer has a chat template, else ``plain``. Resolve once where a job
    starts (the pipeline, an evaluation) and hand the result down, so that unlearning, saliency and every
    metric use the same format.

    :param tokenizer: the model's tokenizer
    :param prompt_format: ``auto`` | ``plain`` | ``chat`` (case-insensitive)
    :param log: log the choice (info for ``auto``) and warn when the chat template does not close the
        assistant turn with EOS; off for the per-item helpers
    :return: ``"plain"`` or ``"chat"``
    :raises UserError: an unknown format, or ``chat`` for a tokenizer without a chat template
    """
    fmt = prompt_format.strip().lower() if isinstance(prompt_format, str) else prompt_format
    if fmt not in PROMPT_FORMATS:
        raise UserError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    chat = has_chat_template(tokenizer)
    if fmt == "chat" and not chat:
        raise UserError(
            f"prompt_format 'chat' needs a tokenizer with a chat template, but the tokenizer "
            f"{_tokenizer_name(tokenizer)} has none: use prompt_format 'plain' (or 'auto')"
        )
    resolved = ("chat" if chat else "plain") if fmt == "auto" else fmt
    if log:
        if fmt == "auto":
            have = "has a chat template" if chat else "has no chat template"
            logger.info(f"prompt format: {resolved} (auto: the tokenizer {_tokenizer_name(tokenizer)} {have})")
        else:
            logger.debug(f"prompt format: {resolved}")
        if resolved == "chat":
            _check_turn_closing(tokenizer)
    return resolved


#: (chat template, EOS) pairs already checked by :func:`_check_turn_closing`: one warning per template
_CHECKED_TEMPLATES: set[tuple[str, str | None]] = set()


def _check_turn_closing(tokenizer: Any) -> None:
    """Warn (once per template) when the chat template does not render the answer right after the generation
    prompt and close the assistant turn with EOS (the labelled tokens would then differ from what the template
    teaches)."""
    key = (str(tokenizer.chat_template), getattr(tokenizer, "eos_token", None))
    if key in _CHECKED_TEMPLATES:
        return
    _CHECKED_TEMPLATES.add(key)
    from jinja2 import TemplateError

    question, answer = "Who?", "Someone."
    try:
        prompt = format_prompt(question, tokenizer, "chat")
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
        )
    except (TemplateError, ValueError) as err:  # a template that refuses this conversation; real items will tell
        logger.debug(f"chat template check skipped: {err}")
        return
    eos = getattr(tokenizer, "eos_token", None)
    if not full.startswith(prompt + answer):
        logger.warning(
            f"the chat template of {_tokenizer_name(tokenizer)} does not render the assistant's answer right after "
            "its generation prompt; sequences are built as generation prompt + answer + EOS"
        )
    elif eos and not full[len(prompt + answer):].startswith(eos):
        closing = full[len(prompt + answer):][:20]
        logger.warning(
            f"the chat template of {_tokenizer_name(tokenizer)} closes the assistant turn with {closing!r}, not "
            f"EOS {eos!r}; answers are labelled up to EOS"
        )


def format_prompt(question: str, tokenizer: Any = None, prompt_format: str = "auto") -> str:
    """Render the prompt that precedes an answer.

    :param question: the question text
    :param tokenizer: the tokenizer (no tokenizer: no chat template, so ``auto`` is ``plain``)
    :param prompt_format: ``plain`` (:data:`PROMPT_TEMPLATE`), ``chat`` (``tokenizer.apply_chat_template``
        with a single user turn and the generation prompt) or ``auto``
    :return: the prompt string (``plain``: the answer follows after one space; ``chat``: right after it)
    """
    fmt = resolve_prompt_format(tokenizer, prompt_format, log=False)
    if fmt == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return PROMPT_TEMPLATE.format(question=question)


def prompt_ids(tokenizer: Any, question: str, prompt_format: str = "auto") -> list[int]:
    """Token ids of the prompt, exactly as they precede the answer in :func:`tokenize_qa`."""
    fmt = resolve_prompt_format(tokenizer, prompt_format, log=False)
    text = format_prompt(question, tokenizer, fmt)
    # a chat template writes its special tokens (BOS included) itself, as transformers' apply_chat_template
    return list(tokenizer(text, add_special_tokens=fmt == "plain")["input_ids"])


def _answer_ids(tokenizer: Any, answer: str, prompt_format: str) -> list[int]:
    text = " " + answer if prompt_format == "plain" else answer
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos_token_id; answers must end with EOS")
    return ids + [int(tokenizer.eos_token_id)]


def tokenize_qa(
    tokenizer: Any,
    question: str,
    answer: str,
    max_length: int = 256,
    prompt_format: str = "auto",
) -> dict[str, list[int]]:
    """Tokenize one QA pair for causal-LM training: prompt tokens then answer tokens and EOS.

    Sequences longer than ``max_length`` are cut at the end (the answer's tail goes first).

    :param prompt_format: ``auto`` | ``plain`` | ``chat`` (see the module docstring); pass the resolved
        format (:func:`resolve_prompt_format`) when tokenizing many items
    :return: ``{"input_ids": [...], "labels": [...]}`` with labels ``-100`` on the prompt
    :raises UserError: nothing of the answer is left within ``max_length``
    """
    return _tokenize_qa(tokenizer, question, answer, max_length, prompt_format)[0]


def _tokenize_qa(
    tokenizer: Any, question: str, answer: str, max_length: int, prompt_format: str
) -> tuple[dict[str, list[int]], int]:
    """:func:`tokenize_qa` and the number of tokens the cut to ``max_length`` dropped."""
    if max_length < 2:
        raise UserError(f"max_length must be at least 2, got {max_length}")
    fmt = resolve_prompt_format(tokenizer, prompt_format, log=False)
    p = prompt_ids(tokenizer, question, fmt)
    a = _answer_ids(tokenizer, answer, fmt)
    ids = (p + a)[:max_length]
    labels = ([IGNORE_INDEX] * len(p) + a)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise UserError(
            f"prompt of {len(p)} tokens leaves no answer token within max_length={max_length}: {question[:60]!r}"
        )
    return {"input_ids": ids, "labels": labels}, max(0, len(p) + len(a) - max_length)


def tokenize_records(
    tokenizer: Any,
    records: Sequence[QARecord],
    max_length: int = 256,
    prompt_format: str = "auto",
    question_key: str = "question",
    answer_key: str = "answer",
    what: str = "QA set",
) -> list[dict[str, list[int]]]:
    """Tokenize a list of QA records with :func:`tokenize_qa`; each result keeps the record's ``index``.
    Records cut to ``max_length`` are counted and named in one warning.

    :param prompt_format: ``auto`` | ``plain`` | ``chat``, resolved once for the whole list
    :param what: the set's name in the warning (``forget set 'forget.jsonl'``)
    """
    fmt = resolve_prompt_format(tokenizer, prompt_format, log=False)
    out = []
    cut: list[int] = []
    for i, rec in enumerate(records):
        for key in (question_key, answer_key):
            if key not in rec:
                raise KeyError(f"record {i} has no field '{key}' (fields: {sorted(rec)})")
        try:
            item, dropped = _tokenize_qa(tokenizer, rec[question_key], rec[answer_key], max_length, fmt)
        except UserError as err:  # name the set and the record
            raise UserError(f"{what}: record {i + 1}: {err}") from err
        item["index"] = int(rec.get("index", i))
        if dropped:
            cut.append(i + 1)
        out.append(item)
    if cut:
        logger.warning(
            f"{what}: {len(cut)} of {len(out)} QA pairs are longer than max_length={max_length} tokens and were cut "
            f"at the end of the answer (records {cut[:5]}{' ...' if len(cut) > 5 else ''}); raise max_length to "
            "keep them whole"
        )
    return out


def pad_token_id(tokenizer: Any) -> int:
    """The padding id for batches: the tokenizer's pad id, else its EOS id, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0
