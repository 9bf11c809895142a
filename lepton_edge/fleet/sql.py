"""The store's SQL dialects: SQLite (a file, the default) and PostgreSQL (``postgresql://...``, psycopg 3).

Queries are written once, with ``?`` placeholders, ``GREATEST(a, b)`` and ``ON CONFLICT``; a dialect
rewrites what its engine spells differently (placeholders, GREATEST -> SQLite's scalar MAX, column types
in DDL) and owns connecting, transactions and the errors a refused value raises. :class:`Conn` is the
connection the store and the controller see: ``execute``/``executemany`` return rows readable by index
and by column name, and :meth:`Conn.savepoint` undoes one record's writes inside a transaction.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from lepton_edge.errors import BadInput, one_line

PG_SCHEMES = ("postgresql", "postgres")


class Row(Protocol):
    """A result row: ``row[0]``, ``row["column"]``, ``dict(row)``."""

    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> list[str]: ...


class _PgRow:
    """A PostgreSQL row with sqlite3.Row's interface."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index, self._values = index, values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key]] if isinstance(key, str) else self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _pg_row_factory(cursor: Any) -> Any:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: _PgRow(index, values)


class Dialect:
    """What differs between the engines. Subclasses: :class:`SqliteDialect`, :class:`PostgresDialect`."""

    name = ""
    begin = "BEGIN"                # a write transaction
    per_thread = True              # True: a connection per thread; False: a small pool
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def connect(self) -> Conn:
        raise NotImplementedError

    def translate(self, sql: str) -> str:
        out = self._cache.get(sql)
        if out is None:
            out = self._cache[sql] = self._translate(sql)
        return out

    def _translate(self, sql: str) -> str:
        return sql

    def ddl(self, sql: str) -> str:
        """A CREATE/ALTER statement in this engine's column types (``{id}``: an auto-numbered key)."""
        return sql

    def columns(self, conn: Conn, table: str) -> set[str]:
        raise NotImplementedError

    def migration_lock(self, conn: Conn) -> None:
        """Inside the migrations' transaction: keep other processes from migrating at the same time."""

    def clock(self, conn: Conn) -> float:
        """Now (unix seconds) by the database's clock: heartbeats and leases compare times written by
        several hosts. SQLite is one host's file: its clock is ``time.time()``."""
        return time.time()

    def describe(self) -> str:
        return self.name


class SqliteDialect(Dialect):
    name = "sqlite"
    begin = "BEGIN IMMEDIATE"
    errors = (sqlite3.Error,)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def connect(self) -> Conn:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return Conn(conn, self)

    def _translate(self, sql: str) -> str:
        return sql.replace("GREATEST(", "MAX(")  # SQLite's MAX with two arguments is the scalar maximum

    def ddl(self, sql: str) -> str:
        return sql.replace("{id}", "INTEGER PRIMARY KEY")

    def columns(self, conn: Conn, table: str) -> set[str]:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}

    def describe(self) -> str:
        return str(self.path)


# SQLite's types as written in the schema -> PostgreSQL's: REAL must be double precision (PostgreSQL's
# REAL is 4 bytes), INTEGER 8 bytes (SQLite's integers are), BLOB is BYTEA.
_PG_TYPES = (("INTEGER", "BIGINT"), ("REAL", "DOUBLE PRECISION"), ("BLOB", "BYTEA"))
_MIGRATION_LOCK = 0x6C6570746F6E  # "lepton": the advisory lock every process migrating this database takes


class PostgresDialect(Dialect):
    name = "postgresql"
    per_thread = False

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError:
            raise BadInput("a postgresql:// database needs psycopg 3: pip install 'lepton-edge[fleet]'"
                           " (or psycopg[binary])") from None
        self._psycopg = psycopg
        self.url = url
        parts = urlsplit(url)
        if not _port_ok(parts) and parts.netloc.rpartition("@")[2].count(":") == 1:
            raise BadInput(f"{self.describe()}: not a usable PostgreSQL URL (bad port)")
        self.errors = (psycopg.Error,)

    def connect(self) -> Conn:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10, row_factory=_pg_row_factory)
        except psycopg.ProgrammingError as exc:  # libpq could not parse the URL
            raise BadInput(f"{self.describe()}: not a usable PostgreSQL URL ({one_line(exc)})") from None
        except psycopg.Error as exc:
            raise BadInput(f"{self.describe()}: cannot connect to PostgreSQL ({one_line(exc)})") from None
        return Conn(conn, self)

    def _translate(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def ddl(self, sql: str) -> str:
        sql = sql.replace("{id}", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        for old, new in _PG_TYPES:
            sql = re.sub(rf"\b{old}\b", new, sql)
        return sql

    def columns(self, conn: Conn, table: str) -> set[str]:
        return {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = ?", (table,))}

    def migration_lock(self, conn: Conn) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def clock(self, conn: Conn) -> float:
        return float(conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()[0])

    def describe(self) -> str:
        """The URL without its password."""
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if _port_ok(parts) else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def _port_ok(parts: Any) -> bool:
    try:
        return parts.port is not None
    except ValueError:
        return False


# SQLSTATEs of a write that lost a race with another transaction (deadlock, serialization failure, lock
# not available): the same write can succeed if tried again, unlike a value the database refuses.
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})


def lost_a_race(exc: BaseException) -> bool:
    """Whether ``exc`` is another transaction's doing (PostgreSQL deadlock or serialization failure,
    SQLite's "database is locked"), so that the record is worth writing again, not refused for good."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    return getattr(exc, "sqlstate", None) in _CONFLICT_SQLSTATES


def open_dialect(spec: str | os.PathLike[str]) -> Dialect:
    """``spec``: a file path, ``sqlite:///path`` or ``postgresql://user[:password]@host[:port]/db``."""
    text = os.fspath(spec)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in PG_SCHEMES:
        return PostgresDialect(text)
    if scheme == "sqlite":
        path = text.split("://", 1)[1]
        if not path.startswith("/") or path == "/":
            raise BadInput(f"{text!r}: write sqlite:///relative/path or sqlite:////absolute/path")
        return SqliteDialect(path[1:])
    if scheme:
        raise BadInput(f"--db {text!r}: a file path, sqlite:///path or postgresql://user@host:port/database")
    return SqliteDialect(text)


class Conn:
    """One connection of either engine; SQL goes through the dialect."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw, self.dialect = raw, dialect

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.raw.execute(self.dialect.translate(sql), args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        if not rows:
            return None
        return self.raw.cursor().executemany(self.dialect.translate(sql), rows)

    def script(self, sql: str) -> None:
        """Several DDL statements separated by ``;``."""
        for statement in sql.split(";"):
            if statement.strip():
                self.raw.execute(self.dialect.ddl(statement))

    @contextlib.contextmanager
    def savepoint(self, name: str = "record") -> Iterator[None]:
        """Inside a transaction: on an exception undo only what ran here, then re-raise."""
        self.raw.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.raw.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.raw.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self.raw.execute(f"RELEASE SAVEPOINT {name}")

    def broken(self) -> bool:
        """The connection is closed or lost (PostgreSQL; a SQLite connection never is)."""
        return bool(getattr(self.raw, "closed", False) or getattr(self.raw, "broken", False))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()


class Transaction:
    """``with db.batch() as conn``: a write transaction under the process's write lock; COMMIT or ROLLBACK.
    The connection goes back to its pool (PostgreSQL) afterwards."""

    def __init__(self, conn: Conn, lock: threading.Lock, done: Any = None, reopen: Any = None) -> None:
        self.conn, self.lock, self.done, self.reopen = conn, lock, done, reopen

    def __enter__(self) -> Conn:
        self.lock.acquire()
        try:
            try:
                self.conn.raw.execute(self.conn.dialect.begin)
            except self.conn.dialect.errors:
                if self.reopen is None or not self.conn.broken():
                    raise
                self.done(self.conn)  # a pooled connection the server dropped (a restart): one more try
                self.conn = self.reopen()
                self.conn.raw.execute(self.conn.dialect.begin)
        except BaseException:
            self.lock.release()
            if self.done is not None:
                self.done(self.conn)
            raise
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.conn.raw.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()
            if self.done is not None:
                self.done(self.conn)
