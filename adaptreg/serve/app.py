"""The FastAPI application of ``adaptreg serve``: ``create_app(settings)``.

Endpoints (docs/serving.md has examples):

* ``POST /predict``  ``{"texts": [...], "task"?: str, "alias"?: str, "threshold"?: float}`` ->
  ``{"predictions": [{text, task, label, confidence, route_score, version}], "alias", "router_version", "snapshot"}``
* ``GET /tasks``     every served task: versions, aliases, the served version, its metrics and labels
* ``GET /healthz``   what is served, the last registry poll and its error if any
* ``GET /metrics``   Prometheus text
* ``POST /reload``   check the registry now (retrying a failed build): what changed and what is served

Every error is ``{"error": "one line"}`` with a 4xx/5xx status: 404 for a task or alias that is
not served, 413 for a body over the limit, 422 for a malformed request, 503 when the queue is full.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._util import nan_to_none
from .._version import __version__
from ..errors import AdaptregError, ConfigError, DataError, NotFoundError
from .batcher import MicroBatcher, Overloaded
from .metrics import CONTENT_TYPE, ServeMetrics
from .settings import ServeSettings
from .snapshot import SnapshotManager

logger = logging.getLogger(__name__)

_ENDPOINTS = ("/predict", "/tasks", "/healthz", "/metrics", "/reload")


class PredictRequest(BaseModel):
    """The body of ``POST /predict``."""

    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] = Field(description="Texts to classify, one row each, answered in this order.")
    task: StrictStr | None = Field(None, description="Send every text to this task (no routing). Default: route each text.")
    alias: StrictStr | None = Field(None, description="Serve each task's version under this alias (else its latest). "
                                                      "Default: the server's --alias.")
    threshold: float | None = Field(None, gt=0, allow_inf_nan=False,
                                    description="Router abstention threshold for this request (> 0; default: the server's).")


class _ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, _ApiError):
        return exc.status
    if isinstance(exc, Overloaded):
        return 503
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, (ConfigError, DataError)):
        return 422
    return 500


def _error(status: int, message: str) -> JSONResponse:
    line = " ".join(str(message).split()) or "error"
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def _from_exception(exc: BaseException) -> JSONResponse:
    status = _status_of(exc)
    if status == 500:
        logger.error("request failed", exc_info=exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        what = str(exc) if isinstance(exc, AdaptregError) else f"unexpected {type(exc).__name__}: {first}"
        return _error(500, what)
    return _error(status, str(exc))


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    err = errors[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    if err.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))})"
    if err.get("type") == "missing":
        what = f"{loc} is missing" if loc else "the request body is empty"
        return f"{what}: send a JSON object such as {{\"texts\": [\"...\"]}}"
    if err.get("type") == "extra_forbidden":
        return f"unknown field {loc!r}: the fields are texts, task, alias and threshold"
    if err.get("type") == "model_attributes_type" or not loc:
        return f"the request body must be a JSON object such as {{\"texts\": [\"...\"]}} ({err.get('msg')})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {err.get('msg')}{more}"


class _CountAndLimit:
    """ASGI middleware: refuse a body over the limit (413) before it is read, and count every
    response by endpoint and status. Plain ASGI rather than ``@app.middleware("http")``, whose
    per-request task and streams cost more than the rest of a small request's HTTP handling."""

    def __init__(self, app: Any, metrics: ServeMetrics, max_body: int, max_body_mb: float):
        self.app, self.metrics, self.max_body, self.max_body_mb = app, metrics, max_body, max_body_mb

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        size = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"")
        if size.isdigit() and int(size) > self.max_body:
            response = _error(413, f"the request body has {int(size)} bytes, more than the limit of "
                                   f"{self.max_body_mb:g} MB (--max-body-mb); send fewer texts per request")
            self.metrics.requests.inc(endpoint, "413")
            await response(scope, receive, send)
            return
        status = ["500"]

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:
            self.metrics.requests.inc(endpoint, status[0])


def create_app(settings: ServeSettings | None = None, *, registry: Any = None, base: Any = None,
               manager: SnapshotManager | None = None) -> FastAPI:
    """The app serving ``settings.registry``'s tasks on ``base``.

    Builds the first snapshot now, so that an empty registry or a missing base fails here, before
    a port is bound. The registry watcher and the micro-batcher start with the app (its lifespan).
    ``registry``: a :class:`~adaptreg.registry.Registry` or location; ``base``: a loaded base or a spec.
    """
    settings = settings or ServeSettings()
    manager = manager or SnapshotManager(settings, registry=registry, base=base)
    manager.start(watch=False)
    metrics = ServeMetrics()
    batcher = MicroBatcher(settings.max_batch, settings.max_wait_ms / 1000.0, settings.max_queue, settings.batch_size,
                           metrics)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        manager.start(watch=True)
        try:
            yield
        finally:
            await batcher.stop()
            manager.stop()

    app = FastAPI(title="adaptreg", version=__version__, lifespan=lifespan,
                  description="Task adapters on one frozen base, from an adaptreg registry.")
    app.state.settings, app.state.manager, app.state.batcher, app.state.metrics = settings, manager, batcher, metrics

    app.add_middleware(_CountAndLimit, metrics=metrics, max_body=int(settings.max_body_mb * 1024 * 1024),
                       max_body_mb=settings.max_body_mb)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.post("/predict")
    async def predict(body: PredictRequest) -> JSONResponse:
        """Classify texts: each row's task (routed, or the one given), label, confidence and the version that answered."""
        t0 = time.perf_counter()
        try:
            if not body.texts:
                raise _ApiError(422, "texts is empty: send at least one text")
            if len(body.texts) > settings.max_texts:
                raise _ApiError(422, f"texts has {len(body.texts)} entries, more than the limit of {settings.max_texts} "
                                     "per request (--max-texts); split them over several requests")
            for i, text in enumerate(body.texts):
                if len(text) > settings.max_chars:
                    raise _ApiError(422, f"texts.{i} has {len(text)} characters, more than the limit of "
                                         f"{settings.max_chars} per text (--max-chars); shorten it")
            snap = manager.current(body.alias)
            if snap is None:  # an alias not loaded yet: build its snapshot off the event loop
                snap = await run_in_threadpool(manager.get, body.alias)
            if body.task is not None and body.task not in snap.versions:
                raise _ApiError(404, f"task {body.task!r} is not served (tasks: {', '.join(snap.tasks)})")
            if body.task is None and snap.predictor.router is None and len(snap.tasks) > 1:
                raise _ApiError(422, "no router is registered, so texts cannot be routed: pass \"task\", or build one "
                                     "with `adaptreg route add TASK...`")
            rows = await batcher.submit(snap, body.texts, body.task, body.threshold)
        except Exception as exc:  # noqa: BLE001 - every failure is one JSON line
            return _from_exception(exc)
        metrics.latency.observe(time.perf_counter() - t0)
        return JSONResponse(nan_to_none({"predictions": rows, "alias": snap.alias,
                                         "router_version": snap.router_version, "snapshot": snap.id}))

    @app.get("/tasks")
    async def tasks() -> JSONResponse:
        """The served tasks: versions, aliases, the version answering now, its metrics and labels."""
        try:
            return JSONResponse(nan_to_none(await run_in_threadpool(_task_table, manager)))
        except Exception as exc:  # noqa: BLE001
            return _from_exception(exc)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness and what is served; ``status`` is ``degraded`` while the last hot swap failed."""
        snap = manager.current()
        st = manager.status()
        return JSONResponse(nan_to_none({
            "status": "degraded" if st["last_error"] else "ok", "version": __version__, "alias": settings.alias,
            "snapshot": snap.id if snap else None, "versions": dict(snap.versions) if snap else {},
            "router_version": snap.router_version if snap else None,
            "aliases_loaded": [s["alias"] for s in st["snapshots"]], "swaps": st["swaps"], "last_poll": st["last_poll"],
            "last_error": st["last_error"], "skipped": st["skipped"], "uptime_s": round(time.time() - started, 3),
            "queue_rows": int(metrics.queue_rows.value()), "adapter_cache": st["adapter_cache"]}))

    @app.post("/reload")
    async def reload() -> JSONResponse:
        """Check the registry now instead of at the next poll (a failed build is retried): what changed, what is served."""
        try:
            out = await run_in_threadpool(manager.reload)
        except Exception as exc:  # noqa: BLE001
            return _from_exception(exc)
        return JSONResponse(nan_to_none({"status": "degraded" if out["errors"] else "ok", **out}))

    @app.get("/metrics")
    async def metrics_text() -> PlainTextResponse:
        """Prometheus text format."""
        return PlainTextResponse(metrics.render(manager), media_type=CONTENT_TYPE)

    return app


def _task_table(manager: SnapshotManager) -> dict[str, Any]:
    snap = manager.current()
    if snap is None:
        raise NotFoundError("nothing is served yet")
    reg = manager.registry
    rows = []
    for task, served in snap.versions.items():
        try:
            recs = reg.versions(task)
        except NotFoundError:  # removed since the snapshot was built: still served until the next swap
            recs = []
        entry = snap.predictor._entries[task]
        this = next((r for r in recs if r["version"] == served), None)
        rows.append({
            "task": task, "served_version": served, "versions": [r["version"] for r in recs],
            "aliases": {a: r["version"] for r in recs for a in r["aliases"]},
            "metrics": this["metrics"] if this else {}, "labels": list(entry.labels),
            "serves": "probe" if entry.identity else "adapter", "routed": _routed(snap, task),
        })
    return {"alias": snap.alias, "snapshot": snap.id, "router_version": snap.router_version, "tasks": rows,
            "skipped": manager.status()["skipped"]}


def _routed(snap: Any, task: str) -> bool:
    router = snap.predictor.router
    if router is None:
        return len(snap.versions) == 1
    from ..compose.router import served_entries

    return task in served_entries(router, dict(snap.versions)).values()
