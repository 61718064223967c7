"""One small HTTP server for Prometheus and an orchestrator's probes.

prometheus-client's ``start_http_server`` serves only the metrics; this
serves, on one port, from a daemon thread:

- ``GET /metrics``: the worker's registry (Prometheus text, or OpenMetrics
  when the scraper asks for it);
- ``GET /healthz``: 200 while the worker is starting or its consume loop's
  thread runs, else 503 (for a liveness probe: restart the process);
- ``GET /readyz``: 200 when the worker owns partitions, is not retrying a
  failed service, and no batch has waited longer than the ready window for
  its commit; else 503 (for a readiness probe and rollouts).

Probe answers are one line of JSON, e.g. ``{"ready":false,"reason":"no
partitions assigned"}``. Requests are not logged (a scrape every few seconds
would flood the log).
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from consumers.errors import MetricsServerError
from consumers.metrics import WorkerMetrics

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"

_JSON = "application/json"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        metrics = self.server.metrics
        if path == "/metrics":
            body, content_type = metrics.scrape(self.headers.get("Accept"))
            self._send(200, body, content_type)
        elif path == "/healthz":
            self._probe(*metrics.liveness())
        elif path == "/readyz":
            self._probe(*metrics.readiness())
        else:
            self._probe(False, {"error": "not found; try /metrics, /healthz or /readyz"}, status=404)

    def _probe(self, ok: bool, body: dict[str, Any], status: int | None = None) -> None:
        text = self.server.scrub(json.dumps(body, separators=(",", ":"), default=str))
        self._send(status or (200 if ok else 503), (text + "\n").encode(), _JSON)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: WorkerMetrics, scrub: Callable[[str], str]) -> None:
        self.metrics = metrics
        self.scrub = scrub
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves `metrics` on ``host:port`` (port 0: any free one, see :attr:`port`) until closed.

    Binding happens in the constructor, so a port in use fails at once with
    MetricsServerError; :meth:`start` then serves from a daemon thread.
    `scrub` cleans probe answers (a retried error's text) of passwords.
    """

    def __init__(
        self,
        metrics: WorkerMetrics,
        host: str = DEFAULT_HOST,
        port: int = 0,
        scrub: Callable[[str], str] = str,
    ) -> None:
        try:
            self._server = _Server((host, port), metrics, scrub)
        except OSError as e:
            why = "the port is in use" if e.errno == errno.EADDRINUSE else e.strerror or str(e)
            raise MetricsServerError(
                f"cannot serve metrics on {host}:{port}: {why} (--metrics-host / --metrics-port)"
            ) from e
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MetricsServer:
        """Serve from a daemon thread; return self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()
