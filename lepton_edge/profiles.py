"""Device profiles: load and validate ``device_profiles/*.toml``.

A profile describes one board: its memory, the runtime and kernel library it runs, and the
shares of RAM and flash a model may use. Every mistake in a profile file is reported as a
:class:`~lepton_edge.errors.BadInput` of one line naming the file and the field.

This module runs on devices too: standard library only (plus ``tomli`` on Python 3.10).
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lepton_edge.errors import BadInput
from lepton_edge.tomlfile import read_toml

RUNTIMES = ("tflm", "litert")
KERNEL_LIBRARIES = ("reference", "cmsis-nn", "esp-nn", "xnnpack")
# Which kernel libraries each runtime can use.
RUNTIME_KERNELS = {
    "tflm": ("reference", "cmsis-nn", "esp-nn"),
    "litert": ("reference", "xnnpack"),
}
TENSOR_TYPES = ("int8", "uint8", "int16", "int32", "int64", "float16", "float32", "bool")
POINTER_SIZES = (4, 8)

ENV_DIR = "LEPTON_PROFILES_DIR"


@dataclass(frozen=True)
class Profile:
    """One board, as described by its ``.toml`` file."""

    name: str
    board: str
    vendor: str
    core: str
    clock_mhz: float
    cores: int
    pointer_bytes: int
    ram_bytes: int
    flash_bytes: int
    ram_share: float
    flash_share: float
    runtime: str
    kernel_library: str
    arena_margin_bytes: int
    tensor_types: tuple[str, ...]
    macs_per_cycle: float
    path: Path
    notes: str = ""

    @property
    def ram_budget_bytes(self) -> int:
        """Bytes a model's arena may use: ``ram_bytes * ram_share``."""
        return int(self.ram_bytes * self.ram_share)

    @property
    def flash_budget_bytes(self) -> int:
        """Bytes the model itself may use: ``flash_bytes * flash_share``."""
        return int(self.flash_bytes * self.flash_share)

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (path as a string, tensor types as a list) plus both budgets."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["ram_budget_bytes"] = self.ram_budget_bytes
        out["flash_budget_bytes"] = self.flash_budget_bytes
        return out


# Field name -> (kind, required). Kinds are checked by _check_field.
_FIELDS: dict[str, tuple[str, bool]] = {
    "name": ("str", True),
    "board": ("str", True),
    "vendor": ("str", True),
    "core": ("str", True),
    "clock_mhz": ("positive_number", True),
    "cores": ("positive_int", True),
    "pointer_bytes": ("pointer", True),
    "ram_bytes": ("positive_int", True),
    "flash_bytes": ("positive_int", True),
    "ram_share": ("share", True),
    "flash_share": ("share", True),
    "runtime": ("runtime", True),
    "kernel_library": ("kernel_library", True),
    "arena_margin_bytes": ("nonnegative_int", True),
    "tensor_types": ("tensor_types", True),
    "macs_per_cycle": ("positive_number", True),
    "notes": ("any_str", False),
}


def profiles_dir() -> Path:
    """The directory of named profiles: ``$LEPTON_PROFILES_DIR`` if set, else the repository's
    ``device_profiles`` (a checkout or editable install), else the copy a wheel installs under
    ``<prefix>/share/lepton-edge``."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    in_repo = Path(__file__).resolve().parent.parent / "device_profiles"
    if in_repo.is_dir():
        return in_repo
    return Path(sys.prefix) / "share" / "lepton-edge" / "device_profiles"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and value == value  # not NaN


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _check_field(path: Path, key: str, kind: str, value: Any) -> Any:
    """Validate one field; return its value as the dataclass stores it."""

    def bad(expected: str) -> BadInput:
        return BadInput(f"{path}: field '{key}' must be {expected}, got {value!r} ({_type_name(value)})")

    if kind in ("str", "any_str"):
        if not isinstance(value, str):
            raise bad("a string")
        if kind == "str" and not value.strip():
            raise bad("a non-empty string")
        return value
    if kind == "positive_number":
        if not _is_number(value) or value <= 0 or value == float("inf"):
            raise bad("a number > 0")
        return value
    if kind == "positive_int":
        if not _is_int(value) or value <= 0:
            raise bad("an integer > 0")
        return value
    if kind == "nonnegative_int":
        if not _is_int(value) or value < 0:
            raise bad("an integer >= 0")
        return value
    if kind == "pointer":
        if not _is_int(value) or value not in POINTER_SIZES:
            raise bad("4 (32-bit) or 8 (64-bit)")
        return value
    if kind == "share":
        if not _is_number(value) or not 0 < value <= 1:
            raise bad("a number in (0, 1]")
        return float(value)
    if kind == "runtime":
        if value not in RUNTIMES:
            raise bad("one of " + ", ".join(repr(r) for r in RUNTIMES))
        return value
    if kind == "kernel_library":
        if value not in KERNEL_LIBRARIES:
            raise bad("one of " + ", ".join(repr(k) for k in KERNEL_LIBRARIES))
        return value
    if kind == "tensor_types":
        if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
            raise bad("a non-empty array of strings")
        unknown = [t for t in value if t not in TENSOR_TYPES]
        if unknown:
            raise BadInput(f"{path}: field 'tensor_types' has unknown type {unknown[0]!r} "
                           f"(known: {', '.join(TENSOR_TYPES)})")
        if len(set(value)) != len(value):
            raise BadInput(f"{path}: field 'tensor_types' lists a type twice: {value!r}")
        return tuple(value)
    raise AssertionError(f"unknown field kind {kind}")


def parse_profile(path: Path) -> Profile:
    """Load and validate the profile file at ``path``."""
    raw = read_toml(path, "profile")
    for key in raw:
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise BadInput(f"{path}: unknown field '{key}'{hint}")
    values: dict[str, Any] = {}
    for key, (kind, required) in _FIELDS.items():
        if key not in raw:
            if required:
                raise BadInput(f"{path}: missing field '{key}'")
            continue
        values[key] = _check_field(path, key, kind, raw[key])
    if values["name"] != path.stem:
        raise BadInput(f"{path}: field 'name' is {values['name']!r} but must equal the file name's stem {path.stem!r}")
    allowed = RUNTIME_KERNELS[values["runtime"]]
    if values["kernel_library"] not in allowed:
        raise BadInput(f"{path}: field 'kernel_library' {values['kernel_library']!r} does not go with runtime "
                       f"{values['runtime']!r} (use one of {', '.join(allowed)})")
    return Profile(path=path, **values)


def _profile_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise BadInput(f"profiles directory not found: {directory}"
                       + (f" (from ${ENV_DIR})" if os.environ.get(ENV_DIR) else ""))
    return sorted(p for p in directory.glob("*.toml") if p.is_file())


def _looks_like_path(text: str) -> bool:
    return text.endswith(".toml") or "/" in text or os.sep in text or (os.altsep is not None and os.altsep in text)


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (from :func:`profiles_dir`) or by the path of a ``.toml`` file for a custom board."""
    text = str(name_or_path)
    if _looks_like_path(text):
        return parse_profile(Path(text).expanduser())
    directory = profiles_dir()
    candidate = directory / f"{text}.toml"
    if candidate.is_file():
        return parse_profile(candidate)
    names = [p.stem for p in _profile_files(directory)] if directory.is_dir() else []
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise BadInput(f"unknown profile '{text}'{hint}; see 'lepton-edge profiles list'")


def list_profiles() -> list[Profile]:
    """Every profile in :func:`profiles_dir`, sorted by name."""
    return sorted((parse_profile(p) for p in _profile_files(profiles_dir())), key=lambda p: p.name)


def load_optional_profile(name_or_path: str | None) -> Profile | None:
    """The profile a ``--profile`` option names, or None when the option was not given."""
    return load_profile(name_or_path) if name_or_path else None
