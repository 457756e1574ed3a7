"""Merge task adapters into one (PEFT ``add_weighted_adapter``) and export an adapter into the base.

A merged artifact is a normal adapter artifact (so the registry stores and verifies it like any
other) plus one head per source task::

    adapter_config.json, adapter_model.safetensors   the merged LoRA adapter
    head.safetensors, labels.json                    the first source task's head (default head)
    head.<task>.safetensors, labels.<task>.json      every source task's own head (flat files:
                                                     the registry stores no sub-directories)
    manifest.json   task = the new name, ``parents`` = the sources (task + version),
                    ``merge`` = method, weights, density, per-task head files with sha256,
                    and ``metrics.retention`` = merged accuracy / source accuracy per task

Before any weight is touched the sources are checked for one base fingerprint, equal ranks (every
method but ``svd`` and ``cat``), equal target modules, equal rsLoRA and no DoRA; a mismatch is a
:class:`~adaptreg.errors.MergeError` that says which adapter differs and how.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import artifact
from .._util import atomic_dir, check_output_dir, dump_json, seed_everything, sha256_file
from .._version import __version__
from ..base import LoadedBase, load_base, pooled_features
from ..data.tasks import load_task_from_manifest
from ..errors import ConfigError, DataError, MergeError
from ..registry import as_registry as _registry
from ..selectors import parse_selector

logger = logging.getLogger(__name__)

METHODS = ("linear", "ties", "dare_ties", "dare_linear", "svd", "cat")
_SAME_RANK = ("linear", "ties", "dare_ties", "dare_linear")
_WITH_DENSITY = ("ties", "dare_ties", "dare_linear")
EXPORT_JSON = "adaptreg_export.json"


@dataclass
class MergeResult:
    """A merge's manifest, artifact directory and registry entry (``version``: the number,
    ``record``: the whole version record, None when not registered)."""

    name: str
    manifest: dict[str, Any]
    artifact_dir: str | None
    record: dict[str, Any] | None = None
    retention: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> "artifact.VersionNumber | None":
        return artifact.version_number(self.record)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "artifact_dir": self.artifact_dir,
                "version": None if self.record is None else int(self.record["version"]),
                "parents": self.manifest["parents"], "merge": {k: v for k, v in self.manifest["merge"].items() if k != "heads"},
                "retention": self.retention}


# --------------------------------------------------------------------------- compatibility

def _adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / "adapter_config.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MergeError(f"{p} cannot be read ({type(exc).__name__}); is {path} an adapter directory?") from None


def check_mergeable(sources: dict[str, str | os.PathLike], method: str = "linear") -> dict[str, dict[str, Any]]:
    """Refuse (MergeError) sources that cannot be merged with ``method``; return their manifests."""
    if method not in METHODS:
        raise MergeError(f"merge method {method!r} is unknown: use one of {', '.join(METHODS)}")
    if len(sources) < 2:
        raise MergeError(f"merging needs at least 2 adapters, got {len(sources)}")
    manifests = {t: artifact.verify(p) for t, p in sources.items()}
    configs = {t: _adapter_config(p) for t, p in sources.items()}
    first = next(iter(sources))
    fp0 = (manifests[first].get("base") or {}).get("fingerprint")
    for t, m in manifests.items():
        fp = (m.get("base") or {}).get("fingerprint")
        if fp != fp0:
            raise MergeError(f"{t!r} was trained on base {(m.get('base') or {}).get('id')!r} ({str(fp)[:19]}...), "
                             f"{first!r} on {(manifests[first].get('base') or {}).get('id')!r} ({str(fp0)[:19]}...): "
                             "only adapters of one base can be merged")
    c0 = configs[first]
    for t, c in configs.items():
        if c.get("use_dora") or (manifests[t].get("adapter") or {}).get("kind") == "dora":
            raise MergeError(f"{t!r} is a DoRA adapter: its magnitude vectors cannot be merged; "
                             "merge plain LoRA adapters (re-onboard with --kind lora)")
        if sorted(_targets(c)) != sorted(_targets(c0)):
            raise MergeError(f"{t!r} adapts {sorted(_targets(c))}, {first!r} adapts {sorted(_targets(c0))}: "
                             "merge adapters with the same --targets")
        if bool(c.get("use_rslora")) != bool(c0.get("use_rslora")):
            raise MergeError(f"{t!r} has rsLoRA={bool(c.get('use_rslora'))}, {first!r} rsLoRA={bool(c0.get('use_rslora'))}: "
                             "their scalings differ; merge adapters onboarded with the same --rslora setting")
        if method in _SAME_RANK and int(c["r"]) != int(c0["r"]):
            raise MergeError(f"{t!r} has rank {c['r']}, {first!r} rank {c0['r']}: method {method!r} needs equal ranks; "
                             "use --method svd or cat, or onboard with the same --rank")
        if c.get("rank_pattern") or c.get("alpha_pattern"):
            raise MergeError(f"{t!r} uses per-module rank/alpha patterns, which this merge does not support")
    return manifests


def _targets(cfg: dict[str, Any]) -> list[str]:
    t = cfg.get("target_modules") or []
    return [t] if isinstance(t, str) else list(t)


# --------------------------------------------------------------------------- helpers

def _resolve_sources(sources: Sequence[str] | dict[str, str | os.PathLike], reg: Any, base: LoadedBase | None
                     ) -> tuple[dict[str, str], dict[str, Any]]:
    """``{task: dir}`` as given, or ``TASK[@VERSION]`` specs resolved (and verified) through the registry."""
    if isinstance(sources, dict):
        return {t: str(p) for t, p in sources.items()}, {t: None for t in sources}
    if reg is None:
        raise ConfigError("merging registered tasks needs a registry (or pass {task: adapter_dir})")
    paths, versions = {}, {}
    for task, ver in parse_sources(sources):
        rec = reg.load(task, version=ver, base=base) if base is not None else reg.lookup(task, version=ver)
        paths[task], versions[task] = str(rec["path"]), rec.get("version")
    return paths, versions


def parse_sources(sources: Sequence[str]) -> list[tuple[str, int | None]]:
    """``TASK[@VERSION]`` specs as ``(task, version)``; ConfigError on bad syntax, MergeError on a repeat."""
    parsed: list[tuple[str, int | None]] = []
    for spec in sources:
        task, ver = parse_selector(str(spec), "TASK")
        if task in (t for t, _ in parsed):
            raise MergeError(f"task {task!r} is given twice; merge distinct tasks")
        parsed.append((task, ver))
    return parsed


def _check_weights(weights: Sequence[float] | None, n: int) -> list[float] | None:
    if weights is None:
        return None
    try:
        out = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ConfigError(f"weights {list(weights)!r}: give one number per adapter, e.g. [0.5, 0.5]") from None
    bad = [w for w in out if not math.isfinite(w)]
    if bad:
        raise ConfigError(f"weights {out}: {bad[0]} is not finite; give finite numbers such as 0.5")
    if len(out) != n:
        raise ConfigError(f"{len(out)} weights for {n} adapters; give one weight per adapter")
    return out


def _test_split(task: str, manifest: dict[str, Any], data: Any) -> Any:
    """The source task's test split: given, or rebuilt from the manifest's data source + seed."""
    return load_task_from_manifest(manifest, data).test


def _accuracy(pooled: Any, head: artifact.Head, y: list[int]) -> float:
    pred = (pooled @ head.weight.float().T + head.bias.float()).argmax(-1).tolist()
    return sum(int(p == t) for p, t in zip(pred, y)) / len(y) if y else float("nan")



# --------------------------------------------------------------------------- merge

def merge_adapters(
    sources: Sequence[str] | dict[str, str | os.PathLike],
    *,
    name: str,
    method: str = "linear",
    weights: Sequence[float] | None = None,
    density: float = 0.5,
    svd_rank: int | None = None,
    base: str | LoadedBase | None = None,
    registry: Any = None,
    register: bool = True,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    data: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    tune: bool = False,
) -> MergeResult:
    """Merge task adapters into one new adapter ``name``, keep every source's head, evaluate, register.

    ``sources``: ``["TASK", "TASK@VERSION", ...]`` from the registry, or ``{task: adapter_dir}``.
    ``weights``: one per source (default 1.0 each for ties/dare, 1/n for linear/svd/cat).
    ``evaluate``: measure merged and source accuracy on each source task's test split
    (``data[task]`` = a TaskData or a data file; default: rebuilt from the manifest) and record
    ``retention = merged / source``.
    ``tune``: choose a common scale of the weights (x0.5 to x2) and, for ties/dare_*, the density
    on the source tasks' *validation* splits, keeping the candidate whose worst retention there is
    highest (the TIES paper tunes its scale λ on validation the same way); ``weights`` and
    ``density`` are the starting point, the grid is recorded in the manifest.
    """
    artifact.validate_task_name(name)
    if method not in METHODS:
        raise MergeError(f"merge method {method!r} is unknown: use one of {', '.join(METHODS)}")
    if not 0.0 < float(density) <= 1.0:
        raise ConfigError(f"density == {density}, must be in (0, 1]")
    if not register and output is None:
        raise ConfigError("nothing would be kept: give an output directory or leave registration on")
    if not isinstance(sources, dict):
        parse_sources(sources)  # syntax first: before the registry is opened
    weights = _check_weights(weights, len(sources))
    if output is not None:
        check_output_dir(output, "output", overwrite=overwrite)
    reg = _registry(registry) if (register or not isinstance(sources, dict)) else None
    lb = base if isinstance(base, LoadedBase) else (load_base(base) if base is not None else None)
    paths, versions = _resolve_sources(sources, reg, lb)
    manifests = check_mergeable(paths, method)
    if lb is None:
        lb = load_base(next(iter(manifests.values()))["base"]["id"])
    first = next(iter(manifests.values()))
    artifact.check_base(first, lb.fingerprint, lb.id)
    n = len(paths)
    if weights is None:
        weights = [1.0] * n if method in ("ties", "dare_ties") else [1.0 / n] * n
    if len(weights) != n:
        raise ConfigError(f"{len(weights)} weights for {n} adapters; give one weight per adapter")

    from peft import PeftModel

    net = copy.deepcopy(lb.model)
    names = {t: f"src{i}" for i, t in enumerate(paths)}
    model = None
    for t, p in paths.items():
        if model is None:
            model = PeftModel.from_pretrained(net, p, adapter_name=names[t], is_trainable=False)
        else:
            model.load_adapter(p, adapter_name=names[t], is_trainable=False)
    heads = {t: artifact.load_head(p) for t, p in paths.items()}
    tuning = None
    if tune:
        weights, density, tuning = _tune(model, names, manifests, heads, lb, method, weights, float(density),
                                         svd_rank, data, seed, batch_size)
    kw = _merge_kwargs(method, density, svd_rank)
    merged = "default"
    seed_everything(seed)  # dare_* prunes at random
    _add_merged(model, names, weights, merged, method, kw)
    for pname, prm in model.named_parameters():
        if f".{merged}." in pname and not prm.isfinite().all():
            raise MergeError(f"the {method} merge produced non-finite weights in {pname}; try other --weights")
    model.eval()

    max_length = max(int((m.get("training") or {}).get("max_length", 256)) for m in manifests.values())
    retention: dict[str, Any] = {}
    if evaluate:
        for t, m in manifests.items():
            try:
                test = _test_split(t, m, (data or {}).get(t))
            except DataError as exc:
                warnings.warn(f"not evaluating {t!r}: {exc}", stacklevel=2)
                retention[t] = {"source_accuracy": None, "merged_accuracy": None, "retention": None}
                continue
            ml = int((m.get("training") or {}).get("max_length", 256))
            src_acc = _adapter_accuracy(model, names[t], lb, test, ml, heads[t], batch_size, _truncation(m))
            mrg_acc = _adapter_accuracy(model, merged, lb, test, ml, heads[t], batch_size, _truncation(m))
            retention[t] = {"source_accuracy": src_acc, "merged_accuracy": mrg_acc, "n_test": len(test.y),
                            "retention": mrg_acc / src_acc if src_acc else None}
    cfg = model.peft_config[merged]
    parents = [{"task": t, "version": versions[t]} for t in paths]
    rets = [r["retention"] for r in retention.values() if r.get("retention") is not None]
    accs = [r["merged_accuracy"] for r in retention.values() if r.get("merged_accuracy") is not None]
    manifest = artifact.new_manifest(
        name, base=first["base"], labels=heads[next(iter(paths))].labels, parents=parents,
        data={"source": "merge:" + ",".join(paths), "fingerprint": None, "labels": heads[next(iter(paths))].labels},
        adapter={"kind": "lora", "rank": int(cfg.r), "alpha": float(cfg.lora_alpha), "dropout": 0.0,
                 "targets": sorted(_targets({"target_modules": list(cfg.target_modules)})), "rslora": False,
                 "init_from": None},
        training={"max_length": max_length, "seed": seed, "pooling": "mean",
                  "truncation": _truncation(first) if len({_truncation(m) for m in manifests.values()}) == 1 else "head"},
        metrics={"retention": retention, "mean_retention": sum(rets) / len(rets) if rets else None,
                 "test_accuracy": sum(accs) / len(accs) if accs else None},
        merge={"method": method, "weights": weights, "density": float(density) if kw.get("density") else None,
               "svd_rank": kw.get("svd_rank"), "sources": list(paths), "heads": {}, "tuning": tuning})

    def write_into(d: Path) -> dict[str, Any]:
        model.save_pretrained(str(d), selected_adapters=[merged], safe_serialization=True)
        _write_heads(d, paths, manifest)
        manifest["metrics"]["adapter_bytes"] = artifact.adapter_size_bytes(d)
        return artifact.write_files_checksums(d, manifest)

    if output is not None:
        with atomic_dir(output, overwrite=overwrite) as tmp:
            final = write_into(tmp)
        version = reg.register(output) if (register and reg is not None) else None
        return MergeResult(name, final, str(Path(output).resolve()), version, retention)
    with tempfile.TemporaryDirectory(prefix="adaptreg-merge-") as tmp:
        d = Path(tmp) / name
        d.mkdir()
        final = write_into(d)
        version = reg.register(d)
    return MergeResult(name, final, version.get("path") if version else None, version, retention)


def _adapter_accuracy(model: Any, adapter: str, lb: LoadedBase, split: Any, max_length: int, head: artifact.Head,
                      batch_size: int, truncation: str = "head") -> float:
    model.set_adapter(adapter)
    return _accuracy(pooled_features(model, lb.tokenizer, split.texts, max_length, batch_size, truncation=truncation),
                     head, split.y)


def _truncation(manifest: dict[str, Any]) -> str:
    return str((manifest.get("training") or {}).get("truncation", "head"))


def _merge_kwargs(method: str, density: float, svd_rank: int | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"density": float(density)} if method in _WITH_DENSITY else {}
    if method == "svd" and svd_rank:
        kw["svd_rank"] = int(svd_rank)
    return kw


def _add_merged(model: Any, names: dict[str, str], weights: list[float], merged: str, method: str,
                kw: dict[str, Any]) -> None:
    try:
        model.add_weighted_adapter(list(names.values()), weights, merged, combination_type=method, **kw)
    except (ValueError, TypeError) as exc:
        raise MergeError(f"PEFT refused the {method} merge: {str(exc).splitlines()[0]}") from None
    _fix_rslora_scaling(model, merged)


TUNE_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)
TUNE_DENSITIES = (0.2, 0.35, 0.5, 0.7, 0.9)


def _tune(model: Any, names: dict[str, str], manifests: dict[str, dict[str, Any]], heads: dict[str, artifact.Head],
          lb: LoadedBase, method: str, weights: list[float], density: float, svd_rank: int | None,
          data: dict[str, Any] | None, seed: int, batch_size: int) -> tuple[list[float], float, dict[str, Any]]:
    """Grid over a common weight scale (and density) scored on the sources' validation splits."""
    vals, src = {}, {}
    for t, m in manifests.items():
        try:
            vals[t] = load_task_from_manifest(m, (data or {}).get(t)).val
        except DataError as exc:
            raise MergeError(f"cannot tune: {t!r} has no validation data ({exc}); merge without --tune") from None
        if not vals[t].y:
            raise MergeError(f"cannot tune: {t!r} has an empty validation split; merge without --tune")
    ml = {t: int((m.get("training") or {}).get("max_length", 256)) for t, m in manifests.items()}
    for t in manifests:
        src[t] = _adapter_accuracy(model, names[t], lb, vals[t], ml[t], heads[t], batch_size, _truncation(manifests[t]))
    has_density = method in _WITH_DENSITY
    grid = []
    for d in (TUNE_DENSITIES if has_density else (density,)):
        for scale in TUNE_SCALES:
            seed_everything(seed)
            _add_merged(model, names, [x * scale for x in weights], "tune", method, _merge_kwargs(method, d, svd_rank))
            ret = {t: (_adapter_accuracy(model, "tune", lb, vals[t], ml[t], heads[t], batch_size, _truncation(manifests[t])) / src[t]
                       if src[t] else 0.0) for t in manifests}
            model.set_adapter(names[next(iter(manifests))])  # deleting the active adapter warns
            model.delete_adapter("tune")
            grid.append({"density": d if has_density else None, "scale": scale, "val_retention": ret,
                         "min": min(ret.values()), "mean": sum(ret.values()) / len(ret)})
            logger.info("tune %s density=%s scale=%s: val retention %s", method, d, scale,
                        {t: round(r, 3) for t, r in ret.items()})
    best = max(grid, key=lambda g: (g["min"], g["mean"]))  # first in grid order on ties
    chosen_w = [x * best["scale"] for x in weights]
    return chosen_w, best["density"] if has_density else density, {
        "on": "validation", "criterion": "max of the worst source's validation retention, then the mean",
        "source_val_accuracy": src, "chosen": {"density": best["density"], "scale": best["scale"]}, "grid": grid}


def _fix_rslora_scaling(model: Any, merged: str) -> None:
    """PEFT gives the merged adapter alpha = r and copies use_rslora; the merged weights already
    carry each source's scaling, so the merged adapter's own scaling must be exactly 1."""
    from peft.tuners.lora import LoraLayer

    cfg = model.peft_config[merged]
    if getattr(cfg, "use_rslora", False):
        cfg.use_rslora = False
        for mod in model.modules():
            if isinstance(mod, LoraLayer) and merged in mod.scaling:
                mod.scaling[merged] = 1.0


def _write_heads(d: Path, paths: dict[str, str], manifest: dict[str, Any]) -> None:
    first = next(iter(paths))
    shutil.copyfile(Path(paths[first]) / artifact.HEAD_FILE, d / artifact.HEAD_FILE)
    shutil.copyfile(Path(paths[first]) / artifact.LABELS_FILE, d / artifact.LABELS_FILE)
    for t, p in paths.items():
        hf, lf = f"head.{t}.safetensors", f"labels.{t}.json"
        shutil.copyfile(Path(p) / artifact.HEAD_FILE, d / hf)
        shutil.copyfile(Path(p) / artifact.LABELS_FILE, d / lf)
        manifest["merge"]["heads"][t] = {"head": hf, "labels": lf, "head_sha256": sha256_file(d / hf),
                                         "labels_sha256": sha256_file(d / lf)}


load_task_head = artifact.load_task_head  # moved to artifact.py; kept here for older imports


# --------------------------------------------------------------------------- export

def export_merged(adapter_dir: str | os.PathLike, output: str | os.PathLike, *, base: str | LoadedBase | None = None,
                  overwrite: bool = False) -> Path:
    """Write a standalone transformers model dir: the adapter merged into the base weights
    (``merge_and_unload``), the tokenizer, head(s), labels and ``adaptreg_export.json``.

    Loads with ``AutoModel.from_pretrained(output)``; predictions = head(mean_pool(last_hidden_state)),
    with no adapter overhead at inference.
    """
    from peft import PeftModel

    check_output_dir(output, "output", overwrite=overwrite)
    src = Path(adapter_dir)
    manifest = artifact.verify(src)
    lb = base if isinstance(base, LoadedBase) else load_base(base or manifest["base"]["id"])
    artifact.check_base(manifest, lb.fingerprint, lb.id)
    net = copy.deepcopy(lb.model)
    merged = PeftModel.from_pretrained(net, str(src), is_trainable=False).merge_and_unload(safe_merge=True)
    for p in merged.parameters():
        if not p.isfinite().all():
            raise MergeError(f"merging {src} into the base produced non-finite weights; the adapter is unusable")
    with atomic_dir(output, overwrite=overwrite) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        lb.tokenizer.save_pretrained(str(tmp))
        shutil.copyfile(src / artifact.HEAD_FILE, tmp / artifact.HEAD_FILE)
        shutil.copyfile(src / artifact.LABELS_FILE, tmp / artifact.LABELS_FILE)
        for info in ((manifest.get("merge") or {}).get("heads") or {}).values():
            for key in ("head", "labels"):
                shutil.copyfile(src / info[key], tmp / info[key])
        from ..base import fingerprint

        dump_json({"task": manifest.get("task"), "source_base": manifest["base"], "pooling": "mean",
                   "max_length": int((manifest.get("training") or {}).get("max_length", 256)),
                   "truncation": _truncation(manifest),
                   "adapter_manifest_sha256": sha256_file(src / artifact.MANIFEST),
                   "merged_fingerprint": fingerprint(merged), "adaptreg_version": __version__,
                   "head": artifact.HEAD_FILE, "labels": artifact.LABELS_FILE,
                   "usage": "AutoModel.from_pretrained(dir); logits = mean_pool(last_hidden_state) @ W.T + b "
                            "with W, b from head.safetensors"},
                  tmp / EXPORT_JSON)
    return Path(output).resolve()


class ExportedModel:
    """A merged export loaded with plain transformers: ``predict(texts)`` -> (labels, confidences)."""

    def __init__(self, directory: str | os.PathLike, task: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        d = Path(directory)
        if not (d / EXPORT_JSON).is_file():
            raise ConfigError(f"{d} is not an adaptreg export ({EXPORT_JSON} missing): create one with `adaptreg export`")
        self.info = json.loads((d / EXPORT_JSON).read_text(encoding="utf-8"))
        self.model = AutoModel.from_pretrained(str(d)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(d))
        from safetensors.torch import load_file

        if task is not None and (d / f"head.{task}.safetensors").is_file():
            state = load_file(str(d / f"head.{task}.safetensors"))
            labels = json.loads((d / f"labels.{task}.json").read_text(encoding="utf-8"))["labels"]
        else:
            state = load_file(str(d / artifact.HEAD_FILE))
            labels = json.loads((d / artifact.LABELS_FILE).read_text(encoding="utf-8"))["labels"]
        self.weight, self.bias, self.labels = state["weight"].float(), state["bias"].float(), labels
        self.max_length = int(self.info.get("max_length", 256))
        self.truncation = str(self.info.get("truncation", "head"))

    def predict(self, texts: list[str], batch_size: int = 32) -> tuple[list[str], list[float]]:
        import torch

        pooled = pooled_features(self.model, self.tokenizer, list(texts), self.max_length, batch_size,
                                 truncation=self.truncation)
        prob = torch.softmax(pooled @ self.weight.T + self.bias, -1)
        conf, idx = prob.max(-1)
        return [self.labels[i] for i in idx.tolist()], conf.tolist()
