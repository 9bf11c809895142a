"""The controller's HTTP API (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive, ``TCP_NODELAY``).

Default ``127.0.0.1:8788``. On any non-loopback address every request but ``GET /v1/health``
needs ``Authorization: Bearer <token>``: the token comes from ``--token-file`` or is generated
into ``<store>/api.token`` (mode 0600). With ``--token-file`` it is required on loopback too.

    GET  /v1/health                    {"ok", "fleet", "broker", "broker_connected", "replica" (this one's id),
                                        "replicas" (the live ones), "messages" (handled here, per kind),
                                        "messages_for_peers" (other replicas' devices: dropped),
                                        "telemetry_rows", "telemetry_duplicates", ...}
    POST /v1/artifacts                 {"manifest_b64", "signature_b64" (or null), "model_b64"}
                                       -> 201 (new) or 200: {"artifact": id, "name", "version",
                                          "model_sha256", "size", "signed", "created", "new"}
    GET  /v1/artifacts                 {"artifacts": [...]}
    POST /v1/deployments               {"artifact": id, "devices": [id, ...] and/or "tags": [tag, ...]
                                        (a device must carry every tag) or "all": true, "expires_s": 3600,
                                        "block_size": 65536 (optional)} -> 201: the deployment and
                                        "unknown_devices" (named ids the controller has never seen; their
                                        jobs wait for them). A selection matching no known device: 400.
    POST /v1/rollouts                  {"artifact", the selection as above, and optional "canary" (devices)
                                        or "canary_pct", "soak_s", "rate" (devices/min), "growth",
                                        "wave_interval_s", "max_failures_pct", "min_done", "max_error_rate",
                                        "max_p99_increase_pct", "expires_s"} -> 201: the rollout (its JSON in
                                        docs/ROLLOUTS.md) and "unknown_devices"
    GET  /v1/rollouts                  {"rollouts": [rollout without "devices", ...]}
    GET  /v1/rollouts/<id>             the rollout with its waves, summary, abort and devices
    POST /v1/rollouts/<id>/pause|resume|cancel   -> 200: the rollout
    GET  /v1/deployments/<id>          {"deployment", "artifact", "name", "version", "expires_at",
                                        "devices": [{"device", "job", "state", "received", "total",
                                        "reason", "online", ...}], "summary": {state: n}, "done"}
    GET  /v1/jobs/<id>                 the job and its state changes ("events")
    GET  /v1/devices                   {"devices": [{"device", "online", "model", "last_seen",
                                        "telemetry", "ota", ...}]}
    GET  /v1/devices/<id>/telemetry    {"device", "series": [{"received", "seq", ...telemetry fields}]}
                                       (query: since=<unix time>, limit=<n>; oldest first)
    GET  /metrics                      Prometheus text format (lepton_edge.fleet.metrics)
    GET  /  and  /dashboard/<file>     the web dashboard (static files, no token: the page asks for it)

The artifact id is the sha256 of the manifest's exact bytes. Errors: ``{"error": "one line"}`` with
400 (bad input), 401 (token), 404, 405, 411 (no Content-Length), 413 (too big) or 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, overload
from urllib.parse import parse_qs, urlsplit

from lepton_edge.errors import ApiError, BadInput
from lepton_edge.fleet.client import ROLLOUT_FIELDS, check_rollout_fields
from lepton_edge.fleet.controller import Controller, NotFound, Selection
from lepton_edge.fleet.dashboard import dashboard_asset
from lepton_edge.fleet.metrics import render_metrics
from lepton_edge.fleet.rollout import RolloutParams
from lepton_edge.fleet.series import telemetry_series
from lepton_edge.fsio import atomic_write_text
from lepton_edge.mqtt import check_name, valid_tag

log = logging.getLogger("lepton_edge.fleet.http")

DEFAULT_LISTEN = "127.0.0.1:8788"
DEFAULT_MAX_BODY = 256 * 1024 * 1024
TOKEN_FILE = "api.token"
# The dashboard's files: no sniffing, always revalidated (a new kit version's page), never framed
# (the page's own <meta> CSP cannot say frame-ancestors).
DASHBOARD_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
                     "Content-Security-Policy": "frame-ancestors 'none'"}


@dataclass(frozen=True)
class HttpListen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: assume it is reachable from elsewhere

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}"


def parse_http_listen(text: str) -> HttpListen:
    """``HOST:PORT`` or ``[V6]:PORT``; port 0 picks a free one."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not m:
        raise BadInput(f"--http {text}: expected HOST:PORT")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 <= int(port) <= 65535:
        raise BadInput(f"--http {text}: port must be 0 to 65535")
    return HttpListen(host, int(port))


def resolve_token(store_dir: Path, listen: HttpListen, token_file: str | os.PathLike[str] | None) -> str | None:
    """The bearer token the API requires, or None (loopback without --token-file)."""
    if token_file is not None:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise BadInput(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if len(token) < 16:
            raise BadInput(f"--token-file {token_file}: the token must have at least 16 characters")
        return token
    if listen.loopback:
        return None
    path = store_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    atomic_write_text(path, token + "\n")  # mkstemp makes it 0600 from the start
    os.chmod(path, 0o600)
    return token


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, listen: HttpListen, controller: Controller, token: str | None, max_body: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        self.controller, self.token, self.max_body = controller, token, max_body
        super().__init__((listen.host, listen.port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lepton-edge-fleet/1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without this a keep-alive response waits ~40 ms for the client's delayed ACK (Nagle).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # the stdlib's name
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/v1/health":
                self._only(method, "GET")
                return self._reply(200, self.server.controller.health())
            if path == "/" or path.startswith("/dashboard/"):
                self._only(method, "GET")
                found = dashboard_asset("index.html" if path == "/" else path[len("/dashboard/"):])
                if found is None:
                    raise ApiError(404, f"no such file: {path}")
                return self._reply_bytes(200, *found, DASHBOARD_HEADERS)
            self._authorize()
            c = self.server.controller
            if path == "/metrics":
                self._only(method, "GET")
                return self._reply_bytes(200, *render_metrics(c))
            m = re.fullmatch(r"/v1/devices/([A-Za-z0-9._-]{1,64})/telemetry", path)
            if m:
                self._only(method, "GET")
                since, limit = _query_number(self.path, "since", 0.0), int(_query_number(self.path, "limit", 2000))
                return self._reply(200, {"device": m.group(1),
                                         "series": telemetry_series(c.db, m.group(1), since, limit)})
            if path == "/v1/devices":
                self._only(method, "GET")
                return self._reply(200, {"devices": c.devices()})
            if path == "/v1/artifacts":
                if method == "GET":
                    return self._reply(200, {"artifacts": c.list_artifacts()})
                self._only(method, "POST")
                body = self._json_body()
                result = c.upload_artifact(_b64(body, "manifest_b64"), _b64(body, "signature_b64", optional=True),
                                           _b64(body, "model_b64"))
                return self._reply(201 if result["new"] else 200, result)
            if path == "/v1/deployments":
                self._only(method, "POST")
                body = self._json_body()
                expires = body.get("expires_s")
                if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))):
                    raise BadInput("'expires_s' must be a number of seconds")
                block = body.get("block_size")
                if block is not None and (isinstance(block, bool) or not isinstance(block, int)):
                    raise BadInput("'block_size' must be an integer")
                artifact = _artifact_field(body)
                selection = _select(c, body)
                dep = c.create_deployment(artifact, selection.devices, expires, block)
                return self._reply(201, {**dep, "unknown_devices": list(selection.unknown)})
            if path == "/v1/rollouts":
                if method == "GET":
                    return self._reply(200, {"rollouts": c.rollouts()})
                self._only(method, "POST")
                body = self._json_body()
                artifact, params = _artifact_field(body), rollout_params(body)
                selection = _select(c, body)
                rollout = c.create_rollout(artifact, selection, params)
                return self._reply(201, {**rollout, "unknown_devices": list(selection.unknown)})
            m = re.fullmatch(r"/v1/rollouts/([0-9a-f]{1,64})(?:/(pause|resume|cancel))?", path)
            if m:
                if m.group(2) is None:
                    self._only(method, "GET")
                    return self._reply(200, c.rollout(m.group(1)))
                self._only(method, "POST")
                return self._reply(200, c.rollout_action(m.group(1), m.group(2)))
            m = re.fullmatch(r"/v1/(deployments|jobs)/([0-9a-f]{1,64})", path)
            if m:
                self._only(method, "GET")
                return self._reply(200, c.deployment(m.group(2)) if m.group(1) == "deployments" else c.job(m.group(2)))
            raise ApiError(404, f"no such endpoint: {method} {path}")
        except ApiError as exc:
            self._reply(exc.status, {"error": exc.message}, exc.headers)
        except NotFound as exc:
            self._reply(404, {"error": str(exc)})
        except BadInput as exc:
            self._reply(400, {"error": str(exc)})
        except Exception as exc:  # the client gets one line, the log the traceback
            log.exception("%s %s failed", method, path)
            self._reply(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _only(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise ApiError(405, f"use {allowed}", {"Allow": allowed})

    def _authorize(self) -> None:
        token = self.server.token
        if token is None:
            return
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "a valid bearer token is required (--token-file)",
                           {"WWW-Authenticate": 'Bearer realm="lepton-edge"'})

    def _json_body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "send the body with a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411, "a Content-Length is required")
        n = int(length)
        if n > self.server.max_body:
            self.close_connection = True  # do not read (or skip) a body that large
            raise ApiError(413, f"body of {n} bytes is over the limit of {self.server.max_body}")
        data = self.rfile.read(n)
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadInput("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadInput("the body must be a JSON object")
        return body

    def _reply(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
        self._reply_bytes(status, body, "application/json", headers)

    def _reply_bytes(self, status: int, body: bytes, content_type: str,
                     headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _query_number(raw_path: str, key: str, default: float) -> float:
    """A non-negative number from the query string (BadInput otherwise)."""
    values = parse_qs(urlsplit(raw_path).query).get(key)
    if not values:
        return default
    try:
        value = float(values[-1])
    except ValueError:
        raise BadInput(f"query parameter {key!r} must be a number") from None
    if not math.isfinite(value) or value < 0:
        raise BadInput(f"query parameter {key!r} must be a non-negative number")
    return value


def _artifact_field(body: dict[str, Any]) -> str:
    artifact = body.get("artifact")
    if not isinstance(artifact, str):
        raise BadInput("'artifact' must be an artifact id (the sha256 of its manifest)")
    return artifact


def selection_fields(body: dict[str, Any]) -> tuple[list[str], list[str], bool]:
    """``devices``, ``tags`` and ``all`` from a request body: at least one way to select, ``all`` alone."""
    devices, tags, all_ = body.get("devices", []), body.get("tags", []), body.get("all", False)
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise BadInput("'devices' must be a list of device ids")
    for device in devices:
        check_name(device, "'devices': device id")
    if not isinstance(tags, list) or not all(isinstance(t, str) and valid_tag(t) for t in tags):
        raise BadInput("'tags' must be a list of tags (1 to 64 printable characters, no spaces)")
    if not isinstance(all_, bool):
        raise BadInput("'all' must be true or false")
    if all_ and (devices or tags):
        raise BadInput("'all' selects every device: send it without 'devices' and 'tags'")
    if not (devices or tags or all_):
        raise BadInput("select devices with 'devices', 'tags' or 'all'")
    return devices, tags, all_


def _select(controller: Controller, body: dict[str, Any]) -> Selection:
    devices, tags, all_ = selection_fields(body)
    selection = controller.select_devices(devices, tags, all_)
    if not selection.devices:  # named devices are always selected: only tags or all can match nothing
        what = "all devices" if all_ else f"tag{'s' if len(tags) > 1 else ''} {', '.join(tags)}"
        raise BadInput(f"the selection ({what}) matches no device the controller knows")
    return selection


def rollout_params(body: dict[str, Any]) -> RolloutParams:
    """The rollout's parameters from a ``POST /v1/rollouts`` body; a field left out takes the policy's default."""
    unknown = sorted(set(body) - set(ROLLOUT_FIELDS) - {"artifact", "devices", "tags", "all"})
    if unknown:
        raise BadInput(f"unknown field '{unknown[0]}' (rollout fields: {', '.join(ROLLOUT_FIELDS)})")
    values = check_rollout_fields({k: v for k, v in body.items() if k in ROLLOUT_FIELDS and v is not None},
                                  lambda key: f"'{key}'")
    return RolloutParams(**values)


@overload
def _b64(body: dict[str, Any], key: str) -> bytes: ...


@overload
def _b64(body: dict[str, Any], key: str, *, optional: bool) -> bytes | None: ...


def _b64(body: dict[str, Any], key: str, *, optional: bool = False) -> bytes | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadInput(f"'{key}' must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"'{key}' is not valid base64") from None


class HttpApi:
    """The API server on its own thread. ``url`` has the real port (``--http HOST:0`` picks one)."""

    def __init__(self, controller: Controller, listen: HttpListen, token: str | None,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        try:
            self._server = _Server(listen, controller, token, max_body)
        except OSError as exc:
            raise BadInput(f"--http {listen.host}:{listen.port}: {exc.strerror or exc}") from None
        self.listen = listen
        self.port = self._server.server_address[1]
        self.url = listen.url(self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="fleet-http",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
