"""Trunk and branch: the cached trunk path computes what the whole model computes; the probe is a
first-class candidate (a task where training cannot help registers the probe, served exactly)."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch

from adaptreg.base import encode, load_base, mean_pool
from adaptreg.config import LoraSettings, TrainSettings
from adaptreg.trunk import (Packing, TrunkCache, auto_max_length, branch_forward, length_batches, packable, packed_embed,
                            packed_layer, pad, split_point, tokenize, trunk_forward)


@pytest.fixture(scope="module")
def base(tiny_base):
    return load_base(str(tiny_base))


TEXTS = ["sport match team goal win", "the bank shares profit fell in the market today and the economy slowed",
         "phone", "online users of digital data " * 5]


def test_trunk_then_branch_equals_the_whole_model(base):
    ids = tokenize(base.tokenizer, TEXTS, 32)
    x, m = pad(ids, base.tokenizer.pad_token_id)
    with torch.no_grad():
        full = base.model(input_ids=x, attention_mask=m).last_hidden_state
        for split in range(0, base.model.config.num_hidden_layers + 1):
            out = branch_forward(base.model, trunk_forward(base.model, x, m, split), m, split)
            assert torch.allclose(mean_pool(out, m), mean_pool(full, m), atol=1e-5), split


def test_packed_layers_equal_the_padded_batch(base, tmp_path):
    """Rows back to back without padding, through transformers' BERT layers and adaptreg.fastbert's,
    give each row's states of the padded batch; Packing.mean is mean pooling."""
    from adaptreg import fastbert

    words = " ".join(TEXTS).split()
    many = sorted((" ".join(random.Random(i).choices(words, k=1 + i * 3 % 29)) for i in range(24)), key=len)
    fast = fastbert.build(base.model.config.to_dict(), base.model.state_dict())
    # 4 rows: one padded attention; 24 rows in length order: attention in groups, each padded to its own longest
    for texts, model in [(TEXTS, base.model), (TEXTS, fast), (many, base.model)]:
        ids = tokenize(base.tokenizer, texts, 32)
        x, m = pad(ids, base.tokenizer.pad_token_id)
        pk = Packing([len(r) for r in ids])
        assert (pk.groups is None) == (texts is TEXTS)
        assert packable(model)
        with torch.no_grad():
            want = model(input_ids=x, attention_mask=m).last_hidden_state
            h = packed_embed(model, ids, pk)
            for layer in model.encoder.layer:
                h = packed_layer(layer, h, pk, model.config.num_attention_heads)
        for r, row in enumerate(pk.split(h)):
            assert torch.allclose(row, want[r, : len(ids[r])], atol=1e-5)
        assert torch.allclose(pk.mean(h), mean_pool(want, m), atol=1e-5)
        assert torch.equal(pk.unpad(pk.pad(h)), h)


def test_cache_rows_match_unpadded_forward_and_spill_to_disk(base):
    cache = TrunkCache(base.model, base.tokenizer, TEXTS, 32, 2, ram_budget=0)  # 0 bytes: forced onto disk
    assert isinstance(cache.data, np.memmap) and cache._file is not None
    assert cache.nbytes == int(cache.lengths.sum()) * base.hidden_size * 2
    h, m = cache.batch([1, 3])
    for row, i in enumerate([1, 3]):  # each row alone, no padding: same states up to half precision
        ids = torch.tensor([tokenize(base.tokenizer, [TEXTS[i]], 32)[0]])
        alone = trunk_forward(base.model, ids, torch.ones_like(ids), 2)[0]
        assert torch.allclose(h[row, : alone.shape[0]], alone, atol=2e-2)
        assert int(m[row].sum()) == alone.shape[0]
    path = cache._file
    cache.close()
    import os

    assert not os.path.exists(path)


def test_head_tail_truncation_keeps_both_ends(base):
    text = "sport " * 40 + "economy"
    head = tokenize(base.tokenizer, [text], 16, "head")[0]
    both = tokenize(base.tokenizer, [text], 16, "head+tail")[0]
    assert len(head) == len(both) == 16
    assert head[0] == both[0] == base.tokenizer.cls_token_id and both[-1] == base.tokenizer.sep_token_id
    econ = base.tokenizer.convert_tokens_to_ids("economy")
    assert econ in both and econ not in head
    assert tokenize(base.tokenizer, ["phone"], 16, "head+tail") == tokenize(base.tokenizer, ["phone"], 16, "head")


def test_length_batches_cover_every_row_once_and_group_lengths():
    lengths = [random.Random(i).randint(1, 100) for i in range(200)]
    gen = torch.Generator().manual_seed(0)
    batches = length_batches(lengths, 16, generator=gen, chunk_batches=4)
    assert sorted(i for b in batches for i in b) == list(range(200))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 40  # random batches of 16 from U(1, 100) spread ~ 90


def test_auto_length_and_split_point(base):
    assert auto_max_length(base.tokenizer, ["phone"] * 10, 128) == 32  # the floor
    long = ["sport match " * 60] * 10
    assert auto_max_length(base.tokenizer, long, 64) == 64  # the cap
    n = base.model.config.num_hidden_layers
    assert split_point(base.model, 0) == 0 and split_point(base.model, 1) == n - 1 and split_point(base.model, n + 3) == 0


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)


def test_shuffled_labels_register_the_probe_and_predict_exactly_like_it(tiny_base, tmp_path):
    """Training cannot help when the training labels are noise: the probe must be registered, and
    prediction through the registered version must equal the probe's own predictions."""
    from conftest import make_toy_rows

    from adaptreg.compose.predict import Predictor
    from adaptreg.train import onboard

    rows = make_toy_rows(40)
    train_rows, val_rows, test_rows = rows[:72], rows[72:96], rows[96:]
    rng = random.Random(0)
    labels = [r["label"] for r in train_rows]
    rng.shuffle(labels)
    shuffled = [{"text": r["text"], "label": lab} for r, lab in zip(train_rows, labels)]
    paths = {}
    for name, part in (("train", shuffled), ("val", val_rows), ("test", test_rows)):
        paths[name] = tmp_path / f"{name}.csv"
        _write(paths[name], part)
    # the probe's features are the frozen base's, which the random tiny BERT barely separates: give the
    # probe a fair chance by making the val split clean while the adapter only ever sees noise
    lb = load_base(str(tiny_base))
    res = onboard("noise", str(paths["train"]), val=str(paths["val"]), test=str(paths["test"]), base=lb,
                  train=TrainSettings(epochs=3, batch_size=8, max_length=32, lr=5e-3), lora=LoraSettings(),
                  output=str(tmp_path / "out"), register=False, route=False, progress=False)
    sel = res.manifest["selection"]
    assert sel["chosen"] == "probe", sel
    assert res.metrics["test_accuracy"] == res.metrics["probe_test_accuracy"]
    pred = Predictor.from_artifacts(lb, {"noise": res.artifact_dir})
    texts = [r["text"] for r in test_rows] + ["sport goal", "bank profit", "phone data online"]
    got = [o["label"] for o in pred.predict(texts, task="noise")]
    clf = res.extra["probe"]
    feats = encode(lb, texts, res.manifest["training"]["max_length"], truncation=res.manifest["training"]["truncation"])
    want = [res.manifest["labels"][i] for i in clf.predict(feats)]
    assert got == want
    # and no adapter was loaded for it: the task is served by the frozen base
    assert pred._entries["noise"].identity


def test_non_finite_settings_are_refused():
    from adaptreg.errors import ConfigError

    with pytest.raises(ConfigError, match="lr == inf"):
        TrainSettings(lr=float("inf"))
    with pytest.raises(ConfigError, match="alpha == nan"):
        LoraSettings(alpha=float("nan"))


def test_router_features_from_the_trunk_cache_match_the_routers_own(base):
    from adaptreg.compose.router import Router
    from adaptreg.train import router_features_from_cache

    texts = TEXTS + ["sport " * 50 + "economy"]  # one text the router truncates differently from the cache
    split = 2
    cache = TrunkCache(base.model, base.tokenizer, texts, 16, split, "head")
    depth = base.model.config.num_hidden_layers + 1
    r = Router(layers=(split - depth,), max_length=24, truncation="head+tail")
    got = router_features_from_cache(base, cache, texts, r, 8)
    want = r.features(base, texts)
    assert got is not None and np.allclose(got, want, atol=2e-2)
    pooled = TrunkCache(base.model, base.tokenizer, texts, 16, split, "head", pool=[split - 1])
    inner = Router(layers=(split - 1 - depth,), max_length=24, truncation="head+tail")  # pooled during the cache's pass
    assert np.allclose(router_features_from_cache(base, pooled, texts, inner, 8), inner.features(base, texts), atol=1e-4)
    other = Router(layers=(-1, split - depth - 1), max_length=24)  # layers the cache does not hold: computed
    assert np.allclose(router_features_from_cache(base, cache, texts, other, 8), other.features(base, texts), atol=1e-4)


def test_the_cross_validated_decision_stops_once_a_lead_is_decisive(tiny_base):
    """The cross-validated adapter-or-probe decision looks at the rows covered after each fold and
    stops early only on a lead of CV_EARLY_Z standard errors; its report says how far it went."""
    from conftest import make_toy_rows

    from adaptreg.data.tasks import Split, TaskData
    from adaptreg.train import CV_EARLY_Z, _decisive, train_task

    y = np.array([0] * 20 + [1] * 20)
    right, wrong = y.copy(), 1 - y
    assert _decisive(right, wrong, y, CV_EARLY_Z) and _decisive(wrong, right, y, CV_EARLY_Z)
    half = np.where(np.arange(40) % 2 == 0, y, 1 - y)  # right on every other row: 20 against 20 discordant
    assert not _decisive(right[:4], half[:4], y[:4], CV_EARLY_Z)  # 2 rows of lead: not enough
    assert not _decisive(half, half, y, 0.0)  # no discordant rows, no lead

    lb = load_base(str(tiny_base))
    rows = make_toy_rows(40)
    labels = sorted({r["label"] for r in rows})

    def split(part):
        return Split([r["text"] for r in part], [labels.index(r["label"]) for r in part])

    td = TaskData(labels=labels, train=split(rows[:72]), val=split(rows[72:96]), test=split(rows[96:]),
                  source="toy", fingerprint="")
    trained = train_task(lb, td, LoraSettings(), TrainSettings(epochs=4, batch_size=8, max_length=32, lr=5e-3),
                         progress=False)
    paired = trained.paired
    # the frozen tiny BERT separates these topics well, the adapter on 64 rows does not: the probe's
    # lead is decisive before the last fold (seeded: it is the first)
    assert paired is not None and paired["folds_run"] < 3 and not paired["adapter_wins"], paired
    assert "stopped after fold" in paired["on"]
    lead = paired["probe_only"] - paired["adapter_only"]
    assert lead >= CV_EARLY_Z * np.sqrt(paired["adapter_only"] + paired["probe_only"]), paired
    assert trained.chosen == "probe"
    trained.model.peft_model.unload()


def test_the_decision_weighs_calibrated_log_loss_when_accuracy_ties():
    """Right on the same rows, the adapter that separates the classes far better wins on calibrated
    log-loss; a probe that is only less sure of the same answers is not beaten by its temperature;
    and a candidate right on fewer rows never wins on loss."""
    from adaptreg.train import calibrated_nll, paired_margin

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    onehot = np.eye(3)[y]
    probe = 1.5 * onehot + rng.normal(0, 1, (200, 3))
    right = probe.argmax(1) == y
    sharp = probe + 4.0 * onehot * right[:, None]  # right on exactly the probe's rows, by far wider margins
    assert 0.6 < right.mean() < 0.9 and (sharp.argmax(1) == probe.argmax(1)).all()
    out = paired_margin(sharp, probe, y, 1.0, 2.0)
    assert out["adapter_only"] == out["probe_only"] == 0 and out["adapter_wins"] and out["won_on"] == "calibrated log-loss"
    assert paired_margin(sharp, probe, y, 1.0, 0.0)["adapter_wins"] is False  # accuracy alone: a tie keeps the probe
    # the same logits only scaled: a temperature undoes it, so the loss cannot decide
    out = paired_margin(probe * 3.0, probe, y, 1.0, 2.0)
    assert not out["adapter_wins"] and abs(out["loss_z_score"]) < 1e-3, out
    assert np.allclose(calibrated_nll(probe * 3.0, y), calibrated_nll(probe, y), atol=1e-4)
    # the adapter wrong on one row the probe gets right: b < c, the loss does not overrule accuracy
    worse = sharp.copy()
    k = int(np.flatnonzero(right)[0])
    worse[k] = 0.0
    worse[k, (y[k] + 1) % 3] = 0.1  # wrong, but only just: its log-loss still leads by far
    out = paired_margin(worse, probe, y, 1.0, 2.0)
    assert out["probe_only"] == 1 and out["adapter_only"] == 0 and out["loss_z_score"] > 2.0, out
    assert not out["adapter_wins"], out
