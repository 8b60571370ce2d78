"""QA sets: reading them from files, folders and the hub (:func:`load_qa`, :class:`QASetSpec`), checking that
a forget and a retain set share no pair, and the TOFU folder lookup."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sau_compress.errors import InputNotFoundError, UserError

__all__ = ["QARecord", "QASetSpec", "TOFU_DIR_ENV", "check_disjoint", "load_qa", "tofu_data_dir"]

#: Environment variable naming the local folder of TOFU's files (``forget10_perturbed.jsonl``, ...).
TOFU_DIR_ENV = "SAU_COMPRESS_TOFU_DIR"

QARecord = dict[str, Any]


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
