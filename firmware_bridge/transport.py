"""Where the simulated device's serial line ends: a pseudo-terminal, or a TCP port (``socket://``)."""

from __future__ import annotations

import os
import select
import socket
import threading
import tty


class PtyTransport:
    """The device end of a pseudo-terminal; the host opens :attr:`port` like any serial port.

    The simulator keeps the terminal end open too, so a host may close and reopen the port at will.
    """

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation: a raw byte pipe
        tty.setraw(self._master)
        self.port = os.ttyname(self._slave)

    def read(self, size: int, timeout: float) -> bytes:
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self._master, size)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._master, view)
            view = view[written:]

    def close(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class TcpTransport:
    """A TCP server that takes one host at a time, as a serial port has one end."""

    def __init__(self, host: str, port: int) -> None:
        self._server = socket.create_server((host, port))
        self._server.settimeout(0.1)
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        bound_host, bound_port = self._server.getsockname()[:2]
        self.port = f"socket://{bound_host}:{bound_port}"

    def _connected(self) -> socket.socket | None:
        with self._lock:
            if self._client is None:
                try:
                    client, _ = self._server.accept()
                except (TimeoutError, OSError):
                    return None
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._client = client
            return self._client

    def _drop(self, client: socket.socket) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def read(self, size: int, timeout: float) -> bytes:
        client = self._connected()
        if client is None:
            return b""
        ready, _, _ = select.select([client], [], [], timeout)
        if not ready:
            return b""
        try:
            data = client.recv(size)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
        return data

    def write(self, data: bytes) -> None:
        with self._lock:
            client = self._client
        if client is None:
            return  # nobody on the line: the bytes are lost, as on an unplugged cable
        try:
            client.sendall(data)
        except OSError:
            self._drop(client)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
        self._server.close()
