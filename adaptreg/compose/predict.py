"""Predict with or without a task id: one trunk pass per row, then each row's own task branch.

The frozen trunk (embeddings + the layers below every loaded adapter, :mod:`adaptreg.trunk`) runs
once per row. Routing reads its features from that same pass (the router's layers lie inside the
trunk), so a mixed-task batch costs one trunk pass, the routing maths, and one branch pass per row.

A task's *branch* is its LoRA update on the layers above the trunk. On a BERT base every pass
runs packed (rows back to back, no padding outside attention: :class:`adaptreg.trunk.Packing`),
and the branch layers run once for the rows of all tasks, each task adding ``s * (x A^T) B^T`` on
its own rows (PEFT's mixed-adapter forward, without PEFT). DoRA adapters and other bases get a
private copy of the layers the adapter touches with the update folded into the weights
(``W + s * B @ A``; DoRA's magnitude rescaling too). Both are the same function as PEFT's unmerged
forward up to float rounding (tests compare them), cost no PEFT import at prediction time, and are
built lazily, the first time a row is sent to the task. Tasks whose linear probe won at
onboarding (``selection.chosen == "probe"``) have no branch: they run the frozen base's own layers
and their probe head.

Rows whose task reads a different tokenization than the routing pass (another length or
truncation, and a text long enough for it to matter) get their trunk recomputed at the task's own
tokenization, so routed and ``task=`` predictions are the same.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, MutableMapping, Sequence

from .. import artifact
from ..base import LoadedBase, load_base, mean_pool
from ..errors import ConfigError, IntegrityError, NotFoundError
from ..trunk import (PACKED_LINEARS, Packing, frozen_states, layer_stack, length_batches, packable, packed_embed,
                     packed_layer, pad, pooled, run_layers, tokenize)
from .router import UNKNOWN, Router, served_entries

logger = logging.getLogger(__name__)

CHUNK_ROWS = 2048  # rows held in memory at once (trunk states of a chunk: rows x tokens x hidden floats)


@dataclass
class _TaskEntry:
    task: str
    path: str
    head_w: Any
    head_b: Any
    labels: list[str]
    max_length: int
    truncation: str
    identity: bool  # the linear probe won at onboarding: frozen layers + probe head, no adapter
    layers: list[int]  # layers the adapter touches (empty for identity)
    version: Any = None
    branch: list[Any] | None = field(default=None, repr=False)


def _adapter_layers(path: str, n_layers: int) -> list[int]:
    """Layer indices an adapter touches, from its PEFT config and weight names (no weights loaded)."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    ltt = cfg.get("layers_to_transform")
    if ltt is not None:
        return sorted({int(ltt)} if isinstance(ltt, int) else {int(i) for i in ltt})
    return list(range(n_layers))


def _lora_deltas(path: str) -> dict[str, dict[str, Any]]:
    """``{module path: {"A", "B", "scale", "magnitude"}}`` from a PEFT LoRA directory (safetensors only)."""
    import re

    from safetensors.torch import load_file

    d = Path(path)
    cfg = json.loads((d / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{d}: PEFT type {cfg.get('peft_type')!r} is not LoRA")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    rank_pat, alpha_pat = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    state = load_file(str(d / "adapter_model.safetensors"))
    out: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        m = re.match(r"^base_model\.model\.(.+?)\.(lora_A|lora_B)\.weight$", key) or \
            re.match(r"^base_model\.model\.(.+?)\.(lora_magnitude_vector)(?:\.weight)?$", key)
        if not m:
            raise IntegrityError(f"{d}: unexpected adapter weight {key!r}")
        out.setdefault(m.group(1), {})[{"lora_A": "A", "lora_B": "B"}.get(m.group(2), "magnitude")] = value
    for name, parts in out.items():
        rr = next((int(v) for k, v in rank_pat.items() if name.endswith(k)), r)
        aa = next((float(v) for k, v in alpha_pat.items() if name.endswith(k)), alpha)
        parts["scale"] = aa / math.sqrt(rr) if cfg.get("use_rslora") else aa / rr
        if "A" not in parts or "B" not in parts:
            raise IntegrityError(f"{d}: adapter weights for {name} are incomplete")
    return out


def fold_lora(module: Any, parts: dict[str, Any]) -> None:
    """Fold a LoRA (or DoRA) update into a ``torch.nn.Linear`` in place, as PEFT's merge does."""
    import torch

    with torch.no_grad():
        w = module.weight
        delta = (parts["B"].float() @ parts["A"].float()) * parts["scale"]
        merged = w.float() + delta
        if "magnitude" in parts:  # DoRA: m * (W + sBA) / ||W + sBA|| per output row
            norm = merged.norm(p=2, dim=1, keepdim=True)
            merged = merged * (parts["magnitude"].float().view(-1, 1) / norm)
        w.copy_(merged.to(w.dtype))


def _low_rank(updates: dict[str, list[tuple]], tokens: int) -> Any:
    """A :func:`~adaptreg.trunk.packed_layer` linear hook: a module's frozen output plus, on each
    task's spans of packed tokens, ``x A^T (s B^T)`` (``updates``: module -> [(spans, A^T, s B^T)] per
    task, ``spans`` a list of (start, end) token ranges, ``s`` the adapter's scale).

    While the tasks' ranks add up to at most a quarter of the module's input width, every task's
    ``A`` is applied to all tokens in one product and a mask keeps each task's own columns on its
    tokens: two matrix products per module whatever the number of tasks and spans (small products
    per span cost about a millisecond each on CPU, more than the arithmetic); past that, one pair
    per span.
    """
    import torch

    stacked: dict[str, tuple[Any, Any, Any]] = {}
    for name, items in updates.items():
        rank = sum(a.shape[1] for _, a, _ in items)
        if rank * 4 > items[0][1].shape[0] or (len(items) == 1 and len(items[0][0]) == 1):
            continue
        mask = torch.zeros((tokens, rank))
        col = 0
        for spans, a, _ in items:
            for lo, hi in spans:
                mask[lo:hi, col : col + a.shape[1]] = 1.0
            col += a.shape[1]
        stacked[name] = (torch.cat([a for _, a, _ in items], 1), mask, torch.cat([b for _, _, b in items], 0))

    def linear(name: str, module: Any, x: Any) -> Any:
        y = module(x)
        if name in stacked:
            a, mask, b = stacked[name]
            return y.addmm_((x @ a).mul_(mask).to(y.dtype), b.to(y.dtype))  # in place: no autocast, so match y
        for spans, a, b in updates.get(name, ()):
            for lo, hi in spans:
                y[lo:hi] += (x[lo:hi] @ a) @ b
        return y

    return linear


class Predictor:
    """Serve several task adapters on one base, with or without a task id per text.

    ``Predictor(registry, base, tasks, alias, router)`` resolves each task's adapter from the
    registry (``alias`` when set on that task, else its latest version) and the latest registered
    router (``router=None``; pass ``False`` for none, or a :class:`Router`).
    :meth:`from_artifacts` does the same from adapter directories, without a registry.
    ``branch_cache``: where folded branches are kept, keyed by ``(adapter directory, split)``; a
    private dict by default. A mapping shared by predictors on the same loaded base (and allowed
    to evict, e.g. :class:`adaptreg.serve.cache.BranchCache`) lets them fold each adapter once.
    ``bf16``: run the layers' passes under ``torch.autocast("cpu", dtype=torch.bfloat16)``
    (faster on CPUs with AVX-512 bf16 or AMX); the router's distances and the heads are computed
    in float32, on features those passes produced.
    """

    def __init__(self, registry: Any = None, base: str | LoadedBase = "minilm", tasks: Sequence[str] | None = None,
                 alias: str | None = "production", router: Router | bool | None = None, threshold: float | None = None,
                 *, branch_cache: MutableMapping[Any, list[Any]] | None = None, bf16: bool = False):
        from ..registry import as_registry

        reg = as_registry(registry)
        names = list(tasks) if tasks else task_names(reg)
        if not names:  # before the base is loaded
            where = getattr(getattr(reg, "location", None), "display", None) or str(registry)
            raise NotFoundError(f"no tasks in the registry at {where}: onboard one with `adaptreg onboard`")
        lb = base if isinstance(base, LoadedBase) else load_base(base)
        paths, versions = {}, {}
        for t in names:
            rec = resolve_adapter(reg, t, alias, lb)
            paths[t], versions[t] = rec["path"], rec.get("version")
        if router is None:
            from .routing import load_router

            router = load_router(reg)
        self._setup(lb, paths, router or None, threshold, branch_cache, bf16)
        for t, v in versions.items():
            self._entries[t].version = v

    @classmethod
    def from_artifacts(cls, base: LoadedBase, artifacts: dict[str, str | os.PathLike], router: Router | None = None,
                       threshold: float | None = None, *,
                       branch_cache: MutableMapping[Any, list[Any]] | None = None, bf16: bool = False) -> "Predictor":
        """Build from adapter directories ``{task: dir}`` (verified, base-checked) and an optional router."""
        obj = cls.__new__(cls)
        obj._setup(base, {t: str(p) for t, p in artifacts.items()}, router, threshold, branch_cache, bf16)
        return obj

    # ------------------------------------------------------------------ set-up
    def _setup(self, base: LoadedBase, paths: dict[str, str], router: Router | None, threshold: float | None,
               branch_cache: MutableMapping[Any, list[Any]] | None = None, bf16: bool = False) -> None:
        import torch

        if not paths:
            raise ConfigError("no adapters given: pass at least one task")
        self.base = base
        self.bf16 = bool(bf16)
        self.router = router
        self.threshold = threshold
        self._torch = torch
        _, layers = layer_stack(base.model)
        self._layers = list(layers)
        n = len(self._layers)
        # BERT layers run packed (no work on padding outside attention); other bases run padded batches
        self._packed = packable(base.model)
        self._heads = int(getattr(base.model.config, "num_attention_heads", 0) or 0)
        self._entries: dict[str, _TaskEntry] = {}
        for task, path in paths.items():
            manifest = artifact.verify(path)
            artifact.check_base(manifest, base.fingerprint, base.id)
            head = artifact.load_task_head(path, task)
            training = manifest.get("training") or {}
            identity = (manifest.get("selection") or {}).get("chosen") == "probe"
            self._entries[task] = _TaskEntry(
                task=task, path=str(path), head_w=head.weight.float(), head_b=head.bias.float(), labels=list(head.labels),
                max_length=int(training.get("max_length") or 256), truncation=str(training.get("truncation", "head")),
                identity=identity, layers=[] if identity else _adapter_layers(path, n))
        touched = [min(e.layers) for e in self._entries.values() if e.layers]
        self.split = min(touched) if touched else n  # the trunk: every layer below all adapters
        # folded branches by (adapter directory, split): a private dict, or a mapping shared by several
        # predictors on this base that may drop entries at any time (``adaptreg serve``'s bounded LRU)
        self._branches: MutableMapping[Any, list[Any]] = {} if branch_cache is None else branch_cache
        self.last_timing_: dict[str, float] = {}

    @property
    def tasks(self) -> list[str]:
        return list(self._entries)

    def _branch(self, e: _TaskEntry) -> list[Any] | dict[int, dict[str, tuple]]:
        """The task's branch, built once per adapter directory and split:

        * on a base that runs packed (:func:`~adaptreg.trunk.packable`) and a LoRA adapter, its
          low-rank updates ``{layer index: {module: (Aᵀ, s·Bᵀ)}}``, applied beside the frozen
          layers' own output (:meth:`_branch_mixed`: every task's rows share each layer's matrix product);
        * otherwise (DoRA, whose update cannot be added on the side; another base) the layers
          ``split ..`` with the update folded into private copies;
        * the frozen layers themselves for a task served by its probe.
        """
        if e.identity:
            return self._layers[self.split:]
        key = (str(Path(e.path).resolve()), self.split)  # a merged artifact serving several tasks is folded once
        branch = self._branches.get(key)
        if branch is None:
            deltas = _lora_deltas(e.path)
            prefix = "encoder.layer."
            parsed = []
            for name, parts in deltas.items():
                if not name.startswith(prefix):
                    raise IntegrityError(f"{e.path}: adapter touches {name!r}, outside the encoder layers")
                idx, _, sub = name[len(prefix):].partition(".")
                if int(idx) < self.split:
                    raise IntegrityError(f"{e.path}: adapter touches layer {idx} but its config says layers {e.layers}")
                self._layers[int(idx)].get_submodule(sub)  # a module the layer lacks is an error either way
                parsed.append((int(idx), sub, parts))
            if self._packed and all("magnitude" not in parts and sub in PACKED_LINEARS for _, sub, parts in parsed):
                branch = {}
                for idx, sub, parts in parsed:
                    # A^T and s B^T, the scale folded into B once
                    branch.setdefault(idx, {})[sub] = (parts["A"].float().T.contiguous(),
                                                       (parts["B"].float().T * float(parts["scale"])).contiguous())
            else:
                branch = [copy.deepcopy(layer) if i in e.layers else layer for i, layer in enumerate(self._layers)][self.split:]
                for idx, sub, parts in parsed:
                    fold_lora(branch[idx - self.split].get_submodule(sub), parts)
                for layer in branch:
                    layer.eval()
            self._branches[key] = branch
        return branch

    # ------------------------------------------------------------------ passes
    def _autocast(self) -> Any:
        """bf16 autocast for the layers' passes when ``bf16`` (pooled states come back as float32,
        and the heads and the router's distances are computed outside it)."""
        return self._torch.autocast("cpu", dtype=self._torch.bfloat16, enabled=self.bf16)

    def _trunk(self, ids: list[list[int]], batch_size: int, collect: Sequence[int] = ()) -> tuple[list[Any], Any]:
        """Trunk states per row (``[len, hidden]`` tensors) and, for ``collect`` (hidden-state
        indices; beyond the trunk the frozen layers run on), mean-pooled features side by side."""
        torch = self._torch
        states: list[Any] = [None] * len(ids)
        width = self.base.hidden_size * len(collect)
        feats = torch.zeros((len(ids), width)) if collect else None
        pad_id = self.base.tokenizer.pad_token_id or 0
        with torch.inference_mode(), self._autocast():
            for idx in length_batches([len(x) for x in ids], batch_size):
                if self._packed:
                    pk = Packing([len(ids[i]) for i in idx])
                    h = packed_embed(self.base.model, [ids[i] for i in idx], pk)
                    seen = {0: h}
                    for k in range(max([self.split, *collect])):
                        h = packed_layer(self._layers[k], h, pk, self._heads)
                        seen[k + 1] = h
                    for i, st in zip(idx, pk.split(seen[self.split])):
                        states[i] = st
                    if collect:
                        feats[idx] = torch.cat([pk.mean(seen[c]).float() for c in collect], -1)
                    continue
                input_ids, mask = pad([ids[i] for i in idx], pad_id)
                seen = frozen_states(self.base.model, input_ids, mask, self.split, collect)
                for r, i in enumerate(idx):
                    states[i] = seen[self.split][r, : len(ids[i])]
                if collect:
                    feats[idx] = pooled(seen, mask, collect)
        return states, feats

    def _branch_pooled(self, e: _TaskEntry, states: list[Any], batch_size: int) -> Any:
        """Mean-pooled last-layer states of rows (trunk states) through the task's branch."""
        torch = self._torch
        branch = self._branch(e)
        out = torch.zeros((len(states), self.base.hidden_size))
        with torch.inference_mode(), self._autocast():
            for idx in length_batches([s.shape[0] for s in states], batch_size):
                if self._packed:
                    pk = Packing([states[i].shape[0] for i in idx])
                    h = torch.cat([states[i] for i in idx])
                    for layer in branch:
                        h = packed_layer(layer, h, pk, self._heads)
                    out[idx] = pk.mean(h).float()
                    continue
                width = max(states[i].shape[0] for i in idx)
                h = torch.zeros((len(idx), width, self.base.hidden_size))
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    h[r, : states[i].shape[0]] = states[i]
                    mask[r, : states[i].shape[0]] = 1
                out[idx] = mean_pool(run_layers(self.base.model, h, mask, branch), mask).float()
        return out

    def _branch_mixed(self, groups: list[tuple[list[int], dict[int, dict[str, tuple]] | None]], states: list[Any],
                      batch_size: int) -> Any:
        """Mean-pooled last-layer states of rows of several tasks in one packed pass of the frozen
        branch layers, each row's task adding its low-rank update on its own rows (what PEFT does
        for a mixed-adapter batch). ``groups``: (rows, low-rank updates or None for the frozen
        layers) per task. Rows of all tasks share every matrix product, so a call of a few rows
        per task costs about what a call of one task does. Returns ``[rows, hidden]`` in the
        order of the rows of ``groups``, concatenated."""
        torch = self._torch
        rows = [i for r, _ in groups for i in r]
        owner = [g for g, (r, _) in enumerate(groups) for _ in r]
        lengths = [states[i].shape[0] for i in rows]
        # each task's largest rank over its modules: what it adds to one masked product (_low_rank)
        rank = [max((a.shape[1] for mods in (br or {}).values() for a, _ in mods.values()), default=0) for _, br in groups]
        out = torch.zeros((len(rows), self.base.hidden_size))
        with torch.inference_mode(), self._autocast():
            for idx in length_batches(lengths, batch_size):
                # rows in length order (attention pads little: Packing.groups); but where the tasks' ranks
                # are too many for one masked product, each task's rows together (one span per task)
                if sum(rank[g] for g in {owner[j] for j in idx}) * 4 > self.base.hidden_size:  # _low_rank's limit
                    idx = sorted(idx, key=lambda j: owner[j])
                pk = Packing([lengths[j] for j in idx])
                h = torch.cat([states[rows[j]] for j in idx])
                spans: dict[int, list[list[int]]] = {}
                for r, j in enumerate(idx):
                    lo, hi = int(pk.offsets[r]), int(pk.offsets[r + 1])
                    own = spans.setdefault(owner[j], [])
                    if own and own[-1][1] == lo:
                        own[-1][1] = hi
                    else:
                        own.append([lo, hi])
                for k in range(self.split, len(self._layers)):
                    updates: dict[str, list[tuple]] = {}
                    for g, where in spans.items():
                        for sub, (a, b) in ((groups[g][1] or {}).get(k) or {}).items():
                            updates.setdefault(sub, []).append((where, a, b))
                    h = packed_layer(self._layers[k], h, pk, self._heads,
                                     _low_rank(updates, h.shape[0]) if updates else None)
                out[idx] = pk.mean(h).float()
        return out

    def _router_layers(self) -> list[int]:
        depth = len(self._layers) + 1
        return [i % depth for i in self.router.feature_layers]

    def _route_ids(self, texts: list[str]) -> list[list[int]]:
        r = self.router
        return tokenize(self.base.tokenizer, texts, int(r.max_length), getattr(r, "truncation", "head"))

    def route_features(self, texts: list[str], batch_size: int = 32) -> Any:
        """Frozen-base routing features (numpy, input order), from the trunk pass."""
        if self.router is None:
            raise ConfigError("this predictor has no router")
        texts = list(texts)
        _, feats = self._trunk(self._route_ids(texts), batch_size, self._router_layers())
        return self.router.with_surface(feats.numpy(), texts)

    def route(self, texts: list[str], threshold: float | None = None, batch_size: int = 32) -> tuple[list[str], Any]:
        return self._route_feats(self.route_features(texts, batch_size), threshold)

    def _route_feats(self, feats: Any, threshold: float | None) -> tuple[list[str], Any]:
        if self.router is None:
            raise ConfigError("this predictor has no router: pass task=... or build one (`adaptreg route add TASK`)")
        routable = served_entries(self.router, {t: e.version for t, e in self._entries.items()})
        if not routable:
            raise ConfigError(f"the router knows {self.router.tasks_}, none of which is a loaded task version "
                              f"({', '.join(f'{t}@{e.version}' for t, e in self._entries.items())}); add them with "
                              "`adaptreg route add TASK...`")
        thr = self.threshold if threshold is None else threshold
        routed, scores = self.router.route(feats, threshold=thr, tasks=list(routable))
        return [routable.get(r, UNKNOWN) for r in routed], scores

    # ------------------------------------------------------------------ prediction
    def predict(self, texts: Sequence[str], task: str | Sequence[str] | None = None, batch_size: int = 32,
                threshold: float | None = None, group_tasks: bool = False) -> list[dict[str, Any]]:
        """One dict per text, in input order: text, task, label, confidence, route_score.

        ``task``: None = route each text (``unknown`` when the router abstains), a task name for
        every row, or a list with one task name per row. ``group_tasks`` is accepted for
        compatibility; rows are always grouped by task for the branch pass.
        """
        texts = [str(t) for t in texts]
        if batch_size < 1:
            raise ConfigError(f"batch_size == {batch_size}, must be >= 1")
        if task is not None and not isinstance(task, str):
            task = list(task)
            if len(task) != len(texts):
                raise ConfigError(f"task has {len(task)} entries for {len(texts)} texts; give one per text or a single name")
        wanted = {task} if isinstance(task, str) else set(task or [])
        unknown = sorted(t for t in wanted if t != UNKNOWN and t not in self._entries)
        if unknown:
            raise NotFoundError(f"no adapter loaded for task(s) {unknown}; loaded: {', '.join(self.tasks)}")
        if task is None and self.router is None and len(self._entries) > 1:
            raise ConfigError("this predictor has no router: pass task=... or build one (`adaptreg route add TASK`)")
        timing = {"route_s": 0.0, "adapter_s": 0.0}
        out: list[dict[str, Any]] = []
        for s in range(0, len(texts), CHUNK_ROWS):
            chunk_task = task if task is None or isinstance(task, str) else task[s : s + CHUNK_ROWS]
            out += self._predict_chunk(texts[s : s + CHUNK_ROWS], chunk_task, batch_size, threshold, timing)
        self.last_timing_ = {**timing, "total_s": timing["route_s"] + timing["adapter_s"], "n": len(texts)}
        return out

    def _predict_chunk(self, texts: list[str], task: Any, batch_size: int, threshold: float | None,
                       timing: dict[str, float]) -> list[dict[str, Any]]:
        torch = self._torch
        t0 = time.perf_counter()
        scores: list[float | None] = [None] * len(texts)
        states: list[Any] = [None] * len(texts)
        shared_ids: list[list[int]] | None = None
        if task is None and self.router is None:
            tasks = [self.tasks[0]] * len(texts)
        elif task is None:
            shared_ids = self._route_ids(texts)
            states, feats = self._trunk(shared_ids, batch_size, self._router_layers())
            tasks, sc = self._route_feats(self.router.with_surface(feats.numpy(), texts), threshold) if texts else ([], [])
            scores = [float(v) for v in sc]
        else:
            tasks = [task] * len(texts) if isinstance(task, str) else list(task)
        # an empty or whitespace-only text has no label: 'unknown', whichever way its task was chosen
        tasks = [UNKNOWN if not texts[i].strip() else t for i, t in enumerate(tasks)]
        t1 = time.perf_counter()
        out: list[dict[str, Any]] = [{"text": texts[i], "task": UNKNOWN, "label": UNKNOWN, "confidence": None,
                                      "route_score": scores[i]} for i in range(len(texts))]
        # each row's tokens at its own task's length; reuse the routing pass's trunk where they agree
        redo: list[int] = []
        own_ids: dict[int, list[int]] = {}
        route_len = int(self.router.max_length) if shared_ids is not None else 0
        route_cut = getattr(self.router, "truncation", "head") if shared_ids is not None else None
        for i, t in enumerate(tasks):
            if t == UNKNOWN:
                continue
            e = self._entries[t]
            # the routing pass's ids are the task's own when both cut the same way at the same length,
            # or when the text fits the routing length and the task's is no shorter: no second tokenizer call
            if shared_ids is not None and e.truncation == route_cut and (
                    e.max_length == route_len or (e.max_length > route_len and len(shared_ids[i]) < route_len)):
                continue
            ids = tokenize(self.base.tokenizer, [texts[i]], e.max_length, e.truncation)[0]
            if shared_ids is None or ids != shared_ids[i]:
                own_ids[i] = ids
                redo.append(i)
        if redo:
            fresh, _ = self._trunk([own_ids[i] for i in redo], batch_size)
            for i, st in zip(redo, fresh):
                states[i] = st
        served: list[tuple[_TaskEntry, list[int], Any]] = []  # (task, its rows, their pooled branch states)
        mixed: list[tuple[_TaskEntry, list[int], Any]] = []  # tasks that share one packed branch pass
        for name, e in self._entries.items():
            rows = [i for i, t in enumerate(tasks) if t == name]
            if not rows:
                continue
            branch = self._branch(e)
            if self._packed and (e.identity or isinstance(branch, dict)):
                mixed.append((e, rows, None if e.identity else branch))
            else:
                served.append((e, rows, self._branch_pooled(e, [states[i] for i in rows], batch_size)))
        if mixed:
            pooled = self._branch_mixed([(rows, br) for _, rows, br in mixed], states, batch_size)
            start = 0
            for e, rows, _ in mixed:
                served.append((e, rows, pooled[start : start + len(rows)]))
                start += len(rows)
        for e, rows, pooled in served:
            prob = torch.softmax(pooled @ e.head_w.T + e.head_b, -1)
            conf, idx = prob.max(-1)
            for i, c, j in zip(rows, conf.tolist(), idx.tolist()):
                out[i].update(task=e.task, label=e.labels[j], confidence=float(c))
        t2 = time.perf_counter()
        timing["route_s"] += t1 - t0
        timing["adapter_s"] += t2 - t1
        return out

    def __repr__(self) -> str:
        return f"Predictor(base={self.base.id!r}, tasks={self.tasks}, router={'yes' if self.router else 'no'})"


def task_names(reg: Any) -> list[str]:
    """The task names a registry lists (plain names or records with ``task``/``name``)."""
    names = []
    for item in reg.list_tasks():
        names.append(item if isinstance(item, str) else item.get("task") or item.get("name"))
    return [n for n in names if n]


def resolve_adapter(reg: Any, task: str, alias: str | None, base: LoadedBase) -> dict[str, Any]:
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
