"""The local HTTP/1.1 API: standard library server, keep-alive, one thread per connection.

Routes: ``POST /v1/infer`` (bodies in :mod:`lepton_edge.agent.codec`; images, WAVs and unscaled JSON lists
through the model's preprocessing spec in :mod:`lepton_edge.agent.raw_input`), ``GET /v1/status``,
``GET /metrics`` (Prometheus text), ``GET /healthz``.

Latency: every response goes out in one ``send`` (status line, headers and body together) and TCP
sockets set ``TCP_NODELAY``; otherwise Nagle's algorithm meets the client's delayed ACK and a
keep-alive answer arrives about 40 ms late.

Robustness: a request body must carry ``Content-Length`` (411 otherwise) and stay under
``max_body_bytes`` (413, and the connection closes because the body was not read); an error is a
4xx/5xx with ``{"error": ..., "status": ...}``; idle connections time out after ``idle_timeout_s``;
at most ``max_connections`` are served at once (503 beyond). One client's bad request or dropped
connection touches only its own thread.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lepton_edge import __version__
from lepton_edge.agent import raw_input
from lepton_edge.agent.codec import decode_binary, decode_json, encode_binary, encode_json
from lepton_edge.agent.config import Listen
from lepton_edge.agent.metrics import CONTENT_TYPE
from lepton_edge.errors import ApiError, BadInput, LeptonError, Unavailable

if TYPE_CHECKING:
    from lepton_edge.artifact import Artifact
    from lepton_edge.preprocess import PreprocessSpec
    from lepton_edge.runtime.base import Runner

log = logging.getLogger("lepton_edge.agent")

GET_ROUTES = ("/v1/status", "/metrics", "/healthz")
INFER = "/v1/infer"
_BUSY_BODY = b'{"error": "too many connections, retry later", "status": 503}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
         b"Connection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class ServedModelView(Protocol):
    """What the API needs from the model being served (see :class:`lepton_edge.agent.served.ServedModel`)."""

    @property
    def runner(self) -> Runner: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def binary_headers(self) -> bytes: ...
    @property
    def artifact(self) -> Artifact: ...
    @property
    def preprocess(self) -> PreprocessSpec | None: ...


class ApiApp(Protocol):
    """The agent, as the HTTP layer sees it."""

    metrics: Any

    def current(self) -> ServedModelView | None: ...

    def infer(self, served: ServedModelView,
              arrays: list[np.ndarray[Any, Any]]) -> tuple[list[np.ndarray[Any, Any]], float]: ...

    def status(self) -> dict[str, Any]: ...

    def health(self) -> tuple[int, dict[str, Any]]: ...


class _DateCache:
    """The ``Date`` header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._value = time.strftime("Date: %a, %d %b %Y %H:%M:%S GMT\r\n", time.gmtime(now)).encode()
            self._second = now
        return self._value


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"lepton-edge-agent/{__version__}"
    sys_version = ""
    server: _ServerMixin

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout_s  # type: ignore[misc]  # per connection, not per class
        self.disable_nagle_algorithm = self.server.is_tcp  # type: ignore[misc]
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # the base class's name
        log.debug("api: " + format, *args)

    # --- responses -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: bytes = b"application/json",
              extra: bytes = b"", route: str = "other") -> None:
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s" % (
            status, HTTPStatus(status).phrase.encode(), content_type, len(body), self.server.date.get(), extra)
        if self.close_connection or self.server.draining:
            self.close_connection = True
            head += b"Connection: close\r\n"
        self.wfile.write(head + b"\r\n" + body)  # one send: see the module docstring
        self.server.app.metrics.count_request(route, status)

    def _json(self, status: int, obj: Any, route: str) -> None:
        self._send(status, json.dumps(obj).encode(), route=route)

    def _error(self, status: int, message: str, route: str = "other", *, close: bool = False,
               extra: bytes = b"") -> None:
        if close or (status >= 500 and status != 503):
            self.close_connection = True
        self._send(status, json.dumps({"error": message, "status": status}).encode(), extra=extra, route=route)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by the base class (malformed request line, headers, unknown method): JSON, then close."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._error(code, message or phrase, close=True)

    # --- routes ----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        app = self.server.app
        if path == "/v1/status":
            self._json(200, app.status(), path)
        elif path == "/metrics":
            self._send(200, app.metrics.render(), CONTENT_TYPE.encode(), route=path)
        elif path == "/healthz":
            code, body = app.health()
            self._json(code, body, path)
        elif path == INFER:
            self._error(405, "use POST for /v1/infer", path, extra=b"Allow: POST\r\n")
        else:
            self._error(404, f"no route {path}")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != INFER:
            if path in GET_ROUTES:
                self._error(405, f"use GET for {path}", path, close=True, extra=b"Allow: GET\r\n")
            else:
                self._error(404, f"no route {path}", close=True)
            return
        server = self.server
        with server.in_flight():
            try:
                body = self._read_body()
                if body is None:
                    return
                self._infer(body)
            except ApiError as exc:
                self._error(exc.status, exc.message, INFER)
            except LeptonError as exc:
                self._error(503 if isinstance(exc, Unavailable) else 400, str(exc), INFER)
            except (ConnectionError, TimeoutError):
                self.close_connection = True
            except Exception as exc:  # a failure answers this client only
                log.exception("api: inference failed")
                server.app.metrics.observe_error()
                self._error(500, f"inference failed: {type(exc).__name__}: {exc}", INFER)

    def _read_body(self) -> bytes | None:
        headers = self.headers
        if headers.get("Transfer-Encoding") is not None:
            self._error(411, "send the body with Content-Length, not chunked", INFER, close=True)
            return None
        length_text = headers.get("Content-Length")
        if length_text is None:
            self._error(411, "Content-Length is required", INFER, close=True)
            return None
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self._error(400, f"bad Content-Length {length_text!r}", INFER, close=True)
            return None
        if length > self.server.max_body_bytes:
            self._error(413, f"body of {length} bytes exceeds the limit of {self.server.max_body_bytes}", INFER,
                        close=True)
            return None
        body = self.rfile.read(length)
        if len(body) != length:  # the client went away mid-body
            self.close_connection = True
            return None
        return body

    def _infer(self, body: bytes) -> None:
        app = self.server.app
        served = app.current()
        if served is None:
            raise ApiError(503, "no model is active")
        runner = served.runner
        content_type = (self.headers.get("Content-Type") or "application/json").split(";", 1)[0].strip().lower()
        manifest = served.artifact.manifest
        if raw_input.is_raw(content_type, body, manifest):
            arrays = raw_input.raw_to_inputs(served.preprocess, runner.inputs, body, content_type,
                                             f"model '{served.name}' v{served.version}")
            outputs, latency_ms = app.infer(served, arrays)
            if raw_input.wants_binary(self.headers.get("Accept")):
                self._send(200, encode_binary(outputs), b"application/octet-stream",
                           served.binary_headers + b"X-Latency-Ms: %.4f\r\n" % latency_ms, INFER)
            else:
                self._send(200, encode_json(outputs, runner.outputs, quantized=False, latency_ms=latency_ms,
                                            name=served.name, version=served.version), route=INFER)
        elif content_type == "application/octet-stream":
            arrays = decode_binary(body, runner.inputs, self.headers.get("X-Input-Dtype"))
            outputs, latency_ms = app.infer(served, arrays)
            self._send(200, encode_binary(outputs), b"application/octet-stream",
                       served.binary_headers + b"X-Latency-Ms: %.4f\r\n" % latency_ms, INFER)
        elif content_type == "application/json":
            arrays, quantized = decode_json(body, runner.inputs)
            outputs, latency_ms = app.infer(served, arrays)
            self._send(200, encode_json(outputs, runner.outputs, quantized=quantized, latency_ms=latency_ms,
                                        name=served.name, version=served.version), route=INFER)
        else:
            raise ApiError(415, f"Content-Type {content_type!r}: use application/json or application/octet-stream "
                                "(image/jpeg, image/png, audio/wav for a model with a preprocessing spec)")


# The mixin goes in front of a socketserver server: type-check it as one.
if TYPE_CHECKING:
    _ServerBase = socketserver.BaseServer
else:
    _ServerBase = object


class _ServerMixin(_ServerBase):
    """Connection limit, in-flight tracking for a graceful stop, and the app the handlers call."""

    daemon_threads = True
    block_on_close = False
    is_tcp = True

    def _init_api(self, app: ApiApp, *, max_body_bytes: int, max_connections: int, idle_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.date = _DateCache()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._connections: set[socket.socket] = set()
        self.draining = False

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.draining or not self._slots.acquire(blocking=False):
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._cond:
            self._connections.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]  # ThreadingMixIn's
        finally:
            with self._cond:
                self._connections.discard(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("api: connection error", exc_info=True)

    def in_flight(self) -> _InFlight:
        return _InFlight(self)

    def drain(self, timeout_s: float) -> bool:
        """Stop taking requests, wait for those in flight, then close idle keep-alive connections."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            drained = self._in_flight == 0
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return drained


class _InFlight:
    def __init__(self, server: _ServerMixin) -> None:
        self.server = server

    def __enter__(self) -> None:
        with self.server._cond:
            self.server._in_flight += 1

    def __exit__(self, *exc: object) -> None:
        with self.server._cond:
            self.server._in_flight -= 1
            self.server._cond.notify_all()


class TcpApiServer(_ServerMixin, ThreadingHTTPServer):
    def __init__(self, host: str, port: int, app: ApiApp, **limits: Any) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._init_api(app, **limits)
        super().__init__((host, port), ApiHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a DNS lookup that stalls on a board without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class UnixApiServer(_ServerMixin, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    is_tcp = False

    def __init__(self, path: Path, app: ApiApp, **limits: Any) -> None:
        self.socket_path = path
        self._init_api(app, **limits)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket from an earlier run
        except FileNotFoundError:
            pass
        super().__init__(str(path), ApiHandler)
        os.chmod(path, 0o660)

    def server_close(self) -> None:
        super().server_close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


def make_server(listen: Listen, app: ApiApp, *, max_body_bytes: int, max_connections: int,
                idle_timeout_s: float) -> TcpApiServer | UnixApiServer:
    limits = {"max_body_bytes": max_body_bytes, "max_connections": max_connections, "idle_timeout_s": idle_timeout_s}
    try:
        if listen.path is not None:
            return UnixApiServer(listen.path, app, **limits)
        return TcpApiServer(listen.host or "127.0.0.1", listen.port or 0, app, **limits)
    except OSError as exc:
        raise BadInput(f"cannot listen on {listen.url()}: {exc.strerror or exc}") from None


def bound_url(server: TcpApiServer | UnixApiServer, listen: Listen) -> str:
    """The address actually bound (port 0 in the config picks a free one)."""
    if isinstance(server, UnixApiServer):
        return listen.url()
    return listen.url(server.server_address[1])
