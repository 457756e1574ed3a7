"""The continual benchmark: onboard tasks one after another and fill an accuracy matrix per strategy.

One run loads every task once (same splits, same seeds for every strategy), then, strategy by
strategy, onboards task 0, 1, ... and after each step evaluates every task seen so far on its
test split: ``R[i][j]`` is the accuracy on task ``j`` after step ``i`` (``None`` for ``j > i``).
The metric maths lives in :mod:`adaptreg.continual.metrics`; this module only produces ``R``.

Strategies (:data:`STRATEGIES`):

``adaptreg``
    One adapter per task plus the router (:class:`adaptreg.compose.router.Router` on frozen-base
    features), task-agnostic: the test text is routed, then the routed task's adapter answers.
    A text routed to the wrong task counts as wrong. Text scenario: through
    :class:`adaptreg.compose.predict.Predictor` on the adapters' artifact directories.
``oracle``
    The same adapters, told the true task. Adapters are independent and frozen once trained, so
    ``R[i][j] = R[j][j]`` -- computed once, not re-evaluated per step.
``merged``
    All adapters seen so far merged into one with TIES; each task keeps its own head.
``seq-lora``
    One shared LoRA trained task after task (a new head per task), the forgetting baseline.
``replay``
    One shared LoRA and one output layer over the ``task:label`` classes seen so far (grown by a
    block of rows per task, the old rows kept), trained on each new task plus a replay buffer:
    at most ``replay_buffer`` training rows of the earlier tasks in all, an equal share per task,
    stratified by class (:func:`adaptreg.data.clean.cap_total_indices`). Validation (epoch
    choice) is the new task's only: the buffer is all a replay learner keeps of the past. Task
    ``j`` is scored on its own labels' columns, as in ``joint``.
``o-lora``
    O-LoRA (Wang et al., 2023): one shared model to which each task adds a new LoRA block; the
    old blocks stay active and frozen, and the new block's loss carries ``olora_lambda`` x the
    L1 norm of ``A_new A_old^T`` over every adapted module and old block (orthogonal subspaces).
    A head per task, frozen after its task, as in ``seq-lora``.
``joint``
    One LoRA trained on every task seen so far together, one output layer over the union of
    ``task:label`` classes; task ``j`` is scored on its own labels' logits only (= per-task heads
    under one softmax). By default only the last row (all tasks) is trained: ACC is defined,
    BWT/forgetting are ``None``; ``joint_every_step=True`` trains it after every step.
``probe``
    Frozen base + a logistic-regression head per task; cannot forget. Its accuracies are the
    frozen-base reference ``b_j`` of FWT and probe gain.

The per-task adapters are trained once and shared by ``adaptreg``, ``oracle`` and ``merged``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from . import metrics as M

logger = logging.getLogger(__name__)

STRATEGIES = ("adaptreg", "oracle", "merged", "seq-lora", "replay", "o-lora", "joint", "probe")
ADAPTER_STRATEGIES = ("adaptreg", "oracle", "merged")


def parse_strategies(spec: str | Sequence[str] | None) -> list[str]:
    """``"adaptreg,oracle"`` or a list -> validated list in the given order (None = all)."""
    if spec is None:
        return list(STRATEGIES)
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in STRATEGIES]
    if bad or not items:
        raise ConfigError(f"strategies {bad or items} unknown: choose from {', '.join(STRATEGIES)}")
    return list(dict.fromkeys(items))


@dataclass
class BenchmarkResult:
    """Everything one benchmark run measured. ``R[strategy]`` is a list of rows (``None`` = undefined)."""

    scenario: str
    tasks: list[str]
    strategies: list[str]
    R: dict[str, list[list[float | None]]]
    probe_baseline: list[float | None]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def compute_metrics(self) -> None:
        self.metrics = {s: M.summarize(self.R[s], self.probe_baseline) for s in self.strategies}

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per strategy: ACC, BWT, forgetting, FWT, probe gain, final R row, seconds."""
        rows = []
        for s in self.strategies:
            m = self.metrics[s]
            rows.append({"strategy": s, "acc": m["acc"], "bwt": m["bwt"], "forgetting": m["forgetting"],
                         "fwt": m["fwt"], "probe_gain": m["probe_gain"], "final_row": m["final_row"],
                         "seconds": self.timings.get(s)})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- scenarios

class TextScenario:
    """Text tasks on a frozen transformer base: the pieces the strategies need."""

    kind = "text"

    def __init__(self, base: Any, train: Any, lora: Any):
        self.base = base
        self.train = train
        self.lora = lora
        self.tokenizer = base.tokenizer
        self.hidden_size = base.hidden_size

    def length(self, td: Any) -> int:
        """The task's token length: the onboarding rule (:func:`adaptreg.train.resolve_length`)."""
        from ..train import resolve_length

        return resolve_length(self.base, td, self.train)

    def features(self, inputs: list[str], max_length: int | None = None) -> np.ndarray:
        from ..base import encode

        return encode(self.base, inputs, max_length or self.train.max_length or 128, self.train.eval_batch_size,
                      truncation=self.train.truncation)

    @property
    def split(self) -> int:
        from ..trunk import split_point

        return split_point(self.base.model, self.train.adapted_layers)

    def new_peft(self) -> Any:
        from ..train import build_peft_model

        return build_peft_model(self.base.model, self.base.model_type, self.lora, split=self.split)

    def train_task(self, td: Any, probe: bool, peft_model: Any = None, **kw: Any) -> Any:
        """Onboarding's own training (:func:`adaptreg.train.train_task`): trunk cache, probe, selection.
        ``kw``: ``head`` and ``regularizer`` (replay, O-LoRA)."""
        from ..train import train_task

        return train_task(self.base, td, self.lora, self.train, probe=probe, peft_model=peft_model, progress=False, **kw)

    def release(self, peft_model: Any) -> None:
        peft_model.unload()
        for p in self.base.model.parameters():
            p.requires_grad_(False)

    def task_model(self, peft_model: Any, n_labels: int) -> Any:
        import torch

        from ..train import TaskModel

        return TaskModel(peft_model, torch.nn.Linear(self.hidden_size, n_labels))

    def fingerprint(self) -> str:
        return self.base.fingerprint


def _logits(model: Any, tokenizer: Any, inputs: list, max_length: int, batch_size: int,
            truncation: str = "head") -> np.ndarray:
    """Logits through the whole (adapted) base: the serving path (images: ``tokenizer`` is the batcher)."""
    import torch

    model.train(False)
    out = []
    with torch.inference_mode():
        if isinstance(inputs[0] if inputs else "", str):
            from ..trunk import length_batches, pad, tokenize

            ids = tokenize(tokenizer, inputs, max_length, truncation)
            res = None
            for idx in length_batches([len(x) for x in ids], batch_size):
                input_ids, mask = pad([ids[i] for i in idx], tokenizer.pad_token_id or 0)
                z = model({"input_ids": input_ids, "attention_mask": mask}).float().numpy()
                if res is None:
                    res = np.zeros((len(inputs), z.shape[1]), dtype=np.float32)
                res[idx] = z
            return res if res is not None else np.zeros((0, 0))
        for i in range(0, len(inputs), batch_size):
            batch = tokenizer(inputs[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            out.append(model(batch).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def _accuracy(pred: Sequence[int], y: Sequence[int]) -> float | None:
    return float(np.mean(np.asarray(pred) == np.asarray(y))) if len(y) else None


def _fixed_per_task(acc: list[float | None]) -> list[list[float | None]]:
    """R for a strategy whose accuracy on task j never changes once j is learnt (probe, oracle)."""
    T = len(acc)
    return [[acc[j] if j <= i else None for j in range(T)] for i in range(T)]


def _empty(T: int) -> list[list[float | None]]:
    return [[None] * T for _ in range(T)]


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux: ``/proc/self/clear_refs``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    """Peak resident set size since the last reset (Linux ``VmHWM``), in MiB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class StepMeter:
    """Wall time and peak resident memory of each step of each strategy.

    ``seconds[strategy][i]`` and ``peak_mb[strategy][i]`` (MiB, the whole process: the base, the
    data and the caches included) cover everything the strategy did for task ``i``: training and
    the evaluation after it. Peaks are per step where the kernel lets the peak be reset (Linux),
    else they are the process's running peak (``peak_is_per_step`` False).
    """

    def __init__(self, T: int):
        self.T = T
        self.seconds: dict[str, list[float | None]] = {}
        self.peak_mb: dict[str, list[float | None]] = {}
        self.peak_is_per_step = True

    def add(self, strategy: str, i: int, seconds: float, peak: float | None) -> None:
        sec = self.seconds.setdefault(strategy, [None] * self.T)
        mem = self.peak_mb.setdefault(strategy, [None] * self.T)
        sec[i] = (sec[i] or 0.0) + seconds
        if peak is not None:
            mem[i] = max(mem[i] or 0.0, peak)

    def step(self, strategies: str | Sequence[str], i: int) -> Any:
        """Measure a block as step ``i`` of one strategy, or of several that share the work."""
        from contextlib import contextmanager

        names = [strategies] if isinstance(strategies, str) else list(strategies)

        @contextmanager
        def measured():
            self.peak_is_per_step = _reset_peak_rss() and self.peak_is_per_step
            t = time.perf_counter()
            try:
                yield
            finally:
                dt, peak = time.perf_counter() - t, _peak_rss_mb()
                for name in names:
                    self.add(name, i, dt, peak)

        return measured()

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "peak_rss_mb": self.peak_mb, "peak_is_per_step": self.peak_is_per_step}


def replay_buffer(splits: Sequence[Any], size: int) -> list[list[int]]:
    """What a replay learner keeps of the tasks seen so far: per task, indices into its training
    split; ``size // len(splits)`` rows each, stratified by class and ranked as the data policy
    ranks caps (:func:`adaptreg.data.clean.cap_total_indices`), so a task's share shrinks as tasks
    arrive but what it keeps stays a subset of what it kept before (up to rounding per class)."""
    from ..data import clean

    quota = size // max(1, len(splits))
    return [clean.cap_total_indices([clean.key(t) for t in sp.texts], list(sp.y), quota) if quota else []
            for sp in splits]


def add_olora_block(peft_model: Any, blocks: list[str], config: Any, weight: float) -> Callable[[], Any] | None:
    """O-LoRA's step: a new LoRA block (the model's first adapter for the first task), every block
    active (their updates add up), only the new one trainable; returns the orthogonality penalty
    against the older blocks (None for the first). ``blocks`` is extended in place."""
    new = peft_model.active_adapter if not blocks else f"task{len(blocks)}"
    if blocks:
        peft_model.add_adapter(new, config)
    blocks.append(new)
    peft_model.base_model.set_adapter(list(blocks))
    for name, p in peft_model.named_parameters():
        p.requires_grad_(f".{new}." in name)
    return orthogonality_penalty(peft_model, new, blocks[:-1], weight) if len(blocks) > 1 else None


def orthogonality_penalty(peft_model: Any, new: str, old: Sequence[str], weight: float) -> Callable[[], Any]:
    """O-LoRA's penalty: ``weight`` x sum over adapted modules and old blocks of |A_new A_old^T|."""
    import torch
    from peft.tuners.lora import LoraLayer

    pairs = []
    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and new in module.lora_A:
            olds = [module.lora_A[k].weight.detach() for k in old if k in module.lora_A]
            if olds:
                pairs.append((module.lora_A[new].weight, torch.cat(olds, 0)))

    def penalty() -> Any:
        return weight * sum((a_new @ a_old.T).abs().sum() for a_new, a_old in pairs)

    return penalty


# --------------------------------------------------------------------------- the run

class ContinualBenchmark:
    """Run strategies over a fixed task sequence on one scenario.

    ``tasks`` is a list of ``(name, TaskData)`` in onboarding order. ``work_dir`` keeps the
    per-task adapter artifacts (text). Call :meth:`run`.
    """

    def __init__(self, scenario: Any, tasks: list[tuple[str, Any]], strategies: Sequence[str] | None = None, *,
                 work_dir: str | Path | None = None, joint_every_step: bool = False, merge_density: float = 0.5,
                 replay_buffer: int = 200, olora_lambda: float = 0.5, progress: Callable[[str], None] | None = None):
        if len(tasks) < 2:
            raise ConfigError(f"{len(tasks)} task(s) given: a continual benchmark needs at least 2")
        names = [n for n, _ in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names repeat in {names}: give each task once")
        self.scenario = scenario
        self.tasks = tasks
        self.strategies = parse_strategies(strategies)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.joint_every_step = joint_every_step
        self.merge_density = merge_density
        if replay_buffer < 0 or not math.isfinite(olora_lambda) or olora_lambda < 0:
            raise ConfigError(f"replay_buffer == {replay_buffer}, olora_lambda == {olora_lambda}: both must be >= 0")
        self.replay_buffer = int(replay_buffer)
        self.olora_lambda = float(olora_lambda)
        self.meter = StepMeter(len(tasks))
        self.say = progress or (lambda msg: logger.info(msg))

    # ------------------------------------------------------------------ helpers
    @property
    def T(self) -> int:
        return len(self.tasks)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.tasks]

    def _settings(self) -> Any:
        return self.scenario.train

    def _eval_model(self, model: Any, j: int, max_length: int | None = None) -> float | None:
        s = self._settings()
        td = self.tasks[j][1]
        logits = _logits(model, self.scenario.tokenizer, td.test.texts, max_length or self.lengths[j] or s.max_length, s.eval_batch_size,
                         s.truncation)
        return _accuracy(logits.argmax(-1), td.test.y)

    def _fit(self, model: Any, td: Any) -> dict[str, Any]:
        """Images: the full-path loop. Text goes through :meth:`TextScenario.train_task` instead."""
        from ..train import fit

        return fit(model, self.scenario.tokenizer, td, self._settings(), progress=False)

    @property
    def _text(self) -> bool:
        return self.scenario.kind == "text"

    # ------------------------------------------------------------------ run
    def run(self) -> BenchmarkResult:
        from .._util import seed_everything

        s = self._settings()
        res = BenchmarkResult(scenario=self.scenario.kind, tasks=self.names, strategies=list(self.strategies),
                              R={}, probe_baseline=[None] * self.T)
        t0 = time.perf_counter()
        self.say(f"frozen-base features and probes for {self.T} tasks")
        self.lengths = [self.scenario.length(td) if self._text else None for _, td in self.tasks]
        self.features = [{sp: (self.scenario.features(getattr(td, sp).texts, self.lengths[j]) if self._text
                               else self.scenario.features(getattr(td, sp).texts)) for sp in ("train", "val", "test")}
                         for j, (_, td) in enumerate(self.tasks)]
        res.probe_baseline = self._probe()
        res.timings["features_and_probe"] = time.perf_counter() - t0
        if "probe" in self.strategies:
            res.R["probe"] = _fixed_per_task(res.probe_baseline)
            res.timings["probe"] = res.timings["features_and_probe"]

        if any(x in self.strategies for x in ADAPTER_STRATEGIES):
            t = time.perf_counter()
            seed_everything(s.seed)
            self._train_task_adapters()
            res.timings["task_adapters"] = time.perf_counter() - t
            if "oracle" in self.strategies:
                res.R["oracle"] = _fixed_per_task(self.adapter_acc)
                res.timings["oracle"] = res.timings["task_adapters"]
            if "adaptreg" in self.strategies:
                t = time.perf_counter()
                res.R["adaptreg"], res.extra["routing_accuracy"] = self._adaptreg()
                res.notes["adaptreg"] = "task-agnostic prediction through " + self.adaptreg_path
                res.timings["adaptreg"] = res.timings["task_adapters"] + time.perf_counter() - t
            if "merged" in self.strategies:
                t = time.perf_counter()
                res.R["merged"] = self._merged()
                res.timings["merged"] = res.timings["task_adapters"] + time.perf_counter() - t
            self._checkpoint(res)
        for name, method in (("seq-lora", self._seq_lora), ("replay", self._replay), ("o-lora", self._o_lora),
                             ("joint", self._joint)):  # one shared model each, trained from the same seed
            if name in self.strategies:
                t = time.perf_counter()
                seed_everything(s.seed)
                res.R[name] = method()
                res.timings[name] = time.perf_counter() - t
                self._checkpoint(res)
        if "joint" in self.strategies and not self.joint_every_step:
            res.notes["joint"] = "trained once on all tasks: only the last row of R is measured"
        res.timings["total"] = time.perf_counter() - t0
        res.extra["steps"] = self.meter.to_dict()
        res.compute_metrics()
        return res

    def _checkpoint(self, res: BenchmarkResult) -> None:
        """``partial.json`` in the work folder after each strategy: a long run that is stopped keeps
        what it measured (the report proper is written at the end)."""
        if self.work_dir is not None:
            from .._util import dump_json

            self.work_dir.mkdir(parents=True, exist_ok=True)
            dump_json({**res.to_dict(), "extra": {**res.extra, "steps": self.meter.to_dict()}},
                      self.work_dir / "partial.json")

    # ------------------------------------------------------------------ probe
    def _probe(self) -> list[float | None]:
        from ..train import linear_probe

        out = []
        for (name, td), f in zip(self.tasks, self.features):
            clf = linear_probe(f["train"], td.train.y, f["val"], td.val.y, self._settings().seed)
            out.append(_accuracy(clf.predict(f["test"]), td.test.y))
            self.say(f"  probe {name}: {out[-1]:.4f}")
        return out

    # ------------------------------------------------------------------ per-task adapters
    def _train_task_adapters(self) -> None:
        """Train each task's adapter once; keep LoRA weights + head in memory (and on disk for text)."""
        self.adapters: list[dict[str, Any]] = []
        self.adapter_acc: list[float | None] = []
        self.adapter_preds: list[np.ndarray] = []
        self.chosen: list[str] = []
        for j, (name, td) in enumerate(self.tasks):
            self.say(f"adapter {j + 1}/{self.T}: {name}")
            with self.meter.step([x for x in ADAPTER_STRATEGIES if x in self.strategies], j):  # shared training
                self._train_one_adapter(j, name, td)
            self.say(f"  {name}: test accuracy {self.adapter_acc[-1]:.4f} ({self.chosen[-1]})")

    def _train_one_adapter(self, j: int, name: str, td: Any) -> None:
        from peft import get_peft_model_state_dict

        trained = None
        peft_model = None if self._text else self.scenario.new_peft()
        try:
            s = self._settings()
            if self._text:  # exactly what `adaptreg onboard` registers: adapter or probe, chosen on validation
                trained = self.scenario.train_task(td, probe=True)
                model, peft_model = trained.model, trained.model.peft_model
                self.chosen.append(trained.chosen)
            else:
                model = self.scenario.task_model(peft_model, td.n_labels)
                self._fit(model, td)
                self.chosen.append("adapter")
            logits = _logits(model, self.scenario.tokenizer, td.test.texts, self.lengths[j] or s.max_length,
                             s.eval_batch_size, s.truncation)
            pred = logits.argmax(-1)
            self.adapter_preds.append(pred)
            self.adapter_acc.append(_accuracy(pred, td.test.y))
            state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
            head = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
            entry = {"name": name, "lora": state, "head": head, "labels": list(td.labels), "dir": None}
            if self.work_dir is not None and self._text:
                entry["dir"] = str(self._save_artifact(name, td, model, trained))
            self.adapters.append(entry)
        finally:
            if peft_model is not None:
                self.scenario.release(peft_model)

    def _save_artifact(self, name: str, td: Any, model: Any, trained: Any) -> Path:
        """A standard adapter artifact (PEFT dir + head + labels + manifest) for Predictor / merge."""
        from .. import artifact
        from .._util import atomic_dir
        from ..base import default_targets

        assert self.work_dir is not None
        base = self.scenario.base
        lora = self.scenario.lora
        out = self.work_dir / "adapters" / name
        manifest = artifact.new_manifest(
            name, base=base, labels=list(td.labels), data=td.summary(), benchmark=True,
            adapter={**lora.to_dict(), "targets": list(lora.targets or default_targets(base.model_type))},
            selection={"chosen": trained.chosen},
            training={**self._settings().to_dict(), "max_length": trained.max_length, "truncation": trained.truncation,
                      "split": trained.split},
            metrics={"test_accuracy": self.adapter_acc[-1]})
        with atomic_dir(out, overwrite=True) as tmp:
            model.peft_model.save_pretrained(str(tmp), safe_serialization=True)
            artifact.save_head(tmp, model.head, list(td.labels))
            artifact.write_files_checksums(tmp, manifest)
        return out

    # ------------------------------------------------------------------ adaptreg (router)
    def _router(self) -> Any:
        from ..compose.router import Router

        # Closed world: every test row belongs to a known task, so the router never abstains here.
        if self.scenario.kind == "text":
            return Router(threshold=math.inf)  # its own features: default length and layers, as `adaptreg predict`
        return Router(threshold=math.inf, layers=(-1,), surface=0)  # images: the pooled CNN features, no text

    def _router_features(self, router: Any, i: int, split: str) -> np.ndarray:
        """Routing features of task i's split: the router's own for text, the pooled CNN features for images."""
        if self.scenario.kind != "text":
            return self.features[i][split]
        td = self.tasks[i][1]
        return router.features(self.scenario.base, list(getattr(td, split).texts))

    def _adaptreg(self) -> tuple[list[list[float | None]], list[float | None]]:
        """Route each test row among the tasks seen so far; right only if routed home and labelled right."""
        predictor_ok = self.scenario.kind == "text" and all(a["dir"] for a in self.adapters) and _has_predictor()
        self.adaptreg_path = ("compose.Predictor.from_artifacts(router) on the adapter artifacts" if predictor_ok
                              else "Router on frozen-base features + each task's in-memory adapter")
        router = self._router()
        R = _empty(self.T)
        routing: list[float | None] = []
        for i, (name, td) in enumerate(self.tasks):
            with self.meter.step("adaptreg", i):
                routing.append(self._adaptreg_step(router, predictor_ok, R, i, name, td))
            self.say(f"  adaptreg after {name}: routing accuracy {routing[-1]:.4f} over {i + 1} tasks")
        return R, routing

    def _adaptreg_step(self, router: Any, predictor_ok: bool, R: list, i: int, name: str, td: Any) -> float | None:
        """Step i of ``adaptreg``: add task i to the router, then route and predict every seen task's test rows.
        Fills ``R[i]``; returns the routing accuracy over those rows."""
        # every labelled row the task came with (train + validation; never test)
        router.add_task(name, np.concatenate([self._router_features(router, i, "train"),
                                              self._router_features(router, i, "val")]),
                        list(td.train.y) + list(td.val.y))
        correct_route = []
        if predictor_ok:
            predictor = self._predictor(router, i)
        for j in range(i + 1):
            tdj = self.tasks[j][1]
            if predictor_ok:
                out = predictor.predict(list(tdj.test.texts), task=None)
                routed = [o["task"] for o in out]
                ok = [o["task"] == self.names[j] and o["label"] == tdj.labels[y] for o, y in zip(out, tdj.test.y)]
            else:
                routed, _ = router.route(self._router_features(router, j, "test"))
                ok = [r == self.names[j] and p == y for r, p, y in zip(routed, self.adapter_preds[j], tdj.test.y)]
            R[i][j] = float(np.mean(ok)) if ok else None
            correct_route += [r == self.names[j] for r in routed]
        return float(np.mean(correct_route)) if correct_route else None

    def _predictor(self, router: Any, i: int) -> Any:
        from ..compose.predict import Predictor

        arts = {a["name"]: a["dir"] for a in self.adapters[: i + 1]}
        return Predictor.from_artifacts(self.scenario.base, arts, router)

    # ------------------------------------------------------------------ merged (TIES)
    def _merged(self) -> list[list[float | None]]:
        R = _empty(self.T)
        for i in range(self.T):
            if i == 0:  # one adapter merged with nothing is itself
                R[0][0] = self.adapter_acc[0]
                continue
            with self.meter.step("merged", i):
                if self.scenario.kind == "text" and all(a["dir"] for a in self.adapters[: i + 1]):
                    R[i][: i + 1] = self._merged_artifact(i)
                else:
                    peft_model = self._merged_peft(i)
                    try:
                        for j in range(i + 1):
                            model = self.scenario.task_model(peft_model, self.tasks[j][1].n_labels)
                            model.head.load_state_dict(self.adapters[j]["head"])
                            R[i][j] = self._eval_model(model, j)
                    finally:
                        self.scenario.release(peft_model)
            self.say(f"  merged after {self.names[i]}: ACC {M.average_accuracy(R, i):.4f}")
        return R

    def _merged_artifact(self, i: int) -> list[float | None]:
        """Text: :func:`adaptreg.compose.merge.merge_adapters` (TIES) on the artifacts of tasks 0..i."""
        from ..compose.merge import merge_adapters

        assert self.work_dir is not None
        sources = {a["name"]: a["dir"] for a in self.adapters[: i + 1]}
        res = merge_adapters(sources, name=f"merged-{i + 1}", method="ties", density=self.merge_density,
                             base=self.scenario.base, register=False, output=self.work_dir / "merged" / f"step{i + 1}",
                             overwrite=True, evaluate=True, data={n: td for n, td in self.tasks[: i + 1]},
                             seed=self._settings().seed, batch_size=self._settings().eval_batch_size)
        return [res.retention[n]["merged_accuracy"] for n in self.names[: i + 1]]

    def _merged_peft(self, i: int) -> Any:
        """A PEFT model whose active adapter is the TIES merge of adapters 0..i."""
        from peft import set_peft_model_state_dict

        peft_model = self.scenario.new_peft()
        cfg = peft_model.peft_config["default"]
        names = []
        for k in range(i + 1):
            name = f"t{k}"
            if k == 0:
                set_peft_model_state_dict(peft_model, self.adapters[k]["lora"], adapter_name="default")
                name = "default"
            else:
                peft_model.add_adapter(name, cfg)
                set_peft_model_state_dict(peft_model, self.adapters[k]["lora"], adapter_name=name)
            names.append(name)
        merge = _ties_merge_fn()
        merge(peft_model, names, "merged", density=self.merge_density)
        peft_model.set_adapter("merged")
        for k in names:
            peft_model.delete_adapter(k) if k != "default" else None
        return peft_model

    # ------------------------------------------------------------------ seq-lora
    def _shared_fit(self, td: Any, peft_model: Any, head: Any = None, regularizer: Any = None) -> tuple[Any, int]:
        """Train ``peft_model`` (kept, not unloaded) and a head on ``td``; returns the TaskModel and
        the token length it was trained at."""
        if self._text:
            trained = self.scenario.train_task(td, probe=False, peft_model=peft_model, head=head, regularizer=regularizer)
            return trained.model, trained.max_length
        from ..train import fit

        model = self.scenario.task_model(peft_model, td.n_labels)
        if head is not None:
            model.head = head
        fit(model, self.scenario.tokenizer, td, self._settings(), progress=False, regularizer=regularizer)
        return model, self._settings().max_length

    def _eval_heads(self, R: list, i: int, peft_model: Any, heads: list[Any]) -> None:
        for j in range(i + 1):
            m = self.scenario.task_model(peft_model, self.tasks[j][1].n_labels)
            m.head = heads[j]
            R[i][j] = self._eval_model(m, j)

    def _seq_lora(self) -> list[list[float | None]]:
        R = _empty(self.T)
        peft_model = self.scenario.new_peft()
        heads: list[Any] = []
        try:
            for i, (name, td) in enumerate(self.tasks):
                with self.meter.step("seq-lora", i):
                    heads.append(self._shared_fit(td, peft_model)[0].head)
                    self._eval_heads(R, i, peft_model, heads)
                self.say(f"  seq-lora after {name}: {[round(v, 3) for v in R[i][: i + 1]]}")
        finally:
            self.scenario.release(peft_model)
        return R

    # ------------------------------------------------------------------ replay
    def _replay(self) -> list[list[float | None]]:
        import torch

        from ..data.tasks import Split, TaskData

        R = _empty(self.T)
        peft_model = self.scenario.new_peft()
        labels: list[str] = []
        spans: list[tuple[int, int]] = []
        buffer: list[list[int]] = []  # per earlier task: indices into its training split
        head = None
        try:
            for i, (name, td) in enumerate(self.tasks):
                with self.meter.step("replay", i):
                    lo = len(labels)
                    labels += [f"{name}:{lab}" for lab in td.labels]
                    spans.append((lo, len(labels)))
                    texts, ys = list(td.train.texts), [lo + y for y in td.train.y]
                    for j, keep in enumerate(buffer):
                        tdj = self.tasks[j][1]
                        texts += [tdj.train.texts[k] for k in keep]
                        ys += [spans[j][0] + tdj.train.y[k] for k in keep]
                    val = Split(list(td.val.texts), [lo + y for y in td.val.y])
                    step = TaskData(labels=list(labels), train=Split(texts, ys), val=val, test=val,
                                    source=f"replay step {i + 1}", fingerprint="")
                    new_head = torch.nn.Linear(self.scenario.hidden_size, len(labels))
                    if head is not None:  # the old tasks' rows carry over; the new task's start fresh
                        with torch.no_grad():
                            new_head.weight[:lo] = head.weight
                            new_head.bias[:lo] = head.bias
                    model, length = self._shared_fit(step, peft_model, head=new_head)
                    head = model.head
                    for j in range(i + 1):
                        R[i][j] = self._eval_span(model, j, spans[j], length)
                    buffer = replay_buffer([tdj.train for _, tdj in self.tasks[: i + 1]], self.replay_buffer)
                self.say(f"  replay after {name} ({sum(map(len, buffer))} rows buffered): "
                         f"{[round(v, 3) for v in R[i][: i + 1]]}")
        finally:
            self.scenario.release(peft_model)
        return R

    def _eval_span(self, model: Any, j: int, span: tuple[int, int], length: int) -> float | None:
        """Task j's accuracy from the columns ``span`` of a union output layer, at the token length
        that layer was trained at."""
        s = self._settings()
        tdj = self.tasks[j][1]
        logits = _logits(model, self.scenario.tokenizer, tdj.test.texts, length, s.eval_batch_size, s.truncation)
        return _accuracy(logits[:, span[0]:span[1]].argmax(-1), tdj.test.y)

    # ------------------------------------------------------------------ O-LoRA
    def _o_lora(self) -> list[list[float | None]]:
        R = _empty(self.T)
        peft_model = self.scenario.new_peft()
        config = peft_model.peft_config[peft_model.active_adapter]
        blocks: list[str] = []
        heads: list[Any] = []
        try:
            for i, (name, td) in enumerate(self.tasks):
                with self.meter.step("o-lora", i):
                    reg = add_olora_block(peft_model, blocks, config, self.olora_lambda)
                    heads.append(self._shared_fit(td, peft_model, regularizer=reg)[0].head)
                    self._eval_heads(R, i, peft_model, heads)
                self.say(f"  o-lora after {name}: {[round(v, 3) for v in R[i][: i + 1]]}")
        finally:
            self.scenario.release(peft_model)
        return R

    # ------------------------------------------------------------------ joint
    def _joint(self) -> list[list[float | None]]:
        R = _empty(self.T)
        steps = range(self.T) if self.joint_every_step else [self.T - 1]
        for i in steps:
            td, spans = _union_task(self.tasks[: i + 1])
            peft_model = None
            with self.meter.step("joint", i):
                try:
                    peft_model = self.scenario.new_peft()
                    model, length = self._shared_fit(td, peft_model)
                    for j in range(i + 1):
                        R[i][j] = self._eval_span(model, j, spans[j], length)
                finally:
                    if peft_model is not None:
                        self.scenario.release(peft_model)
            self.say(f"  joint on {i + 1} tasks: {[round(v, 3) for v in R[i][: i + 1]]}")
        return R


def _union_task(tasks: list[tuple[str, Any]]) -> tuple[Any, list[tuple[int, int]]]:
    """One TaskData over all ``tasks``: labels ``task:label``, task j's labels at columns spans[j]."""
    from ..data.tasks import Split, TaskData

    labels, spans, parts = [], [], {"train": ([], []), "val": ([], []), "test": ([], [])}
    for name, td in tasks:
        lo = len(labels)
        labels += [f"{name}:{lab}" for lab in td.labels]
        spans.append((lo, len(labels)))
        for sp in parts:
            split = getattr(td, sp)
            parts[sp][0].extend(split.texts)
            parts[sp][1].extend(lo + y for y in split.y)
    td = TaskData(labels=labels, train=Split(*parts["train"]), val=Split(*parts["val"]), test=Split(*parts["test"]),
                  source="+".join(n for n, _ in tasks), fingerprint="")
    return td, spans


def _has_predictor() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("adaptreg.compose.predict") is not None
    except (ImportError, ValueError):
        return False


def _ties_merge_fn() -> Callable[..., None]:
    """TIES merge of LoRA adapters loaded in one PEFT model into a new adapter ``name`` (in memory).

    The same call :func:`adaptreg.compose.merge.merge_adapters` makes for ``method="ties"``
    (PEFT ``add_weighted_adapter``, weight 1.0 per adapter), for scenarios without artifacts.
    """

    def merge(peft_model: Any, adapters: list[str], name: str, density: float = 0.5) -> None:
        peft_model.add_weighted_adapter(adapters, [1.0] * len(adapters), name, combination_type="ties",
                                        density=density)

    return merge


# --------------------------------------------------------------------------- one call: load, run, report

IMAGE_SCENARIOS = {"split-mnist": "mnist", "split-fashion-mnist": "fashion-mnist"}


def task_name(spec: str) -> str:
    """A task name from a task spec: a catalog name as is, a file by its stem."""
    p = Path(spec)
    name = p.stem if p.suffix else spec
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.") or "task"


def load_text_tasks(specs: Sequence[str], max_per_class: int | None, seed: int,
                    test_per_class: int | None = None, max_per_task: int | None = None) -> list[tuple[str, Any]]:
    """``(name, TaskData)`` per spec. ``test_per_class`` (catalog tasks only) replaces the test split
    by up to that many test texts per class from the dataset's full test split (lowest sha256
    first, so sizes nest), instead of the test share that ``max_per_class`` keeps.
    ``max_per_task`` then caps each task's labelled rows (train + validation) at that many,
    stratified (:func:`cap_task`); the test split is left as it is."""
    from ..data.tasks import load_task

    out, seen = [], set()
    for spec in specs:
        name = task_name(spec)
        if name in seen:
            raise ConfigError(f"two tasks are both called {name!r}: rename one of the files")
        seen.add(name)
        td = load_task(spec, seed=seed, max_per_class=max_per_class)
        if test_per_class is not None:
            td = _with_test_cap(spec, td, test_per_class)
        if max_per_task is not None:
            td = cap_task(td, max_per_task)
        out.append((name, td))
    return out


def cap_task(td: Any, total: int) -> Any:
    """At most ``total`` labelled rows (train + validation), each split keeping its share and each
    class its share within a split (:func:`adaptreg.data.clean.cap_total_indices`)."""
    from ..data import clean
    from ..data.tasks import Split

    n_train, n_val = len(td.train), len(td.val)
    if total < 2:
        raise ConfigError(f"max_per_task == {total}, must be >= 2 (a training and a validation row)")
    if n_train + n_val <= total:
        return td
    n_val_keep = max(1, round(total * n_val / (n_train + n_val))) if n_val else 0
    for split, keep_n in (("train", total - n_val_keep), ("val", n_val_keep)):
        part = getattr(td, split)
        idx = clean.cap_total_indices([clean.key(t) for t in part.texts], list(part.y), keep_n)
        setattr(td, split, Split([part.texts[i] for i in idx], [part.y[i] for i in idx]))
    return td


def _with_test_cap(spec: str, td: Any, per_class: int) -> Any:
    import hashlib

    from ..data import catalog
    from ..data.tasks import Split

    if per_class < 1:
        raise ConfigError(f"test_per_class == {per_class}, must be >= 1")
    if Path(spec).exists() or catalog.parse_spec(spec) is None:
        raise ConfigError(f"--test-per-class needs catalog tasks; {spec!r} is a file (its test split is drawn from it)")
    _, test_rows = catalog.load(spec.split("@")[0])
    index = {lab: i for i, lab in enumerate(td.labels)}
    train_keys = {" ".join(t.split()) for t in td.train.texts + td.val.texts}
    ranked = sorted(test_rows, key=lambda r: hashlib.sha256(" ".join(r["text"].split()).encode()).hexdigest())
    counts: dict[str, int] = {}
    texts, ys = [], []
    for r in ranked:
        lab = r["label"]
        if lab in index and counts.get(lab, 0) < per_class and " ".join(r["text"].split()) not in train_keys:
            counts[lab] = counts.get(lab, 0) + 1
            texts.append(r["text"])
            ys.append(index[lab])
    td.test = Split(texts, ys)
    return td


def run_continual(
    tasks: Sequence[str],
    *,
    strategies: Sequence[str] | str | None = None,
    base: str | Any = "minilm",
    lora: Any = None,
    train: Any = None,
    max_per_class: int | None = None,
    test_per_class: int | None = None,
    max_per_task: int | None = None,
    replay_buffer: int = 200,
    olora_lambda: float = 0.5,
    out: str | Path | None = None,
    registry: str | None = None,
    mlflow: bool = True,
    joint_every_step: bool = False,
    image_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Load the tasks, run every strategy, write the report folder (``out``) and log to MLflow.

    ``tasks``: catalog names or CSV/JSONL paths in onboarding order, or one image scenario
    (``split-mnist``, ``split-fashion-mnist``: 5 tasks of 2 classes on EfficientNet-lite0).
    """
    from ..config import LoraSettings, TrainSettings

    train = train or TrainSettings()
    tasks = list(tasks)
    say = progress or (lambda msg: logger.info(msg))
    t0 = time.perf_counter()
    if len(tasks) == 1 and tasks[0] in IMAGE_SCENARIOS:
        from .vision import ImageScenario, load_split_tasks

        lora = lora or LoraSettings(targets=None)
        scenario = ImageScenario(train=train, lora=lora, image_size=image_size)
        task_list = load_split_tasks(IMAGE_SCENARIOS[tasks[0]], max_per_class=max_per_class, seed=train.seed)
        base_id = scenario.base_id
        scenario_name = tasks[0]
    else:
        bad = [t for t in tasks if t in IMAGE_SCENARIOS]
        if bad:
            raise ConfigError(f"{bad[0]} is a whole image scenario: give it alone (--tasks {bad[0]})")
        from ..base import LoadedBase, load_base

        lora = lora or LoraSettings()
        lb = base if isinstance(base, LoadedBase) else load_base(base)
        scenario = TextScenario(lb, train, lora)
        say(f"loading {len(tasks)} tasks")
        task_list = load_text_tasks(tasks, max_per_class, train.seed, test_per_class, max_per_task)
        base_id = lb.id
        scenario_name = "text"
    bench = ContinualBenchmark(scenario, task_list, strategies, work_dir=out, joint_every_step=joint_every_step,
                               replay_buffer=replay_buffer, olora_lambda=olora_lambda, progress=say)
    result = bench.run()
    result.scenario = scenario_name
    result.settings = {
        "tasks": tasks, "base": base_id, "max_per_class": max_per_class, "test_per_class": test_per_class,
        "max_per_task": max_per_task, "lora": lora.to_dict(), "train": train.to_dict(),
        "replay": {"buffer": bench.replay_buffer, "head": "one output layer over the task:label classes seen so far",
                   "validation": "the new task's only"},
        "o_lora": {"lambda_orthogonal": bench.olora_lambda, "penalty": "sum |A_new A_old^T| over adapted modules"},
        "joint_every_step": joint_every_step, "merge": {"method": "ties", "density": bench.merge_density},
        "router": {"threshold": "inf (closed world: never abstains)", "features": "frozen base, mean-pooled"},
        "data": {n: td.summary() for n, td in task_list},
    }
    if scenario_name != "text":
        result.settings["image_size"] = image_size
    result.timings["wall"] = time.perf_counter() - t0
    if out is not None:
        from .report import write_report

        write_report(result, out)
        (Path(out) / "partial.json").unlink(missing_ok=True)  # the whole report is there now
        say(f"report written to {out}")
    if mlflow:
        from .report import log_to_mlflow

        run_id = log_to_mlflow(result, registry, report_dir=out)
        result.extra["mlflow_run_id"] = run_id
        if out is not None:  # keep results.json identical to the run (run id included)
            from .._util import dump_json

            dump_json(result.to_dict(), Path(out) / "results.json")
    return result
