"""Running the HTTP API: in the foreground (``llumnix-dask up``) or in a background thread (tests, notebooks).

    >>> server = start_server(cluster, ServeConfig(port=0))      # doctest: +SKIP
    >>> server.url                                                 # doctest: +SKIP
    'http://127.0.0.1:41234'
    >>> server.stop()                                              # doctest: +SKIP
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from llumnix_dask.config import ServeConfig
from llumnix_dask.serve.app import create_app


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class RunningServer:
    """A uvicorn server bound to a real socket (port 0 = any free port)."""

    def __init__(self, cluster: Any, config: ServeConfig, log_level: str = "warning") -> None:
        self.config = config
        self.app = create_app(cluster, config)
        self._sock = _bind(config.host, config.port)
        self.port = self._sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level=log_level, timeout_graceful_shutdown=2))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in the foreground until interrupted (Ctrl-C)."""
        self.server.run(sockets=[self._sock])

    def start(self, timeout: float = 30.0) -> "RunningServer":
        self._thread = threading.Thread(target=self.run, name="llumnix-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self._sock.close()
        except OSError:
            pass


def start_server(cluster: Any, config: ServeConfig | None = None) -> RunningServer:
    """Serve ``cluster`` over HTTP from a background thread; returns once the socket accepts requests."""
    return RunningServer(cluster, config or ServeConfig()).start()
