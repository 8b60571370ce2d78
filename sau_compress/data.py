"""QA data for unlearning and evaluation: loading, prompt formatting, tokenization with label masking.

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

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from sau_compress.errors import InputNotFoundError, UserError
from sau_compress.losses import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "PROMPT_FORMATS",
    "PROMPT_TEMPLATE",
    "PromptFormat",
    "QARecord",
    "QASetSpec",
    "TOFU_DIR_ENV",
    "check_disjoint",
    "collate",
    "format_prompt",
    "has_chat_template",
    "load_qa",
    "pad_token_id",
    "pair_forget_retain",
    "prompt_ids",
    "resolve_prompt_format",
    "sequential_batches",
    "tofu_data_dir",
    "tokenize_qa",
    "tokenize_records",
]

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
#: Environment variable naming the local folder of TOFU's files (``forget10_perturbed.jsonl``, ...).
TOFU_DIR_ENV = "SAU_COMPRESS_TOFU_DIR"

QARecord = dict[str, Any]


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


def collate(batch: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized items into ``input_ids``, ``attention_mask`` and ``labels`` tensors.

    Labels are ``-100`` on padding. ``index`` is carried through when present.
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    width = max(len(item["input_ids"]) for item in batch)
    n = len(batch)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for row, item in enumerate(batch):
        k = len(item["input_ids"])
        input_ids[row, :k] = torch.tensor(item["input_ids"], dtype=torch.long)
        labels[row, :k] = torch.tensor(item["labels"], dtype=torch.long)
        attention[row, :k] = 1
    out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if all("index" in item for item in batch):
        out["index"] = torch.tensor([int(item["index"]) for item in batch], dtype=torch.long)
    return out


def _read_json_lines(path: Path, text: str) -> tuple[list[QARecord], list[str]]:
    rows, where = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            where.append(f"line {lineno}")
    return rows, where


def _read_json_records(path: Path) -> tuple[list[QARecord], list[str] | None]:
    """Records of a JSON file (a list, ``{"data": [...]}``, or JSON Lines, whatever the suffix says, as
    ``datasets.Dataset.to_json`` writes JSON Lines into ``.json`` files), and for JSON Lines the line of each
    record (1-based), for messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte offset {err.start}: {err.reason})") from err
    if path.suffix.lower() == ".jsonl":
        return _read_json_lines(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one JSON value per line
            return _read_json_lines(path, text)
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records (or {{'data': [...]}}, or JSON Lines)")
    return data, None


def _is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return any((folder / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _looks_like_hub_name(text: str) -> bool:
    """``org/name`` (optionally ``:config``) that is not a local path: one slash, no suffix, not starting with
    ``.``/``/``/``~``, and no local folder called ``org`` (``data/f8`` beside a ``data/`` folder is a
    mistyped path, not a hub dataset)."""
    org = text.partition("/")[0]
    return (text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).suffix
            and not Path(org).exists())


def _load_hub_qa(source: str, split: str | None) -> list[QARecord]:
    """Rows of a hub dataset ``org/name[:config]``.

    :raises InputNotFoundError: the hub has no such dataset, or cannot be reached (offline included)
    """
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    name, _, config = source.partition(":")
    try:
        return list(datasets.load_dataset(name, config or None, split=split or "train"))
    except (DatasetNotFoundError, ConnectionError, FileNotFoundError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputNotFoundError(
            f"QA set '{source}' is not a local file or folder, and the hub dataset '{name}' could not be loaded "
            f"({first}); check the path, or the dataset name and your connection"
        ) from err


def load_qa(
    source: str | os.PathLike[str],
    question_key: str = "question",
    answer_key: str = "answer",
    split: str | None = None,
    limit: int | None = None,
) -> list[QARecord]:
    """Load QA records from a JSON/JSONL/parquet file (JSON Lines in a ``.json`` file too, suffixes in any
    case), a saved ``datasets`` folder, a folder of data files in the hub's layout (``data/train-*.parquet``),
    or a hub dataset name.

    Records keep every field (TOFU's ``paraphrased_answer`` and ``perturbed_answer`` included) and gain
    ``question``/``answer`` under the standard names and an ``index`` (row number) when they have none.

    :param source: a path, or ``org/name`` (optionally ``org/name:config``) on the Hugging Face hub
    :param question_key: field holding the question
    :param answer_key: field holding the answer
    :param split: split of a saved DatasetDict or hub dataset (default ``train``)
    :param limit: keep only the first ``limit`` rows
    :raises InputNotFoundError: a path-like source that does not exist
    :raises UserError: a record without the question or answer field, an unreadable file, an empty set
    """
    path = Path(source).expanduser()
    lines: list[str] | None = None
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl"):
            rows, lines = _read_json_records(path)
        elif suffix == ".parquet":
            import datasets

            rows = list(datasets.Dataset.from_parquet(str(path)))
        else:
            raise UserError(f"{path}: unsupported file type '{path.suffix}'; use .json, .jsonl or .parquet")
    elif path.is_dir():
        import datasets

        if _is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split or "train"]
        else:  # a hub-layout folder (data/train-00000-of-00001.parquet, ...) read by datasets' file builders
            try:
                ds = datasets.load_dataset(str(path), split=split or "train")
            except (FileNotFoundError, ValueError) as err:
                raise UserError(
                    f"{path}: neither a saved datasets folder (save_to_disk) nor a folder of data files "
                    f"datasets can read ({type(err).__name__}: {str(err).splitlines()[0]})"
                ) from err
        rows = list(ds)
    elif _looks_like_hub_name(str(source)):
        rows = _load_hub_qa(str(source), split)
    else:
        raise InputNotFoundError(f"QA set '{source}' not found (expected a .json/.jsonl/.parquet file, "
                                "a saved datasets folder, or a hub name org/name)")
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"QA set '{source}' is empty")
    out = []
    for i, row in enumerate(rows):
        # 1-based, as editors count: the line of a JSON Lines file, else the record's position
        where = lines[i] if lines is not None else f"record {i + 1}"
        if not isinstance(row, dict):
            raise UserError(f"{source}: {where} is not an object")
        for key in (question_key, answer_key):
            if key not in row:
                raise UserError(f"{source}: {where} has no field '{key}' (fields: {sorted(row)})")
            if not isinstance(row[key], str):
                raise UserError(f"{source}: {where}: field '{key}' is {type(row[key]).__name__}, expected text")
            if not row[key].strip():
                raise UserError(f"{source}: {where}: field '{key}' is empty; every QA pair needs a question and "
                                "an answer")
        rec = dict(row)
        rec["question"] = row[question_key]
        rec["answer"] = row[answer_key]
        rec.setdefault("index", i)
        out.append(rec)
    return out


def check_disjoint(forget: Sequence[QARecord], retain: Sequence[QARecord], forget_name: str = "the forget set",
                   retain_name: str = "the retain set") -> None:
    """Refuse forget and retain sets that share a QA pair (the same question and answer, whitespace aside):
    the run would push the same answer down and up at once.

    :raises UserError: the sets overlap (the message counts the pairs and names the first, 1-based)
    """
    def key(rec: QARecord) -> tuple[str, str]:
        return " ".join(str(rec["question"]).split()), " ".join(str(rec["answer"]).split())

    positions = {key(rec): i for i, rec in enumerate(forget)}
    shared = [(positions[k], j) for j, rec in enumerate(retain) if (k := key(rec)) in positions]
    if shared:
        i, j = shared[0]
        raise UserError(
            f"{forget_name} and {retain_name} share {len(shared)} QA pair(s) (the first: record {i + 1} of the "
            f"forget set = record {j + 1} of the retain set, {forget[i]['question'][:60]!r}); a pair cannot be "
            "forgotten and retained at once: remove it from one of the sets"
        )


def tofu_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The local folder of TOFU's data files: ``explicit`` when given, else ``$SAU_COMPRESS_TOFU_DIR``.

    The one place the TOFU data folder is looked up; whether it exists is checked by the caller, which
    also decides what no folder means (the hub dataset, or an error).

    :param explicit: a folder the user named (``--data-dir``, ``tofu_dir``)
    :return: the folder (``~`` expanded), or ``None`` when neither is set (an empty variable counts as unset)
    """
    folder = explicit or os.environ.get(TOFU_DIR_ENV)
    return Path(folder).expanduser() if folder else None


def pair_forget_retain(
    n_forget: int,
    n_retain: int,
    batch_size: int,
    generator: torch.Generator,
    epochs: int = 1,
    max_steps: int | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Plan the unlearning steps: which forget and retain items each step sees (positions in the lists).

    As open-unlearning's ``ForgetRetainDataset`` (anchor ``forget``): every epoch visits the forget items in
    a fresh random order, ``batch_size`` per step (the last batch may be smaller), and pairs each forget
    item with a retain item drawn uniformly at random (with replacement). ``max_steps`` overrides
    ``epochs``: epochs repeat until that many steps are planned. Deterministic for a given ``generator``
    state.

    :param n_forget: number of forget items (at least 1)
    :param n_retain: number of retain items (0: every step gets an empty retain list)
    :param batch_size: forget items per step (at least 1)
    :param generator: CPU ``torch.Generator`` (seeded by the caller)
    :param epochs: passes over the forget set when ``max_steps`` is ``None``
    :param max_steps: exact number of steps
    :return: one ``(forget positions, retain positions)`` pair per step
    """
    if n_forget < 1:
        raise UserError("the forget set is empty")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    if max_steps is None and epochs < 1:
        raise UserError(f"epochs must be at least 1, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"max_steps must be at least 1, got {max_steps}")
    steps_per_epoch = -(-n_forget // batch_size)
    total = max_steps if max_steps is not None else epochs * steps_per_epoch
    plan: list[tuple[list[int], list[int]]] = []
    while len(plan) < total:
        order = torch.randperm(n_forget, generator=generator).tolist()
        for start in range(0, n_forget, batch_size):
            forget = order[start : start + batch_size]
            retain = torch.randint(n_retain, (len(forget),), generator=generator).tolist() if n_retain else []
            plan.append((forget, retain))
            if len(plan) == total:
                break
    return plan


def sequential_batches(n: int, batch_size: int, limit: int | None = None) -> list[list[int]]:
    """Positions ``0..n-1`` in order, ``batch_size`` at a time (the last may be smaller), at most ``limit`` batches."""
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    batches = [list(range(start, min(n, start + batch_size))) for start in range(0, n, batch_size)]
    return batches if limit is None else batches[:limit]


def spread_batches(n: int, batch_size: int, n_batches: int) -> list[list[int]]:
    """``n_batches`` batches of ``batch_size`` positions spread evenly over ``0..n-1`` (position ``i·n // m``
    for ``i < m = min(n, n_batches·batch_size)``, in order), so that every part of a set ordered by topic
    is represented; all positions when the set is smaller."""
    if batch_size < 1 or n_batches < 1:
        raise UserError(f"batch_size and n_batches must be at least 1, got {batch_size} and {n_batches}")
    m = min(n, n_batches * batch_size)
    picked = [i * n // m for i in range(m)]
    return [picked[start : start + batch_size] for start in range(0, m, batch_size)]


class QASetSpec(BaseModel):
    """Where a QA set comes from (any source :func:`load_qa` reads), as recipes and the CLI name it.

    In YAML either a plain string (the path) or a mapping::

        forget: {path: data/forget10.jsonl, question_key: question, answer_key: answer, limit: 40}
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1, description="JSON/JSONL/parquet file, saved datasets folder, or hub org/name"
    )
    question_key: str = "question"
    answer_key: str = "answer"
    split: str | None = None
    limit: int | None = Field(default=None, ge=1)

    def load(self) -> list[QARecord]:
        """Read the records (standard ``question``/``answer`` fields added, ``index`` kept)."""
        return load_qa(self.path, self.question_key, self.answer_key, self.split, self.limit)
