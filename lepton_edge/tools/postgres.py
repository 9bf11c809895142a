"""A private PostgreSQL server for tests and benchmarks: ``initdb`` into a temporary directory, 127.0.0.1 on
a free port, durability off (fsync, synchronous_commit and full_page_writes), a fresh database per user.

Host-side, never on a device. PostgreSQL refuses to run as root: as root the server runs as the system user
``lepton-pg`` (made with useradd when missing). tests/pg_fixtures.py wraps it in pytest fixtures; bench/scale.py
starts one for its replicas row.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from lepton_edge.tools.ports import free_port

INSTALL = "apt-get install -y postgresql (Debian 12: PostgreSQL 15)"
PG_USER = "lepton-pg"
PASSWORD = "lepton-test"  # the superuser's; loopback TCP asks for it (scram-sha-256), as a real server would
TOOLS = ("initdb", "pg_ctl", "postgres")


def pg_bin() -> Path:
    """LEPTON_PG_BIN, else Debian's newest /usr/lib/postgresql/<major>/bin (15 on Debian 12)."""
    if os.environ.get("LEPTON_PG_BIN"):
        return Path(os.environ["LEPTON_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


def missing(bin_dir: Path) -> str | None:
    """Why the server cannot start from ``bin_dir`` (with the install command), or None when it can."""
    if all((bin_dir / tool).exists() for tool in TOOLS):
        return None
    return f"PostgreSQL server binaries are missing in {bin_dir}: {INSTALL}"


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                       check=True, capture_output=True)
    return ["runuser", "-u", PG_USER, "--", *cmd]


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` in a fresh directory; :meth:`create_database` gives a fresh database's URL.

    ``max_connections``: every ``fleet serve`` holds a few (its pool), every test or bench reader one.
    """

    def __init__(self, bin_dir: Path, *, max_connections: int = 200) -> None:
        self.bin = bin_dir
        self.password = PASSWORD
        self.root = Path(tempfile.mkdtemp(prefix="lepton-pg-"))  # not under pytest's 0700 root-only tmp
        self.data = self.root / "data"
        self.port = free_port()
        self._names = itertools.count()
        pwfile = self.root / "password"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            _as_server_user(["true"])  # makes the user when missing
            user = pwd.getpwnam(PG_USER)
            for path in (self.root, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                   "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions", "--no-sync"])
        self._opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
                      f" -c synchronous_commit=off -c full_page_writes=off -c max_connections={max_connections}")
        self._start()

    def _start(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", self._opts,
                   "-w", "-t", "30", "start"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # pg_ctl -w waited; make sure TCP answers too
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                time.sleep(0.05)

    def _run(self, cmd: list[str]) -> None:
        cmd = [str(self.bin / cmd[0]), *cmd[1:]]
        done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.root / "server.log"
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}"
                               + (f"\n{log.read_text()[-2000:]}" if log.exists() else ""))

    def restart(self) -> None:
        """Stop (fast: every connection is dropped; committed data is kept even with synchronous_commit
        off, unlike an immediate stop) and start again on the same port and data."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        self._start()

    def url(self, database: str = "postgres", password: str | None = PASSWORD) -> str:
        auth = "postgres" if password is None else f"postgres:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
