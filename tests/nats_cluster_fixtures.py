"""A real NATS cluster with MQTT for tests (``lepton_edge.tools.nats``): skipped without nats-server, or a
failure naming the install command when LEPTON_REQUIRE_SHARED=1 (CI).

Use it from a test file with ``pytest_plugins = ["nats_cluster_fixtures"]`` (fixtures ``nats_cluster``, a
fresh three-node cluster per test, and ``shared_nats``, one per module for tests that do not kill nodes)."""

from __future__ import annotations

import pytest

from conftest import skip_or_fail
from lepton_edge.tools import nats as _n
from lepton_edge.tools.nats import NatsCluster, NatsNode  # noqa: F401 - re-exported


def require_nats() -> str:
    try:
        return _n.require_nats()
    except _n.NatsMissing as exc:
        skip_or_fail(str(exc))


@pytest.fixture
def nats_cluster(tmp_path):
    """Three NATS nodes with JetStream and MQTT on free loopback ports, for this test alone."""
    require_nats()
    with NatsCluster(tmp_path) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def shared_nats(tmp_path_factory):
    """Three NATS nodes for the module's tests that leave every node running."""
    require_nats()
    with NatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster
