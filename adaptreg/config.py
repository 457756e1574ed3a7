"""Dataclass configs for an adapter and its training; validation names the field and the value."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

ADAPTER_KINDS = ("lora", "dora", "lora-fa")
SCHEDULES = ("constant", "linear", "cosine")
TRUNCATIONS = ("head", "head+tail")
HEAD_INITS = ("random", "probe")
SELECTS = ("best", "adapter")


@dataclass
class LoraSettings:
    """What the adapter is."""

    kind: str = field(default="lora", metadata={"help": "lora, dora (weight-decomposed) or lora-fa (A frozen at its random init, only B trains)."})
    rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    targets: list[str] | None = field(default=None, metadata={"help": "Module names to adapt; None = the base family's default."})
    rslora: bool = field(default=False, metadata={"help": "Rank-stabilised scaling alpha / sqrt(r)."})

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ConfigError(f"adapter kind {self.kind!r} is unknown: use one of {', '.join(ADAPTER_KINDS)}")
        if int(self.rank) < 1:
            raise ConfigError(f"rank == {self.rank}, must be >= 1")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout == {self.dropout}, must be in [0, 1)")
        for name in ("alpha", "dropout"):
            if not math.isfinite(float(getattr(self, name))):
                raise ConfigError(f"{name} == {getattr(self, name)}, must be a finite number")
        if float(self.alpha) <= 0:
            raise ConfigError(f"alpha == {self.alpha}, must be > 0")
        if self.targets is not None and not [t for t in self.targets if t.strip()]:
            raise ConfigError("targets is empty: name at least one module (e.g. query,value) or omit it for the default")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainSettings:
    """How the adapter is trained. Defaults were chosen on validation data (docs/onboarding.md)."""

    epochs: int = field(default=0, metadata={"help": "Epochs; 0 = from the task's size (enough for --target-steps, within --min-epochs..--max-epochs)."})
    target_steps: int = field(default=300, metadata={"help": "With --epochs 0: optimiser steps to aim for."})
    min_epochs: int = field(default=4, metadata={"help": "With --epochs 0: at least this many epochs."})
    max_epochs: int = field(default=12, metadata={"help": "With --epochs 0: at most this many epochs."})
    batch_size: int = field(default=16, metadata={"help": "Examples per step."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (adapter and head)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    schedule: str = field(default="cosine", metadata={"help": "constant, linear or cosine decay after warm-up."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Fraction of steps with linear warm-up."})
    max_length: int = field(default=0, metadata={"help": "Tokens per text; 0 = the 90th percentile of the task's training texts, at most --length-cap."})
    length_cap: int = field(default=128, metadata={"help": "With --max-length 0: the most tokens a text may get."})
    truncation: str = field(default="head", metadata={"help": "Over-long texts: keep the head, or the head and the tail (head+tail)."})
    adapted_layers: int = field(default=2, metadata={"help": "LoRA sits on the top N layers; the layers below are a frozen trunk computed once per text (0 = every layer)."})
    base_dropout: bool = field(default=False, metadata={"help": "Keep the frozen layers' own dropout on while training (off: only the LoRA dropout; 1.6x faster steps on CPU)."})
    head_init: str = field(default="random", metadata={"help": "Task head start: random, or the linear probe's weights (probe)."})
    select: str = field(default="best", metadata={"help": "best: register the better of adapter and linear probe on validation; adapter: always the adapter."})
    cv_below: int = field(default=100, metadata={"help": "With a validation split smaller than this, adapter and probe are compared by cross-validation over train + val instead."})
    cv_folds: int = field(default=3, metadata={"help": "Folds of that cross-validation."})
    select_z: float = field(default=1.0, metadata={"help": "The adapter replaces the probe only if it wins on validation by z standard errors of the paired difference (and by one row)."})
    select_loss_z: float = field(default=2.0, metadata={"help": "Or if it is right on at least as many validation rows and its log-loss, each candidate's temperature fitted on those rows, is lower by this many standard errors of the paired difference (0: accuracy alone decides)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max gradient norm (0 = off)."})
    patience: int = field(default=4, metadata={"help": "Early stopping: epochs without validation gain before stopping (0 = off)."})
    seed: int = field(default=0, metadata={"help": "Seed for split, init, shuffling and dropout."})
    fgm_epsilon: float = field(default=0.0, metadata={"help": "FGM adversarial training on embeddings: perturbation norm (0 = off)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Examples per evaluation step."})
    cache_ram_mb: int = field(default=2048, metadata={"help": "Trunk cache above this many MB goes to a disk-backed array."})

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 0, ">= 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
            ("target_steps", self.target_steps >= 1, ">= 1"), ("min_epochs", self.min_epochs >= 1, ">= 1"),
            ("max_epochs", self.max_epochs >= self.min_epochs, ">= min_epochs"),
            ("length_cap", self.length_cap >= 8, ">= 8"), ("adapted_layers", self.adapted_layers >= 0, ">= 0"),
            ("select_z", self.select_z >= 0, ">= 0"), ("select_loss_z", self.select_loss_z >= 0, ">= 0"),
            ("cv_below", self.cv_below >= 0, ">= 0"),
            ("cv_folds", self.cv_folds >= 2, ">= 2"), ("cache_ram_mb", self.cache_ram_mb >= 0, ">= 0"),
            ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"), ("max_length", self.max_length == 0 or self.max_length >= 8, "0 (automatic) or >= 8"),
            ("grad_clip", self.grad_clip >= 0, ">= 0"), ("patience", self.patience >= 0, ">= 0"),
            ("fgm_epsilon", self.fgm_epsilon >= 0, ">= 0"), ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
        ]
        for name, ok, bound in checks:
            if not ok:
                raise ConfigError(f"{name} == {getattr(self, name)}, must be {bound}")
        for name, value in vars(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} == {value}, must be a finite number")
        for name, value, allowed in (("truncation", self.truncation, TRUNCATIONS), ("head_init", self.head_init, HEAD_INITS),
                                     ("select", self.select, SELECTS)):
            if value not in allowed:
                raise ConfigError(f"{name} {value!r} is unknown: use one of {', '.join(allowed)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is unknown: use one of {', '.join(SCHEDULES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
