"""The one data policy (adaptreg.data.clean): the same rows give the same splits as a user file
and as a catalog dataset; conflicting labels are dropped in both; caps behave the same in both."""

from __future__ import annotations

import csv

import pytest
from conftest import make_toy_rows

from adaptreg._util import sha256_file
from adaptreg.data import catalog as C
from adaptreg.data import clean
from adaptreg.data.tasks import load_task, load_task_from_manifest
from adaptreg.errors import CatalogError, DataError

CONFLICT = "this text is both sport and tech"


def noisy_rows() -> list[dict]:
    """Toy rows plus what cleaning must handle: re-spaced duplicates, a conflict, an empty text."""
    rows = make_toy_rows(40)
    rows += [{"text": "  " + r["text"].replace(" ", "   ") + "\n", "label": r["label"]} for r in rows[::9]]
    rows += [{"text": CONFLICT, "label": "sport"}, {"text": "  " + CONFLICT, "label": "tech"}, {"text": "   ", "label": "sport"}]
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def read_csv_member(archive, member):
    with open(archive, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            yield r["text"], r["label"]


@pytest.fixture
def same_rows(tmp_path, monkeypatch):
    """(user CSV path, catalog name): one file of rows, read as a user file and fetched as a catalog dataset."""
    path = write_csv(tmp_path / "topics.csv", noisy_rows())
    monkeypatch.setenv("ADAPTREG_DATA", str(tmp_path / "home"))
    spec = C.DatasetSpec(
        name="toy-topics", kind="text", description="toy", classes=("business", "sport", "tech"), license="test",
        source=C.Source("pypi", "toy", "1", "toy.whl", sha256_file(path), "topics.csv"), raw_count=0,
        reader=read_csv_member)
    monkeypatch.setitem(C.DATASETS, spec.name, spec)
    C.fetch(spec.name, archive=path)
    return path, spec.name


def splits(td):
    return {p: (getattr(td, p).texts, [td.labels[y] for y in getattr(td, p).y]) for p in ("train", "val", "test")}


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("cap", [None, 12, 25])
def test_same_rows_same_splits_as_file_or_catalog(same_rows, seed, cap):
    path, name = same_rows
    user = load_task(path, seed=seed, max_per_class=cap, drop_empty=True)
    cat = load_task(name, seed=seed, max_per_class=cap)
    assert splits(user) == splits(cat)
    assert user.fingerprint == cat.fingerprint
    assert user.labels == cat.labels == ["business", "sport", "tech"]
    if cap is not None:
        assert cat.source == f"{name}@{cap}" and user.max_per_class == cap
        assert max(user.train.y.count(i) + user.val.y.count(i) for i in range(3)) == cap


def test_conflicting_label_dropped_in_both(same_rows):
    path, name = same_rows
    user = load_task(path, drop_empty=True)
    meta = C.dataset_info(name).meta
    for td in (user, load_task(name)):
        assert not [t for t in td.train.texts + td.val.texts + td.test.texts if clean.norm(t) == CONFLICT]
    # the same accounting either way: the catalog at fetch time, the user file at load time
    assert (user.conflicting_dropped, user.duplicates_removed, user.empty_dropped) == (1, 15, 1)
    assert (meta["conflicting_dropped"], meta["duplicates_removed"], meta["empty_dropped"]) == (1, 15, 1)
    s = user.summary()
    assert s["conflicting_dropped"] == 1 and s["empty_dropped"] == 1 and s["policy"] == clean.POLICY
    assert meta["raw_count"] == meta["count"] + 1 + 15 + 1 == len(user.train) + len(user.val) + len(user.test) + 17


def test_cap_never_touches_given_val_and_test(tmp_path):
    rows = make_toy_rows(40)
    train = write_csv(tmp_path / "train.csv", rows[::3] + rows[1::3])
    val = write_csv(tmp_path / "val.csv", rows[2::6])
    test = write_csv(tmp_path / "test.csv", rows[5::6])
    full = load_task(train, val=val, test=test)
    for cap in (5, 20):
        capped = load_task(train, val=val, test=test, max_per_class=cap)
        assert splits(capped)["val"] == splits(full)["val"] and splits(capped)["test"] == splits(full)["test"]
        assert set(capped.train.texts) <= set(full.train.texts)
        assert max(capped.train.y.count(i) for i in range(3)) == cap


def test_cap_keeps_drawn_test_share_and_nests(same_rows):
    """A test split that the policy draws keeps its share under a cap (N x test/train), nested, the same both ways."""
    path, name = same_rows
    full = load_task(path, drop_empty=True)
    small, smaller = (load_task(path, drop_empty=True, max_per_class=n) for n in (25, 12))
    assert set(smaller.test.texts) <= set(small.test.texts) <= set(full.test.texts)
    n_train, n_test = len(full.train) + len(full.val), len(full.test)
    for td, n in ((small, 25), (smaller, 12)):
        assert max(td.test.y.count(i) for i in range(3)) == clean.held_out_cap(n, n_train, n_test)
        assert splits(td)["test"] == splits(load_task(name, max_per_class=n))["test"]
    # the test split does not depend on the run's seed; validation does
    other = load_task(path, drop_empty=True, seed=5)
    assert other.test.texts == full.test.texts and other.val.texts != full.val.texts


def test_clean_rows_counts_and_errors():
    recs = [("a b", "x"), ("a  b ", "x"), ("", "x"), ("  ", "y"), ("c", "x"), (" c", "y"), ("d", "y")]
    rows, stats = clean.clean_rows(recs)
    assert rows == [("a b", "x"), ("d", "y")]
    assert stats == {"raw_count": 7, "empty_dropped": 2, "duplicates_removed": 2, "conflicting_dropped": 1, "count": 2}
    with pytest.raises(DataError, match=r"2 empty text\(s\), first at data row 3; remove them or pass --drop-empty"):
        clean.clean_rows(recs, where="f.csv", drop_empty=False)
    with pytest.raises(DataError, match=r"1 row\(s\) without a label, first at data row 2"):
        clean.clean_rows([("a", "x"), ("b", None)], where="f.csv")
    with pytest.raises(CatalogError, match="unexpected label"):
        clean.clean_rows([("t", "zzz")], classes=["x"], error=CatalogError)
    assert C.clean_texts(recs, ["x", "y"]) == (rows, stats)  # the catalog's cleaning is this one


def test_split_and_cap_ignore_row_order():
    rows = [(f"text {i}", "ab"[i % 3 == 0]) for i in range(90)]
    rest, test = clean.split_test(rows)
    rest2, test2 = clean.split_test(rows[::-1])
    assert (rest, test) == (rest2, test2) and len(test) == 18
    assert set(clean.cap_rows(rows, 5)) == set(clean.cap_rows(rows[::-1], 5)) <= set(clean.cap_rows(rows, 9))


@pytest.mark.parametrize("rows, message", [
    ([{"text": "same", "label": "a"}, {"text": "same", "label": "b"}], "every text occurs with two or more labels"),
    ([{"text": f"t {i}", "label": "a"} for i in range(9)] + [{"text": "t 0", "label": "b"}, {"text": "u", "label": "b"}],
     "class 'b' has 1 example(s), too few to split off a test set"),
])
def test_bad_input_is_one_line(tmp_path, rows, message):
    with pytest.raises(DataError) as exc:
        load_task(write_csv(tmp_path / "d.csv", rows))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_conflict_across_given_files_is_dropped(tmp_path):
    rows = make_toy_rows(20)
    train = write_csv(tmp_path / "train.csv", rows[:50] + [{"text": CONFLICT, "label": "sport"}])
    test = write_csv(tmp_path / "test.csv", rows[50:] + [{"text": CONFLICT, "label": "tech"}])
    td = load_task(train, test=test)
    assert td.conflicting_dropped == 1 and CONFLICT not in td.train.texts + td.val.texts + td.test.texts
    assert len(td.test) == 10


def test_manifest_from_before_the_policy_says_why(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_toy_rows())
    manifest = {"task": "t", "data": {"source": str(path), "fingerprint": "sha256:old"}}
    with pytest.raises(DataError, match="one data policy") as exc:
        load_task_from_manifest(manifest)
    assert "\n" not in str(exc.value)
    manifest["data"] = load_task(path).summary()
    assert load_task_from_manifest(manifest).fingerprint == manifest["data"]["fingerprint"]
