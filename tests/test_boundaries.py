"""The hard boundary: code that runs on a device never imports TensorFlow, and runs on Python 3.10."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# What device-side code may import (top-level package names), besides the standard library.
ALLOWED = {"numpy", "flatbuffers", "ai_edge_litert", "tflite_runtime", "tflite_micro", "paho", "serial",
           "cryptography", "prometheus_client", "tomli", "lepton_edge", "firmware_bridge"}
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "matplotlib", "onnx", "onnx2tf", "onnxruntime", "torch")

# Host-only modules (conversion, pictures, sample models, the fleet controller's host side).
HOST_ONLY = {"lepton_edge/samples.py", "lepton_edge/plan/plot.py"}
HOST_ONLY_DIRS = ("lepton_edge/convert/", "lepton_edge/fleet/", "bench/", "tests/", "hil_tests/")


def device_side_files() -> list[Path]:
    files = sorted((REPO / "lepton_edge").rglob("*.py")) + sorted((REPO / "firmware_bridge").rglob("*.py"))
    out = []
    for f in files:
        rel = f.relative_to(REPO).as_posix()
        if rel in HOST_ONLY or rel.startswith(HOST_ONLY_DIRS) or "/vendor/" in rel:
            continue
        out.append(f)
    return out


def module_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Imports executed when the module is imported (not those inside functions)."""
    found = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((a.name.split(".")[0], node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.module.split(".")[0], node.lineno))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                visit(node.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def all_imports(tree: ast.Module) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((a.name.split(".")[0], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("path", device_side_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_device_side_imports_only_what_a_board_has(path):
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 10))  # also: no syntax newer than Python 3.10
    rel = path.relative_to(REPO).as_posix()
    # Command modules may reach host code inside their run functions; at import time they must not.
    imports = module_level_imports(tree) if rel.startswith(("lepton_edge/commands/", "lepton_edge/cli.py")) \
        else all_imports(tree)
    stdlib = set(sys.stdlib_module_names)
    bad = [(name, line) for name, line in imports if name not in stdlib and name not in ALLOWED]
    if rel.startswith("lepton_edge/commands/") or rel == "lepton_edge/cli.py":
        bad = [(n, line) for n, line in bad if n in FORBIDDEN or n not in stdlib]
    assert not bad, f"{rel} imports {bad}"
    if "tomllib" in {n for n, _ in imports}:
        assert "tomli" in source, f"{rel}: tomllib is Python 3.11+; fall back to tomli on 3.10"


def test_device_side_process_never_loads_tensorflow():
    """Import every device-side module and build the whole command line: no TensorFlow in the process."""
    modules = []
    for f in device_side_files():
        rel = f.relative_to(REPO).with_suffix("").as_posix()
        if rel.endswith("__main__"):
            continue
        modules.append(rel.replace("/", ".").removesuffix(".__init__"))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "from lepton_edge.cli import build_parser\n"
        "build_parser()\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(len(sys.modules), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(modules) > 20
