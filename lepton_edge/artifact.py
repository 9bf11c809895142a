"""The deployable artifact: model, manifest, signature; hashing, Ed25519 signing and verification.

``OUTDIR/model.tflite`` (plan embedded), ``OUTDIR/manifest.json``, ``OUTDIR/manifest.sig`` (raw
64-byte Ed25519 signature over the manifest file's exact bytes) and ``OUTDIR/firmware/``.
The manifest always travels as its exact bytes (OTA jobs, serial): never parse and re-serialise it
before verifying. A device verifies the signature, then the model's hash, before it touches a slot.

Device-side code: standard library, numpy-free, ``cryptography`` for Ed25519.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_edge.errors import BadInput
from lepton_edge.fsio import atomic_write_bytes

MANIFEST_SCHEMA = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_to_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical bytes written to manifest.json (and signed). Only the writer calls this."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def parse_manifest(data: bytes, source: str = "manifest") -> dict[str, Any]:
    """Parse and check the fields every consumer relies on; :class:`BadInput` on anything off."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BadInput(f"{source}: must be a JSON object")
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise BadInput(f"{source}: schema {manifest.get('schema')!r} is not {MANIFEST_SCHEMA}")
    for key, kind in (("name", str), ("version", int), ("model", dict), ("inputs", list), ("outputs", list),
                      ("runtime", str), ("arena", dict)):
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadInput(f"{source}: field '{key}' missing or not {kind.__name__}")
    model = manifest["model"]
    if not isinstance(model.get("sha256"), str) or len(model["sha256"]) != 64:
        raise BadInput(f"{source}: field 'model.sha256' missing or malformed")
    if not isinstance(model.get("size"), int) or model["size"] < 0:
        raise BadInput(f"{source}: field 'model.size' missing or malformed")
    if manifest["version"] < 0:
        raise BadInput(f"{source}: field 'version' must be >= 0")
    if "preprocess" in manifest:  # the spec the model's inputs need (docs/PREPROCESS.md); only then numpy loads
        from lepton_edge.preprocess.spec import parse_spec

        parse_spec(manifest["preprocess"], source)
    return manifest


# --- keys --------------------------------------------------------------------------------------

def _ed25519():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def generate_keypair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``signing.key`` (PKCS#8 PEM, mode 0600) and ``signing.pub`` (PEM) into ``out_dir``."""
    from cryptography.hazmat.primitives import serialization

    out = Path(out_dir)
    priv_path, pub_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    if priv_path.exists() or pub_path.exists():
        raise BadInput(f"{out}: a key pair is already there; refusing to overwrite it")
    key = _ed25519().Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(priv_path, priv)
    os.chmod(priv_path, 0o600)
    atomic_write_bytes(pub_path, pub)
    return priv_path, pub_path


def load_private_key(path: str | os.PathLike[str]):
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such signing key") from None
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise BadInput(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path_or_pem: str | os.PathLike[str] | bytes):
    """A trusted key from a PEM file path, PEM bytes, or a base64 raw 32-byte key."""
    from cryptography.hazmat.primitives import serialization

    ed = _ed25519()
    if isinstance(path_or_pem, bytes):
        data = path_or_pem
    else:
        text = str(path_or_pem)
        p = Path(text).expanduser()
        if p.exists():
            data = p.read_bytes()
        else:
            try:
                raw = base64.b64decode(text, validate=True)
            except ValueError:
                raise BadInput(f"trusted key {text!r}: no such file, and not a base64 Ed25519 key") from None
            if len(raw) != 32:
                raise BadInput(f"trusted key {text!r}: a raw Ed25519 key has 32 bytes, not {len(raw)}")
            return ed.Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BadInput(f"trusted key {path_or_pem!r}: not a PEM public key ({exc})") from None
    if not isinstance(key, ed.Ed25519PublicKey):
        raise BadInput(f"trusted key {path_or_pem!r}: not an Ed25519 key")
    return key


def key_id(public_key) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:16]


def sign_manifest(manifest_bytes: bytes, private_key) -> bytes:
    return private_key.sign(manifest_bytes)


def verify_manifest(manifest_bytes: bytes, signature: bytes | None, trusted_keys: Iterable,
                    *, require_signature: bool = True, source: str = "manifest") -> dict[str, Any]:
    """Check the signature against the trusted keys, then parse. Raises :class:`BadInput`."""
    from cryptography.exceptions import InvalidSignature

    keys = list(trusted_keys)
    if signature is None:
        if require_signature:
            raise BadInput(f"{source}: unsigned, and signatures are required")
    else:
        if len(signature) != 64:
            raise BadInput(f"{source}: signature has {len(signature)} bytes, an Ed25519 signature has 64")
        if not keys and require_signature:
            raise BadInput(f"{source}: no trusted keys configured to verify the signature")
        for key in keys:
            try:
                key.verify(signature, manifest_bytes)
                break
            except InvalidSignature:
                continue
        else:
            if keys:
                raise BadInput(f"{source}: signature does not verify with any trusted key")
    return parse_manifest(manifest_bytes, source)


def verify_model(model_bytes: bytes, manifest: dict[str, Any], source: str = "model") -> None:
    expected = manifest["model"]
    if len(model_bytes) != expected["size"]:
        raise BadInput(f"{source}: size {len(model_bytes)} does not match the manifest's {expected['size']}")
    actual = sha256_hex(model_bytes)
    if actual != expected["sha256"]:
        raise BadInput(f"{source}: sha256 {actual[:16]}… does not match the manifest's {expected['sha256'][:16]}…")


# --- artifact directories ----------------------------------------------------------------------

@dataclass(frozen=True)
class Artifact:
    path: Path | None
    manifest_bytes: bytes
    manifest: dict[str, Any]
    signature: bytes | None
    model_bytes: bytes

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> int:
        return self.manifest["version"]

    @property
    def sha256(self) -> str:
        return self.manifest["model"]["sha256"]


def read_artifact_files(directory: str | os.PathLike[str]) -> tuple[bytes, bytes | None, bytes]:
    """The manifest's exact bytes, the signature (None when unsigned) and the model, unverified."""
    d = Path(directory)
    if not d.is_dir():
        raise BadInput(f"{d}: not an artifact directory")
    try:
        manifest_bytes = (d / MANIFEST_FILE).read_bytes()
        model_bytes = (d / MODEL_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise BadInput(f"{d}: not an artifact directory (missing {Path(exc.filename).name})") from None
    sig_path = d / SIGNATURE_FILE
    return manifest_bytes, sig_path.read_bytes() if sig_path.exists() else None, model_bytes


def load_artifact(directory: str | os.PathLike[str], trusted_keys: Iterable = (), *,
                  require_signature: bool = True) -> Artifact:
    """Read and verify an artifact directory: signature first, then the model's size and hash."""
    d = Path(directory)
    manifest_bytes, signature, model_bytes = read_artifact_files(d)
    manifest = verify_manifest(manifest_bytes, signature, trusted_keys, require_signature=require_signature,
                               source=str(d / MANIFEST_FILE))
    verify_model(model_bytes, manifest, str(d / MODEL_FILE))
    return Artifact(d, manifest_bytes, manifest, signature, model_bytes)


def write_artifact_files(staging: Path, model_bytes: bytes, manifest: dict[str, Any], private_key=None) -> bytes:
    """Write model, manifest (and signature) into ``staging``; return the manifest's exact bytes.

    Callers stage into :func:`lepton_edge.fsio.atomic_directory` so the directory appears whole.
    """
    manifest = dict(manifest)
    manifest["schema"] = MANIFEST_SCHEMA
    manifest["model"] = {**manifest.get("model", {}), "file": MODEL_FILE, "sha256": sha256_hex(model_bytes),
                         "size": len(model_bytes)}
    if private_key is not None:
        manifest["signer"] = key_id(private_key.public_key())
    data = manifest_to_bytes(manifest)
    parse_manifest(data, "manifest being written")
    (staging / MODEL_FILE).write_bytes(model_bytes)
    (staging / MANIFEST_FILE).write_bytes(data)
    if private_key is not None:
        (staging / SIGNATURE_FILE).write_bytes(sign_manifest(data, private_key))
    return data
