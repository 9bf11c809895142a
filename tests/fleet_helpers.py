"""Helpers for the fleet tests: small signed artifacts, a controller with its HTTP API (:class:`Fleet`), HTTP calls."""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_edge.artifact import generate_keypair, load_private_key, load_public_key
from lepton_edge.fleet.controller import Controller, ControllerOptions
from lepton_edge.fleet.http_api import HttpApi, HttpListen
from lepton_edge.mqtt import SessionOptions, parse_broker_url
from lepton_edge.tools.devsim.artifact import sim_artifact

FLEET, DEVICE = "test-fleet", "test-device"


def keypair(directory: Path) -> tuple[Any, Any, Path]:
    """(private key, public key, public key path) made in ``directory``."""
    priv, pub = generate_keypair(directory)
    return load_private_key(priv), load_public_key(pub), pub


# An artifact directory whose model is random bytes (devices in these tests do not run it).
make_artifact = sim_artifact


def api(url: str, method: str, path: str, body: Any = None, token: str | None = None,
        timeout: float = 30) -> tuple[int, Any]:
    """One HTTP request to the controller: (status, parsed JSON)."""
    host_port = url.split("://", 1)[1]
    conn = http.client.HTTPConnection(host_port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def wait_for(what: Callable[[], Any], timeout: float, message: Any) -> Any:
    """Poll ``what`` until it returns something true (returned); else fail with ``message`` (or its call)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(message() if callable(message) else message)


def upload_dir(controller: Controller, directory: Path) -> str:
    """Upload an unsigned artifact directory straight to an in-process controller; its id."""
    return controller.upload_artifact((directory / "manifest.json").read_bytes(), None,
                                      (directory / "model.tflite").read_bytes())["artifact"]


def upload_body(artifact_dir: Path) -> dict[str, Any]:
    sig = artifact_dir / "manifest.sig"
    return {"manifest_b64": base64.b64encode((artifact_dir / "manifest.json").read_bytes()).decode(),
            "signature_b64": base64.b64encode(sig.read_bytes()).decode() if sig.exists() else None,
            "model_b64": base64.b64encode((artifact_dir / "model.tflite").read_bytes()).decode()}


class Fleet:
    """A controller with its HTTP API in this process, for one device (``DEVICE``) in ``FLEET``.
    ``db``: what ``fleet serve --db`` takes (default: fleet.db in the store)."""

    def __init__(self, tmp: Path, broker, db: str | None = None) -> None:
        self.tmp, self.broker = tmp, broker
        session = SessionOptions(clean_start=False, session_expiry_s=600, max_inflight=200, min_backoff_s=0.1,
                                 max_backoff_s=1.0)
        self.controller = Controller(parse_broker_url(broker.url()), tmp / "ctl", db,
                                     ControllerOptions(fleet=FLEET, session=session, housekeeping_s=0.1))
        self.controller.start()
        assert self.controller.wait_connected(5)
        self.http = HttpApi(self.controller, HttpListen("127.0.0.1", 0), None)
        self.http.start()

    def upload(self, art: Path) -> str:
        status, body = api(self.http.url, "POST", "/v1/artifacts", upload_body(art))
        assert status in (200, 201), body
        return body["artifact"]

    def deploy(self, art: Path, **kw) -> dict:
        status, body = api(self.http.url, "POST", "/v1/deployments",
                           {"artifact": self.upload(art), "devices": [DEVICE], **kw})
        assert status == 201, body
        return body

    def state(self, dep_id: str) -> dict:
        return api(self.http.url, "GET", f"/v1/deployments/{dep_id}")[1]

    def wait_done(self, dep_id: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dep = self.state(dep_id)
            if dep["done"]:
                return dep["devices"][0]
            time.sleep(0.05)
        raise AssertionError(json.dumps(self.state(dep_id), indent=1))

    def wait_online(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.controller.is_online(DEVICE) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.controller.is_online(DEVICE)

    def close(self) -> None:
        self.http.stop()
        self.controller.stop()
