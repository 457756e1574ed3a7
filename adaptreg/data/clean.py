"""The one data policy: how adaptreg cleans, splits and caps labelled texts.

Catalog datasets (:mod:`adaptreg.data.catalog`, at fetch time) and user files
(:func:`adaptreg.data.tasks.load_task`, at load time) go through the same steps in the same
order, so the same rows give the same train / val / test splits and the same fingerprint
whichever way they arrive:

1. **Clean** (:func:`clean_rows`): text is stripped; empty texts are dropped and counted (user
   files: refused unless ``drop_empty``); exact duplicates after whitespace normalisation are
   removed, the first copy kept; a text seen with two or more labels is dropped altogether
   (every copy). ``raw_count = count + empty_dropped + duplicates_removed + conflicting_dropped``.
2. **Test split** (:func:`split_test`): per class, the ``round(fraction × n)`` rows with the
   lowest ``sha256("adaptreg-split:0" + normalised text)`` go to test. It depends only on the
   rows: not on their order, the run's seed, numpy or the platform. Both parts come back in
   that hash order.
3. **Cap** (:func:`cap_rows`, ``max_per_class`` / ``NAME@N``): per class, the rows with the
   lowest ``sha256("adaptreg-cap" + normalised text)`` are kept, order unchanged, so caps nest.
   The training rows are capped at N; a test split that this policy drew is capped at
   :func:`held_out_cap` (N × test/train, rounded) so it keeps its share. A test or
   validation file that the user gives is kept as given.
4. **Validation split** (:func:`split_val`): stratified, ``round(fraction × n)`` of the (capped)
   training rows, drawn with the run's seed (scikit-learn's ``train_test_split``, kept for
   reproducibility of the registered and documented results).

A source that ships its own train/dev/test split (catalog datasets such as ``clinc150``) is
cleaned by :func:`clean_parts`: the rules of step 1 over all its parts at once, a text found in
two parts kept only in the held-out one (test, then dev), the way a training file given with
its own val/test files is treated. Step 2 is skipped (its test split is kept); a cap (step 3)
caps the dev split like a drawn test split, at its own dev/train share; step 4 is skipped: the
dev split is the validation split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from ..errors import DataError

POLICY = 2  # recorded in TaskData.summary(); 1 = the rules before one policy served both paths
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def norm(text: str) -> str:
    """The duplicate key of a text: whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.split())


def key(text: str) -> bytes:
    """What a text is ranked by when splitting and capping."""
    return norm(text).encode()


def _rank(salt: str, k: bytes) -> bytes:
    return hashlib.sha256(salt.encode() + b"\0" + k).digest()


# --------------------------------------------------------------------------- 1. clean


def clean_rows(records: Iterable[tuple[str, Any]], *, where: str = "", drop_empty: bool = True,
               classes: Iterable[str] | None = None, error: type[Exception] = DataError,
               ) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Strip, drop empty texts, drop exact duplicates (whitespace-normalised) and conflicting labels.

    ``records`` are ``(text, label)`` pairs (label None: missing). Returns ``(rows, stats)``;
    ``stats`` has raw_count, empty_dropped, duplicates_removed, conflicting_dropped (texts seen
    with 2+ labels: every copy is dropped, the later copies are counted as duplicates) and count.
    One-line ``error`` for: a label outside ``classes`` (when given), empty texts when not
    ``drop_empty``, rows without a label (data rows are numbered from 1).
    """
    kept, stats = _clean(((None, t, lab) for t, lab in records), where, drop_empty, classes, error)
    return [(t, lab) for _, t, lab in kept], stats


def _clean(records: Iterable[tuple[Any, str, Any]], where: str, drop_empty: bool, classes: Iterable[str] | None,
           error: type[Exception]) -> tuple[list[tuple[Any, str, str]], dict[str, int]]:
    """:func:`clean_rows` over ``(tag, text, label)`` records; the kept records keep their tag."""
    allowed = set(classes) if classes is not None else None
    raw = dups = 0
    empty_at: list[int] = []
    unlabelled_at: list[int] = []
    first: dict[str, int] = {}
    kept: list[tuple[str, Any, str, str]] = []
    conflicts: set[str] = set()
    for i, (tag, text, label) in enumerate(records, 1):
        raw += 1
        if allowed is not None and label not in allowed:
            raise error(f"{where}: unexpected label {label!r} (expected one of {sorted(allowed)})")
        text = text.strip()
        if not text:
            empty_at.append(i)
            continue
        if label is None:
            unlabelled_at.append(i)
            continue
        k = norm(text)
        j = first.get(k)
        if j is not None:
            dups += 1
            if kept[j][3] != label:
                conflicts.add(k)
            continue
        first[k] = len(kept)
        kept.append((k, tag, text, label))
    if empty_at and not drop_empty:
        raise error(f"{where}: {len(empty_at)} empty text(s), first at data row {empty_at[0]}; "
                    "remove them or pass --drop-empty")
    if unlabelled_at:
        raise error(f"{where}: {len(unlabelled_at)} row(s) without a label, first at data row {unlabelled_at[0]}; "
                    "label or remove them")
    rows = [(tag, t, lab) for k, tag, t, lab in kept if k not in conflicts]
    stats = {"raw_count": raw, "empty_dropped": len(empty_at), "duplicates_removed": dups,
             "conflicting_dropped": len(conflicts), "count": len(rows)}
    return rows, stats


PARTS = ("train", "dev", "test")
HELD_OUT_FIRST = ("test", "dev", "train")  # which copy of a text found in two parts is kept


def clean_parts(records: Iterable[tuple[str, str, Any]], *, where: str = "", classes: Iterable[str] | None = None,
                error: type[Exception] = DataError,
                ) -> tuple[dict[str, list[tuple[str, str]]], dict[str, int], dict[str, Any]]:
    """Step 1 for a source that ships its own split: ``(part, text, label)`` records, part in :data:`PARTS`.

    The same rules as :func:`clean_rows` (and as :func:`adaptreg.data.tasks.load_task` applies to a
    training file given with its own val/test files), over the parts together: a text seen with
    two labels anywhere is dropped from every part; a text in two parts stays only in the
    held-out one (test before dev before train), so training never holds a dev/test text and dev
    never a test text; within a part the first copy is kept. Empty texts are dropped.

    Returns ``(parts, stats, cross)``: the rows of each part present, in source order; ``stats``
    as :func:`clean_rows` (``raw_count = count + empty_dropped + duplicates_removed +
    conflicting_dropped``); ``cross`` per-part raw and kept counts and the copies removed because
    the text is in a held-out part (``removed_as_in_held_out``, counted in duplicates_removed).
    """
    by_part: dict[str, list[tuple[str, Any]]] = {}
    for part, text, label in records:
        if part not in PARTS:
            raise error(f"{where}: unknown split part {part!r} (expected {', '.join(PARTS)})")
        by_part.setdefault(part, []).append((text, label))
    order = [p for p in HELD_OUT_FIRST if p in by_part]
    kept, stats = _clean(((p, t, lab) for p in order for t, lab in by_part[p]), where, True, classes, error)
    out: dict[str, list[tuple[str, str]]] = {p: [] for p in PARTS if p in by_part}
    for p, t, lab in kept:
        out[p].append((t, lab))
    # copies dropped because an earlier (held-out) part has the text, with the same or another label
    earlier: set[str] = set()
    in_held_out = {p: 0 for p in out}
    for p in order:
        mine = {norm(t) for t, _ in by_part[p]} - {""}
        in_held_out[p] = len(mine & earlier)
        earlier |= mine
    cross = {"raw": {p: len(by_part[p]) for p in out}, "kept": {p: len(rows) for p, rows in out.items()},
             "removed_as_in_held_out": {p: n for p, n in in_held_out.items() if p != order[0]}}
    return out, stats, cross


def drop_conflicts_across(*parts: list[tuple[str, str]]) -> tuple[list[list[tuple[str, str]]], int]:
    """Drop, from every part, the texts that carry different labels in different parts (given
    val/test files next to a training file). Returns the parts and how many texts were dropped."""
    labels: dict[str, set[str]] = {}
    for part in parts:
        for t, lab in part:
            labels.setdefault(norm(t), set()).add(lab)
    bad = {k for k, labs in labels.items() if len(labs) > 1}
    if not bad:
        return list(parts), 0
    return [[r for r in part if norm(r[0]) not in bad] for part in parts], len(bad)


# --------------------------------------------------------------------------- 2. test split


def stratified_split(keys: list[bytes], labels: list[Any], test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)``: per class, the round(fraction * n) items of lowest sha256 rank go to test.

    Both lists come in rank order (a fixed shuffle), so the split depends only on the items.
    """
    ranks = [_rank(f"adaptreg-split:{seed}", k) for k in keys]
    order = sorted(range(len(keys)), key=ranks.__getitem__)
    by_class: dict[Any, list[int]] = {}
    for i in order:
        by_class.setdefault(labels[i], []).append(i)
    test: set[int] = set()
    for members in by_class.values():
        test.update(members[: int(len(members) * test_fraction + 0.5)])
    return [i for i in order if i not in test], [i for i in order if i in test]


def split_test(rows: list[tuple[str, str]], fraction: float = TEST_FRACTION,
               ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(rest, test)`` rows by :func:`stratified_split` over the normalised texts (seed 0)."""
    tr, te = stratified_split([key(t) for t, _ in rows], [lab for _, lab in rows], fraction)
    return [rows[i] for i in tr], [rows[i] for i in te]


def check_splittable(rows: list[tuple[str, str]], what: str, where: str) -> None:
    """One-line DataError when a class has fewer than 2 examples (it cannot be in two splits)."""
    counts: dict[str, int] = {}
    for _, lab in rows:
        counts[lab] = counts.get(lab, 0) + 1
    small = sorted((c, lab) for lab, c in counts.items() if c < 2)
    if small:
        c, lab = small[0]
        raise DataError(f"{where}: class {lab!r} has {c} example(s), too few to split off a {what} set; "
                        f"add examples of it or pass an explicit --{what} file")


# --------------------------------------------------------------------------- 3. caps


def _keep_per_class(keys: list[bytes], labels: list[Any], quota: Any) -> list[int]:
    """Indices of the ``quota(label)`` lowest-ranked rows (sha256 cap rank) of each class, in original order."""
    ranks = [_rank("adaptreg-cap", k) for k in keys]
    by_class: dict[Any, list[int]] = {}
    for i in sorted(range(len(keys)), key=ranks.__getitem__):
        by_class.setdefault(labels[i], []).append(i)
    keep = {i for c, members in by_class.items() for i in members[: quota(c)]}
    return [i for i in range(len(keys)) if i in keep]


def cap_indices(keys: list[bytes], labels: list[Any], cap: int) -> list[int]:
    """Indices kept when capping each class at ``cap``: lowest sha256 rank first, so caps nest."""
    return _keep_per_class(keys, labels, lambda _: cap)


def cap_rows(rows: list[tuple[str, str]], cap: int) -> list[tuple[str, str]]:
    """At most ``cap`` rows per class (:func:`cap_indices`), in their original order."""
    if cap < 1:
        raise DataError(f"max_per_class == {cap}, must be >= 1")
    return [rows[i] for i in cap_indices([key(t) for t, _ in rows], [lab for _, lab in rows], cap)]


def cap_total_indices(keys: list[bytes], labels: list[Any], total: int) -> list[int]:
    """Indices kept when capping a whole split at ``total`` rows, stratified: each class keeps a
    share proportional to its size (largest remainders, at least one row per class while
    ``total`` allows), its rows ranked as in :func:`cap_indices`, so per-class and per-task caps
    pick from the same order. Original order kept."""
    if total < 1:
        raise DataError(f"max_per_task == {total}, must be >= 1")
    if len(keys) <= total:
        return list(range(len(keys)))
    counts: dict[Any, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    classes = sorted(counts, key=lambda c: (-counts[c], str(c)))
    exact = {c: total * counts[c] / len(keys) for c in classes}
    quota = {c: min(counts[c], max(1 if total >= len(classes) else 0, int(exact[c]))) for c in classes}
    left = total - sum(quota.values())
    for c in sorted(classes, key=lambda c: -(exact[c] - int(exact[c]))):
        if left <= 0:
            break
        if quota[c] < counts[c]:
            quota[c] += 1
            left -= 1
    while left < 0:  # the one-per-class floor overshot: take back from the largest quotas
        c = max(classes, key=lambda c: quota[c])
        quota[c] -= 1
        left += 1
    return _keep_per_class(keys, labels, quota.__getitem__)


def held_out_cap(cap: int, n_train: int, n_test: int) -> int:
    """Per-class cap of a drawn test split when training is capped at ``cap``: same test/train ratio."""
    return max(1, int(cap * n_test / max(n_train, 1) + 0.5))


# --------------------------------------------------------------------------- 4. validation split


def split_val(rows: list[tuple[str, str]], fraction: float, seed: int, where: str, what: str = "val",
              ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, val)``: stratified, round(fraction × n) rows drawn with ``seed``; DataError if too few."""
    from sklearn.model_selection import train_test_split

    check_splittable(rows, what, where)
    labels = [lab for _, lab in rows]
    n_classes = len(set(labels))
    n_out = max(1, round(fraction * len(rows)))
    if n_out < n_classes or len(rows) - n_out < n_classes:
        raise DataError(f"{where}: {len(rows)} examples are too few for a stratified {what} split over {n_classes} classes; "
                        f"add data or pass an explicit --{what} file")
    keep, out = train_test_split(rows, test_size=n_out, random_state=seed, stratify=labels)
    return keep, out


__all__ = [
    "HELD_OUT_FIRST", "PARTS", "POLICY", "SPLIT_SEED", "TEST_FRACTION", "cap_indices", "cap_rows", "cap_total_indices", "check_splittable",
    "clean_parts", "clean_rows", "drop_conflicts_across", "held_out_cap", "key", "norm", "split_test", "split_val", "stratified_split",
]
