"""Stack adapters: several LoRA adapters active at once (additive composition), one task's head on top.

Where merging folds adapters into one new adapter, stacking keeps them separate and sums their
updates at run time: ``W x + Σ_i w_i · s_i · B_i A_i x``. Typical use: a domain adapter plus a task
adapter trained on top of it (``onboard --init-from``), or probing how two adapters interact.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from .. import artifact
from ..base import LoadedBase, pooled_features
from ..errors import ConfigError
from .merge import load_task_head


class StackedModel:
    """``adapters`` ({name: dir}) all active on a private copy of ``base``; ``head`` = that adapter's task head.

    ``weights`` ({name: w}, default 1.0 each) multiply each adapter's LoRA scaling.
    """

    def __init__(self, base: LoadedBase, adapters: dict[str, str | os.PathLike], head: str,
                 weights: dict[str, float] | None = None):
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        if len(adapters) < 1:
            raise ConfigError("stacking needs at least one adapter")
        if head not in adapters:
            raise ConfigError(f"head {head!r} is not one of the stacked adapters {list(adapters)}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(adapters))
        if unknown:
            raise ConfigError(f"weights given for {unknown}, which are not stacked")
        self.names = {t: f"stack{i}" for i, t in enumerate(adapters)}
        manifests = {}
        for t, p in adapters.items():
            manifests[t] = artifact.verify(p)
            artifact.check_base(manifests[t], base.fingerprint, base.id)
        model = None
        for t, p in adapters.items():
            if model is None:
                model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(p), adapter_name=self.names[t])
            else:
                model.load_adapter(str(p), adapter_name=self.names[t])
        model.base_model.set_adapter(list(self.names.values()))
        for mod in model.modules():
            if isinstance(mod, LoraLayer):
                for t, w in weights.items():
                    if self.names[t] in mod.scaling:
                        mod.scaling[self.names[t]] *= float(w)
                mod.requires_grad_(False)
        self.model = model.eval()
        self.base = base
        self.head = load_task_head(adapters[head], head)
        self.max_length = int((manifests[head].get("training") or {}).get("max_length", 256))
        self.truncation = str((manifests[head].get("training") or {}).get("truncation", "head"))

    def features(self, texts: list[str], batch_size: int = 32) -> Any:
        return pooled_features(self.model, self.base.tokenizer, list(texts), self.max_length, batch_size,
                               truncation=self.truncation)

    def predict(self, texts: list[str], batch_size: int = 32) -> tuple[list[str], list[float]]:
        import torch

        prob = torch.softmax(self.features(texts, batch_size) @ self.head.weight.float().T + self.head.bias.float(), -1)
        conf, idx = prob.max(-1)
        return [self.head.labels[i] for i in idx.tolist()], conf.tolist()
