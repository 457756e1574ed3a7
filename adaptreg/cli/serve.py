"""``adaptreg serve``: the registry's task adapters behind an HTTP JSON API (docs/serving.md)."""

from __future__ import annotations

import click

from ._common import check_threshold, comma_list, log, registry_option


def _help(name: str) -> str:
    # the help texts live on ServeSettings' fields; importing it loads no heavy library
    from ..serve.settings import ServeSettings

    return ServeSettings.help(name)


def one_blas_thread() -> None:
    """numpy's BLAS on one thread for this process: the routing maths between a batch's trunk and
    branch passes is a few small products, and OpenBLAS's idle threads then busy-wait on the cores
    torch's next pass needs (on 2 cores 32-row batches ran about 15 % slower; docs/benchmarks.md,
    "Serving"). The server process is ours, so this is not a library side effect.

    A limit reaches only the BLAS libraries already loaded, so numpy is loaded first (before, the
    limit ran before anything had loaded numpy and changed nothing); ``OPENBLAS_NUM_THREADS``
    (unless set) covers an OpenBLAS loaded later, such as scipy's."""
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help=_help("host"))
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="TCP port to listen on (0: any free port; the URL is printed on stdout).")
@click.option("--allow-remote", is_flag=True, help=_help("allow_remote"))
@registry_option
@click.option("--base", default=None, metavar="SPEC", help=_help("base"))
@click.option("--tasks", "task_list", default=None, metavar="T1,T2", help=_help("tasks"))
@click.option("--alias", default="production", show_default=True, help=_help("alias"))
@click.option("--threshold", type=float, default=None, help=_help("threshold"))
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True, help=_help("max_batch"))
@click.option("--max-wait-ms", type=click.FloatRange(0, 10_000), default=5.0, show_default=True, help=_help("max_wait_ms"))
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help=_help("batch_size"))
@click.option("--poll", "poll_s", type=click.FloatRange(0, 86_400), default=2.0, show_default=True, help=_help("poll_s"))
@click.option("--max-adapters", type=click.IntRange(1), default=16, show_default=True, help=_help("max_adapters"))
@click.option("--max-aliases", type=click.IntRange(1), default=4, show_default=True, help=_help("max_aliases"))
@click.option("--max-texts", type=click.IntRange(1), default=1024, show_default=True, help=_help("max_texts"))
@click.option("--max-chars", type=click.IntRange(1), default=20_000, show_default=True, help=_help("max_chars"))
@click.option("--max-queue", type=click.IntRange(1), default=16384, show_default=True, help=_help("max_queue"))
@click.option("--max-body-mb", type=click.FloatRange(0, min_open=True), default=16.0, show_default=True,
              help=_help("max_body_mb"))
@click.option("--bf16", is_flag=True, help=_help("bf16"))
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
def serve(host: str, port: int, allow_remote: bool, registry: str | None, base: str | None, task_list: str | None,
          alias: str, threshold: float | None, max_batch: int, max_wait_ms: float, batch_size: int, poll_s: float,
          max_adapters: int, max_aliases: int, max_texts: int, max_chars: int, max_queue: int, max_body_mb: float,
          bf16: bool, access_log: bool) -> None:
    """Serve every task in the registry over HTTP: POST /predict, GET /tasks, /healthz, /metrics.

    Loads the base once and each task's version under --alias (else its latest), routes texts
    with the latest router, batches concurrent requests, and picks up promoted, new and archived
    versions without a restart (checked every --poll seconds). Listens on 127.0.0.1 unless told
    otherwise; the API has no authentication. Stop with Ctrl-C or SIGTERM (requests in flight finish first).

    \b
    Examples:
      adaptreg serve
      adaptreg serve --port 9000 --alias canary --max-batch 128 --max-wait-ms 10
      curl -s localhost:8080/predict -d '{"texts": ["Shares fell 3%"]}' -H 'content-type: application/json'
    """
    import signal
    import socket
    import sys

    from ..errors import ConfigError
    from ..serve.settings import ServeSettings

    check_threshold(threshold)
    settings = ServeSettings(registry=registry, base=base, tasks=comma_list(task_list, "task"), alias=alias,
                             threshold=threshold, host=host, port=port, allow_remote=allow_remote, max_batch=max_batch,
                             max_wait_ms=max_wait_ms, batch_size=batch_size, poll_s=poll_s, max_adapters=max_adapters,
                             max_aliases=max_aliases, max_texts=max_texts, max_chars=max_chars, max_queue=max_queue,
                             max_body_mb=max_body_mb, bf16=bf16)
    # bind first: a port in use fails in a second, not after loading the models
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    try:
        import uvicorn
        from ..serve.app import create_app

        one_blas_thread()
        app = create_app(settings)
        bound = sock.getsockname()
        url = f"http://{f'[{bound[0]}]' if family == socket.AF_INET6 else bound[0]}:{bound[1]}"
        sock.listen(2048)  # from here connections wait in the backlog until uvicorn accepts them
        snap = app.state.manager.current()
        log(f"serving {', '.join(f'{t}@{v}' for t, v in snap.versions.items())} on base {app.state.manager.base.id} "
            f"at {url} (alias {alias}, router version {snap.router_version}); Ctrl-C stops")
        click.echo(url)  # stdout: the one piece of data, for scripts (useful with --port 0)
        sys.stdout.flush()
        config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                                lifespan="on", timeout_graceful_shutdown=10)
        # SIGTERM as Ctrl-C: uvicorn stops accepting, lets the requests in flight finish (at most 10 s), shuts
        # the app down, then re-raises the signal; with this handler that ends in KeyboardInterrupt and exit 0
        # rather than death by signal
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the signal: stopping is what was asked
            pass
        log("stopped")
    finally:
        sock.close()


def register(group: click.Group) -> None:
    group.add_command(serve)
