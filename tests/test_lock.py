"""requirements.lock: what the dev and CI machine installs (``make`` reads it, ``make lock`` refreshes it).

The lock is resolved on one machine (Python 3.11, x86_64 Linux); boards install ``.[device]`` from
pyproject.toml's environment markers, which these tests check still cover aarch64 and 32-bit ARM.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"requirements.lock: {raw!r} is not name==version"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = Version(match.group(2))
    return pins


def _extra(name: str) -> list[Requirement]:
    return [Requirement(spec) for spec in PYPROJECT["project"]["optional-dependencies"][name]]


def test_every_line_is_an_exact_pin() -> None:
    pins = _pins()
    assert len(pins) > 50
    assert "lepton-edge" not in pins, "the kit itself is installed with pip install --no-deps -e ."


def test_numpy_below_2_and_tensorflow_2_19() -> None:
    pins = _pins()
    assert pins["numpy"] < Version("2")
    assert pins["tensorflow"].release[:2] == (2, 19)
    assert pins["tf-keras"].release[:2] == (2, 19)


def test_every_requirement_of_the_all_extra_is_pinned_within_its_range() -> None:
    """pyproject.toml and the lock agree: a dependency added without `make lock` fails here."""
    pins = _pins()
    requirements = [Requirement(spec) for spec in PYPROJECT["project"]["dependencies"]]
    for extra in ("device", "host", "dev"):
        requirements += _extra(extra)
    checked = 0
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run make lock UPGRADE="
        assert req.specifier.contains(pins[name], prereleases=True), f"locked {name}=={pins[name]} is outside {req}"
        checked += 1
    assert checked >= 20


def test_the_device_extra_is_locked_for_this_machine() -> None:
    pins = _pins()
    for name in ("paho-mqtt", "pyserial", "cryptography", "prometheus-client", "ai-edge-litert", "tflite-micro"):
        assert name in pins, name


@pytest.mark.parametrize(("machine", "interpreter"), [("aarch64", "ai-edge-litert"), ("armv7l", "tflite-runtime")])
def test_the_device_extra_still_installs_on_arm_boards(machine: str, interpreter: str) -> None:
    """The lock is x86_64 only; a board resolves `.[device]` through pyproject.toml's markers."""
    env = {"platform_machine": machine, "python_version": "3.11", "sys_platform": "linux"}
    chosen = {canonicalize_name(r.name) for r in _extra("device") if r.marker is None or r.marker.evaluate(env)}
    assert interpreter in chosen
    assert {"paho-mqtt", "pyserial", "cryptography", "prometheus-client"} <= chosen
    assert "tflite-micro" not in chosen  # x86_64 wheels only
    assert Marker("platform_machine == 'x86_64'").evaluate(env) is False


def test_the_venv_has_the_locked_versions() -> None:
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"not running in {REPO / '.venv'} (make test installs the lock there)")
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in importlib.metadata.distributions()}
    wrong = {name: (str(pin), str(installed.get(name))) for name, pin in _pins().items() if installed.get(name) != pin}
    assert not wrong, f"(locked, installed) differ; make test reinstalls from the lock: {wrong}"
