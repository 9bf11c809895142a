"""The clustered set-up of issue 13 for tests (lepton_edge/tools/replica_fleet.py): a private PostgreSQL, three
NATS nodes with MQTT and ``fleet serve`` replicas on both. Skipped without PostgreSQL or nats-server, a
failure naming the install command when LEPTON_REQUIRE_SHARED=1 (CI).

Use it from a test file with ``pytest_plugins = ["replica_fixtures"]``: fixture ``replica_fleet(**options)``
starts a :class:`ReplicaFleet` (options as its constructor's; two replicas by default) for this test alone
and stops it after; its processes' stderr is in ``<dir>/processes.log``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lepton_edge.tools.replica_fleet import ReplicaFleet
from nats_cluster_fixtures import require_nats
from pg_fixtures import require_postgres


@pytest.fixture
def replica_fleet(tmp_path) -> Iterator[Callable[..., ReplicaFleet]]:
    require_postgres()
    require_nats()
    started: list[ReplicaFleet] = []

    def start(**options: Any) -> ReplicaFleet:
        rf = ReplicaFleet(tmp_path / f"rf{len(started)}", **options)
        started.append(rf)
        return rf.start()
    yield start
    for rf in started:
        rf.stop()
