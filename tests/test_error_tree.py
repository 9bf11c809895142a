"""One error tree: every exception class of the kit is a LeptonError, drawn in errors.py's docstring,
and no two classes share a name. Read from the sources (no imports: the host side pulls TensorFlow)."""

from __future__ import annotations

import ast
import builtins
import collections
import re
from pathlib import Path

import lepton_edge.errors

REPO = Path(__file__).resolve().parents[1]
BUILTIN_EXCEPTIONS = {name for name, obj in vars(builtins).items()
                      if isinstance(obj, type) and issubclass(obj, BaseException)}


def _classes() -> dict[str, list[tuple[str, list[str]]]]:
    """Module-level classes of lepton_edge/ and firmware_bridge/ (not the firmware's own tree, not
    the vendored schema): name -> [(file, base names)]."""
    found: dict[str, list[tuple[str, list[str]]]] = collections.defaultdict(list)
    for package in ("lepton_edge", "firmware_bridge"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith("firmware_bridge/firmware/") or "/vendor/" in rel:
                continue
            for node in ast.parse(path.read_text(), rel).body:
                if isinstance(node, ast.ClassDef):
                    bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                    found[node.name].append((rel, bases))
    return found


def _exception_classes() -> dict[str, tuple[str, bool]]:
    """Exception classes: name -> (file, derives from LeptonError)."""
    classes = {name: where[0] for name, where in _classes().items()}

    def ancestry(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if name in seen or name not in classes:
            return {name}
        out = {name}
        for base in classes[name][1]:
            out |= ancestry(base, seen | {name})
        return out

    result = {}
    for name, (rel, _bases) in classes.items():
        above = ancestry(name) - {name}
        if above & BUILTIN_EXCEPTIONS or any(b.endswith(("Error", "Exception")) and b not in classes for b in above):
            result[name] = (rel, "LeptonError" in above or name == "LeptonError")
    return result


def test_every_exception_class_is_a_lepton_error():
    outside = {name: rel for name, (rel, under) in _exception_classes().items() if not under}
    assert not outside, f"exception classes outside the LeptonError tree: {outside}"


def test_the_tree_in_errors_py_names_every_error_and_its_file():
    doc = lepton_edge.errors.__doc__ or ""
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^[\s|*+]*(\w+)\b.*$", doc, re.M)}
    missing = {name: rel for name, (rel, _under) in _exception_classes().items() if name not in lines}
    assert not missing, f"errors.py's docstring does not draw {missing}"
    # A class outside the errors modules says where it lives (lepton_edge/ left out).
    misplaced = {name: rel for name, (rel, _under) in _exception_classes().items()
                 if not rel.endswith("/errors.py") and rel.removeprefix("lepton_edge/") not in lines[name]}
    assert not misplaced, f"errors.py's docstring names another file for {misplaced}"


def test_no_two_classes_share_a_name():
    shared = {name: [rel for rel, _ in where] for name, where in _classes().items() if len(where) > 1}
    assert not shared, f"classes that share a name: {shared}"
