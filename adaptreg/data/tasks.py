"""Read and validate task files into a TaskData: texts, labels, label map, splits, fingerprint.

Accepted sources: CSV, JSONL (and Parquet where pyarrow is installed), or a catalog name
(``bbc-news``...) which means that dataset's fixed train/test split. Every problem with the data
is a one-line :class:`~adaptreg.errors.DataError` that names the file, the row or column, and the fix.
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
        }


def _norm(text: str) -> str:
    return " ".join(text.split())


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


def _check_rows(rows: list[tuple[str, str | None]], where: str, drop_empty: bool, need_labels: bool = True) -> list[tuple[str, str]]:
    out = []
    empty = [i for i, (t, _) in enumerate(rows, 1) if not t.strip()]
    if empty and not drop_empty:
        raise DataError(f"{where}: {len(empty)} empty text(s), first at data row {empty[0]}; "
                        "remove them or pass --drop-empty")
    nolabel = [i for i, (t, lab) in enumerate(rows, 1) if lab is None and t.strip()]
    if nolabel and need_labels:
        raise DataError(f"{where}: {len(nolabel)} row(s) without a label, first at data row {nolabel[0]}; label or remove them")
    for t, lab in rows:
        if t.strip():
            out.append((t, lab))
    if empty:
        logger.warning("%s: dropped %d empty text(s)", where, len(empty))
    if not out:
        raise DataError(f"{where} has no non-empty texts")
    return out


def _dedup(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    seen: set[str] = set()
    out = []
    for t, lab in rows:
        key = _norm(t)
        if key in seen:
            continue
        seen.add(key)
        out.append((t, lab))
    return out, len(rows) - len(out)


def _stratified(rows: list[tuple[str, str]], frac: float, seed: int, what: str, where: str) -> tuple[list, list]:
    from sklearn.model_selection import train_test_split

    labels = [lab for _, lab in rows]
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    n_out = max(1, round(frac * len(rows)))
    small = sorted((c, lab) for lab, c in counts.items() if c < 2)
    if small:
        c, lab = small[0]
        raise DataError(f"{where}: class {lab!r} has {c} example(s), too few to split off a {what} set; "
                        f"add examples of it or pass an explicit --{what} file")
    if n_out < len(counts) or len(rows) - n_out < len(counts):
        raise DataError(f"{where}: {len(rows)} examples are too few for a stratified {what} split over {len(counts)} classes; "
                        f"add data or pass an explicit --{what} file")
    keep, out = train_test_split(rows, test_size=n_out, random_state=seed, stratify=labels)
    return keep, out


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
    """Read, validate, de-duplicate and split a task.

    ``data`` is a file or a catalog name (its fixed train/test files). Without explicit ``val``/
    ``test`` files, stratified splits with a fixed ``seed`` are drawn (test first, then val from
    the rest). Texts that also appear in the test split are removed from train/val.
    """
    source = str(data)
    catalog_split = _catalog_source(source, max_per_class)
    if catalog_split is not None and max_per_class is not None and "@" not in source:
        source = f"{source}@{max_per_class}"  # the catalog's own spec for the capped variant: reloads exactly
    if catalog_split is not None:
        train_path, test_path = catalog_split
        if test is None:
            test = test_path
        data, text_col, label_col = train_path, "text", "label"
    elif not (0 < val_frac < 0.5 and 0 < test_frac < 0.5):
        raise DataError(f"val_frac={val_frac}, test_frac={test_frac}: each must be in (0, 0.5)")

    rows = _check_rows(read_rows(data, text_col, label_col), str(data), drop_empty)
    rows, dups = _dedup(rows)
    if max_per_class is not None and catalog_split is None:
        rows = _cap(rows, max_per_class, seed)
    if len({lab for _, lab in rows}) < 2:
        only = rows[0][1]
        raise DataError(f"{data}: every example has label {only!r}; a classifier needs at least 2 classes")

    leaks = 0
    if test is not None:
        test_rows, d = _dedup(_check_rows(read_rows(test, text_col, label_col), str(test), drop_empty))
        dups += d
        test_keys = {_norm(t) for t, _ in test_rows}
        before = len(rows)
        rows = [r for r in rows if _norm(r[0]) not in test_keys]
        leaks += before - len(rows)
    else:
        rows, test_rows = _stratified(rows, test_frac, seed, "test", str(data))
    if val is not None:
        val_rows, d = _dedup(_check_rows(read_rows(val, text_col, label_col), str(val), drop_empty))
        dups += d
        held = {_norm(t) for t, _ in val_rows} | {_norm(t) for t, _ in test_rows}
        before = len(rows)
        rows = [r for r in rows if _norm(r[0]) not in held]
        leaks += before - len(rows)
        val_rows = [r for r in val_rows if _norm(r[0]) not in {_norm(t) for t, _ in test_rows}]
    else:
        rows, val_rows = _stratified(rows, val_frac, seed, "val", str(data))

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
        duplicates_removed=dups, leaks_removed=leaks,
        max_per_class=None if catalog_split is not None else max_per_class,
        text_col=text_col, label_col=label_col,
    )


def _cap(rows: list[tuple[str, str]], max_per_class: int, seed: int) -> list[tuple[str, str]]:
    import random

    if max_per_class < 1:
        raise DataError(f"max_per_class == {max_per_class}, must be >= 1")
    rng = random.Random(seed)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    counts: dict[str, int] = {}
    out = []
    for t, lab in shuffled:
        if counts.get(lab, 0) < max_per_class:
            counts[lab] = counts.get(lab, 0) + 1
            out.append((t, lab))
    return out


def _catalog_source(spec: str, max_per_class: int | None) -> tuple[str, str] | None:
    """(train, test) files when ``spec`` names a catalog dataset rather than a file."""
    if Path(spec).exists() or Path(spec).suffix.lower() in SUFFIXES:
        return None
    from .catalog import resolve_task_source

    found = resolve_task_source(spec, max_per_class=max_per_class)
    if found is None:
        return None
    return str(found[0]), str(found[1])


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
                   max_per_class=d.get("max_per_class"))
    if d.get("fingerprint") and td.fingerprint != d["fingerprint"]:
        raise DataError(f"{task!r}: data at {src} no longer matches the fingerprint it was trained on "
                        "(changed file or other columns); pass data={task: TaskData} to evaluate")
    return td
