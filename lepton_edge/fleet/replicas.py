"""Controller replicas: who is alive (a heartbeat row each in the database) and which replica owns a device.

Every replica subscribes to the whole fleet; a device belongs to exactly one live replica, picked by
rendezvous hashing (the highest blake2b of ``replica + "/" + device``), and the others drop its messages
after reading only the topic. When the live set changes only the departed replica's devices move (or a
share of everyone's to a newcomer). A replica alone owns every device without hashing anything: one
``fleet serve`` behaves and costs as before. Why this and not ``$share``, and the takeover bound:
docs/REPLICAS.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lepton_edge.fleet.store import FleetDB

log = logging.getLogger("lepton_edge.fleet.replicas")

HEARTBEAT_S = 1.0    # how often a replica writes its row and reads the live set
REPLICA_TTL_S = 5.0  # a replica whose heartbeat is older than this is gone
SETTLE_BEATS = 1.5   # a replica joining others waits this many heartbeats before it handles devices
_ID_MAX = 64         # an MQTT/NAME-safe client id: letters, digits, '.', '_', '-'


def default_client_id(fleet: str, host: str | None = None, pid: int | None = None) -> str:
    """``lepton-edge-controller-<fleet>-<host>-<pid>``, reduced to letters, digits, '.', '_' and '-' and
    at most 64 characters (the host name is shortened first)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", host if host is not None else socket.gethostname()) or "host"
    pid_text = str(os.getpid() if pid is None else pid)
    prefix = f"lepton-edge-controller-{fleet}-"
    room = max(1, _ID_MAX - len(prefix) - len(pid_text) - 1)
    return f"{prefix}{host[:room]}-{pid_text}"[-_ID_MAX:].lstrip("._-")  # a name starts with a letter or digit


@dataclass(frozen=True)
class ReplicaInfo:
    """This process as its row in ``replicas`` names it."""

    id: str
    host: str
    pid: int
    http_url: str | None = None


def owner_of(device: str, live: tuple[str, ...]) -> str:
    """The live replica that owns ``device``: rendezvous (highest random weight) hashing."""
    return max(live, key=lambda r: hashlib.blake2b(f"{r}/{device}".encode(), digest_size=8).digest())


class Membership:
    """The live set, refreshed by a thread every ``heartbeat_s``; :meth:`owns` answers from a cache.

    ``on_change(live)`` runs on that thread after the set changed (not for the first heartbeat, which
    :meth:`join` makes before anything else starts). A replica among others that cannot write its
    heartbeat for ``ttl_s`` owns nothing until it can again (the others have taken its devices by then);
    a replica alone keeps owning everything (its block server does not need the database)."""

    def __init__(self, db: FleetDB, me: ReplicaInfo, on_change: Callable[[tuple[str, ...]], None], *,
                 heartbeat_s: float = HEARTBEAT_S, ttl_s: float = REPLICA_TTL_S) -> None:
        self.db, self.me, self.on_change = db, me, on_change
        self.heartbeat_s, self.ttl_s = heartbeat_s, ttl_s
        self._view: tuple[tuple[str, ...], dict[str, bool]] = ((me.id,), {})  # live set, device -> mine
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def live(self) -> tuple[str, ...]:
        """The live replicas' ids, sorted (this one included)."""
        return self._view[0]

    @property
    def alone(self) -> bool:
        return len(self._view[0]) == 1

    def owns(self, device: str) -> bool:
        """Whether this replica handles ``device`` (any thread; a replica alone owns everything)."""
        live, owners = self._view  # one read: the set and its cache always match
        if len(live) == 1:
            return True
        if not live:
            return False  # cut off from the database among others
        mine = owners.get(device)
        if mine is None:
            mine = owners[device] = owner_of(device, live) == self.me.id
        return mine

    def join(self, http_url: str | None = None) -> None:
        """The first heartbeat (before the MQTT client starts), then the heartbeat thread. Joining others,
        wait ``SETTLE_BEATS`` heartbeats first, so that they have seen this replica before it handles its
        share: a join leaves a short gap, which devices' resends and retries cover, rather than a second
        during which two replicas would both handle a device."""
        if http_url is not None:
            self.me = ReplicaInfo(self.me.id, self.me.host, self.me.pid, http_url)
        self._beat()
        if not self.alone:
            time.sleep(SETTLE_BEATS * self.heartbeat_s)
            self._beat()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fleet-replicas", daemon=True)
        self._thread.start()

    def leave(self) -> None:
        """Stop the heartbeat and delete this replica's row: the others take its devices at their next beat."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            self.db.leave(self.me.id)
        except Exception as exc:  # the database is gone: the others see the heartbeat age instead
            log.warning("could not remove this replica's row (%s: %s)", type(exc).__name__, exc)

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stopping.wait(self.heartbeat_s):
            try:
                changed = self._beat()
                last_beat = time.monotonic()
            except Exception as exc:  # the database restarting: the next beat tries again
                log.error("heartbeat failed (%s: %s); trying again", type(exc).__name__, exc)
                if self._view[0] and not self.alone and time.monotonic() - last_beat > self.ttl_s:
                    log.error("no heartbeat for %.1f s: the other replicas have taken this one's devices; "
                              "handling none until the database answers", self.ttl_s)
                    self._view = ((), {})
                continue
            if changed:
                try:
                    self.on_change(self.live)
                except Exception:
                    log.exception("taking over after a membership change failed")

    def _beat(self) -> bool:
        """Write the heartbeat and read the live set; True when it changed."""
        me = self.me
        live = tuple(self.db.heartbeat(me.id, me.host, me.pid, me.http_url, self.ttl_s))
        if me.id not in live:  # our own row must count even if the database's clock jumped
            live = tuple(sorted((*live, me.id)))
        if live == self.live:
            return False
        log.info("replicas: %d live (%s)", len(live), ", ".join(live))
        self._view = (live, {})
        return True
