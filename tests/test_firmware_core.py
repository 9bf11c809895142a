"""Pieces of the reference firmware's core (firmware_bridge/firmware/core) on their own, built with the
system C++ compiler under ASan and UBSan: the slots survive a power cut at any storage operation of a
flash, and the manifest reader agrees with :func:`lepton_edge.artifact.parse_manifest`."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from lepton_edge.artifact import parse_manifest
from lepton_edge.errors import BadInput

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware_bridge" / "firmware"
FRAME_C = FIRMWARE.parent / "c" / "lepton_frame.c"
FLAGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", f"-I{FIRMWARE}", f"-I{FIRMWARE / 'core'}", f"-I{FRAME_C.parent}",
         "-DLEPTON_SLOT_BYTES=1572864u"]


def _build(tmp: Path, name: str, sources: list[Path]) -> Path:
    if shutil.which("g++") is None or shutil.which("gcc") is None:
        pytest.skip("no system C/C++ compiler")
    objects = []
    for src in sources:
        if src.suffix == ".c":
            obj = tmp / (src.stem + ".o")
            subprocess.run(["gcc", "-std=c99", "-c", "-g", "-O1", "-fsanitize=address,undefined", str(src),
                            "-o", str(obj)], check=True, capture_output=True)
            objects.append(str(obj))
        else:
            objects.append(str(src))
    exe = tmp / name
    run = subprocess.run(["g++", *FLAGS, *objects, "-o", str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return exe


def test_a_power_cut_at_any_storage_operation_of_a_flash_boots_a_whole_model(tmp_path):
    exe = _build(tmp_path, "test_slots", [FIRMWARE / "core" / "test_slots.cc", FIRMWARE / "core" / "slots.cc",
                                          FIRMWARE / "core" / "crypto" / "sha256.cc", FRAME_C])
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "broken 0" in run.stdout and "the new one" in run.stdout, run.stdout


def _manifest_cases(seed: int) -> list[bytes]:
    base = {"schema": 1, "name": "kws-\u00e9t\u00e9 \"q\"", "version": 3, "model": {"sha256": "ab" * 32, "size": 1234},
            "inputs": [{"name": "x", "shape": [1, 2]}], "outputs": [], "runtime": "tflm",
            "arena": {"recommended_bytes": 24272, "nested": {"a": [1, {"b": 2}]}}, "extra": [[[]]]}
    cases = [json.dumps(base).encode(), json.dumps(base, ensure_ascii=False).encode(),
             json.dumps(base, indent=2).encode()]

    def variant(edit) -> None:
        d = json.loads(json.dumps(base))
        edit(d)
        cases.append(json.dumps(d).encode())

    for key, value in [("version", True), ("version", 1.0), ("version", -1), ("name", 5), ("schema", 2),
                       ("schema", "1"), ("model", []), ("inputs", {}), ("runtime", None), ("arena", [])]:
        variant(lambda d, k=key, v=value: d.__setitem__(k, v))
    for key, value in [("sha256", "AB" * 32), ("sha256", "zz" * 32), ("sha256", "ab" * 31), ("size", -1),
                       ("size", 1.5), ("size", "1")]:
        variant(lambda d, k=key, v=value: d["model"].__setitem__(k, v))
    for value in [None, 0, -5, 1.5, "x", 2**33]:
        variant(lambda d, v=value: d["arena"].__setitem__("recommended_bytes", v))
    variant(lambda d: d["arena"].pop("recommended_bytes"))
    cases += [b"", b"[]", b"{", b"{}", b"\xff\xfe", b'{"a":1,}', b'{"a":01}', b'  {"schema":1}  ',
              b'{"schema":1} x', json.dumps(base).encode().replace(b'"name"', b'"n\\u0061me"'),
              json.dumps(base).encode().replace(b'"abab', b'"\\u0061bab'), b'{"schema":1,"name":"\\ud83d\\ude00"}']
    good, rng = json.dumps(base).encode(), random.Random(seed)
    for _ in range(2000):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op, i = rng.randrange(3), rng.randrange(len(b))
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                del b[i]
            else:
                b.insert(i, rng.choice(b'{}[]",:0123456789.eE-+ \\tnul'))
        cases.append(bytes(b))
    return cases


def test_the_manifest_reader_agrees_with_parse_manifest(tmp_path):
    exe = _build(tmp_path, "test_manifest", [FIRMWARE / "core" / "test_manifest.cc", FIRMWARE / "core" / "manifest.cc"])
    cases = _manifest_cases(7)
    feed = b"".join(struct.pack("<I", len(c)) + c for c in cases)
    run = subprocess.run([str(exe)], input=feed, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    lines = run.stdout.decode("utf-8", "replace").split("\n")[:-1]
    assert len(lines) == len(cases)
    for case, line in zip(cases, lines, strict=True):
        fields = line.split("\t")
        try:
            m = parse_manifest(case)
        except BadInput as exc:
            assert fields[0] == "err", (case, str(exc), line)
            continue
        if m["version"] > 0xFFFFFFFE or m["model"]["size"] > 0xFFFFFFFF:  # more than a device keeps
            assert fields[0] == "err", (case, line)
            continue
        assert fields[0] == "ok", (case, line)
        arena = m["arena"].get("recommended_bytes")
        arena = arena if isinstance(arena, int) and not isinstance(arena, bool) and arena > 0 else 0
        sha = m["model"]["sha256"]
        name = bytes.fromhex(fields[1]).decode("utf-8")
        assert name == m["name"].encode()[:63].decode("utf-8", "ignore"), (case, line)  # whole characters
        assert fields[2:5] == [str(m["version"]), str(m["model"]["size"]), str(min(arena, 0xFFFFFFFF))], (case, line)
        assert fields[5] == ("1" if all(c in "0123456789abcdef" for c in sha) else "0"), (case, line)
