"""load_qa: every layout a datasets user writes, and errors that name the file and the 1-based line."""

from __future__ import annotations

import json

import pytest

from sau_compress.data import load_qa
from sau_compress.errors import UserError

ROWS = [{"question": f"q{i}", "answer": f"a{i}", "extra": i} for i in range(3)]


def _check(records):
    assert [(r["question"], r["answer"], r["extra"], r["index"]) for r in records] == [
        ("q0", "a0", 0, 0), ("q1", "a1", 1, 1), ("q2", "a2", 2, 2)
    ]


def test_json_array_data_object_and_json_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "D.JSONL").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "e.JSON").write_text(json.dumps(ROWS))
    for name in ("a.json", "b.json", "c.jsonl", "D.JSONL", "e.JSON"):
        _check(load_qa(tmp_path / name))


def test_what_datasets_writes(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_json(str(tmp_path / "to_json.json"))  # JSON Lines in a .json file
    ds.to_parquet(str(tmp_path / "x.Parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    ds.to_parquet(str(hub / "train-00000-of-00001.parquet"))
    ds.select([1]).to_parquet(str(hub / "test-00000-of-00001.parquet"))
    for name in ("to_json.json", "x.Parquet", "saved", "dict", "hub"):
        _check(load_qa(tmp_path / name))
    assert [r["question"] for r in load_qa(tmp_path / "hub", split="test")] == ["q1"]
    assert [r["question"] for r in load_qa(tmp_path / "dict", split="test")] == ["q0"]


def test_errors_name_the_file_and_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(UserError, match=rf"^{bad}: line 3 has no field 'answer'"):
        load_qa(bad)
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([ROWS[0], "text"]))
    with pytest.raises(UserError, match=rf"^{arr}: record 2 is not an object"):
        load_qa(arr)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROWS[0]) + "\n{nope\n")
    with pytest.raises(UserError, match=rf"^{broken}:2: not valid JSON"):
        load_qa(broken)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'[{"question": "caf\xe9", "answer": "x"}]')
    with pytest.raises(UserError, match=rf"^{latin}: not UTF-8 text \(byte offset 18: invalid continuation byte\)"):
        load_qa(latin)
    truncated = tmp_path / "trunc.json"
    truncated.write_text('[{"question": "q",\n "answer": ')
    with pytest.raises(UserError, match=rf"^{truncated}:2: not valid JSON"):
        load_qa(truncated)
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(UserError, match=rf"^{empty_dir}: neither a saved datasets folder"):
        load_qa(empty_dir)
