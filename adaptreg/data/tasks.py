"""Read and validate task files into a TaskData: texts, labels, label map, splits, fingerprint.

Accepted sources: CSV, JSONL (and Parquet where pyarrow is installed), or a catalog name
(``bbc-news``...) which means that dataset's fixed train/test split (and its own dev split as
the validation split, for the datasets that ship one, e.g. ``clinc150``). Cleaning, splitting
and capping follow the one data policy of :mod:`adaptreg.data.clean`, the same the catalog
applies, so the same rows give the same splits and fingerprint as a file or as a catalog
dataset. Every problem with the data is a one-line :class:`~adaptreg.errors.DataError` that
names the file, the row or column, and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._util import raise_csv_field_limit
from ..errors import DataError
from . import clean

logger = logging.getLogger(__name__)

SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Split:
    texts: list[str]
    y: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TaskData:
    """A classification task ready for training: three splits over one label map."""

    labels: list[str]
    train: Split
    val: Split
    test: Split
    source: str
    fingerprint: str
    duplicates_removed: int = 0
    leaks_removed: int = 0
    empty_dropped: int = 0
    conflicting_dropped: int = 0
    max_per_class: int | None = None
    text_col: str = "text"
    label_col: str = "label"

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source, "fingerprint": self.fingerprint, "labels": self.labels,
            "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test),
            "duplicates_removed": self.duplicates_removed, "test_overlap_removed": self.leaks_removed,
            "max_per_class": self.max_per_class, "text_col": self.text_col, "label_col": self.label_col,
            "empty_dropped": self.empty_dropped, "conflicting_dropped": self.conflicting_dropped,
            "policy": clean.POLICY,
        }


_norm = clean.norm  # the duplicate key (kept under this name for older imports)


def read_records(path: str | os.PathLike, what: str = "data file") -> tuple[list[dict[str, Any]], list[str]]:
    """Records and column names of a CSV / JSONL / Parquet file; one-line DataError on any problem."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p} not found: check the path (or give a catalog name, see `adaptreg data list`)")
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p}: unknown file type {p.suffix!r}; use .csv, .jsonl or .parquet")
    try:
        if kind == "csv":
            raise_csv_field_limit()  # the csv module's default stops at 131,072 characters per field
            with open(p, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                records = list(reader)
                columns = list(reader.fieldnames or [])
        elif kind == "jsonl":
            records, columns = [], []
            with open(p, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{p}: line {i} is not valid JSON ({exc.msg}); fix or remove that line") from None
                    if not isinstance(rec, dict):
                        raise DataError(f"{p}: line {i} is not a JSON object; each line must be one record {{...}}")
                    records.append(rec)
                    columns.extend(k for k in rec if k not in columns)
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(f"{p}: reading Parquet needs pyarrow: pip install pyarrow (or convert to CSV/JSONL)") from None
            table = pq.read_table(p)
            columns = list(table.column_names)
            records = table.to_pylist()
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not valid UTF-8 (byte {exc.start}): re-save it as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{p}: malformed CSV ({exc}); check quoting") from None
    return records, columns


def read_rows(path: str | os.PathLike, text_col: str, label_col: str | None) -> list[tuple[str, str | None]]:
    """Read (text, label) pairs from a CSV / JSONL / Parquet file, checking columns and encoding."""
    p = Path(path)
    records, columns = read_records(p)
    if not records:
        raise DataError(f"{p} has no rows: give a file with a header and at least one example per class")
    for col in (text_col, label_col):
        if col is not None and col not in columns:
            raise DataError(f"{p}: no column {col!r} (columns: {', '.join(map(str, columns)) or 'none'}); "
                            f"pass --{'text' if col == text_col else 'label'}-col")
    rows = []
    for rec in records:
        text = rec.get(text_col)
        label = rec.get(label_col) if label_col is not None else None
        rows.append(("" if text is None else str(text), None if label is None or label == "" else str(label)))
    return rows


def _clean_file(path: str | os.PathLike, text_col: str, label_col: str, drop_empty: bool) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Read a file and clean it by the one policy (:func:`adaptreg.data.clean.clean_rows`)."""
    where = str(path)
    rows, stats = clean.clean_rows(read_rows(path, text_col, label_col), where=where, drop_empty=drop_empty)
    if stats["empty_dropped"]:
        logger.warning("%s: dropped %d empty text(s)", where, stats["empty_dropped"])
    if stats["conflicting_dropped"]:
        logger.warning("%s: dropped %d text(s) that occur with two or more labels", where, stats["conflicting_dropped"])
    if not rows:
        raise DataError(f"{where}: every text occurs with two or more labels; fix the labels" if stats["conflicting_dropped"]
                        else f"{where} has no non-empty texts")
    return rows, stats


def _fingerprint(parts: dict[str, list[tuple[str, str]]]) -> str:
    h = hashlib.sha256()
    for name in sorted(parts):
        for t, lab in parts[name]:
            h.update(json.dumps([name, t, lab], ensure_ascii=False).encode())
    return "sha256:" + h.hexdigest()


def load_task(
    data: str | os.PathLike,
    *,
    text_col: str = "text",
    label_col: str = "label",
    val: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    val_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 0,
    drop_empty: bool = False,
    max_per_class: int | None = None,
) -> TaskData:
    """Read, validate, clean and split a task by the one data policy (:mod:`adaptreg.data.clean`).

    ``data`` is a file or a catalog spec (its fixed train/test files, and its dev file as the
    validation split when the dataset ships one; ``max_per_class`` picks the catalog's
    ``NAME@N`` variant). Each file is cleaned: texts stripped, empty texts refused (or dropped
    with ``drop_empty``), exact duplicates removed, texts with two labels dropped. Without a
    ``test`` file, the test split is drawn by sha256 rank (seed 0: it does not depend on
    ``seed``); ``max_per_class`` then caps the training rows per class and that test split at
    the same test/train ratio, both by sha256 rank; without a ``val`` file, the validation
    split is drawn from the (capped) training rows with ``seed``. Given val/test
    files are kept as given; texts that also occur in them are removed from training.
    """
    source = str(data)
    catalog_split = _catalog_source(source, max_per_class)
    if catalog_split is not None and max_per_class is not None and "@" not in source:
        source = f"{source}@{max_per_class}"  # the catalog's own spec for the capped variant: reloads exactly
    cap = max_per_class
    if catalog_split is not None:
        train_path, test_path = catalog_split["train"], catalog_split["test"]
        if test is None:
            test = test_path  # drawn (and capped) by the same policy when the dataset was fetched
        if val is None and "dev" in catalog_split:
            val = catalog_split["dev"]  # the dataset's own dev split (capped at fetch like test)
        data, text_col, label_col, cap = train_path, "text", "label", None
    elif not (0 < val_frac < 0.5 and 0 < test_frac < 0.5):
        raise DataError(f"val_frac={val_frac}, test_frac={test_frac}: each must be in (0, 0.5)")
    if cap is not None and cap < 1:
        raise DataError(f"max_per_class == {cap}, must be >= 1")

    rows, stats = _clean_file(data, text_col, label_col, drop_empty)
    dropped = {k: stats[k] for k in ("empty_dropped", "duplicates_removed", "conflicting_dropped")}
    if len({lab for _, lab in rows}) < 2:
        only = rows[0][1]
        raise DataError(f"{data}: every example has label {only!r}; a classifier needs at least 2 classes")
    test_rows = val_rows = None
    for name, path in (("test", test), ("val", val)):
        if path is None:
            continue
        part, st = _clean_file(path, text_col, label_col, drop_empty)
        for k in dropped:
            dropped[k] += st[k]
        if name == "test":
            test_rows = part
        else:
            val_rows = part

    leaks = 0
    if test_rows is not None or val_rows is not None:
        (rows, v, t), n = clean.drop_conflicts_across(rows, val_rows or [], test_rows or [])
        dropped["conflicting_dropped"] += n
        val_rows = v if val_rows is not None else None
        test_rows = t if test_rows is not None else None
        held = {_norm(x) for x, _ in (val_rows or []) + (test_rows or [])}
        before = len(rows)
        rows = [r for r in rows if _norm(r[0]) not in held]
        leaks = before - len(rows)
        if val_rows is not None and test_rows is not None:
            test_keys = {_norm(x) for x, _ in test_rows}
            val_rows = [r for r in val_rows if _norm(r[0]) not in test_keys]
        if not rows:
            raise DataError(f"{data}: no training texts left after removing those that also occur in val/test; add data")
    if test_rows is None:
        clean.check_splittable(rows, "test", str(data))
        rows, test_rows = clean.split_test(rows, test_frac)
        if not test_rows:
            raise DataError(f"{data}: {len(rows)} examples are too few for a stratified test split; "
                            "add data or pass an explicit --test file")
        if cap is not None:
            test_rows = clean.cap_rows(test_rows, clean.held_out_cap(cap, len(rows), len(test_rows)))
    if cap is not None:
        rows = clean.cap_rows(rows, cap)
    if val_rows is None:
        rows, val_rows = clean.split_val(rows, val_frac, seed, str(data))

    labels = sorted({lab for _, lab in rows})
    index = {lab: i for i, lab in enumerate(labels)}
    for name, part in (("val", val_rows), ("test", test_rows)):
        unseen = sorted({lab for _, lab in part} - set(index))
        if unseen:
            raise DataError(f"{name} labels {unseen[:5]} never occur in training data; "
                            f"add training examples of them or remove them from the {name} set")
    if not val_rows or not test_rows:
        raise DataError(f"{data}: the {'val' if not val_rows else 'test'} split is empty after removing duplicates; add data")

    def split(part: list[tuple[str, str]]) -> Split:
        return Split([t for t, _ in part], [index[lab] for _, lab in part])

    if leaks:
        logger.info("removed %d training texts that also occur in val/test", leaks)
    return TaskData(
        labels=labels, train=split(rows), val=split(val_rows), test=split(test_rows), source=source,
        fingerprint=_fingerprint({"train": rows, "val": val_rows, "test": test_rows}),
        duplicates_removed=dropped["duplicates_removed"], leaks_removed=leaks,
        empty_dropped=dropped["empty_dropped"], conflicting_dropped=dropped["conflicting_dropped"],
        max_per_class=None if catalog_split is not None else max_per_class,
        text_col=text_col, label_col=label_col,
    )


def _catalog_source(spec: str, max_per_class: int | None) -> dict[str, str] | None:
    """The files (train, test, and dev when shipped) when ``spec`` names a catalog dataset rather than a file."""
    if Path(spec).exists() or Path(spec).suffix.lower() in SUFFIXES:
        return None
    from .catalog import resolve_task_files

    found = resolve_task_files(spec, max_per_class=max_per_class)
    if found is None:
        return None
    return {part: str(path) for part, path in found.items()}


def load_task_from_manifest(manifest: dict[str, Any], data: Any = None) -> TaskData:
    """A registered adapter's TaskData: ``data`` if given (TaskData or path), else rebuilt from the
    manifest's data source, seed, columns and cap, and refused if its fingerprint changed."""
    if isinstance(data, TaskData):
        return data
    task = manifest.get("task", "?")
    d = manifest.get("data") or {}
    src = data if isinstance(data, (str, os.PathLike)) else d.get("source")
    if not src:
        raise DataError(f"{task!r}: its manifest records no data source; pass data={{'{task}': PATH}} to evaluate")
    seed = int((manifest.get("training") or {}).get("seed", 0))
    td = load_task(str(src), seed=seed, text_col=d.get("text_col", "text"), label_col=d.get("label_col", "label"),
                   max_per_class=d.get("max_per_class"), drop_empty=bool(d.get("empty_dropped")))
    if d.get("fingerprint") and td.fingerprint != d["fingerprint"]:
        why = "changed file or other columns"
        if d.get("policy") is None and _catalog_source(str(src), None) is None:
            why += ("; or split by the rules before adaptreg's one data policy (adaptreg.data.clean): "
                    "a file's test split no longer depends on the seed and conflicting labels are dropped")
        raise DataError(f"{task!r}: data at {src} no longer matches the fingerprint it was trained on "
                        f"({why}); pass data={{{task!r}: TaskData}} to evaluate")
    return td
