"""Registered versions as MLflow Models: a ``python_function`` flavor served by this module.

Each registered version (an onboarded or merged adapter, or a router) also carries an
``MLmodel`` file and an ``input_example.json`` beside its own files, so

    mlflow.pyfunc.load_model("models:/news@production").predict(pd.DataFrame({"text": [...]}))

and ``mlflow models serve -m models:/news@production --env-manager local`` work. The flavor
names a *loader module* (``loader_module: adaptreg.mlflow_model``) instead of a pickled
``PythonModel``: loading runs :func:`_load_pyfunc` from the installed adaptreg on the stored
files, so nothing is unpickled and no code is copied into the registry. The base is referenced
by its id and fingerprint (recorded in the manifest and in the MLmodel metadata), never copied:
the loader resolves it (``minilm`` or a path), refuses another base, and checks every file's
sha256 against the manifest first. Why not ``mlflow.transformers`` with a PEFT adapter: see
docs/registry.md ("MLflow Models").

Outputs: adapters give ``label`` and ``confidence`` per row; routers give ``task`` (``unknown``
when abstaining) and ``route_score``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from . import artifact
from ._version import __version__
from .errors import ConfigError, IntegrityError

LOADER_MODULE = "adaptreg.mlflow_model"
MLMODEL = "MLmodel"
EXAMPLE = "input_example.json"
MODEL_FILES = (MLMODEL, EXAMPLE)
EXAMPLE_TEXTS = ["The central bank raised interest rates again.", "What a wonderful, moving film."]


def write_model_files(directory: str | os.PathLike, *, kind: str, task: str | None, base_id: str | None,
                      base_fingerprint: str | None, labels: list[str] | None = None) -> list[Path]:
    """Write ``MLmodel`` and ``input_example.json`` into ``directory``; return their paths.

    ``kind``: ``adapter`` (label, confidence per row) or ``router`` (task, route_score).
    """
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.pyfunc import add_to_model
    from mlflow.types.schema import ColSpec, Schema

    if kind not in ("adapter", "router"):
        raise ConfigError(f"model kind {kind!r} is unknown: adapter or router")
    d = Path(directory)
    outputs = ([ColSpec("string", "label"), ColSpec("double", "confidence")] if kind == "adapter" else
               [ColSpec("string", "task"), ColSpec("double", "route_score")])
    model = Model()
    add_to_model(model, loader_module=LOADER_MODULE, data=".")
    model.flavors["python_function"]["python_version"] = platform.python_version()
    model.signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs))
    model.metadata = {"adaptreg_kind": kind, "adaptreg_version": __version__, "task": task, "base_id": base_id,
                      "base_fingerprint": base_fingerprint, "labels": labels}
    (d / EXAMPLE).write_text(json.dumps({"columns": ["text"], "data": [[t] for t in EXAMPLE_TEXTS]}), encoding="utf-8")
    model.saved_input_example_info = {"artifact_path": EXAMPLE, "type": "dataframe", "pandas_orient": "split"}
    model.save(str(d / MLMODEL))
    return [d / MLMODEL, d / EXAMPLE]


def _texts(model_input: Any) -> list[str]:
    """The ``text`` column of a DataFrame (or a list / Series / dict of texts) as strings."""
    if hasattr(model_input, "columns"):
        if "text" not in model_input.columns:
            cols = ", ".join(map(str, model_input.columns))
            raise ConfigError(f"the input has no 'text' column (columns: {cols}); send a DataFrame with one")
        values = list(model_input["text"])
    elif isinstance(model_input, dict) and "text" in model_input:
        values = list(model_input["text"])
    elif isinstance(model_input, (list, tuple)) or hasattr(model_input, "tolist"):
        values = list(model_input.tolist() if hasattr(model_input, "tolist") else model_input)
    else:
        raise ConfigError(f"cannot read texts from a {type(model_input).__name__}: send a DataFrame with a 'text' column")
    return ["" if v is None else str(v) for v in values]


def _metadata(d: Path) -> dict[str, Any]:
    from mlflow.models import Model

    return dict(Model.load(str(d / MLMODEL)).metadata or {}) if (d / MLMODEL).is_file() else {}


def _load_base(base_id: str | None, fingerprint: str | None, what: str) -> Any:
    from .base import load_base

    if not base_id:
        raise IntegrityError(f"{what} records no base; it cannot be served as an MLflow model")
    lb = load_base(os.environ.get("ADAPTREG_BASE") or base_id)
    if fingerprint and lb.fingerprint != fingerprint:
        raise IntegrityError(f"{what} was built on base {base_id!r} ({fingerprint[:19]}...), but {lb.id!r} loads as "
                             f"{lb.fingerprint[:19]}...; point ADAPTREG_BASE at the right base")
    return lb


class AdapterModel:
    """An adapter version as a pyfunc model: ``predict(DataFrame[text]) -> DataFrame[label, confidence]``."""

    def __init__(self, directory: str | os.PathLike):
        from .compose.predict import Predictor

        d = Path(directory)
        manifest = artifact.verify(d)  # every file against the manifest's sha256 first
        self.task = str(manifest.get("task"))
        b = manifest.get("base") or {}
        lb = _load_base(b.get("id"), b.get("fingerprint"), f"adapter {self.task!r}")
        self.predictor = Predictor.from_artifacts(lb, {self.task: str(d)})

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        rows = self.predictor.predict(_texts(model_input), task=self.task)
        return pd.DataFrame({"label": [r["label"] for r in rows],
                             "confidence": [float("nan") if r["confidence"] is None else r["confidence"] for r in rows]})


class RouterModel:
    """A router version as a pyfunc model: ``predict(DataFrame[text]) -> DataFrame[task, route_score]``."""

    def __init__(self, directory: str | os.PathLike):
        from .compose.router import Router

        d = Path(directory)
        meta = _metadata(d)
        self.router = Router.load(d)  # router.safetensors against router.json's sha256
        self.base = _load_base(meta.get("base_id"), meta.get("base_fingerprint"), "the router")

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        from .compose.router import UNKNOWN, split_entry

        texts = _texts(model_input)
        routed, scores = self.router.route(self.router.features(self.base, texts))
        return pd.DataFrame({"task": [r if r == UNKNOWN else split_entry(r)[0] for r in routed],
                             "route_score": [float(s) for s in scores]})


def _load_pyfunc(data_path: str) -> Any:
    """MLflow's entry point for the ``python_function`` flavor (``data: .`` = the model directory)."""
    from .compose.router import ROUTER_JSON

    d = Path(data_path)
    if d.is_file():
        d = d.parent
    return RouterModel(d) if (d / ROUTER_JSON).is_file() else AdapterModel(d)
