"""A client of the controller's HTTP API (what ``lepton-edge deploy`` uses)."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lepton_edge.artifact import Artifact
from lepton_edge.errors import BadInput, CheckFailed

DEFAULT_CONTROLLER = "http://127.0.0.1:8788"


class Unreachable(CheckFailed):
    """The controller did not answer within the time allowed."""


def read_token(path: str | Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise BadInput(f"--token-file {path}: {exc.strerror or exc}") from None
    if not token:
        raise BadInput(f"--token-file {path}: empty")
    return token


class ControllerClient:
    """One keep-alive connection; connection failures are retried until ``connect_wait_s`` has passed."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 30.0,
                 connect_wait_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise BadInput(f"--controller {url}: expected http://HOST:PORT")
        try:
            self.port = parts.port or 80
        except ValueError:
            raise BadInput(f"--controller {url}: bad port") from None
        self.url, self.host, self.token = url.rstrip("/"), parts.hostname, token
        self.timeout_s, self.connect_wait_s = timeout_s, connect_wait_s
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None, *, wait_s: float | None = None) -> Any:
        """JSON in, JSON out. 4xx -> BadInput (401 names the token), 5xx -> CheckFailed,
        no answer within ``wait_s`` (default ``connect_wait_s``) -> :class:`Unreachable`."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        deadline = time.monotonic() + (self.connect_wait_s if wait_s is None else wait_s)
        while True:
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                self._conn.request(method, path, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                status = resp.status
                if resp.will_close:
                    self.close()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if time.monotonic() >= deadline:
                    reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else \
                        "timed out" if isinstance(exc, socket.timeout) else str(exc) or type(exc).__name__
                    raise Unreachable(f"cannot reach the controller at {self.url}: {reason}") from None
                time.sleep(0.2)
        try:
            obj = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            obj = None
        if 200 <= status < 300:
            return obj
        message = obj.get("error") if isinstance(obj, dict) else raw[:200].decode(errors="replace")
        if status == 401:
            raise BadInput(f"the controller wants a valid bearer token (--token-file): {message}")
        if 400 <= status < 500:
            raise BadInput(f"the controller said: {message}")
        raise CheckFailed(f"the controller failed ({status}): {message}")

    def upload(self, artifact: Artifact) -> dict[str, Any]:
        return self.request("POST", "/v1/artifacts", {
            "manifest_b64": base64.b64encode(artifact.manifest_bytes).decode("ascii"),
            "signature_b64": base64.b64encode(artifact.signature).decode("ascii") if artifact.signature else None,
            "model_b64": base64.b64encode(artifact.model_bytes).decode("ascii")})

    def create_deployment(self, artifact_id: str, devices: list[str], expires_s: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"artifact": artifact_id, "devices": devices}
        if expires_s is not None:
            body["expires_s"] = expires_s
        return self.request("POST", "/v1/deployments", body)

    def deployment(self, dep_id: str, wait_s: float | None = None) -> dict[str, Any]:
        return self.request("GET", f"/v1/deployments/{dep_id}", wait_s=wait_s)

    def devices(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/devices")["devices"]
