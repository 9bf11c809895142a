"""The hard boundary: code that runs on a device never imports TensorFlow, and runs on Python 3.10.

The sides follow folders (``tests/sides.py``; docs/DESIGN.md, "Boundaries"), not lists of files: device
code imports only what a board has, and neither host code nor the tools.

The command line (``cli.py``, ``commands/``) is host code that a device runs too (``lepton-edge agent``,
``lepton-edge gateway``): at import time it follows the device's rules, inside its run functions it may
reach host code.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import sides


def test_every_folder_has_a_side():
    folders = {p.name for p in sides.PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    sided = set(sides.DEVICE_DIRS + sides.HOST_DIRS + sides.TOOLS_DIRS)
    assert folders == sided, "place the new folder on a side in tests/sides.py"


@pytest.mark.parametrize("path", sides.device_side_files(), ids=sides.rel)
def test_device_side_imports_only_what_a_board_has(path):
    tree = sides.parse(path)  # also: no syntax newer than Python 3.10
    imports = sides.imported_modules(tree)
    bad = [(name, line) for name, line in imports if name.split(".")[0] not in sides.STDLIB | sides.ALLOWED]
    assert not bad, f"{sides.rel(path)} imports {bad}"
    crossing = [(name, line) for name, line in imports if sides.side_of(name) in ("host", "tools")]
    assert not crossing, f"{sides.rel(path)} (device side) imports host or tools code: {crossing}"
    if "tomllib" in {n for n, _ in imports}:
        assert "tomli" in path.read_text(), f"{sides.rel(path)}: tomllib is Python 3.11+; fall back to tomli on 3.10"


@pytest.mark.parametrize("path", sides.entry_point_files(), ids=sides.rel)
def test_command_line_imports_nothing_host_only_at_import_time(path):
    """Command modules may reach host code inside their run functions; at import time they must not."""
    imports = sides.imported_modules(sides.parse(path), module_level_only=True)
    bad = [(name, line) for name, line in imports if name.split(".")[0] not in sides.STDLIB | sides.ALLOWED
           or sides.side_of(name) == "tools"]
    assert not bad, f"{sides.rel(path)} imports {bad} at import time"


def test_device_side_process_never_loads_tensorflow():
    """Import every device-side module, both interpreters and the whole command line (``lepton-edge agent``
    builds every command's parser): no TensorFlow, Keras or matplotlib in the process."""
    modules = sides.device_side_modules()
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "from lepton_edge.cli import build_parser\n"
        "build_parser()\n"
        "import ai_edge_litert.interpreter\n"  # the interpreters the runtimes load
        "from tflite_micro.python.tflite_micro import runtime\n"
        # Top-level names only: tflite_micro ships a subpackage called tflite_micro.tensorflow (not TensorFlow).
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sides.FORBIDDEN!r})\n"
        "print(len(sys.modules), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=sides.REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(modules) > 20


def test_firmware_bridge_takes_from_lepton_edge_through_kit():
    """firmware_bridge's modules import ``lepton_edge.errors`` and, for the rest, ``firmware_bridge.kit``;
    the simulated device's engine runs TFLite Micro through ``lepton_edge.runtime`` itself."""
    gates = {"firmware_bridge/kit.py", "firmware_bridge/engine.py"}
    scattered = {}
    for path in sorted((sides.REPO / "firmware_bridge").glob("*.py")):
        taken = sorted({name for name, _ in sides.imported_modules(sides.parse(path))
                        if name.split(".")[0] == "lepton_edge" and name != "lepton_edge.errors"})
        if taken and sides.rel(path) not in gates:
            scattered[sides.rel(path)] = taken
    assert not scattered, f"import these through firmware_bridge/kit.py: {scattered}"
