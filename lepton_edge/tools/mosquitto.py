"""A private Mosquitto: a broker on free loopback ports with its own config, users, ACL and TLS.

Host-side: the tests and ``lepton-edge demo`` start one; a real fleet runs its own broker.

    with Broker(tmp_path) as broker:                     # anonymous, plain
        broker.url                                        # mqtt://127.0.0.1:PORT
    tls = make_ca(tmp_path / "pki")                       # a CA made here with `cryptography`
    with Broker(tmp_path, users={"dev-a": "pw"}, acl=ACL, tls=tls) as broker:
        broker.tls_url("dev-a", "pw")                     # mqtts://dev-a:pw@127.0.0.1:TLSPORT

``broker.restart()`` stops and starts it on the same ports (in-flight sessions are lost unless
``persistence=True``); ``broker.kill()`` is a SIGKILL. The pytest fixture lives in ``tests/mosquitto.py``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from lepton_edge.errors import LeptonError
from lepton_edge.tools.ports import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


class MosquittoMissing(LeptonError):
    """Mosquitto is not installed (exit 1; ``make mosquitto`` installs it)."""

    exit_code = 1


def require_mosquitto() -> str:
    if not os.access(MOSQUITTO, os.X_OK):
        raise MosquittoMissing("mosquitto is not installed (make mosquitto installs it)")
    return MOSQUITTO


# --- TLS ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """A client certificate (CN = name) signed by the CA: (cert, key) files."""
        return _issue(self.directory, name, self.ca_cert, self.ca_key, server=False)


def make_ca(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lepton-edge test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    server_cert, server_key = _issue(directory, "server", ca_cert, ca_key, server=True)
    return TlsFiles(directory, ca_cert, ca_key, server_cert, server_key)


def _issue(directory: Path, cn: str, ca_cert_path: Path, ca_key_path: Path, *, server: bool) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "make_ca writes an EC key"
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{cn}.crt", directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


# --- the broker --------------------------------------------------------------------------------

class Broker:
    """A Mosquitto process with a generated config; a context manager."""

    def __init__(self, directory: Path, *, users: dict[str, str] | None = None, acl: str | None = None,
                 tls: TlsFiles | None = None, require_certificate: bool = False, plain: bool = True,
                 max_queued_messages: int | None = None, max_inflight_messages: int | None = None,
                 persistence: bool = False, extra: str = "") -> None:
        require_mosquitto()
        self.dir = Path(directory) / f"mosquitto-{free_port()}"
        self.dir.mkdir(parents=True)
        self.users, self.tls = users or {}, tls
        self.port = free_port() if plain else None
        self.tls_port = free_port() if tls else None
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        lines = ["per_listener_settings false", f"allow_anonymous {'false' if users else 'true'}",
                 f"log_dest file {self.log_path}", "log_type error", "log_type warning", "log_type notice",
                 "log_type information", "connection_messages true", "log_timestamp true",
                 "max_connections -1"]  # no limit but the process's open files (raised to the hard limit)
        if os.geteuid() == 0:
            lines.append("user root")  # stay root, or the dropped user cannot read files in pytest's 0700 dirs
        if users:
            pw = self.dir / "passwd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(pw), user, password],
                               check=True, capture_output=True)
            lines.append(f"password_file {pw}")
        if acl is not None:
            (self.dir / "acl").write_text(acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        if max_queued_messages is not None:
            lines.append(f"max_queued_messages {max_queued_messages}")
        if max_inflight_messages is not None:
            lines.append(f"max_inflight_messages {max_inflight_messages}")
        if persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/"]
        if self.port:
            lines.append(f"listener {self.port} 127.0.0.1")
        if tls:
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {tls.ca_cert}", f"certfile {tls.server_cert}",
                      f"keyfile {tls.server_key}", f"require_certificate {'true' if require_certificate else 'false'}"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n" + extra)

    # -- urls --
    def url(self, user: str | None = None, password: str | None = None) -> str:
        return f"mqtt://{_auth(user, password)}127.0.0.1:{self.port}"

    def tls_url(self, user: str | None = None, password: str | None = None) -> str:
        return f"mqtts://{_auth(user, password)}127.0.0.1:{self.tls_port}"

    def __str__(self) -> str:
        return self.url() if self.port else self.tls_url()

    # -- process --
    def start(self, timeout: float = 10.0) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_open_files_to_hard_limit)
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.tls_port) if p]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}{self.log()}")
            if all(_accepts(p) for p in ports):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {ports} within {timeout} s: {self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _open_files_to_hard_limit() -> None:
    """In the broker's process before exec: one socket per client, so as many open files as allowed."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def _auth(user: str | None, password: str | None) -> str:
    if user is None:
        return ""
    return quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "") + "@"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
