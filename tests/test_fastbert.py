"""adaptreg.fastbert: the transformers-free BERT that `adaptreg predict` loads, against transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adaptreg import fastbert
from adaptreg.base import load_base

TEXTS = ["sport match team goal", "the bank shares fell", "x", "Ünïcödé café naïve 東京 😀 tab\there",
         " ".join(["long"] * 300), "market " * 20]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder (the fingerprint cache lives there)."""
    monkeypatch.setenv("ADAPTREG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _states(lb, texts, max_length=24):
    import torch

    from adaptreg.trunk import frozen_states, pad, tokenize

    ids, mask = pad(tokenize(lb.tokenizer, texts, max_length), lb.tokenizer.pad_token_id or 0)
    with torch.inference_mode():
        return frozen_states(lb.model, ids, mask, 4, keep=(0, 1, 2, 3)), mask


def test_first_load_goes_through_transformers_then_the_fast_path_gives_the_same_model(tiny_base, cache):
    import torch

    hf = load_base(str(tiny_base), fast=True)  # nothing cached yet: transformers, and the fingerprint recorded
    assert type(hf.model).__module__.startswith("transformers.")
    assert json.loads((cache / fastbert.CACHE_FILE).read_text()) == {fastbert.content_key(tiny_base): hf.fingerprint}
    fast = load_base(str(tiny_base), fast=True)
    assert type(fast.model).__module__ == "adaptreg.fastbert"
    assert fast.fingerprint == hf.fingerprint and fast.model_type == "bert" and fast.hidden_size == hf.hidden_size
    for truncate in (None, 8):  # the same token ids, with and without truncation, special tokens included
        kw = {"truncation": True, "max_length": truncate} if truncate else {}
        assert fast.tokenizer(TEXTS, **kw)["input_ids"] == [list(x) for x in hf.tokenizer(TEXTS, **kw)["input_ids"]]
    assert fast.tokenizer.pad_token_id == hf.tokenizer.pad_token_id
    (a, mask), (b, _) = _states(hf, TEXTS), _states(fast, TEXTS)
    m = mask.bool()
    for i in range(5):  # embeddings and every layer, on real (unpadded) positions
        assert torch.allclose(a[i][m], b[i][m], atol=1e-5), i
    assert not load_base(str(tiny_base)).model.__module__.startswith("adaptreg")  # fast only when asked
    from adaptreg.base import encode

    for layer in (-1, (-4, -2)):  # frozen-base features (the router's, the probe's) agree too
        assert torch.allclose(torch.as_tensor(encode(fast, TEXTS, 24, layer=layer)),
                              torch.as_tensor(encode(hf, TEXTS, 24, layer=layer)), atol=1e-5)


def test_fast_base_predicts_what_the_transformers_base_predicts(tiny_base, cache, tmp_path):
    from conftest import make_toy_rows
    from test_predict import make_adapter, sentiment_rows, write_csv

    from adaptreg.compose.predict import Predictor
    from adaptreg.compose.router import Router
    from adaptreg.data.tasks import load_task

    hf = load_base(str(tiny_base), fast=True)
    fast = load_base(str(tiny_base), fast=True)
    tds = {"topic": load_task(str(write_csv(tmp_path / "topic.csv", make_toy_rows(20)))),
           "senti": load_task(str(write_csv(tmp_path / "senti.csv", sentiment_rows())))}
    ads = {t: make_adapter(hf, t, td, tmp_path / "ad" / t, seed=i, dora=t == "senti") for i, (t, td) in enumerate(tds.items())}
    router = Router(max_length=32)
    router.fit({t: router.features(hf, td.train.texts) for t, td in tds.items()}, {t: td.train.y for t, td in tds.items()})
    texts = [x for td in tds.values() for x in td.test.texts]
    want = Predictor.from_artifacts(hf, ads, router=router).predict(texts)
    got = Predictor.from_artifacts(fast, ads, router=router).predict(texts)
    assert [(r["task"], r["label"]) for r in got] == [(r["task"], r["label"]) for r in want]
    assert max(abs(g["confidence"] - w["confidence"]) for g, w in zip(got, want)) < 1e-4


def test_a_changed_weight_file_is_not_served_from_the_cache(tiny_base, cache, tmp_path):
    from safetensors.torch import load_file, save_file

    load_base(str(tiny_base), fast=True)
    copy = tmp_path / "base"
    shutil.copytree(tiny_base, copy)
    assert type(load_base(str(copy), fast=True).model).__module__ == "adaptreg.fastbert"  # same bytes: same key
    state = load_file(str(copy / "model.safetensors"))
    name = next(k for k in state if k.endswith("query.weight"))
    state[name] = state[name] + 1.0
    save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
    changed = load_base(str(copy), fast=True)
    assert type(changed.model).__module__.startswith("transformers.")  # new bytes: transformers decides again
    assert changed.fingerprint != load_base(str(tiny_base), fast=True).fingerprint


def test_unsupported_configs_take_the_transformers_path(tiny_base, cache, tmp_path):
    load_base(str(tiny_base), fast=True)
    for change in ({"position_embedding_type": "relative_key"}, {"hidden_act": "silu"}, {"model_type": "roberta"}):
        cfg = json.loads((Path(tiny_base) / "config.json").read_text())
        assert fastbert.supported(cfg) and not fastbert.supported({**cfg, **change}), change
    d = tmp_path / "no-tokenizer-json"
    shutil.copytree(tiny_base, d)
    (d / "tokenizer.json").unlink()
    assert fastbert.load(d) is None


def test_predict_cli_does_not_import_transformers_once_the_base_is_known(tiny_base, cache, tmp_path, tmp_path_factory):
    from test_predict import fresh_registry, make_adapter, sentiment_rows, write_csv

    from adaptreg.data.tasks import load_task

    lb = load_base(str(tiny_base), fast=True)  # records the fingerprint
    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    td = load_task(str(write_csv(tmp_path / "s.csv", sentiment_rows())))
    reg.register(make_adapter(lb, "senti", td, tmp_path / "ad", seed=3))
    code = ("import sys; from adaptreg.cli import main\n"
            "try:\n    main(['predict', '--text', 'good great fun', '--task', 'senti', '--json', '--registry', sys.argv[1]])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TRANSFORMERS' if 'transformers' in sys.modules else 'CLEAN', file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "reg")], capture_output=True, text=True,
                         env={**__import__("os").environ, "ADAPTREG_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["task"] == "senti"
    assert res.stderr.strip().splitlines()[-1] == "CLEAN"


@pytest.mark.slow
def test_minilm_fast_path_matches_transformers(cache):
    import torch

    hf = load_base("minilm", fast=True)
    fast = load_base("minilm", fast=True)
    assert type(fast.model).__module__ == "adaptreg.fastbert" and fast.fingerprint == hf.fingerprint
    for kw in ({}, {"truncation": True, "max_length": 16}):
        assert fast.tokenizer(TEXTS, **kw)["input_ids"] == [list(x) for x in hf.tokenizer(TEXTS, **kw)["input_ids"]]
    from adaptreg.trunk import frozen_states, pad, tokenize

    ids, mask = pad(tokenize(hf.tokenizer, TEXTS, 64), 0)
    with torch.inference_mode():
        a = frozen_states(hf.model, ids, mask, 6)[6]
        b = frozen_states(fast.model, ids, mask, 6)[6]
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-4)
