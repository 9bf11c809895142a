"""Which side of the boundary each Python file is on, by folder (docs/DESIGN.md, "Boundaries").

* device: ``lepton_edge/{tflite,plan,runtime,agent,gateway,mqtt,preprocess}/``, the top-level ``lepton_edge``
  modules they import (found by following their imports), and ``firmware_bridge/`` (its C and firmware
  sources are not Python);
* host: ``lepton_edge/{convert,fleet,commands,firmware_build}/`` and the other top-level modules;
* tools: ``lepton_edge/tools/``.

``tests/test_boundaries.py`` checks the device side with it, ``tests/test_import_graph.py`` the whole graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "lepton_edge"

DEVICE_DIRS = ("tflite", "plan", "runtime", "agent", "gateway", "mqtt", "preprocess")
HOST_DIRS = ("convert", "fleet", "commands", "firmware_build")
TOOLS_DIRS = ("tools",)

# What device-side code may import (top-level package names), besides the standard library.
ALLOWED = {"numpy", "flatbuffers", "ai_edge_litert", "tflite_runtime", "tflite_micro", "paho", "serial",
           "cryptography", "prometheus_client", "tomli", "PIL", "lepton_edge", "firmware_bridge"}
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "matplotlib", "onnx", "onnx2tf", "onnxruntime", "torch")
STDLIB = set(sys.stdlib_module_names)


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def imported_modules(tree: ast.Module, module_level_only: bool = False) -> list[tuple[str, int]]:
    """Absolute dotted names imported, with their lines; only those run at import time if asked."""
    found: list[tuple[str, int]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((a.name, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.module, node.lineno))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                visit(node.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    if module_level_only:
        visit(tree.body)
        return found
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), feature_version=(3, 10))


def _top_level_needed(files: list[Path]) -> list[Path]:
    """The top-level lepton_edge modules that device-side files import, followed transitively."""
    needed: dict[str, Path] = {}
    todo = list(files)
    while todo:
        for name, _ in imported_modules(parse(todo.pop())):
            parts = name.split(".")
            if parts[0] != "lepton_edge" or len(parts) < 2:
                continue
            path = PACKAGE / f"{parts[1]}.py"
            if path.is_file() and parts[1] not in needed:
                needed[parts[1]] = path
                todo.append(path)
    return sorted(needed.values())


def device_side_files() -> list[Path]:
    folders = [f for d in DEVICE_DIRS for f in sorted((PACKAGE / d).rglob("*.py")) if "/vendor/" not in rel(f)]
    bridge = sorted((REPO / "firmware_bridge").rglob("*.py"))
    return [*folders, *_top_level_needed(folders + bridge), PACKAGE / "__init__.py", *bridge]


def entry_point_files() -> list[Path]:
    return [PACKAGE / "cli.py", PACKAGE / "__main__.py", *sorted((PACKAGE / "commands").glob("*.py"))]


def side_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "lepton_edge" or len(parts) < 2:
        return "other"
    if parts[1] in HOST_DIRS:
        return "host"
    if parts[1] in TOOLS_DIRS:
        return "tools"
    return "device or top level"


def device_side_modules() -> list[str]:
    """The dotted names of the device-side modules (``__main__`` left out: it runs the command line)."""
    names = [f.relative_to(REPO).with_suffix("").as_posix() for f in device_side_files()]
    return [n.replace("/", ".").removesuffix(".__init__") for n in names if not n.endswith("__main__")]
