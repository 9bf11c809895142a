"""Free loopback ports for the servers the tests and the demo start (Mosquitto, PostgreSQL, NATS, HTTP).

Binding port 0 returns a port from the kernel's ephemeral range, the same range outgoing connections
take their local ports from. Between picking such a port and the server binding it (PostgreSQL's
``initdb`` takes seconds), another process's outgoing connection can take it: with 10,000 simulated
devices connecting on the same machine that happened in most runs. So pick from below the ephemeral
range, where only listeners live, and check that nothing listens there.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # below: well-known and registered services


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int, host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing is bound to, outside the ephemeral range when it can be."""
    low, _high = ephemeral_range()
    if low - _LOWEST >= 1000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(_LOWEST, low)
            if _bindable(port, host):
                return port
    with socket.socket() as s:  # a machine whose ephemeral range starts low: take the kernel's pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different free ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports
