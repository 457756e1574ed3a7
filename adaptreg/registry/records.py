"""The registry's schema: adaptreg's MLflow tag names, and version records built from tags."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
from typing import Any

from .. import artifact
from .._version import __version__
from ..errors import ConfigError

logger = logging.getLogger(__name__)

EXPERIMENT = "adaptreg"
DEFAULT_ALIAS = "production"
DB_NAME = "mlflow.db"

TAG = "adaptreg."
MANAGED_TAG = "adaptreg.managed"  # registered-model tag: this model is an adaptreg task
STATUS_TAG = "adaptreg.status"
READY, PENDING, FAILED = "ready", "pending", "failed"
ARCHIVED_TAG = "adaptreg.archived"
ROUTE_TAG = "adaptreg.route"  # version tag: "wanted" = onboarding meant to add it to the router
METRIC_TAG = "adaptreg.metric."
ADAPTER_PATH = "adapter"  # artifact sub-directory of a run that holds the adapter
PLOT_FILE = "confusion_matrix.png"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# --best picks the highest value, except for metrics whose name says smaller is better.
LOWER_IS_BETTER = ("loss", "seconds", "bytes", "trainable")
COMPARE_COLUMNS = ["task", "version", "aliases", "kind", "rank", "epochs", "serves", "test_accuracy", "test_macro_f1",
                   "probe_test_accuracy", "gain_test_points", "train_seconds", "trainable_pct"]

_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_PARAM_KEY_BAD = re.compile(r"[^\w./ -]")
_SQL_SCHEMES = ("postgresql", "mysql", "mssql")


def validate_task_name(name: Any) -> str:
    """A task name is also a registered-model name and a directory name (one rule: the artifact's)."""
    return artifact.validate_task_name(name)


def validate_alias(alias: Any) -> str:
    if (not isinstance(alias, str) or not _ALIAS_RE.match(alias) or alias.lower() == "latest"
            or re.fullmatch(r"[vV]\d+", alias)):
        raise ConfigError(f"invalid alias {alias!r}: use 1-64 letters, digits, '-' or '_', starting with a letter; "
                          "'latest' and 'v<N>' are reserved by MLflow (e.g. --alias production)")
    return alias


def parse_version(version: Any) -> int:
    """A version as given by a user (``2``, ``"v2"``) as a positive int; ConfigError otherwise."""
    text = str(version).strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"invalid version {version!r}: give a positive integer such as 1 or 2")
    return int(text)


# -- records ----------------------------------------------------------------------------------


def tag_value(text: str | None) -> Any:
    """A tag's value: the JSON it holds, else the text itself (None stays None)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def iso_time(ms: int) -> str | None:
    """Epoch milliseconds as an ISO-8601 UTC time to the second (None for 0 or None)."""
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).isoformat(timespec="seconds")


def is_usable(raw: dict[str, Any]) -> bool:
    """Ready and not archived: what latest/best/default lookups may return."""
    return raw["tags"].get(STATUS_TAG) == READY and raw["tags"].get(ARCHIVED_TAG) != "true"


def version_record(raw: dict[str, Any]) -> dict[str, Any]:
    """The version record (JSON-ready) built from a raw version (MLflow fields + tags)."""
    t = raw["tags"]
    metrics = {k[len(METRIC_TAG):]: tag_value(v) for k, v in t.items() if k.startswith(METRIC_TAG)}
    return {
        "task": raw["task"],
        "version": raw["version"],
        "aliases": list(raw["aliases"]),
        "status": t.get(STATUS_TAG, PENDING),
        "archived": t.get(ARCHIVED_TAG) == "true",
        "created_at": iso_time(raw["created_ms"]),
        "run_id": raw["run_id"],
        "source": raw["source"],
        "base": {"id": t.get(TAG + "base_id"), "fingerprint": t.get(TAG + "base_fingerprint")},
        "data_fingerprint": t.get(TAG + "data_fingerprint"),
        "adapter": {"kind": t.get(TAG + "adapter_kind"), "rank": _int_or_none(t.get(TAG + "rank")),
                    "targets": [x for x in (t.get(TAG + "targets") or "").split(",") if x]},
        "epochs": _int_or_none(t.get(TAG + "epochs")),
        "serves": t.get(TAG + "serves") or "adapter",
        "n_labels": _int_or_none(t.get(TAG + "n_labels")),
        "parents": tag_value(t.get(TAG + "parents")) or [],
        "adapter_sha256": t.get(TAG + "adapter_sha256"),
        "manifest_sha256": t.get(TAG + "manifest_sha256"),
        "adaptreg_version": t.get(TAG + "version"),
        "metrics": dict(sorted(metrics.items())),
    }


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool: what counts as a metric value."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def manifest_tags(manifest: dict[str, Any], manifest_sha: str) -> dict[str, str]:
    """The version tags of an artifact (status pending, base, data, adapter, metrics) from its manifest."""
    a, b = manifest.get("adapter") or {}, manifest.get("base") or {}
    d, tr = manifest.get("data") or {}, manifest.get("training") or {}
    tags = {
        STATUS_TAG: PENDING,
        TAG + "base_id": str(b.get("id", "")),
        TAG + "base_fingerprint": str(b.get("fingerprint", "")),
        TAG + "data_fingerprint": str(d.get("fingerprint", "")),
        TAG + "adapter_kind": str(a.get("kind", "")),
        TAG + "rank": str(a.get("rank", "")),
        TAG + "targets": ",".join(str(x) for x in a.get("targets") or []),
        TAG + "epochs": str(tr.get("epochs_run", tr.get("epochs", ""))),
        TAG + "n_labels": str(len(manifest.get("labels") or [])),
        TAG + "serves": str((manifest.get("selection") or {}).get("chosen", "adapter")),
        TAG + "parents": json.dumps(manifest.get("parents") or [], sort_keys=True, separators=(",", ":")),
        TAG + "adapter_sha256": manifest["files"]["adapter_model.safetensors"],
        TAG + "manifest_sha256": manifest_sha,
        TAG + "version": str(manifest.get("adaptreg_version", __version__)),
    }
    for k, v in (manifest.get("metrics") or {}).items():
        if is_number(v):
            tags[METRIC_TAG + k] = json.dumps(v)
    return tags


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 6000 else text[:5997] + "..."


def run_params(task: str, manifest: dict[str, Any]) -> dict[str, str]:
    """Hyperparameters flattened to ``section.key`` strings (MLflow params are strings)."""
    out = {"task": task, "manifest_task": str(manifest.get("task", "")),
           "n_labels": str(len(manifest.get("labels") or [])),
           "labels": _param_value(",".join(str(x) for x in manifest.get("labels") or [])),
           "parents": _param_value(manifest.get("parents") or [])}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[_PARAM_KEY_BAD.sub("_", prefix)[:250]] = _param_value(obj)

    for section in ("base", "data", "adapter", "training"):
        walk(section, manifest.get(section) or {})
    return out


def run_metrics(manifest: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step): per-epoch history under ``history/`` (step = epoch), final values at step 0."""
    out = []
    for row in manifest.get("history") or []:
        epoch = row.get("epoch")
        if not isinstance(epoch, int):
            continue
        for k, v in row.items():
            if k != "epoch" and is_number(v):
                out.append((f"history/{_PARAM_KEY_BAD.sub('_', k)}", float(v), epoch))
    for k, v in (manifest.get("metrics") or {}).items():
        if is_number(v):
            out.append((_PARAM_KEY_BAD.sub("_", k), float(v), 0))
    return out


def is_lower_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (its name holds a :data:`LOWER_IS_BETTER` word)."""
    return any(w in metric for w in LOWER_IS_BETTER)
