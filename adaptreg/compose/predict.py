"""Predict without a task id: route each text, then run every row through its own task adapter.

All task adapters are loaded into one PEFT model (one copy of the base weights). A mixed-task
batch is one base forward with a LoRA adapter per row (PEFT's ``adapter_names`` mixed-batch
inference); each row's task head is then applied to its mean-pooled features.

Routing needs frozen-base features, i.e. a second forward with the adapters disabled. To keep
that cheap it runs at the router's ``max_length`` (64 tokens by default) instead of the task's
training length; the router's statistics were computed at that same length. Both forwards sort
rows by length inside a call so that batches carry little padding; results come back in input
order.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import artifact
from ..base import LoadedBase, load_base, mean_pool, pooled_states
from ..errors import ConfigError, NotFoundError
from ..trunk import tokenize
from .router import UNKNOWN, Router

logger = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch: rows whose task is served by its probe


def _first_linear(net: Any) -> list[str]:
    """One linear module name of ``net`` (a placeholder adapter when no task needs a real one)."""
    import torch

    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Linear):
            return [name]
    raise ConfigError("the base has no linear layer to attach an adapter to")


@dataclass
class _TaskEntry:
    task: str
    adapter: str  # internal PEFT adapter name (task names may contain '.', module keys may not)
    path: str
    head_w: Any
    head_b: Any
    labels: list[str]
    max_length: int
    dora: bool
    version: Any = None
    truncation: str = "head"
    identity: bool = False  # the linear probe won at onboarding: frozen base + probe head, no adapter


class Predictor:
    """Serve several task adapters on one base, with or without a task id per text.

    ``Predictor(registry, base, tasks, alias, router)`` resolves each task's adapter from the
    registry (``alias`` when set on that task, else its latest version) and the latest registered
    router (``router=None``; pass ``False`` for none, or a :class:`Router`).
    :meth:`from_artifacts` does the same from adapter directories, without a registry.
    """

    def __init__(self, registry: Any = None, base: str | LoadedBase = "minilm", tasks: Sequence[str] | None = None,
                 alias: str | None = "production", router: Router | bool | None = None, threshold: float | None = None):
        from ..registry import as_registry

        reg = as_registry(registry)
        lb = base if isinstance(base, LoadedBase) else load_base(base)
        names = list(tasks) if tasks else _task_names(reg)
        if not names:
            raise NotFoundError("the registry has no tasks: onboard one first (`adaptreg onboard TASK --data ...`)")
        paths, versions = {}, {}
        for t in names:
            rec = _resolve(reg, t, alias, lb)
            paths[t], versions[t] = rec["path"], rec.get("version")
        if router is None:
            from .router import load_router

            router = load_router(reg)
        self._setup(lb, paths, router or None, threshold)
        for t, v in versions.items():
            self._entries[t].version = v

    @classmethod
    def from_artifacts(cls, base: LoadedBase, artifacts: dict[str, str | os.PathLike], router: Router | None = None,
                       threshold: float | None = None) -> "Predictor":
        """Build from adapter directories ``{task: dir}`` (verified, base-checked) and an optional router."""
        obj = cls.__new__(cls)
        obj._setup(base, {t: str(p) for t, p in artifacts.items()}, router, threshold)
        return obj

    # ------------------------------------------------------------------ set-up
    def _setup(self, base: LoadedBase, paths: dict[str, str], router: Router | None, threshold: float | None) -> None:
        import torch
        from peft import PeftModel

        if not paths:
            raise ConfigError("no adapters given: pass at least one task")
        self.base = base
        self.router = router
        self.threshold = threshold
        from .merge import load_task_head

        self._entries: dict[str, _TaskEntry] = {}
        by_path: dict[str, str] = {}  # a merged artifact serving several tasks is loaded once
        for task, path in paths.items():
            manifest = artifact.verify(path)
            artifact.check_base(manifest, base.fingerprint, base.id)
            head = load_task_head(path, task)
            key = str(Path(path).resolve())
            identity = (manifest.get("selection") or {}).get("chosen") == "probe"
            if not identity:
                by_path.setdefault(key, f"adapter{len(by_path)}")
            training = manifest.get("training") or {}
            self._entries[task] = _TaskEntry(
                task=task, adapter=BASE if identity else by_path[key], path=str(path), head_w=head.weight.float(),
                head_b=head.bias.float(), labels=list(head.labels), max_length=int(training.get("max_length") or 256),
                dora=(manifest.get("adapter") or {}).get("kind") == "dora", truncation=training.get("truncation", "head"),
                identity=identity)
        # A private copy of the base: PEFT injects LoRA layers into the module it wraps, and the
        # caller's LoadedBase must keep computing frozen-base features.
        net = copy.deepcopy(base.model)
        model = None
        loaded: set[str] = set()
        for e in self._entries.values():
            if e.adapter in loaded or e.identity:
                continue
            loaded.add(e.adapter)
            if model is None:
                model = PeftModel.from_pretrained(net, e.path, adapter_name=e.adapter, is_trainable=False)
            else:
                model.load_adapter(e.path, adapter_name=e.adapter, is_trainable=False)
        if model is None:  # every task is served by its probe: the frozen base alone
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(net, LoraConfig(r=1, target_modules=list(_first_linear(net))), adapter_name="unused")
        model.eval()
        self.model = model
        self._torch = torch
        self.last_timing_: dict[str, float] = {}

    @property
    def tasks(self) -> list[str]:
        return list(self._entries)

    # ------------------------------------------------------------------ forward passes
    def _pooled(self, texts: list[str], max_lengths: list[int], adapters: list[str] | None, batch_size: int,
                group: bool = True, layer: int | Sequence[int] = -1, truncations: list[str] | None = None) -> Any:
        """Mean-pooled last hidden states, one row per text, in input order.

        ``adapters`` None = adapters disabled (frozen base), pooling hidden state(s) ``layer``
        (:func:`adaptreg.base.pooled_states`); else the PEFT adapter name per row.
        ``group``: order rows by (adapter, length) so that most batches hold one adapter; the few
        batches that straddle two tasks still run as one mixed forward. Otherwise by length only.
        """
        torch = self._torch
        tok = self.base.tokenizer
        truncs = truncations or ["head"] * len(texts)
        enc = [tokenize(tok, [t], m, tr)[0] for t, m, tr in zip(texts, max_lengths, truncs)]
        if adapters is not None and group:
            order = sorted(range(len(texts)), key=lambda i: (adapters[i], len(enc[i])))
        else:
            order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
        width = self.base.hidden_size * (1 if isinstance(layer, int) else len(layer))
        out = torch.empty((len(texts), width))
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                batch = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
                kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
                if adapters is None:
                    with self.model.disable_adapter():
                        out[idx] = pooled_states(self.model, kw, layer)
                else:
                    hidden = self._adapter_forward(kw, [adapters[i] for i in idx])
                    out[idx] = mean_pool(hidden, batch["attention_mask"]).float()
        return out

    def _adapter_forward(self, kw: dict[str, Any], names: list[str]) -> Any:
        torch = self._torch
        unique = sorted(set(names))
        if unique == [BASE]:
            with self.model.disable_adapter():
                return self.model(**kw).last_hidden_state
        if len(unique) == 1:
            self.model.set_adapter(unique[0])
            return self.model(**kw).last_hidden_state
        dora = {e.adapter for e in self._entries.values() if e.dora}
        if not dora & set(unique):
            return self.model(**kw, adapter_names=names).last_hidden_state
        # PEFT's mixed batches do not support DoRA: one forward per adapter instead.
        hidden = None
        for name in unique:
            rows = [i for i, n in enumerate(names) if n == name]
            sub = {k: v[rows] for k, v in kw.items()}
            if name == BASE:
                with self.model.disable_adapter():
                    h = self.model(**sub).last_hidden_state
            else:
                self.model.set_adapter(name)
                h = self.model(**sub).last_hidden_state
            if hidden is None:
                hidden = torch.zeros((len(names), *h.shape[1:]), dtype=h.dtype)
            hidden[rows] = h
        return hidden

    def route_features(self, texts: list[str], batch_size: int = 32) -> Any:
        """Frozen-base features at the router's max_length and layers (numpy, input order)."""
        ml = self.router.max_length if self.router is not None else 64
        layers = list(self.router.feature_layers) if self.router is not None else -1
        return self._pooled(list(texts), [int(ml)] * len(texts), None, batch_size, layer=layers).numpy()

    def route(self, texts: list[str], threshold: float | None = None, batch_size: int = 32) -> tuple[list[str], Any]:
        if self.router is None:
            raise ConfigError("this predictor has no router: pass task=... or build one (`adaptreg route add TASK`)")
        routable = [t for t in self.router.tasks_ if t in self._entries]
        if not routable:
            raise ConfigError(f"the router knows tasks {self.router.tasks_}, none of which is loaded ({self.tasks})")
        feats = self.route_features(texts, batch_size)
        thr = self.threshold if threshold is None else threshold
        return self.router.route(feats, threshold=thr, tasks=routable)

    # ------------------------------------------------------------------ prediction
    def predict(self, texts: Sequence[str], task: str | Sequence[str] | None = None, batch_size: int = 32,
                threshold: float | None = None, group_tasks: bool = False) -> list[dict[str, Any]]:
        """One dict per text, in input order: text, task, label, confidence, route_score.

        ``task``: None = route each text (``unknown`` when the router abstains), a task name for
        every row, or a list with one task name per row. Rows are batched by length, so batches
        mix tasks (one forward, PEFT's per-row adapters); ``group_tasks=True`` orders them by
        (task, length) instead so that most batches hold one adapter (no measurable gain on CPU
        in docs/composition.md; kept for devices where the per-adapter gather/scatter costs more).
        """
        torch = self._torch
        texts = [str(t) for t in texts]
        if batch_size < 1:
            raise ConfigError(f"batch_size == {batch_size}, must be >= 1")
        t0 = time.perf_counter()
        scores: list[float | None] = [None] * len(texts)
        if task is None:
            if self.router is None and len(self._entries) == 1:
                tasks = [self.tasks[0]] * len(texts)
            else:
                tasks, sc = self.route(texts, threshold, batch_size) if texts else ([], [])
                scores = [float(s) for s in sc]
        elif isinstance(task, str):
            tasks = [task] * len(texts)
        else:
            tasks = list(task)
            if len(tasks) != len(texts):
                raise ConfigError(f"task has {len(tasks)} entries for {len(texts)} texts; give one per text or a single name")
        unknown = sorted({t for t in tasks if t != UNKNOWN and t not in self._entries})
        if unknown:
            raise NotFoundError(f"no adapter loaded for task(s) {unknown}; loaded: {', '.join(self.tasks)}")
        t1 = time.perf_counter()
        rows = [i for i, t in enumerate(tasks) if t != UNKNOWN]
        out: list[dict[str, Any]] = [{"text": texts[i], "task": UNKNOWN, "label": UNKNOWN, "confidence": None,
                                      "route_score": scores[i]} for i in range(len(texts))]
        if rows:
            ents = [self._entries[tasks[i]] for i in rows]
            pooled = self._pooled([texts[i] for i in rows], [e.max_length for e in ents], [e.adapter for e in ents],
                                  batch_size, group=group_tasks, truncations=[e.truncation for e in ents])
            for name, e in self._entries.items():
                sel = [k for k, ent in enumerate(ents) if ent is e]
                if not sel:
                    continue
                prob = torch.softmax(pooled[sel] @ e.head_w.T + e.head_b, -1)
                conf, idx = prob.max(-1)
                for k, c, j in zip(sel, conf.tolist(), idx.tolist()):
                    row = out[rows[k]]
                    row.update(task=name, label=e.labels[j], confidence=float(c))
        t2 = time.perf_counter()
        self.last_timing_ = {"route_s": t1 - t0, "adapter_s": t2 - t1, "total_s": t2 - t0, "n": len(texts)}
        return out

    def __repr__(self) -> str:
        return f"Predictor(base={self.base.id!r}, tasks={self.tasks}, router={'yes' if self.router else 'no'})"


def _task_names(reg: Any) -> list[str]:
    names = []
    for item in reg.list_tasks():
        names.append(item if isinstance(item, str) else item.get("task") or item.get("name"))
    return [n for n in names if n]


def _resolve(reg: Any, task: str, alias: str | None, base: LoadedBase) -> dict[str, Any]:
    """The task's adapter under ``alias`` if that alias is set, else its latest version (verified)."""
    if alias:
        try:
            return reg.load(task, alias=alias, base=base)
        except NotFoundError:
            logger.info("task %r has no alias %r: using its latest version", task, alias)
    return reg.load(task, base=base)


def read_table(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and columns of a CSV, JSONL or Parquet file (for ``adaptreg predict --data``)."""
    from ..data.tasks import read_records

    return read_records(path, what="input file")
