"""The adapter artifact: a standard PEFT adapter directory plus head, label map and manifest.

Layout (every file listed in the manifest with its sha256)::

    adapter_config.json        PEFT config (PeftModel.from_pretrained loads the directory)
    adapter_model.safetensors  LoRA weights (safetensors only)
    head.safetensors           task head: ``weight`` [n_labels, hidden], ``bias`` [n_labels]
    labels.json                {"labels": [...]}: index -> label name
    manifest.json              schema, versions, base id + fingerprint, data fingerprint,
                               hyperparameters, metrics, file checksums (sorted keys)

This is exactly what the registry stores as a version's artifact.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._util import dump_json, sha256_file
from .errors import ConfigError, IncompatibleBaseError, IntegrityError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
HEAD_FILE = "head.safetensors"
LABELS_FILE = "labels.json"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
CHECKED_FILES = (*PEFT_FILES, HEAD_FILE, LABELS_FILE)


_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


RESERVED_PREFIX = "adaptreg-"  # adaptreg's own registered models and experiments (the router: adaptreg-router)


def validate_task_name(task: str) -> str:
    """Task names become MLflow model names and folder names: keep them plain.

    Names starting with ``adaptreg-`` (any case) and ``adaptreg`` itself are reserved for the
    registry's own models and experiments: a task named ``adaptreg-router`` would share the
    router's registered model.
    """
    if not isinstance(task, str) or not _TASK_NAME.match(task) or ".." in task:
        raise ConfigError(f"task name {task!r} is invalid: use 1-64 letters, digits, '-', '_' or '.', "
                          "starting with a letter or digit (no slashes or spaces)")
    if task.lower() == "adaptreg" or task.lower().startswith(RESERVED_PREFIX):
        raise ConfigError(f"task name {task!r} is reserved: names starting with {RESERVED_PREFIX!r} belong to "
                          "adaptreg's own registry entries (the router is 'adaptreg-router'); choose another name")
    return task


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("adaptreg", "torch", "transformers", "peft", "safetensors", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class VersionNumber(int):
    """A registered version number, as the CLI prints it. Results used to hold the whole
    version record in ``.version``; indexing it (``res.version["path"]``) still works for one
    release, with a DeprecationWarning: use ``.record`` instead."""

    record: dict[str, Any]

    def __new__(cls, record: dict[str, Any]) -> "VersionNumber":
        obj = super().__new__(cls, int(record["version"]))
        obj.record = record
        return obj

    def _old(self) -> dict[str, Any]:
        import warnings

        warnings.warn("result.version is the version number now; the whole record is result.record",
                      DeprecationWarning, stacklevel=3)
        return self.record

    def __getitem__(self, key: str) -> Any:
        return self._old()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._old().get(key, default)


def version_number(record: dict[str, Any] | None) -> "VersionNumber | None":
    return None if record is None else VersionNumber(record)


def base_section(base: Any) -> dict[str, Any]:
    """The manifest's ``base`` section from a :class:`~adaptreg.base.LoadedBase` (or a copy of a dict)."""
    if isinstance(base, dict):
        return dict(base)
    out = {"id": base.id, "fingerprint": base.fingerprint, "model_type": base.model_type,
           "hidden_size": base.hidden_size}
    model = getattr(base, "model", None)
    if model is not None and hasattr(model, "parameters"):
        out["num_parameters"] = int(sum(p.numel() for p in model.parameters()))
    return out


def new_manifest(task: str, *, base: Any, labels: list[str], data: dict[str, Any], adapter: dict[str, Any],
                 training: dict[str, Any], metrics: dict[str, Any], parents: list[dict[str, Any]] | None = None,
                 **sections: Any) -> dict[str, Any]:
    """The one builder of an artifact manifest (onboarding, merges and benchmark artifacts alike).

    The common keys (adaptreg version, creation time, base section, library versions, parents)
    are filled here; ``sections`` adds the producer's own (``selection``, ``history``,
    ``report``, ``merge``, ``benchmark``...). :func:`write_files_checksums` adds ``files`` and
    the schema version when the artifact is written.
    """
    import datetime as _dt

    from ._version import __version__

    return {
        "adaptreg_version": __version__,
        "task": validate_task_name(task) if not sections.get("benchmark") else task,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base": base_section(base),
        "data": data,
        "labels": list(labels),
        "adapter": adapter,
        "training": training,
        "metrics": metrics,
        "parents": list(parents or []),
        **sections,
        "libraries": library_versions(),
    }


def write_files_checksums(directory: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the sha256 of every artifact file in the manifest and write manifest.json."""
    d = Path(directory)
    manifest = dict(manifest)
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["files"] = {name: sha256_file(d / name) for name in CHECKED_FILES if (d / name).exists()}
    dump_json(manifest, d / MANIFEST)
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{directory} is not an adaptreg adapter: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path} is corrupt ({exc.__class__.__name__}); re-fetch the adapter from the registry") from exc
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        import warnings

        warnings.warn(f"{path} has schema {manifest['schema_version']} (newer than {SCHEMA_VERSION}); "
                      "unknown fields are ignored", stacklevel=2)
    return manifest


def verify(directory: str | os.PathLike) -> dict[str, Any]:
    """Check every file against the manifest's sha256; raise IntegrityError naming the first bad one."""
    d = Path(directory)
    manifest = read_manifest(d)
    files = manifest.get("files") or {}
    for name in CHECKED_FILES:
        if name not in files:
            raise IntegrityError(f"{d}: manifest has no checksum for {name}; the artifact is incomplete")
        path = d / name
        if not path.is_file():
            raise IntegrityError(f"{d}: {name} is missing; the artifact is incomplete (re-register or re-fetch it)")
        actual = sha256_file(path)
        if actual != files[name]:
            raise IntegrityError(f"{path} failed its sha256 check (expected {files[name][:12]}..., got {actual[:12]}...): "
                                 "the file was modified or truncated; do not use it")
    return manifest


def check_base(manifest: dict[str, Any], base_fingerprint: str, base_id: str = "?") -> None:
    """Refuse an adapter built on a base with another fingerprint."""
    want = (manifest.get("base") or {}).get("fingerprint")
    if want != base_fingerprint:
        built = (manifest.get("base") or {}).get("id", "?")
        raise IncompatibleBaseError(
            f"adapter for task {manifest.get('task', '?')!r} was built on base {built!r} ({str(want)[:19]}...) "
            f"but the base given is {base_id!r} ({base_fingerprint[:19]}...); load it with its own base"
        )


@dataclass
class Head:
    """A task head on mean-pooled features: logits = x @ weight.T + bias."""

    weight: Any  # torch.Tensor [n_labels, hidden]
    bias: Any  # torch.Tensor [n_labels]
    labels: list[str] = field(default_factory=list)


def save_head(directory: str | os.PathLike, head_module: Any, labels: list[str]) -> None:
    from safetensors.torch import save_file

    d = Path(directory)
    state = {"weight": head_module.weight.detach().cpu().contiguous(), "bias": head_module.bias.detach().cpu().contiguous()}
    save_file(state, str(d / HEAD_FILE))
    dump_json({"labels": list(labels)}, d / LABELS_FILE)


def load_head(directory: str | os.PathLike) -> Head:
    from safetensors.torch import load_file

    d = Path(directory)
    state = load_file(str(d / HEAD_FILE))
    labels = json.loads((d / LABELS_FILE).read_text(encoding="utf-8"))["labels"]
    if state["weight"].shape[0] != len(labels):
        raise IntegrityError(f"{d}: head has {state['weight'].shape[0]} outputs but labels.json lists {len(labels)}")
    return Head(weight=state["weight"], bias=state["bias"], labels=labels)


def load_task_head(directory: str | os.PathLike, task: str | None = None) -> Head:
    """A task's head from an adapter artifact: ``heads/<task>`` of a merged artifact (checksummed), else its own head."""
    from safetensors.torch import load_file

    d = Path(directory)
    heads = (read_manifest(d).get("merge") or {}).get("heads") or {}
    if task is None or task not in heads:
        return load_head(d)
    info = heads[task]
    for key in ("head", "labels"):
        if sha256_file(d / info[key]) != info[f"{key}_sha256"]:
            raise IntegrityError(f"{d / info[key]} failed its sha256 check; the merged artifact was modified")
    state = load_file(str(d / info["head"]))
    labels = json.loads((d / info["labels"]).read_text(encoding="utf-8"))["labels"]
    return Head(weight=state["weight"], bias=state["bias"], labels=labels)


def adapter_size_bytes(directory: str | os.PathLike) -> int:
    d = Path(directory)
    return sum((d / n).stat().st_size for n in CHECKED_FILES if (d / n).exists())
