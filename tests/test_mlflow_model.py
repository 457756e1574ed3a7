"""Registered versions are MLflow Models: `mlflow.pyfunc.load_model("models:/TASK@alias")` and
`mlflow models serve` work on them (a loader-module pyfunc flavor: nothing pickled, base referenced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from adaptreg.base import load_base
from adaptreg.compose.predict import Predictor
from adaptreg.compose.router import ROUTER_MODEL, Router, register_router
from adaptreg.mlflow_model import MLMODEL
from adaptreg.registry import Registry
from test_registry import _free_port, arts, base_fp, empty_db, fresh_location  # noqa: F401

TEXTS = ["business market bank shares profit", "sport match team goal win", "tech computer phone software internet"]


@pytest.fixture
def served(tmp_path, empty_db, arts, tiny_base):
    location = fresh_location(tmp_path / "reg", empty_db)
    reg = Registry(location, cache_dir=tmp_path / "cache")
    reg.register(arts["a"])
    reg.register(arts["b"])
    reg.promote("news", 1)
    return reg


def _pyfunc(reg: Registry, uri: str):
    import mlflow

    mlflow.set_registry_uri(reg.location.uri)
    mlflow.set_tracking_uri(reg.location.uri)
    return mlflow.pyfunc.load_model(uri)


def test_versions_load_as_pyfunc_models_by_alias(served, tiny_base):
    import pandas as pd

    model = _pyfunc(served, "models:/news@production")
    out = model.predict(pd.DataFrame({"text": TEXTS}))
    assert list(out.columns) == ["label", "confidence"] and len(out) == 3
    want = Predictor(served, base=str(tiny_base), router=False).predict(TEXTS, task="news")
    assert list(out["label"]) == [r["label"] for r in want]
    assert np.allclose(out["confidence"], [r["confidence"] for r in want], atol=1e-6)
    meta = model.metadata
    assert meta.signature.inputs.input_names() == ["text"]
    assert meta.metadata["base_fingerprint"].startswith("sha256:") and meta.metadata["adaptreg_kind"] == "adapter"
    assert model.metadata.flavors["python_function"]["loader_module"] == "adaptreg.mlflow_model"
    # nothing pickled, no base weights copied: the stored version holds only small files
    stored = served.local_path(served.lookup("news", version=1)["source"])
    assert (stored / MLMODEL).is_file()
    assert not any(p.suffix in (".pkl", ".pickle", ".bin") for p in stored.iterdir())
    assert sum(p.stat().st_size for p in stored.iterdir()) < 2_000_000
    run = served.client.get_run(served.lookup("news", version=2)["run_id"])
    assert run.info.run_name == "news-v2"


def test_router_version_loads_as_pyfunc_model(served, tiny_base):
    import pandas as pd

    lb = load_base(str(tiny_base))
    router = Router(max_length=32)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(["market", "bank", "shares", "profit", "the", "a"], 8)) for _ in range(20)]
    router.add_task("news@1", router.features(lb, texts))
    register_router(served, router, base=lb)
    model = _pyfunc(served, f"models:/{ROUTER_MODEL}/1")
    out = model.predict(pd.DataFrame({"text": texts[:4]}))
    assert list(out.columns) == ["task", "route_score"]
    assert set(out["task"]) <= {"news", "unknown"}


def test_a_version_without_mlmodel_is_still_served_by_adaptreg(served, tiny_base, base_fp):
    stored = served.local_path(served.lookup("news", version=2)["source"])
    (stored / MLMODEL).unlink()  # as registered by an adaptreg before MLflow Models
    assert served.load("news", version=2, base=base_fp)["version"] == 2


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(served, tmp_path, tiny_base):
    port = _free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    # `make test` runs .venv/bin/python without activating the venv: mlflow starts `uvicorn` from PATH
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": served.location.uri,
           "MLFLOW_REGISTRY_URI": served.location.uri}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", "models:/news@production", "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}).encode()
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    answer = json.loads(r.read())
                break
            except OSError:
                time.sleep(1)
        assert answer is not None, (tmp_path / "serve.log").read_text()[-3000:]
        rows = answer["predictions"]
        assert len(rows) == 3 and all(set(r) == {"label", "confidence"} for r in rows)
        want = Predictor(served, base=str(tiny_base), router=False).predict(TEXTS, task="news")
        assert [r["label"] for r in rows] == [r["label"] for r in want]  # the same labels as `adaptreg predict`
    finally:
        import contextlib
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
