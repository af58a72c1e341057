"""Launch the production server: gunicorn managing uvicorn workers, as the seed's ENTRYPOINT does.

The app is built in the master (cheap) and forked; each worker loads the model in its lifespan, so
workers never share a model object or a thread pool across a fork.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from conveyor.settings import ServeSettings


def _prepare_dir(variable: str, prefix: str) -> str:
    """A fresh directory the workers share, named in `variable` (kept if set: emptied, removed by whoever made it).

    prometheus-client's multiprocess mode needs one set before it is imported; the model repository publishes
    the served set in another (serve/repository.py).
    """
    path = os.environ.get(variable)
    if not path:
        path = tempfile.mkdtemp(prefix=prefix)
        os.environ[variable] = path
        master = os.getpid()  # workers are forks: only the master removes the directory, at its exit
        atexit.register(lambda: os.getpid() == master and shutil.rmtree(path, ignore_errors=True))
    else:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
    return path


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    run_dir = os.environ.get("CONVEYOR_RUN_DIR")
    if run_dir:  # a dead worker no longer holds up a repository change
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(run_dir, f"worker-{worker.pid}.json"))


def _deliver_before_exit(settings: ServeSettings) -> Callable[[Any], None]:
    """The master's last act: give written responses `graceful_timeout` to reach slow clients (serve/drain.py)."""
    ports = [p for p in (settings.port, settings.metrics_port) if p is not None]

    def on_exit(server: Any) -> None:
        from conveyor.serve.drain import undelivered, wait_delivered

        if pending := undelivered(ports):
            left = wait_delivered(ports, settings.graceful_timeout)
            server.log.info("waited for %d response(s) to reach their clients; %d undelivered", pending, left)

    return on_exit


def gunicorn_options(settings: ServeSettings) -> dict[str, Any]:
    return {
        # one app on both ports: it answers /metrics on the metrics port only (serve/app.py, MetricsPort)
        "bind": [f"{settings.host}:{p}" for p in (settings.port, settings.metrics_port) if p is not None],
        "workers": settings.workers,
        "worker_class": "uvicorn_worker.UvicornWorker",
        "timeout": max(30, int(settings.request_timeout) + 10),
        "graceful_timeout": int(settings.graceful_timeout),
        "keepalive": 5,
        "backlog": 2048,
        "loglevel": settings.log_level,
        "accesslog": None,
        "errorlog": "-",
        "child_exit": _child_exit,
        "on_exit": _deliver_before_exit(settings),
        "control_socket_disable": True,  # one control socket per user would clash between servers
        "limit_request_line": 8190,
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
    }


def run(settings: ServeSettings) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get `graceful_timeout` seconds to finish."""
    _prepare_dir("PROMETHEUS_MULTIPROC_DIR", "conveyor-metrics-")
    _prepare_dir("CONVEYOR_RUN_DIR", "conveyor-run-")
    from gunicorn.app.base import BaseApplication

    from conveyor.serve.app import create_app

    app = create_app(settings)
    options = {k: v for k, v in gunicorn_options(settings).items() if v is not None}

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Server().run()
