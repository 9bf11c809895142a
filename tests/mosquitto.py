"""Real Mosquitto for tests (``lepton_edge.tools.mosquitto``), skipping or failing cleanly without it."""

from __future__ import annotations

import os

import pytest

from lepton_edge.tools import mosquitto as _m
from lepton_edge.tools.mosquitto import Broker, TlsFiles, free_port, make_ca  # noqa: F401 - re-exported


def require_mosquitto() -> str:
    try:
        return _m.require_mosquitto()
    except _m.MosquittoMissing as exc:
        if os.environ.get("LEPTON_REQUIRE_SHARED") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture
def mosquitto_broker(tmp_path):
    """An anonymous broker on a free loopback port."""
    require_mosquitto()
    with Broker(tmp_path) as broker:
        yield broker
