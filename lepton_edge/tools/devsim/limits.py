"""Open-file limits for thousands of simulated devices (one socket each) in one process.

The network loop polls with epoll (no ``select()`` limit at 1024), so what stops one process first is
RLIMIT_NOFILE: many systems start processes with a soft limit of 1024. The soft limit may be raised
up to the hard one without privileges.
"""

from __future__ import annotations

import resource

SPARE_FDS = 64  # the loop's wake-up pair, pipes, log files, the interpreter's own


def raise_open_files(need: int) -> int:
    """Raise the soft RLIMIT_NOFILE to at least ``need`` (at most the hard limit); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def sockets_allowed() -> int:
    """How many device sockets this process can open after :func:`raise_open_files`."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(soft) - SPARE_FDS if soft != resource.RLIM_INFINITY else 1 << 30
