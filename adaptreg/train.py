"""Onboard one task: a PEFT LoRA adapter and a task head on a frozen base, evaluated against a probe.

Data flows one way: TaskData + base -> training loop -> evaluation (adapter and frozen-base
linear probe) -> adapter artifact (see :mod:`adaptreg.artifact`) -> optionally the registry.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifact
from ._util import atomic_dir, seed_everything
from ._version import __version__
from .base import LoadedBase, default_targets, encode, fingerprint, load_base, mean_pool, resolve_base
from .config import LoraSettings, TrainSettings
from .data.tasks import TaskData, load_task
from .errors import ConfigError
from .registry import as_registry as _registry

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"


@dataclass
class OnboardResult:
    """What onboarding produced: the manifest (metrics inside), where the artifact is, its registry version."""

    task: str
    manifest: dict[str, Any]
    artifact_dir: str | None
    version: dict[str, Any] | None = None
    base_unchanged: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest["metrics"]

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "task": self.task, "artifact_dir": self.artifact_dir,
            "version": None if self.version is None else self.version.get("version"),
            "base": m["base"], "base_unchanged": self.base_unchanged, "data": m["data"], "adapter": m["adapter"],
            "training": m["training"], "metrics": m["metrics"], "report": m["report"], "parents": m.get("parents", []),
            "router_version": self.extra.get("router_version"),
        }


# --------------------------------------------------------------------------- model pieces

def build_peft_model(base_model: Any, model_type: str, lora: LoraSettings, adapter_name: str = ADAPTER_NAME) -> Any:
    """Wrap the frozen base with a LoRA adapter (PEFT); lora-fa freezes A at its random init."""
    from peft import LoraConfig, get_peft_model

    targets = lora.targets or default_targets(model_type)
    cfg = LoraConfig(r=int(lora.rank), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
                     target_modules=list(targets), use_rslora=bool(lora.rslora), use_dora=lora.kind == "dora",
                     bias="none")
    try:
        model = get_peft_model(base_model, cfg, adapter_name=adapter_name)
    except ValueError as exc:
        raise ConfigError(f"LoRA targets {targets} do not match modules of this {model_type} base: {str(exc).splitlines()[0]}") from None
    if lora.kind == "lora-fa":
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    return model


class TaskModel:
    """PEFT-wrapped base + linear head on mean-pooled token states (plain callable, not an nn.Module
    subclass, so the base stays owned by its LoadedBase)."""

    def __init__(self, peft_model: Any, head: Any):
        self.peft_model = peft_model
        self.head = head

    def parameters(self):
        yield from (p for p in self.peft_model.parameters() if p.requires_grad)
        yield from self.head.parameters()

    def train(self, mode: bool = True) -> None:
        self.peft_model.train(mode)
        self.head.train(mode)

    def pooled(self, batch: dict) -> Any:
        out = self.peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return mean_pool(out.last_hidden_state, batch["attention_mask"])

    def __call__(self, batch: dict) -> Any:
        return self.head(self.pooled(batch))


# --------------------------------------------------------------------------- evaluation

def classification_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "per_class": {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i in idx},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }


def predict(model: TaskModel, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> tuple[list[int], list[float]]:
    import torch

    model.train(False)
    preds, confs = [], []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            prob = torch.softmax(model(batch).float(), -1)
            c, p = prob.max(-1)
            preds += p.tolist()
            confs += c.tolist()
    return preds, confs


def linear_probe(train_x: Any, train_y: list[int], val_x: Any, val_y: list[int], seed: int) -> Any:
    """Logistic regression on standardised frozen-base features; C chosen on the validation split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best, best_acc = None, -1.0
    for c in (0.01, 0.1, 1.0, 10.0):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))
        clf.fit(train_x, train_y)
        acc = float((clf.predict(val_x) == val_y).mean())
        if acc > best_acc:
            best, best_acc = clf, acc
    best.chosen_C_ = best.steps[-1][1].C
    return best


# --------------------------------------------------------------------------- training loop

class _FGM:
    """Fast Gradient Method on the embedding output: a second loss at x + eps * g / ||g||."""

    def __init__(self, embeddings: Any, epsilon: float):
        self.embeddings, self.epsilon = embeddings, epsilon
        self.delta = None
        self.captured = None
        self.handle = embeddings.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.delta is not None:
            return output + self.delta
        if module.training and self.epsilon > 0:
            output.requires_grad_(True)
            output.retain_grad()
            self.captured = output
        return output

    def perturb(self) -> bool:
        g = None if self.captured is None else self.captured.grad
        self.captured = None
        if g is None:
            return False
        norm = g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (g.dim() - 1)))
        self.delta = (self.epsilon * g / norm).detach()
        return True

    def clear(self) -> None:
        self.delta = None

    def close(self) -> None:
        self.handle.remove()


def _find_embeddings(model: Any) -> Any:
    emb = getattr(model, "embeddings", None)  # BERT-like: word + position + type, then LayerNorm
    return emb if emb is not None else model.get_input_embeddings()


def _scheduler(optimizer: Any, kind: str, warmup: int, total: int) -> Any:
    import torch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) if kind == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    import sys

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.2 if tty else 30.0)


def fit(model: TaskModel, tokenizer: Any, data: TaskData, settings: TrainSettings, progress: bool = True) -> dict[str, Any]:
    """Train adapter + head with AdamW; early-stop on validation accuracy and keep the best epoch."""
    import torch

    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    sched = _scheduler(opt, settings.schedule, int(settings.warmup_ratio * total), total)
    fgm = _FGM(_find_embeddings(model.peft_model.get_base_model()), settings.fgm_epsilon) if settings.fgm_epsilon > 0 else None
    gen = torch.Generator().manual_seed(settings.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    best_state, best_acc, best_epoch, stale = None, -1.0, 0, 0
    seen, t0 = 0, time.perf_counter()
    try:
        for epoch in range(1, settings.epochs + 1):
            model.train(True)
            order = torch.randperm(len(data.train), generator=gen).tolist()
            run_loss, n = 0.0, 0
            bar = _progress(len(order), f"epoch {epoch}/{settings.epochs}", progress)
            for i in range(0, len(order), settings.batch_size):
                idx = order[i : i + settings.batch_size]
                batch = tokenizer([data.train.texts[j] for j in idx], padding=True, truncation=True,
                                  max_length=settings.max_length, return_tensors="pt")
                y = torch.tensor([data.train.y[j] for j in idx])
                loss = loss_fn(model(batch), y)
                loss.backward()
                if fgm is not None and fgm.perturb():
                    loss_fn(model(batch), y).backward()
                    fgm.clear()
                if settings.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                run_loss += loss.detach().item() * len(idx)
                n += len(idx)
                seen += len(idx)
                bar.update(len(idx))
                bar.set_postfix(loss=f"{run_loss / n:.4f}", ex_s=f"{seen / (time.perf_counter() - t0):.1f}")
            bar.close()
            preds, _ = predict(model, tokenizer, data.val.texts, settings.max_length, settings.eval_batch_size)
            rep = classification_report(data.val.y, preds, data.labels)
            history.append({"epoch": epoch, "train_loss": run_loss / max(1, n), "val_accuracy": rep["accuracy"],
                            "val_macro_f1": rep["macro_f1"], "lr": sched.get_last_lr()[0]})
            logger.info("epoch %d: loss %.4f val_acc %.4f", epoch, run_loss / max(1, n), rep["accuracy"])
            if rep["accuracy"] > best_acc:
                best_acc, best_epoch, stale = rep["accuracy"], epoch, 0
                best_state = _trainable_state(model)
            else:
                stale += 1
                if settings.patience and stale >= settings.patience:
                    logger.info("early stop after epoch %d (best %d)", epoch, best_epoch)
                    break
    finally:
        if fgm is not None:
            fgm.close()
    seconds = time.perf_counter() - t0
    if best_state is not None:
        _load_trainable_state(model, best_state)
    return {"history": history, "best_epoch": best_epoch, "epochs_run": len(history), "train_seconds": seconds,
            "train_examples_per_s": seen / seconds if seconds > 0 else None}


def _trainable_state(model: TaskModel) -> dict[str, Any]:
    state = {f"peft.{k}": v.detach().clone() for k, v in model.peft_model.named_parameters() if v.requires_grad}
    state.update({f"head.{k}": v.detach().clone() for k, v in model.head.state_dict().items()})
    return state


def _load_trainable_state(model: TaskModel, state: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for k, v in model.peft_model.named_parameters():
            if f"peft.{k}" in state:
                v.copy_(state[f"peft.{k}"])
    model.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})


# --------------------------------------------------------------------------- onboarding

def onboard(
    task: str,
    data: str | TaskData,
    *,
    base: str | LoadedBase = "minilm",
    lora: LoraSettings | None = None,
    train: TrainSettings | None = None,
    text_col: str = "text",
    label_col: str = "label",
    val: str | None = None,
    test: str | None = None,
    drop_empty: bool = False,
    max_per_class: int | None = None,
    output: str | None = None,
    overwrite: bool = False,
    registry: Any = None,
    register: bool = True,
    init_from: str | None = None,
    probe: bool = True,
    route: bool = True,
    progress: bool = True,
) -> OnboardResult:
    """Train a LoRA adapter + head for ``task``, evaluate it beside a frozen-base linear probe,
    write the adapter artifact (to ``output`` if given) and register it (unless ``register=False``).

    ``registry`` is a :class:`adaptreg.registry.Registry`, a location string, or None for the default.
    ``init_from`` (``TASK`` or ``TASK@VERSION``, from the registry) starts from an existing adapter.
    ``route``: after registering, add the task to the registry's router (a new router version),
    so ``adaptreg predict`` can send inputs to it without a task id.
    """
    artifact.validate_task_name(task)
    lora = lora or LoraSettings()
    train = train or TrainSettings()
    if not register and output is None:
        raise ConfigError("nothing would be kept: give --output DIR or leave registration on")
    base_ref = base if isinstance(base, LoadedBase) else resolve_base(base)  # cheap: fail before any work
    td = data if isinstance(data, TaskData) else load_task(
        data, text_col=text_col, label_col=label_col, val=val, test=test, seed=train.seed,
        drop_empty=drop_empty, max_per_class=max_per_class)
    reg = _registry(registry) if (register or init_from) else None
    lb = base_ref if isinstance(base_ref, LoadedBase) else load_base(base_ref)
    fp_before = lb.fingerprint
    seed_everything(train.seed)

    probe_report, probe_c, features = None, None, None
    if probe:
        logger.info("frozen-base features for the linear probe (%d texts)", len(td.train) + len(td.val) + len(td.test))
        features = {s: encode(lb, getattr(td, s).texts, train.max_length, train.eval_batch_size) for s in ("train", "val", "test")}
        clf = linear_probe(features["train"], td.train.y, features["val"], td.val.y, train.seed)
        probe_c = clf.chosen_C_
        probe_report = classification_report(td.test.y, clf.predict(features["test"]).tolist(), td.labels)

    import torch

    seed_everything(train.seed)
    logger.info("training %s rank %d on %d examples", lora.kind, lora.rank, len(td.train))
    peft_model = build_peft_model(lb.model, lb.model_type, lora)
    parent = None
    try:
        if init_from:
            parent = _init_from(reg, init_from, peft_model, lb)
        head = torch.nn.Linear(lb.hidden_size, td.n_labels)
        model = TaskModel(peft_model, head)
        trainable = sum(p.numel() for p in model.parameters())
        fit_info = fit(model, lb.tokenizer, td, train, progress=progress)
        preds, _ = predict(model, lb.tokenizer, td.test.texts, train.max_length, train.eval_batch_size)
        report = classification_report(td.test.y, preds, td.labels)
        val_preds, _ = predict(model, lb.tokenizer, td.val.texts, train.max_length, train.eval_batch_size)
        val_report = classification_report(td.val.y, val_preds, td.labels)
        manifest = _manifest(task, td, lb, lora, train, fit_info, report, val_report, probe_report, probe_c, trainable, parent)
        result = _write(task, manifest, model, td.labels, output, overwrite, reg if register else None)
    finally:
        peft_model.unload()  # take the LoRA layers out again; the base module is left as it was
        for p in lb.model.parameters():
            p.requires_grad_(False)
    result.base_unchanged = fingerprint(lb.model) == fp_before
    if route and reg is not None and register:
        from .compose.router import add_task_to_registry_router

        logger.info("adding %r to the task router", task)
        _, router_rec = add_task_to_registry_router(reg, task, lb, data=td)
        result.extra["router_version"] = router_rec.get("version")
    if features is not None:
        result.extra["features"] = features
    return result



def _init_from(reg: Any, spec: str, peft_model: Any, lb: LoadedBase) -> dict[str, Any]:
    """Copy an existing adapter's LoRA weights into the fresh adapter (same targets and rank)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    task, _, version = spec.partition("@")
    rec = reg.load(task, version=int(version) if version else None, base=lb)
    path = Path(rec["path"])
    old = artifact.read_manifest(path)["adapter"]
    new = peft_model.peft_config[ADAPTER_NAME]
    if int(old["rank"]) != int(new.r) or sorted(old["targets"]) != sorted(new.target_modules):
        raise ConfigError(f"--init-from {spec}: its adapter has rank {old['rank']} on {old['targets']}, "
                          f"this one rank {new.r} on {sorted(new.target_modules)}; use the same --rank and --targets")
    state = load_file(str(path / "adapter_model.safetensors"))
    res = set_peft_model_state_dict(peft_model, state, adapter_name=ADAPTER_NAME)
    if getattr(res, "unexpected_keys", None):
        raise ConfigError(f"--init-from {spec}: adapter weights do not fit ({len(res.unexpected_keys)} unexpected keys)")
    return {"task": task, "version": rec["version"]}


def _manifest(task, td, lb, lora, train, fit_info, report, val_report, probe_report, probe_c, trainable, parent) -> dict[str, Any]:
    n_base = sum(p.numel() for p in lb.model.parameters())
    metrics = {
        "test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
        "val_accuracy": val_report["accuracy"], "val_macro_f1": val_report["macro_f1"],
        "probe_test_accuracy": None if probe_report is None else probe_report["accuracy"],
        "probe_test_macro_f1": None if probe_report is None else probe_report["macro_f1"],
        "trainable_params": int(trainable), "trainable_pct": 100.0 * trainable / n_base,
        "train_seconds": fit_info["train_seconds"], "train_examples_per_s": fit_info["train_examples_per_s"],
    }
    return {
        "adaptreg_version": __version__,
        "task": task,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base": {"id": lb.id, "fingerprint": lb.fingerprint, "model_type": lb.model_type, "hidden_size": lb.hidden_size,
                 "num_parameters": int(n_base)},
        "data": td.summary(),
        "labels": td.labels,
        "adapter": {**lora.to_dict(), "targets": list(lora.targets or default_targets(lb.model_type)),
                    "init_from": None if parent is None else f"{parent['task']}@{parent['version']}"},
        "training": {**train.to_dict(), "epochs_run": fit_info["epochs_run"], "best_epoch": fit_info["best_epoch"],
                     "probe_C": probe_c, "pooling": "mean"},
        "history": fit_info["history"],
        "metrics": metrics,
        "report": {"per_class": report["per_class"], "confusion_matrix": report["confusion_matrix"],
                   "probe_confusion_matrix": None if probe_report is None else probe_report["confusion_matrix"]},
        "parents": [] if parent is None else [parent],
        "libraries": artifact.library_versions(),
    }


def _write(task, manifest, model, labels, output, overwrite, reg) -> OnboardResult:
    def write_into(d: Path) -> dict[str, Any]:
        model.peft_model.save_pretrained(str(d), safe_serialization=True)
        artifact.save_head(d, model.head, labels)
        plot_confusion(manifest["report"]["confusion_matrix"], labels, d / "confusion_matrix.png", title=f"{task}: test")
        manifest["metrics"]["adapter_bytes"] = artifact.adapter_size_bytes(d)
        return artifact.write_files_checksums(d, manifest)

    if output is not None:
        with atomic_dir(output, overwrite=overwrite) as tmp:
            final = write_into(tmp)
        version = reg.register(output) if reg is not None else None
        return OnboardResult(task, final, str(Path(output).resolve()), version)
    with tempfile.TemporaryDirectory(prefix="adaptreg-") as tmp:
        d = Path(tmp) / task
        d.mkdir()
        final = write_into(d)
        version = reg.register(d)
    return OnboardResult(task, final, version.get("path") if version else None, version)


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
