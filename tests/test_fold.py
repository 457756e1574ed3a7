"""The predictor runs each adapter as a low-rank update beside the frozen layers (LoRA) or folded
into a private copy of its layers (DoRA): the same function as PEFT's own forward, and a saved
adapter still loads in plain PEFT with the predictor's outputs."""

from __future__ import annotations

import pytest
import torch

from adaptreg.base import load_base, pooled_features
from adaptreg.compose.predict import Predictor
from adaptreg.config import LoraSettings, TrainSettings

TEXTS = ["sport match team goal win", "the bank shares profit fell in the market today", "phone",
         "online users of digital data and mobile software"]


@pytest.mark.parametrize("kind,rslora,adapted", [("lora", False, 2), ("dora", False, 2), ("lora", True, 0),
                                                  ("lora-fa", False, 1)])
def test_plain_peft_load_equals_the_predictor(tiny_base, tmp_path, kind, rslora, adapted):
    from conftest import make_toy_rows
    from peft import PeftModel
    from transformers import AutoModel

    import csv

    from adaptreg.train import onboard

    data = tmp_path / "toy.csv"
    with open(data, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(make_toy_rows(20))
    lb = load_base(str(tiny_base))
    res = onboard("toy", str(data), base=lb, lora=LoraSettings(kind=kind, rslora=rslora),
                  train=TrainSettings(epochs=2, batch_size=8, lr=2e-2, max_length=32, adapted_layers=adapted,
                                      select="adapter"),
                  output=str(tmp_path / "out"), register=False, progress=False)
    # the adapter moved away from identity (B != 0 after two epochs at a high learning rate)
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_base), add_pooling_layer=False),
                                      res.artifact_dir).eval()
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in plain.named_parameters())
    feats = pooled_features(plain, lb.tokenizer, TEXTS, 32, truncation=res.manifest["training"]["truncation"])
    from adaptreg import artifact

    h = artifact.load_head(res.artifact_dir)
    want = torch.softmax(feats @ h.weight.T + h.bias, -1)
    pred = Predictor.from_artifacts(lb, {"toy": res.artifact_dir})
    got = pred.predict(TEXTS, task="toy")
    assert [o["label"] for o in got] == [h.labels[i] for i in want.argmax(-1).tolist()]
    assert torch.allclose(torch.tensor([o["confidence"] for o in got]), want.max(-1).values, atol=1e-4)
    # the caller's base is untouched by the predictor's folding
    assert load_base(str(tiny_base)).fingerprint == lb.fingerprint
