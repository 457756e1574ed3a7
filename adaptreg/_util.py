"""Small helpers shared across modules: hashing, atomic writes, output checks, seeding, JSON, CSV."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dump_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON with sorted keys atomically (temp file + rename)."""
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinity (float or numpy) replaced by None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if type(obj).__module__ == "numpy":  # numpy scalars and arrays, without importing numpy
        with contextlib.suppress(TypeError):
            return nan_to_none(_json_default(obj))
    return obj


def to_json(obj: Any, indent: int | None = 2, *, sort_keys: bool = True, ensure_ascii: bool = True) -> str:
    """The one JSON writer for output: sorted keys, and NaN/infinity written as ``null``, never a bare
    ``NaN`` (which strict parsers reject). ``indent=None``: one line (JSONL)."""
    return json.dumps(nan_to_none(obj), indent=indent, sort_keys=sort_keys, allow_nan=False,
                      default=_json_default, ensure_ascii=ensure_ascii)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` only if the block succeeds.

    An exception or Ctrl-C inside the block removes the temporary directory, so ``final``
    is either absent (or its previous content) or complete, never half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield tmp
        _apply_umask(tmp)
        if final.exists():
            if not overwrite:
                from .errors import AdaptregError

                raise AdaptregError(f"{final} already exists; choose another output folder or pass --overwrite")
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _apply_umask(root: Path) -> None:
    """mkdtemp/mkstemp create private files; give the finished tree the user's usual modes."""
    mask = os.umask(0)
    os.umask(mask)
    root.chmod(0o777 & ~mask)
    for p in root.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def seed_everything(seed: int) -> None:
    """The one place a seed becomes random state (python, numpy, torch)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


# --------------------------------------------------------------------------- output locations

def _nearest_existing(path: Path) -> Path:
    p = path
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        p = p.parent
    return p


def _writable_dir(where: Path, option: str, path: str | os.PathLike) -> None:
    """Refuse unless ``where`` is a directory a file can be created in (a real probe: root and
    read-only mounts make ``os.access`` unreliable); the probe leaves nothing behind."""
    if not where.is_dir():
        raise _config_error(f"{option} {path}: {where} is not a directory; choose another {option}")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _config_error(f"{option} {path}: cannot write in {where} ({reason.lower()}); "
                            f"choose a writable location for {option}") from None


def _config_error(msg: str) -> Exception:
    from .errors import ConfigError

    return ConfigError(msg)


def check_output_dir(path: str | os.PathLike, option: str = "--out", overwrite: bool | None = False) -> Path:
    """Refuse, before any work, a folder output that could not be written at the end.

    Missing parent folders are allowed: they are created when the result is written (with
    :func:`atomic_dir`); the nearest existing one must be a writable directory. ``overwrite``:
    False refuses an existing path, True allows replacing it, None allows writing into an
    existing folder. Nothing is created.
    """
    p = Path(path).expanduser()
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise _config_error(f"{option} {path} exists and is not a directory; choose another {option}")
        if overwrite is False:
            raise _config_error(f"{option} {path} already exists; choose another {option} or pass --overwrite")
        if overwrite is None:
            _writable_dir(p, option, path)
            return p
    _writable_dir(_nearest_existing(p.parent), option, path)
    return p


def check_output_file(path: str | os.PathLike, option: str = "--output", overwrite: bool = False,
                      inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Refuse, before any work, a file output that could not be written or would replace a file.

    Unlike a folder output, a missing parent folder is an error (a typo in a file path is more
    likely than a wish for new folders). ``inputs`` (``{"--data": path}``) names files read by
    the same command: replacing one of them is refused by name unless ``overwrite``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise _config_error(f"{option} {path} is a directory; give a file name such as {Path(path) / 'out.csv'}")
    parent = p.parent
    if not parent.exists():
        raise _config_error(f"{option} {path}: the folder {parent} does not exist; create it or choose another {option}")
    _writable_dir(parent, option, path)
    if p.exists() and not overwrite:
        for opt, src in (inputs or {}).items():
            if src is not None and Path(src).exists() and os.path.samefile(src, p):
                raise _config_error(f"{option} {path} is the {opt} input file: writing there would replace your "
                                    f"input; choose another {option} (or pass --overwrite to replace it)")
        raise _config_error(f"{option} {path} already exists; choose another {option} or pass --overwrite")
    return p


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``final``; rename it to ``final`` only if the block succeeds."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- CSV

def raise_csv_field_limit() -> None:
    """Let the csv module read fields of any length (its default stops at 131,072 characters).

    ``sys.maxsize`` overflows the C long on some platforms (Windows): halve until accepted.
    """
    import csv
    import sys

    limit = sys.maxsize
    while limit > csv.field_size_limit():
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2
