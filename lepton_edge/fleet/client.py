"""A client of the controller's HTTP API (what ``lepton-edge deploy`` uses)."""

from __future__ import annotations

import base64
import http.client
import json
import math
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lepton_edge.artifact import Artifact
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.fleet.rollout import MAX_EXPIRES_S

DEFAULT_CONTROLLER = "http://127.0.0.1:8788"




@dataclass(frozen=True)
class FieldRule:
    """What a numeric field of ``POST /v1/rollouts`` must be (the error's text names it)."""

    text: str
    low: float
    high: float = math.inf
    integer: bool = False
    above: bool = False  # ``low`` itself is not allowed

    def check(self, value: Any, name: str) -> float:
        ok = (not isinstance(value, bool) and isinstance(value, int if self.integer else (int, float))
              and math.isfinite(value) and self.low <= value <= self.high and not (self.above and value == self.low))
        if not ok:
            raise BadInput(f"{name} must be {self.text}")
        return value


# The rollout fields of POST /v1/rollouts; the API and `deploy` check them with the same rules.
ROLLOUT_FIELDS = {
    "canary": FieldRule("a whole number of devices, 1 or more", 1, integer=True),
    "canary_pct": FieldRule("a percentage above 0 and at most 100", 0, 100, above=True),
    "soak_s": FieldRule("a number of seconds, 0 or more", 0),
    "rate": FieldRule("a number of devices per minute above 0", 0, above=True),
    "growth": FieldRule("a factor of 1 or more", 1),
    "wave_interval_s": FieldRule("a number of seconds above 0", 0, above=True),
    "max_failures_pct": FieldRule("a percentage from 0 to 100", 0, 100),
    "min_done": FieldRule("a whole number of devices, 1 or more", 1, integer=True),
    "max_error_rate": FieldRule("a fraction from 0 to 1", 0, 1),
    "max_p99_increase_pct": FieldRule("a percentage, 0 or more", 0),
    "expires_s": FieldRule(f"a number of seconds from 1 to {MAX_EXPIRES_S}", 1, MAX_EXPIRES_S),
}


def check_rollout_fields(values: dict[str, Any], name: Callable[[str], str]) -> dict[str, Any]:
    """Check rollout fields (``name(key)`` says how to call one in an error: the JSON key or the flag)."""
    checked = {key: ROLLOUT_FIELDS[key].check(value, name(key)) for key, value in values.items()}
    if "canary" in checked and "canary_pct" in checked:
        raise BadInput(f"{name('canary')} and {name('canary_pct')} exclude each other: "
                       "give the canary as a count or a percentage")
    for key in ("growth", "wave_interval_s"):
        if key in checked and "rate" not in checked:
            raise BadInput(f"{name(key)} needs {name('rate')}: waves are released at a rate")
    return checked


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


def _parse_controller(url: str) -> tuple[str, str, int]:
    """``http://HOST:PORT`` -> (url, host, port); BadInput naming the flag otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BadInput(f"--controller {url}: expected http://HOST:PORT")
    try:
        port = parts.port or 80
    except ValueError:
        raise BadInput(f"--controller {url}: bad port") from None
    return url.rstrip("/"), parts.hostname, port


class ControllerClient:
    """One keep-alive connection. Given several controller URLs (replicas, a standby), a connection
    failure moves to the next at once; a whole round without an answer waits a little; all of it until
    ``connect_wait_s`` has passed. The URL that answered last stays in use."""

    def __init__(self, url: str | Sequence[str], token: str | None = None, *, timeout_s: float = 30.0,
                 connect_wait_s: float = 10.0) -> None:
        urls = [url] if isinstance(url, str) else list(dict.fromkeys(url))
        if not urls:
            raise BadInput("--controller: give at least one URL")
        self._targets = [_parse_controller(u) for u in urls]
        self._index = 0
        self.token = token
        self.timeout_s, self.connect_wait_s = timeout_s, connect_wait_s
        self._conn: http.client.HTTPConnection | None = None

    @property
    def url(self) -> str:
        """The controller in use (or being tried)."""
        return self._targets[self._index][0]

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
        tried = 0
        while True:
            try:
                if self._conn is None:
                    _url, host, port = self._targets[self._index]
                    self._conn = http.client.HTTPConnection(host, port, timeout=self.timeout_s)
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
                    where = self.url if len(self._targets) == 1 else \
                        ", ".join(t[0] for t in self._targets) + f" (last tried {self.url})"
                    raise Unreachable(f"cannot reach the controller at {where}: {reason}") from None
                tried += 1
                self._index = (self._index + 1) % len(self._targets)
                if tried % len(self._targets) == 0:
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

    def create_deployment(self, artifact_id: str, devices: Sequence[str] = (), expires_s: float | None = None, *,
                          tags: Sequence[str] = (), all_: bool = False) -> dict[str, Any]:
        """A plain deployment to the selection (named devices, devices with every tag, or all)."""
        body: dict[str, Any] = {"artifact": artifact_id, **selection_body(devices, tags, all_)}
        if expires_s is not None:
            body["expires_s"] = expires_s
        return self.request("POST", "/v1/deployments", body)

    def create_rollout(self, artifact_id: str, params: dict[str, Any], devices: Sequence[str] = (),
                       tags: Sequence[str] = (), all_: bool = False) -> dict[str, Any]:
        """A staged rollout; ``params`` are the fields of ``POST /v1/rollouts`` (canary, rate, ...)."""
        return self.request("POST", "/v1/rollouts",
                            {"artifact": artifact_id, **selection_body(devices, tags, all_), **params})

    def rollouts(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/rollouts")["rollouts"]

    def rollout(self, rollout_id: str, wait_s: float | None = None) -> dict[str, Any]:
        return self.request("GET", f"/v1/rollouts/{_path_id(rollout_id)}", wait_s=wait_s)

    def rollout_action(self, rollout_id: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``cancel``; returns the rollout."""
        return self.request("POST", f"/v1/rollouts/{_path_id(rollout_id)}/{action}", {})

    def deployment(self, dep_id: str, wait_s: float | None = None) -> dict[str, Any]:
        return self.request("GET", f"/v1/deployments/{dep_id}", wait_s=wait_s)

    def devices(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/devices")["devices"]


def selection_body(devices: Sequence[str], tags: Sequence[str], all_: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if devices:
        body["devices"] = list(devices)
    if tags:
        body["tags"] = list(tags)
    if all_:
        body["all"] = True
    return body


def _path_id(rollout_id: str) -> str:
    """A rollout id is hex; anything else would be another path (or 404 for the wrong reason)."""
    if not re.fullmatch(r"[0-9a-f]{1,64}", rollout_id):
        raise BadInput(f"rollout id {rollout_id[:80]!r}: expected the hex id `rollout list` shows")
    return rollout_id
