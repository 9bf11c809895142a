"""Real Mosquitto for tests (``lepton_edge.tools.mosquitto``), skipping or failing cleanly without it."""

from __future__ import annotations

import pytest

from conftest import skip_or_fail
from lepton_edge.tools import mosquitto as _m
from lepton_edge.tools.mosquitto import Broker, TlsFiles, free_port, make_ca  # noqa: F401 - re-exported


def require_mosquitto() -> str:
    try:
        return _m.require_mosquitto()
    except _m.MosquittoMissing as exc:
        skip_or_fail(str(exc))


@pytest.fixture
def mosquitto_broker(tmp_path):
    """An anonymous broker on a free loopback port."""
    require_mosquitto()
    with Broker(tmp_path) as broker:
        yield broker
