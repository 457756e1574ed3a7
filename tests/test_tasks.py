"""Task file reading and validation: every bad input is a one-line DataError."""

from __future__ import annotations

import csv
import json

import pytest

from adaptreg.data.tasks import load_task
from adaptreg.errors import DataError

from conftest import make_toy_rows


def write_csv(path, rows, fields=("text", "label"), encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_split_is_stratified_and_repeatable(toy_csv):
    a = load_task(toy_csv, seed=3)
    b = load_task(toy_csv, seed=3)
    assert a.fingerprint == b.fingerprint
    assert a.labels == ["business", "sport", "tech"]
    assert len(a.train) + len(a.val) + len(a.test) == 90
    assert set(a.test.y) == {0, 1, 2} and set(a.val.y) == {0, 1, 2}
    assert not set(a.train.texts) & set(a.test.texts)
    assert load_task(toy_csv, seed=4).fingerprint != a.fingerprint


def test_jsonl_and_custom_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in make_toy_rows():
            f.write(json.dumps({"body": r["text"], "queue": r["label"]}) + "\n")
    td = load_task(path, text_col="body", label_col="queue")
    assert td.n_labels == 3


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = make_toy_rows()
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}), path)
    assert load_task(path).n_labels == 3


def test_duplicates_removed_and_counted(tmp_path):
    rows = make_toy_rows()
    path = write_csv(tmp_path / "d.csv", rows + rows[:7] + [{"text": "  " + rows[0]["text"] + " ", "label": rows[0]["label"]}])
    td = load_task(path)
    assert td.duplicates_removed == 8
    assert len(td.train) + len(td.val) + len(td.test) == 90


def test_explicit_val_and_test_files(tmp_path):
    rows = make_toy_rows(40)
    train = write_csv(tmp_path / "train.csv", rows[:80])
    val = write_csv(tmp_path / "val.csv", rows[80:100])
    test = write_csv(tmp_path / "test.csv", rows[100:] + rows[:3])  # 3 overlap with train
    td = load_task(train, val=val, test=test)
    assert len(td.test) == 23 and len(td.val) == 20
    assert td.leaks_removed == 3 and len(td.train) == 77


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.csv", "not found"),
        (lambda p: write_csv(p / "e.csv", []), "no rows"),
        (lambda p: write_csv(p / "c.csv", [{"txt": "a", "label": "x"}], fields=("txt", "label")), "no column 'text'"),
        (lambda p: write_csv(p / "one.csv", [{"text": f"t {i}", "label": "x"} for i in range(20)]), "at least 2 classes"),
        (lambda p: write_csv(p / "few.csv", [{"text": f"t {i}", "label": "x"} for i in range(20)] + [{"text": "y", "label": "y"}]),
         "class 'y' has 1 example"),
        (lambda p: write_csv(p / "empty.csv", make_toy_rows() + [{"text": "   ", "label": "sport"}]), "empty text"),
        (lambda p: write_csv(p / "nolab.csv", make_toy_rows() + [{"text": "orphan", "label": ""}]), "without a label"),
        (lambda p: p / "x.txt", "not found"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, make, message):
    with pytest.raises(DataError) as exc:
        load_task(make(tmp_path))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_undecodable_bytes(tmp_path):
    path = tmp_path / "latin.csv"
    write_csv(path, make_toy_rows() + [{"text": "café crème", "label": "sport"}], encoding="latin-1")
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_task(path)


def test_unknown_suffix(tmp_path):
    p = tmp_path / "d.xlsx"
    p.write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_task(p)


def test_unseen_test_labels(tmp_path):
    rows = make_toy_rows()
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", [{"text": "brand new words", "label": "weather"}])
    with pytest.raises(DataError, match="never occur in training"):
        load_task(train, test=test)


def test_drop_empty(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_toy_rows() + [{"text": "", "label": "sport"}])
    assert len(load_task(path, drop_empty=True).train) > 0


def test_bad_jsonl_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_task(p)
