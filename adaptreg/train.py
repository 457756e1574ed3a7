"""Onboard one task: a PEFT LoRA adapter and a task head on a frozen base, evaluated against a probe.

Data flows one way: TaskData + base -> training loop -> evaluation (adapter and frozen-base
linear probe) -> adapter artifact (see :mod:`adaptreg.artifact`) -> optionally the registry.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifact
from ._util import atomic_dir, seed_everything
from .base import LoadedBase, default_targets, fingerprint, load_base, mean_pool, resolve_base
from .config import LoraSettings, TrainSettings
from .data.tasks import TaskData, load_task
from .errors import ConfigError, NotFoundError
from .registry import ROUTE_TAG
from .registry import as_registry as _registry

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"


@dataclass
class OnboardResult:
    """What onboarding produced: the manifest (metrics inside), where the artifact is, and its
    registry entry: ``version`` is the version number (as the CLI prints it), ``record`` the
    whole version record (None when not registered)."""

    task: str
    manifest: dict[str, Any]
    artifact_dir: str | None
    record: dict[str, Any] | None = None
    base_unchanged: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> "artifact.VersionNumber | None":
        return artifact.version_number(self.record)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest["metrics"]

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "task": self.task, "artifact_dir": self.artifact_dir,
            "version": None if self.record is None else int(self.record["version"]),
            "base": m["base"], "base_unchanged": self.base_unchanged, "data": m["data"], "adapter": m["adapter"],
            "training": m["training"], "metrics": m["metrics"], "report": m["report"], "parents": m.get("parents", []),
            "selection": m.get("selection"),
            "router_version": self.extra.get("router_version"),
            "seconds": self.extra.get("seconds"),
        }


# --------------------------------------------------------------------------- model pieces

def build_peft_model(base_model: Any, model_type: str, lora: LoraSettings, adapter_name: str = ADAPTER_NAME,
                     split: int = 0) -> Any:
    """Wrap the frozen base with a LoRA adapter (PEFT); lora-fa freezes A at its random init.

    ``split`` > 0 puts the adapter only on layers ``split ..`` (PEFT ``layers_to_transform``): the
    layers below are the shared frozen trunk (:mod:`adaptreg.trunk`).
    """
    from peft import LoraConfig, get_peft_model

    targets = lora.targets or default_targets(model_type)
    extra: dict[str, Any] = {}
    if split > 0:
        from .trunk import num_layers

        extra = {"layers_to_transform": list(range(split, num_layers(base_model))), "layers_pattern": "layer"}
    cfg = LoraConfig(r=int(lora.rank), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
                     target_modules=list(targets), use_rslora=bool(lora.rslora), use_dora=lora.kind == "dora",
                     bias="none", **extra)
    try:
        with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; nothing for the user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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
    subclass, so the base stays owned by its LoadedBase).

    Called on a tokenized batch it runs the whole base; :meth:`from_trunk` runs only the layers
    from ``split`` up, on trunk states (:class:`adaptreg.trunk.TrunkCache`).
    """

    def __init__(self, peft_model: Any, head: Any, split: int = 0, base_dropout: bool = True):
        self.peft_model = peft_model
        self.head = head
        self.split = split
        self.base_dropout = base_dropout

    def parameters(self):
        yield from (p for p in self.peft_model.parameters() if p.requires_grad)
        yield from self.head.parameters()

    def train(self, mode: bool = True) -> None:
        """Training mode; with ``base_dropout=False`` the frozen layers keep their eval behaviour
        (no hidden or attention dropout) and only the LoRA input dropout is active."""
        self.peft_model.train(mode)
        if mode and not self.base_dropout:
            from peft.tuners.lora import LoraLayer

            self.peft_model.eval()
            for module in self.peft_model.modules():
                if isinstance(module, LoraLayer):
                    module.lora_dropout.train()
        self.head.train(mode)

    def pooled(self, batch: dict) -> Any:
        out = self.peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return mean_pool(out.last_hidden_state, batch["attention_mask"])

    def __call__(self, batch: dict) -> Any:
        return self.head(self.pooled(batch))

    def from_trunk(self, hidden: Any, mask: Any) -> Any:
        from .trunk import branch_forward

        out = branch_forward(self.peft_model.get_base_model(), hidden, mask, self.split)
        return self.head(mean_pool(out, mask))


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


def log_loss(logits: Any, y: list[int]) -> float:
    """Mean cross-entropy of ``logits`` (numpy [n, C]) against labels ``y``."""
    import numpy as np

    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), np.asarray(y, dtype=int)].mean()) if len(y) else float("nan")


def predict(model: TaskModel, tokenizer: Any, texts: list[str], max_length: int, batch_size: int,
            truncation: str = "head") -> tuple[list[int], list[float]]:
    """Labels and confidences of ``texts`` through the whole (adapted) base: the serving path."""
    import torch

    from .trunk import length_batches, pad, tokenize

    model.train(False)
    ids = tokenize(tokenizer, texts, max_length, truncation)
    preds, confs = [0] * len(texts), [0.0] * len(texts)
    with torch.inference_mode():
        for idx in length_batches([len(x) for x in ids], batch_size):
            input_ids, mask = pad([ids[i] for i in idx], tokenizer.pad_token_id or 0)
            prob = torch.softmax(model({"input_ids": input_ids, "attention_mask": mask}).float(), -1)
            c, p = prob.max(-1)
            for i, pi, ci in zip(idx, p.tolist(), c.tolist()):
                preds[i], confs[i] = pi, ci
    return preds, confs


def cache_logits(model: TaskModel, cache: Any, batch_size: int) -> Any:
    """Logits (numpy, input order) of every row of a trunk cache through the branch."""
    import numpy as np
    import torch

    from .trunk import length_batches

    model.train(False)
    out = None
    with torch.inference_mode():
        for idx in length_batches(cache.lengths.tolist(), batch_size):
            z = model.from_trunk(*cache.batch(idx)).float().numpy()
            if out is None:
                out = np.zeros((len(cache), z.shape[1]), dtype=np.float32)
            out[idx] = z
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def frozen_features(base_model: Any, cache: Any, batch_size: int) -> Any:
    """Frozen-base last-layer mean-pooled features from trunk states (the probe's input)."""
    import numpy as np
    import torch

    from .trunk import branch_forward, length_batches

    out = np.zeros((len(cache), int(base_model.config.hidden_size)), dtype=np.float32)
    with torch.inference_mode():
        for idx in length_batches(cache.lengths.tolist(), batch_size):
            h, m = cache.batch(idx)
            out[idx] = mean_pool(branch_forward(base_model, h, m, cache.split), m).float().numpy()
    return out


def probe_pipeline(c: float, seed: int) -> Any:
    """The probe, unfitted: standardisation, then logistic regression with inverse regularisation ``c``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))


def linear_probe(train_x: Any, train_y: list[int], val_x: Any, val_y: list[int], seed: int) -> Any:
    """Logistic regression on standardised frozen-base features; C chosen on the validation split
    (accuracy, ties broken by validation log-loss)."""
    best, best_key = None, None
    for c in (0.01, 0.1, 1.0, 10.0):
        clf = probe_pipeline(c, seed)
        clf.fit(train_x, train_y)
        key = (float((clf.predict(val_x) == val_y).mean()), -log_loss(clf.decision_function(val_x) if len(clf.classes_) > 2
                                                                       else _binary_logits(clf.decision_function(val_x)), val_y))
        if best_key is None or key > best_key:
            best, best_key = clf, key
    best.chosen_C_ = best.steps[-1][1].C
    return best


def _binary_logits(z: Any) -> Any:
    import numpy as np

    return np.stack([np.zeros_like(z), z], 1)


def probe_logits(clf: Any, x: Any) -> Any:
    """The probe's logits [n, n_labels] (binary: [0, z], whose softmax is predict_proba)."""
    z = clf.decision_function(x)
    return _binary_logits(z) if z.ndim == 1 else z


def probe_head(clf: Any, n_labels: int) -> Any:
    """The probe (scaler + logistic regression) folded into one ``torch.nn.Linear`` on raw features."""
    import numpy as np
    import torch

    scaler, lr = clf.steps[0][1], clf.steps[-1][1]
    if list(lr.classes_) != list(range(n_labels)):
        raise ConfigError(f"the probe saw classes {list(lr.classes_)}, expected 0..{n_labels - 1}")
    coef, icpt = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: logits [0, z]
        coef = np.vstack([np.zeros_like(coef), coef])
        icpt = np.concatenate([[0.0], icpt])
    w = coef / scaler.scale_
    b = icpt - w @ scaler.mean_
    head = torch.nn.Linear(w.shape[1], n_labels)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    return head


# --------------------------------------------------------------------------- training loop

class _FGM:
    """Fast Gradient Method on a module's output: a second loss at x + eps * g / ||g||.

    On the full path it wraps the embeddings; on the trunk path, the first branch layer's input.
    """

    def __init__(self, embeddings: Any, epsilon: float):
        self.embeddings, self.epsilon = embeddings, epsilon
        self.delta = None
        self.captured = None
        self.handle = embeddings.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        import torch

        if self.delta is not None:
            return output + self.delta
        # a training forward, whatever the module's own mode: with base_dropout off (the default)
        # the frozen embeddings stay in eval mode, and FGM must still capture their output
        if torch.is_grad_enabled() and self.epsilon > 0:
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
    from transformers import get_scheduler

    return get_scheduler(kind if kind != "constant" else "constant_with_warmup", optimizer,
                         num_warmup_steps=warmup, num_training_steps=total)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    import sys

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.2 if tty else 30.0)


def auto_epochs(n_train: int, batch_size: int, settings: TrainSettings) -> int:
    """``epochs`` when given, else enough passes for ``settings.target_steps`` optimiser steps,
    between ``min_epochs`` and ``max_epochs`` (small tasks get more passes, large ones fewer)."""
    if settings.epochs:
        return int(settings.epochs)
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return int(min(settings.max_epochs, max(settings.min_epochs, math.ceil(settings.target_steps / steps_per_epoch))))


LOSS_MIN_DELTA = 1e-3  # a validation loss must fall by this much to count as progress


def _better(a: tuple[float, float], b: tuple[float, float] | None) -> bool:
    """Checkpoint order: higher validation accuracy, then (at equal accuracy) a lower validation loss."""
    return b is None or a[0] > b[0] or (a[0] == b[0] and a[1] < b[1] - LOSS_MIN_DELTA)


def fit(model: TaskModel, tokenizer: Any, data: TaskData, settings: TrainSettings, progress: bool = True,
        caches: dict[str, Any] | None = None, on_epoch: Any = None, keep_best: bool = True,
        validate: bool = True, stop_after: int | None = None, regularizer: Any = None) -> dict[str, Any]:
    """Train adapter + head with AdamW; evaluate on validation after every epoch and keep the best
    checkpoint (validation accuracy, ties broken by validation loss).

    With ``caches`` (``{"train": TrunkCache, "val": TrunkCache}``) only the branch runs
    (:meth:`TaskModel.from_trunk`); without, each batch runs the whole base from ``tokenizer``
    (images: ``tokenizer`` is the batcher). ``on_epoch(epoch, model, record)`` is called after
    each epoch's validation (model in eval mode), e.g. to log extra held-out figures.
    ``keep_best=False`` keeps the last epoch's weights (no choice made on the validation rows);
    ``validate=False`` skips the per-epoch validation pass altogether (and with it early stopping);
    ``stop_after=k`` ends after epoch k of the planned schedule (the learning rate where it was then).
    ``regularizer()``, when given, returns a scalar tensor added to every batch's loss (O-LoRA's
    orthogonality penalty in the continual benchmark).
    """
    import numpy as np
    import torch

    from .trunk import length_batches

    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    epochs = auto_epochs(len(data.train), settings.batch_size, settings)
    steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)
    total = steps_per_epoch * epochs
    sched = _scheduler(opt, settings.schedule, int(settings.warmup_ratio * total), total)
    fgm: Any = None
    if settings.fgm_epsilon > 0:  # cached path: perturb the branch input; full path: the embedding output
        fgm = _TrunkFGM(settings.fgm_epsilon) if caches is not None else \
            _FGM(_find_embeddings(model.peft_model.get_base_model()), settings.fgm_epsilon)
    gen = torch.Generator().manual_seed(settings.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    best_state, best_key, best_epoch, stale = None, None, 0, 0
    seen, t0 = 0, time.perf_counter()
    train_lengths = caches["train"].lengths.tolist() if caches is not None else [len(t) if isinstance(t, str) else 1 for t in data.train.texts]

    def forward(idx: list[int]) -> Any:
        if caches is None:
            batch = tokenizer([data.train.texts[j] for j in idx], padding=True, truncation=True,
                              max_length=settings.max_length or 128, return_tensors="pt")
            return lambda: model(batch)
        hidden, mask = caches["train"].batch(idx)
        if fgm is not None:
            return lambda: model.from_trunk(fgm.apply(hidden), mask)
        return lambda: model.from_trunk(hidden, mask)

    def val_logits() -> Any:
        if caches is not None:
            return cache_logits(model, caches["val"], settings.eval_batch_size)
        model.train(False)
        out = []
        with torch.inference_mode():
            for i in range(0, len(data.val.texts), settings.eval_batch_size):
                b = tokenizer(data.val.texts[i : i + settings.eval_batch_size], padding=True, truncation=True,
                              max_length=settings.max_length or 128, return_tensors="pt")
                out.append(model(b).float().numpy())
        return np.concatenate(out)

    try:
        for epoch in range(1, epochs + 1):
            model.train(True)
            run_loss, n = 0.0, 0
            bar = _progress(len(data.train), f"epoch {epoch}/{epochs}", progress)
            for idx in length_batches(train_lengths, settings.batch_size, generator=gen):
                y = torch.tensor([data.train.y[j] for j in idx])
                run = forward(idx)
                loss = loss_fn(run(), y)
                if regularizer is not None:
                    loss = loss + regularizer()
                if not torch.isfinite(loss):
                    raise ConfigError(f"training diverged: loss {loss.item()} at epoch {epoch}; lower --lr (now {settings.lr})")
                loss.backward()
                if fgm is not None and fgm.perturb():
                    loss_fn(run(), y).backward()
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
            if not validate:
                history.append({"epoch": epoch, "train_loss": run_loss / max(1, n), "lr": sched.get_last_lr()[0]})
                if stop_after is not None and epoch >= stop_after:
                    break
                continue
            z = val_logits()
            acc = float((z.argmax(1) == np.asarray(data.val.y)).mean())
            vloss = log_loss(z, data.val.y)
            history.append({"epoch": epoch, "train_loss": run_loss / max(1, n), "val_accuracy": acc,
                            "val_loss": vloss, "lr": sched.get_last_lr()[0]})
            logger.info("epoch %d: loss %.4f val_acc %.4f val_loss %.4f", epoch, run_loss / max(1, n), acc, vloss)
            if on_epoch is not None:
                on_epoch(epoch, model, history[-1])
            if _better((acc, vloss), best_key):
                best_key, best_epoch, stale = (acc, vloss), epoch, 0
                best_state = _trainable_state(model) if keep_best else None
            else:
                stale += 1
                if settings.patience and stale >= settings.patience:
                    logger.info("early stop after epoch %d (best %d)", epoch, best_epoch)
                    break
    finally:
        if fgm is not None:
            fgm.close()
    seconds = time.perf_counter() - t0
    if best_state is not None and keep_best:
        _load_trainable_state(model, best_state)
    return {"history": history, "best_epoch": best_epoch, "epochs_run": len(history), "epochs_planned": epochs,
            "train_seconds": seconds, "train_examples_per_s": seen / seconds if seconds > 0 else None,
            "val_accuracy": None if best_key is None else best_key[0], "val_loss": None if best_key is None else best_key[1]}


class _TrunkFGM(_FGM):
    """FGM on the trunk states fed to the branch (the cached path has no embedding forward):
    :meth:`apply` marks the states for a gradient, then adds the perturbation once it is set."""

    def __init__(self, epsilon: float):  # no hook: the branch input is passed through apply()
        self.epsilon, self.delta, self.captured, self.handle = epsilon, None, None, None

    def apply(self, hidden: Any) -> Any:
        if self.delta is not None:
            return hidden + self.delta
        hidden = hidden.clone().requires_grad_(True)
        self.captured = hidden
        return hidden

    def close(self) -> None:
        self.delta = None


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


# --------------------------------------------------------------------------- one task, end to end

@dataclass
class TrainedTask:
    """What :func:`train_task` produced: the chosen model (adapter or probe) and both candidates' figures."""

    model: TaskModel
    chosen: str  # "adapter" or "probe"
    max_length: int
    truncation: str
    split: int
    fit_info: dict[str, Any]
    reports: dict[str, dict[str, Any]]  # {"adapter"|"probe"|"chosen": {"val": report, "test": report}}
    val_loss: dict[str, float]
    probe: Any = None
    probe_C: float | None = None
    cache_bytes_per_example: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    paired: dict[str, Any] | None = None
    router_features: Any = None  # the router's features of the training split, from the trunk cache


def resolve_length(lb: LoadedBase, td: TaskData, train: TrainSettings) -> int:
    """``train.max_length`` when set, else the task's own length (:func:`adaptreg.trunk.auto_max_length`)."""
    from .trunk import auto_max_length

    if train.max_length:
        return int(train.max_length)
    limit = int(getattr(lb.model.config, "max_position_embeddings", 512) or 512)
    return auto_max_length(lb.tokenizer, td.train.texts, min(int(train.length_cap), limit))


def router_features_from_cache(lb: LoadedBase, cache: Any, texts: list[str], router: Any, batch_size: int) -> Any:
    """The router's features of ``texts``: pooled from their trunk cache when the router reads the
    trunk's output and tokenizes a row the same way; the other rows run the frozen layers only up
    to the deepest layer the router reads (no full forward)."""
    import numpy as np
    import torch

    from .trunk import frozen_states, length_batches, num_layers, pad, pooled, tokenize

    depth = num_layers(lb.model) + 1
    layers = [i % depth for i in router.feature_layers]
    ids = tokenize(lb.tokenizer, texts, int(router.max_length), router.truncation)
    out = np.zeros((len(texts), lb.hidden_size * len(layers)), dtype=np.float32)
    kept = getattr(cache, "pooled", {})
    from_cache = layers == [cache.split] or all(i in kept for i in layers)
    same = [i for i in range(len(texts)) if from_cache and ids[i] == cache.ids[i]]
    other = [i for i in range(len(texts)) if not (from_cache and ids[i] == cache.ids[i])]
    with torch.inference_mode():
        if same and all(i in kept for i in layers):  # pooled during the cache's own pass
            out[same] = np.concatenate([kept[i][same] for i in layers], 1)
            same = []
        for idx in length_batches(cache.lengths[same].tolist(), batch_size):
            rows = [same[k] for k in idx]
            h, m = cache.batch(rows)
            out[rows] = mean_pool(h, m).numpy()
        for idx in length_batches([len(ids[i]) for i in other], batch_size):
            rows = [other[k] for k in idx]
            x, m = pad([ids[i] for i in rows], lb.tokenizer.pad_token_id or 0)
            out[rows] = pooled(frozen_states(lb.model, x, m, max(layers), layers), m, layers).numpy()
    return router.with_surface(out, texts)


def zero_adapter(peft_model: Any) -> None:
    """Make the adapter an exact identity (every LoRA B = 0): the version serves the frozen base."""
    import torch

    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.zero_()


def train_task(lb: LoadedBase, td: TaskData, lora: LoraSettings, train: TrainSettings, *, probe: bool = True,
               peft_model: Any = None, init: Any = None, progress: bool = True, router: Any = None,
               head: Any = None, regularizer: Any = None) -> TrainedTask:
    """Cache the trunk once, fit the probe and the adapter on it, and keep the better on validation.

    ``peft_model``: an existing PEFT model to keep training (seq-lora); else a fresh adapter on
    ``lb.model`` (the caller unloads it). ``init(peft_model)`` runs before training (``--init-from``).
    ``router``: a :class:`adaptreg.compose.router.Router` whose features of the training split are
    taken from the trunk cache when it reads the trunk's output (``TrainedTask.router_features``).
    ``head``: the output layer to start from (default: the probe's or a fresh one, per
    ``train.head_init``); ``regularizer``: an extra loss term, passed to :func:`fit`.
    """
    import numpy as np
    import torch

    from .trunk import TrunkCache, num_layers, split_point

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    max_length = resolve_length(lb, td, train)
    split = split_point(lb.model, train.adapted_layers)
    depth = num_layers(lb.model) + 1
    router_pool = sorted({i % depth for i in router.feature_layers}) if router is not None else []
    pool = router_pool if all(i <= split for i in router_pool) else []
    caches = {s: TrunkCache(lb.model, lb.tokenizer, getattr(td, s).texts, max_length, split, train.truncation,
                            train.eval_batch_size, int(train.cache_ram_mb) * 1024 ** 2, pool=pool if s == "train" else ())
              for s in ("train", "val", "test")}
    seconds["trunk_cache"] = time.perf_counter() - t
    ys = {s: getattr(td, s).y for s in ("train", "val", "test")}
    reports: dict[str, dict[str, Any]] = {}
    val_loss: dict[str, float] = {}
    clf, probe_c = None, None
    try:
        if probe:
            t = time.perf_counter()
            feats = {s: frozen_features(lb.model, caches[s], train.eval_batch_size) for s in caches}
            clf = linear_probe(feats["train"], ys["train"], feats["val"], ys["val"], train.seed)
            probe_c = clf.chosen_C_
            zp = {s: probe_logits(clf, feats[s]) for s in ("val", "test")}
            reports["probe"] = {s: classification_report(ys[s], zp[s].argmax(1).tolist(), td.labels) for s in zp}
            val_loss["probe"] = log_loss(zp["val"], ys["val"])
            seconds["probe"] = time.perf_counter() - t
        seed_everything(train.seed)
        if peft_model is None:
            peft_model = build_peft_model(lb.model, lb.model_type, lora, split=split)
        if init is not None:
            init(peft_model)
        if head is None:
            head = probe_head(clf, td.n_labels) if (train.head_init == "probe" and clf is not None) \
                else torch.nn.Linear(lb.hidden_size, td.n_labels)
        model = TaskModel(peft_model, head, split, base_dropout=train.base_dropout)
        init_state = _trainable_state(model)  # the folds of the cross-validated decision restart here
        fit_info = fit(model, lb.tokenizer, td, train, progress=progress, caches=caches, regularizer=regularizer)
        seconds["train"] = fit_info["train_seconds"]
        t = time.perf_counter()
        za = {s: cache_logits(model, caches[s], train.eval_batch_size) for s in ("val", "test")}
        seconds["evaluate"] = time.perf_counter() - t
        reports["adapter"] = {s: classification_report(ys[s], za[s].argmax(1).tolist(), td.labels) for s in za}
        val_loss["adapter"] = log_loss(za["val"], ys["val"])
        chosen, paired = "adapter", None
        if clf is not None:
            if train.select == "best" and len(td.val) < train.cv_below and train.cv_folds >= 2:
                t = time.perf_counter()
                a_cv, p_cv, y_cv, folds, n_splits = cross_validated_predictions(
                    model, init_state, td, train, caches, feats, probe_c, fit_info["epochs_planned"],
                    fit_info["best_epoch"] or 1)
                paired = paired_margin(a_cv, p_cv, y_cv, train.select_z, train.select_loss_z)
                n_all = len(td.train) + len(td.val)
                paired["on"] = (f"{n_splits}-fold cross-validation over train + val ({n_all} rows)"
                                if len(y_cv) == n_all else
                                f"{n_splits}-fold cross-validation over train + val, stopped after fold {folds} "
                                f"({len(y_cv)} of {n_all} rows): the lead was already decisive")
                paired["folds_run"] = folds
                seconds["cross_validation"] = time.perf_counter() - t
            else:
                paired = paired_margin(za["val"], zp["val"], ys["val"], train.select_z, train.select_loss_z)
                paired["on"] = f"validation ({len(ys['val'])} rows)"
            if train.select == "best" and not paired["adapter_wins"]:
                chosen = "probe"
        if chosen == "probe":
            zero_adapter(peft_model)
            model.head = probe_head(clf, td.n_labels)
        reports["chosen"] = reports[chosen]
        bpe = float(np.mean([c.bytes_per_example for c in caches.values()]))
        router_x = None
        if router is not None:
            t = time.perf_counter()
            router_x = router_features_from_cache(lb, caches["train"], td.train.texts, router, train.eval_batch_size)
            seconds["router_features"] = time.perf_counter() - t
    finally:
        for c in caches.values():
            c.close()
    return TrainedTask(model=model, chosen=chosen, max_length=max_length, truncation=train.truncation, split=split,
                       fit_info=fit_info, reports=reports, val_loss=val_loss, probe=clf, probe_C=probe_c,
                       cache_bytes_per_example=bpe, seconds=seconds, paired=paired, router_features=router_x)


def fold_data(labels: list[str], rows: list[tuple[Any, int]], y: Any, train_idx: Any, held_idx: Any) -> tuple[TaskData, dict[str, Any]]:
    """One cross-validation fold over cached rows: a TaskData whose splits carry only labels (the
    texts are already in the trunk caches) and the ``{"train", "val"}`` cache views for :func:`fit`,
    ``val`` being the held-out rows. ``rows[i]`` is ``(TrunkCache, row)`` of example ``i``."""
    from .data.tasks import Split
    from .trunk import CacheView

    fold = TaskData(labels=labels, train=Split([""] * len(train_idx), y[train_idx].tolist()),
                    val=Split([""] * len(held_idx), y[held_idx].tolist()), test=Split([], []), source="fold", fingerprint="")
    return fold, {"train": CacheView([rows[i] for i in train_idx]), "val": CacheView([rows[i] for i in held_idx])}


CV_EARLY_Z = 2.5  # an early look at the folds ends the cross-validation only on a lead this many standard errors wide


def cross_validated_predictions(model: TaskModel, init_state: dict[str, Any], td: TaskData, train: TrainSettings,
                                caches: dict[str, Any], feats: dict[str, Any], probe_c: float,
                                epochs: int, best_epoch: int) -> tuple[Any, Any, Any, int, int]:
    """Out-of-fold predictions of both candidates over train + val, for a validation split too small
    to tell them apart. Each fold restarts ``model``'s adapter and head from ``init_state`` (the
    main run's starting point) and trains them on the other folds as the registered adapter was
    trained: the same ``epochs``-epoch schedule, stopped after ``best_epoch`` (the checkpoint the
    main run kept); a probe with the main probe's C is fitted alike. The main run's trained weights
    are put back afterwards: the fold models only inform the choice. The predictions are logits.

    Sequential: after each fold but the last, the rows covered so far are checked, and a lead of
    ``max(CV_EARLY_Z, select_z)`` standard errors of the paired difference (see
    :func:`paired_margin`) for either candidate ends the loop, since the remaining folds could not
    plausibly overturn it. Returns both candidates' logits and the labels of the covered rows, the
    number of folds run and the number of folds (fewer than ``cv_folds`` when a class is rarer)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    rows = [(caches["train"], i) for i in range(len(td.train))] + [(caches["val"], i) for i in range(len(td.val))]
    y = np.asarray(list(td.train.y) + list(td.val.y))
    x = np.concatenate([feats["train"], feats["val"]])
    n_splits = int(min(train.cv_folds, np.bincount(y).min()))
    if n_splits < 2:
        raise ConfigError("a class has a single example in train + val: cannot cross-validate; pass --select adapter")
    a_logits = np.zeros((len(y), len(td.labels)), dtype=np.float64)
    p_logits = np.zeros_like(a_logits)
    fold_settings = TrainSettings(**{**train.to_dict(), "epochs": int(epochs), "patience": 0})
    trained_state = _trainable_state(model)
    covered = np.zeros(len(y), dtype=bool)
    folds_run = 0
    try:
        for k, (tr, te) in enumerate(StratifiedKFold(n_splits, shuffle=True, random_state=train.seed).split(x, y)):
            if folds_run and _decisive(a_logits[covered].argmax(1), p_logits[covered].argmax(1), y[covered],
                                       max(CV_EARLY_Z, train.select_z)):
                break
            clf = probe_pipeline(probe_c, train.seed).fit(x[tr], y[tr])
            p_logits[te] = probe_logits(clf, x[te])
            _load_trainable_state(model, init_state)
            fold, views = fold_data(td.labels, rows, y, tr, te)
            fit(model, None, fold, TrainSettings(**{**fold_settings.to_dict(), "seed": train.seed + 1 + k}),
                progress=False, caches=views, keep_best=False, validate=False, stop_after=best_epoch)
            a_logits[te] = cache_logits(model, views["val"], train.eval_batch_size)
            covered[te] = True
            folds_run += 1
    finally:
        _load_trainable_state(model, trained_state)
    return a_logits[covered], p_logits[covered], y[covered], folds_run, n_splits


def _discordant(adapter_pred: Any, probe_pred: Any, y: Any) -> tuple[int, int]:
    """Rows only the adapter gets right, rows only the probe gets right."""
    a_ok, p_ok = adapter_pred == y, probe_pred == y
    return int((a_ok & ~p_ok).sum()), int((~a_ok & p_ok).sum())


def _decisive(adapter_pred: Any, probe_pred: Any, y: Any, z: float) -> bool:
    """Does either candidate lead the other by ``z`` standard errors of the paired difference?"""
    b, c = _discordant(adapter_pred, probe_pred, y)
    return abs(b - c) >= max(1.0, z * math.sqrt(b + c))


def paired_margin(adapter_logits: Any, probe_logits_: Any, y: Any, z: float, loss_z: float = 0.0) -> dict[str, Any]:
    """Does the adapter beat the probe on validation by more than noise?

    Paired on the same rows: ``b`` rows only the adapter gets right, ``c`` rows only the probe gets
    right. Under "no difference" ``b - c`` has standard deviation ``sqrt(b + c)`` (the sign test
    behind McNemar's), so the adapter wins when ``b - c >= max(1, z * sqrt(b + c))``. On a
    45-row validation split a 3-row lead with 5 discordant rows is not enough at z = 1; a real
    gain of several points is. Ties and noise keep the probe, which cannot be worse than itself.

    Accuracy alone is a blunt count on a small split: two candidates right on the same rows tie,
    however differently sure they are. So with ``loss_z`` > 0 the adapter also wins when it is
    right on at least as many rows (``b >= c``) and its per-row log-loss is lower than the probe's
    by ``loss_z`` standard errors of the paired difference. Each candidate's logits are first
    divided by the temperature that fits them best on these rows, so a probe that is merely
    under- or over-confident is not penalised for it: what is compared is how well each separates
    the classes.
    """
    import numpy as np

    za, zp, y = np.asarray(adapter_logits, dtype=np.float64), np.asarray(probe_logits_, dtype=np.float64), np.asarray(y)
    b, c = _discordant(za.argmax(1), zp.argmax(1), y)
    need = max(1.0, float(z) * math.sqrt(b + c))
    out: dict[str, Any] = {"adapter_only": b, "probe_only": c, "needed": need, "z": float(z),
                           "adapter_wins": (b - c) >= need, "won_on": "accuracy" if (b - c) >= need else None}
    if loss_z > 0 and len(y) > 1:
        la, lp = calibrated_nll(za, y), calibrated_nll(zp, y)
        d = lp - la
        se = float(d.std(ddof=1)) / math.sqrt(len(d))
        score = float(d.mean()) / se if se > 0 else 0.0
        out.update({"adapter_loss": float(la.mean()), "probe_loss": float(lp.mean()), "loss_z_score": score,
                    "loss_z": float(loss_z)})
        if not out["adapter_wins"] and b >= c and score >= loss_z:
            out["adapter_wins"], out["won_on"] = True, "calibrated log-loss"
    return out


def calibrated_nll(logits: Any, y: Any) -> Any:
    """Per-row negative log-likelihood of ``logits`` divided by the temperature (searched over
    e^-4..e^4, about 0.02..55) that minimises their mean on these rows."""
    import numpy as np
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y)
    rows = np.arange(len(y))

    def nll(log_t: float) -> Any:
        return -log_softmax(z / math.exp(log_t), axis=1)[rows, y]

    best = minimize_scalar(lambda t: float(nll(t).mean()), bounds=(-4.0, 4.0), method="bounded")
    return nll(float(best.x))


# --------------------------------------------------------------------------- onboarding

def _check_same_labels(reg: Any, task: str, labels: list[str]) -> None:
    """Refuse a new version of ``task`` whose label set differs from its latest version's."""
    try:
        rec = reg.lookup(task)
    except NotFoundError:
        return  # a new task, or none of its versions is usable
    got = json.loads((Path(rec["path"]) / artifact.MANIFEST).read_text(encoding="utf-8")).get("labels") or []
    if sorted(map(str, got)) != sorted(map(str, labels)):
        raise ConfigError(f"task {task!r} version {rec['version']} has labels {sorted(map(str, got))}, this data has "
                          f"{sorted(map(str, labels))}: onboard it under another task name, or pass --new-labels "
                          "to register a version with the new label set")


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
    new_labels: bool = False,
) -> OnboardResult:
    """Train a LoRA adapter + head for ``task``, evaluate it beside a frozen-base linear probe,
    write the adapter artifact (to ``output`` if given) and register it (unless ``register=False``).

    ``registry`` is a :class:`adaptreg.registry.Registry`, a location string, or None for the default.
    ``init_from`` (``TASK`` or ``TASK@VERSION``, from the registry) starts from an existing adapter.
    ``route``: after registering, add the task to the registry's router (a new router version),
    so ``adaptreg predict`` can send inputs to it without a task id.
    ``new_labels``: allow a new version of a registered task to have another label set (refused
    otherwise, before any training: it is usually a mistyped task name or the wrong file).
    """
    artifact.validate_task_name(task)
    lora = lora or LoraSettings()
    train = train or TrainSettings()
    if not register and output is None:
        raise ConfigError("nothing would be kept: give output=DIR (CLI: --out DIR) or leave registration on")
    base_ref = base if isinstance(base, LoadedBase) else resolve_base(base)  # cheap: fail before any work
    clock = time.perf_counter()
    td = data if isinstance(data, TaskData) else load_task(
        data, text_col=text_col, label_col=label_col, val=val, test=test, seed=train.seed,
        drop_empty=drop_empty, max_per_class=max_per_class)
    phases: dict[str, float] = {"load_data": time.perf_counter() - clock}
    reg = _registry(registry) if (register or init_from) else None
    if register and not new_labels:
        _check_same_labels(reg, task, td.labels)
    clock = time.perf_counter()
    lb = base_ref if isinstance(base_ref, LoadedBase) else load_base(base_ref)
    fp_before = lb.fingerprint
    phases["load_base"] = time.perf_counter() - clock
    seed_everything(train.seed)

    parent: dict[str, Any] = {}

    def init(peft_model: Any) -> None:
        parent.update(_init_from(reg, init_from, peft_model, lb))

    logger.info("training %s rank %d on %d examples", lora.kind, lora.rank, len(td.train))
    trained = None
    try:
        routing = None
        if route and reg is not None and register:
            from .compose.router import Router
            from .compose.routing import load_router

            routing = load_router(reg) or Router()
        trained = train_task(lb, td, lora, train, probe=probe, init=init if init_from else None, progress=progress,
                             router=routing)
        phases.update(trained.seconds)
        model = trained.model
        trainable = sum(p.numel() for p in model.parameters())
        manifest = _manifest(task, td, lb, lora, train, trained, trainable, parent or None)
        clock = time.perf_counter()
        # the route intent lets `adaptreg doctor` find a version that a crash left out of the router
        result = _write(task, manifest, model, td.labels, output, overwrite, reg if register else None,
                        tags={ROUTE_TAG: "wanted"} if route else None)
        phases["write_and_register"] = time.perf_counter() - clock
    finally:
        if trained is not None:
            trained.model.peft_model.unload()  # take the LoRA layers out again; the base module is left as it was
        else:
            _unload_any(lb.model)
        for p in lb.model.parameters():
            p.requires_grad_(False)
    result.base_unchanged = fingerprint(lb.model) == fp_before
    if route and reg is not None and register:
        from .compose.routing import add_task_to_registry_router

        logger.info("adding %r to the task router", task)
        def featurizer(r: Any) -> Any:
            same = routing is not None and r.feature_key() == routing.feature_key()
            return (trained.router_features, list(td.train.y)) if same and trained.router_features is not None else None

        clock = time.perf_counter()
        _, router_rec = add_task_to_registry_router(reg, task, lb, version=int(result.version), data=td,
                                                    featurizer=featurizer)
        result.extra["router_version"] = router_rec.get("version")
        phases["router_update"] = time.perf_counter() - clock
    result.extra["seconds"] = {k: round(v, 3) for k, v in phases.items()}
    result.extra["probe"] = trained.probe
    return result


def _unload_any(model: Any) -> None:
    """Put back any LoRA layer a failed onboarding left injected in ``model``."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover
        return
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and hasattr(module, "get_base_layer"):
            parent_name, _, child = name.rpartition(".")
            parent_mod = model.get_submodule(parent_name) if parent_name else model
            setattr(parent_mod, child, module.get_base_layer())


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


def _manifest(task, td, lb, lora, train, trained: "TrainedTask", trainable, parent) -> dict[str, Any]:
    n_base = sum(p.numel() for p in lb.model.parameters())
    rep, fit_info = trained.reports, trained.fit_info

    def fig(who: str, split: str, key: str) -> Any:
        return rep[who][split][key] if who in rep else None

    chosen = trained.chosen
    metrics = {
        "test_accuracy": fig("chosen", "test", "accuracy"), "test_macro_f1": fig("chosen", "test", "macro_f1"),
        "val_accuracy": fig("chosen", "val", "accuracy"), "val_macro_f1": fig("chosen", "val", "macro_f1"),
        "val_loss": trained.val_loss.get(chosen),
        "adapter_test_accuracy": fig("adapter", "test", "accuracy"), "adapter_val_accuracy": fig("adapter", "val", "accuracy"),
        "adapter_val_loss": trained.val_loss.get("adapter"),
        "probe_test_accuracy": fig("probe", "test", "accuracy"), "probe_test_macro_f1": fig("probe", "test", "macro_f1"),
        "probe_val_accuracy": fig("probe", "val", "accuracy"), "probe_val_loss": trained.val_loss.get("probe"),
        "trainable_params": int(trainable), "trainable_pct": 100.0 * trainable / n_base,
        "train_seconds": fit_info["train_seconds"], "train_examples_per_s": fit_info["train_examples_per_s"],
        "trunk_cache_seconds": trained.seconds.get("trunk_cache"),
        "trunk_cache_bytes_per_example": trained.cache_bytes_per_example,
    }
    if metrics["probe_test_accuracy"] is not None:
        metrics["gain_test_points"] = 100.0 * (metrics["test_accuracy"] - metrics["probe_test_accuracy"])
        metrics["gain_val_points"] = 100.0 * (metrics["val_accuracy"] - metrics["probe_val_accuracy"])
    from .trunk import num_layers

    n_layers = num_layers(lb.model)
    return artifact.new_manifest(
        task, base=lb, labels=td.labels, data=td.summary(), metrics=metrics,
        parents=[] if parent is None else [parent],
        adapter={**lora.to_dict(), "targets": list(lora.targets or default_targets(lb.model_type)),
                 "layers": list(range(trained.split, n_layers)),
                 "init_from": None if parent is None else f"{parent['task']}@{parent['version']}"},
        selection={"chosen": chosen, "rule": train.select, "paired": trained.paired,
                      "candidates": {k: {"val_accuracy": fig(k, "val", "accuracy"), "val_loss": trained.val_loss.get(k)}
                                     for k in ("adapter", "probe") if k in rep},
                      "note": "probe chosen: the adapter is an exact identity (LoRA B = 0) and the head is the "
                              "probe folded into one linear layer" if chosen == "probe" else "adapter chosen"},
        training={**train.to_dict(), "max_length": trained.max_length, "max_length_setting": train.max_length,
                  "truncation": trained.truncation, "split": trained.split,
                  "epochs_run": fit_info["epochs_run"], "epochs_planned": fit_info["epochs_planned"],
                  "best_epoch": fit_info["best_epoch"], "probe_C": trained.probe_C, "pooling": "mean",
                  "seconds": {k: round(v, 3) for k, v in trained.seconds.items()}},
        history=fit_info["history"],
        report={"per_class": rep["chosen"]["test"]["per_class"], "confusion_matrix": rep["chosen"]["test"]["confusion_matrix"],
                "probe_confusion_matrix": rep["probe"]["test"]["confusion_matrix"] if "probe" in rep else None})


def _write(task, manifest, model, labels, output, overwrite, reg, tags=None) -> OnboardResult:
    def write_into(d: Path) -> dict[str, Any]:
        model.peft_model.save_pretrained(str(d), safe_serialization=True)
        artifact.save_head(d, model.head, labels)
        plot_confusion(manifest["report"]["confusion_matrix"], labels, d / "confusion_matrix.png", title=f"{task}: test")
        manifest["metrics"]["adapter_bytes"] = artifact.adapter_size_bytes(d)
        return artifact.write_files_checksums(d, manifest)

    if output is not None:
        with atomic_dir(output, overwrite=overwrite) as tmp:
            final = write_into(tmp)
        version = reg.register(output, tags=tags) if reg is not None else None
        return OnboardResult(task, final, str(Path(output).resolve()), version)
    with tempfile.TemporaryDirectory(prefix="adaptreg-") as tmp:
        d = Path(tmp) / task
        d.mkdir()
        final = write_into(d)
        version = reg.register(d, tags=tags)
    return OnboardResult(task, final, version.get("path") if version else None, version)


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str = "") -> None:
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: the application's backend is left alone
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(labels)
    fig = Figure(figsize=(1.6 + 0.6 * n, 1.2 + 0.6 * n), dpi=100)
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=labels).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45, values_format="d")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
