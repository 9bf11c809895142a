"""``lepton-edge firmware build`` and ``device-sim --board``: the cache key follows the firmware's sources
and nothing else (no compiling), bad input is one line, the cached build answers with its figures, and
the qemu-m4 board plays the stm32l4r5 profile in its HELLO.

No test here builds firmware: ``make test`` builds every board before pytest starts (``make firmware``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, require_tflm_tree, run_cli, skip_or_fail
from lepton_edge.firmware_build import build as fwbuild
from lepton_edge.firmware_build.boards import BOARDS, board_for_profile, get_board
from lepton_edge.profiles import load_profile
from lepton_edge.runtime.op_support import firmware_ops

BRIDGE = REPO / "firmware_bridge"


def _toolchain_missing(board: str) -> str | None:
    spec = get_board(board)
    needed = ["make", "g++"] if spec.is_host else ["make", "arm-none-eabi-g++"]
    if spec.emulated:
        needed.append("qemu-system-arm")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (make test installs them)" if missing else None


def cached_or_skip(board: str) -> fwbuild.FirmwareBuild:
    """The cached build ``make firmware`` made; skip only when the toolchain or the TFLM tree is absent
    (and not in CI); a missing build is a failure (make test builds it before pytest)."""
    why = _toolchain_missing(board)
    if why is None and not fwbuild.tflm_tree_available():
        why = f"no TFLite Micro tree ($LEPTON_TFLM_DIR unset, {fwbuild.THIRD_PARTY} missing)"
    if why is not None:
        skip_or_fail(f"{board}: {why}")
    fw = fwbuild.cached_build(board)
    if fw is None:
        pytest.fail(f"no cached {board} firmware build for the current sources: `make firmware` builds it "
                    "(make test does, before pytest); tests never build")
    return fw


# ---------------------------------------------------------------- the cache key

@pytest.fixture
def bridge_copy(tmp_path) -> tuple[Path, Path]:
    """A copy of firmware_bridge/{firmware,c} and the TFLM tree (read only: the key never compiles)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    tree = require_tflm_tree()
    bridge = tmp_path / "firmware_bridge"
    shutil.copytree(BRIDGE / "firmware", bridge / "firmware", ignore=shutil.ignore_patterns("build"))
    shutil.copytree(BRIDGE / "c", bridge / "c")
    return bridge, tree


def _edit(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_cache_key_changes_with_a_firmware_source_and_not_otherwise(bridge_copy):
    bridge, tree = bridge_copy
    firmware = bridge / "firmware"
    key = fwbuild.build_keys("host", tree, bridge)
    assert key == fwbuild.build_keys("host", tree, bridge)  # deterministic
    assert len(key.build) == 16 and key.build != key.lib

    # Not inputs: modification times, Markdown, files beside the firmware's folders.
    for path in firmware.rglob("*"):
        if path.is_file():
            os.utime(path, (1_000_000_000, 1_000_000_000))
    (firmware / "NOTES.md").write_text("a note\n")
    (firmware / "build" / "host" / "obj").mkdir(parents=True)  # the Makefile's default BUILD_DIR
    (firmware / "build" / "host" / "obj" / "main_loop.o").write_bytes(b"\x7fELF")
    (bridge / "elsewhere.py").write_text("x = 1\n")
    (firmware / "core" / "test_extra.cc").write_text("int main() { return 0; }\n")  # a test driver
    assert fwbuild.build_keys("host", tree, bridge) == key

    # A firmware source: a new firmware build, the same TFLM library.
    _edit(firmware / "core" / "ops.h", "// edited\n")
    edited = fwbuild.build_keys("host", tree, bridge)
    assert edited.build != key.build and edited.lib == key.lib

    # The frame codec the firmware links (firmware_bridge/c) is a firmware source too.
    _edit(bridge / "c" / "lepton_frame.c", "/* edited */\n")
    framed = fwbuild.build_keys("host", tree, bridge)
    assert framed.build != edited.build and framed.lib == key.lib

    # The library's flags: a new library, hence a new build.
    board_mk = firmware / "boards" / "host" / "board.mk"
    board_mk.write_text(board_mk.read_text().replace("OPT := -O1", "OPT := -O2"))
    flagged = fwbuild.build_keys("host", tree, bridge)
    assert flagged.lib != key.lib and flagged.build != framed.build and flagged.objects != key.objects

    # The library's source list (one kernel less): a new library, made of the same objects.
    tflm_mk = firmware / "tflm.mk"
    assert " softmax " in tflm_mk.read_text()
    tflm_mk.write_text(tflm_mk.read_text().replace(" softmax ", " ", 1))
    listed = fwbuild.build_keys("host", tree, bridge)
    assert listed.lib != flagged.lib and listed.objects == flagged.objects

    # Boards with other flags have other keys.
    assert fwbuild.build_keys("qemu-m4", tree, bridge).lib != flagged.lib


def test_a_tree_of_your_own_is_known_by_its_files(tmp_path):
    tree = tmp_path / "tflite-micro"
    source = tree / "tensorflow" / "lite" / "micro" / "micro_allocator.cc"
    source.parent.mkdir(parents=True)
    source.write_text("// a tree of your own\n")
    first = fwbuild.tflm_identity(tree)
    assert first.startswith("stat:") and fwbuild.tflm_identity(tree) == first
    _edit(source, "// edited\n")
    assert fwbuild.tflm_identity(tree) != first
    default = fwbuild.default_tflm_tree()
    if default is not None and (default / ".tree-complete").exists():
        assert fwbuild.tflm_identity(default).startswith("archives:")  # the pinned archives' sha256, no walk


def test_boards_play_the_profiles():
    assert set(BOARDS) == {"host", "qemu-m4", "qemu-m7", "nucleo-l4r5zi"}
    assert board_for_profile("stm32l4r5").name == "qemu-m4"
    assert board_for_profile("stm32h743").name == "qemu-m7"
    assert board_for_profile("rp2040") is None
    assert BOARDS["qemu-m4"].measured_on() == "cortex-m4 (qemu mps2-an386), cmsis-nn"
    assert not BOARDS["nucleo-l4r5zi"].runs_here


# ---------------------------------------------------------------- the command

def test_unknown_board_is_one_line_exit_2():
    line = assert_one_line_error(run_cli("firmware", "build", "--board", "nosuch"), 2)
    assert "unknown board 'nosuch'" in line and "qemu-m4" in line


def test_device_sim_board_and_profile_are_exclusive():
    assert_one_line_error(run_cli("device-sim", "--board", "qemu-m4", "--profile", "stm32l4r5"), 2)
    assert_one_line_error(run_cli("device-sim", "--board", "nosuch", "--print-port"), 2)
    assert_one_line_error(run_cli("device-sim", "--board", "qemu-m4", "--drop-rate", "0.1"), 2)
    assert_one_line_error(run_cli("device-sim", "--board", "nucleo-l4r5zi"), 2)


def test_missing_tflm_tree_is_one_line_exit_1(tmp_path):
    proc = run_cli("firmware", "build", "--board", "host", env={"LEPTON_TFLM_DIR": str(tmp_path / "nothing")})
    line = assert_one_line_error(proc, 1)
    assert "LEPTON_TFLM_DIR" in line


def test_missing_toolchain_is_one_line_exit_1_with_the_install_command(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    bin_dir = tmp_path / "bin"  # a PATH with make and a shell, no compilers, no QEMU
    bin_dir.mkdir()
    for tool in ("make", "sh", "bash"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir)}
    line = assert_one_line_error(run_cli("firmware", "build", "--board", "qemu-m4", env=env), 1)
    assert "arm-none-eabi-g++ is not installed" in line and "apt-get install gcc-arm-none-eabi" in line
    line = assert_one_line_error(run_cli("device-sim", "--board", "qemu-m4", "--print-port", env=env), 1)
    assert "apt-get install qemu-system-arm" in line


def test_firmware_build_host_json_from_the_cache(tmp_path):
    cached_or_skip("host")
    proc = run_cli("firmware", "build", "--board", "host", "--json", "-o", tmp_path / "out", timeout=120)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    profile = load_profile("stm32l4r5")
    assert answer["board"] == "host" and answer["profile"] == "stm32l4r5"
    assert answer["cached"] is True
    assert Path(answer["elf"]) == tmp_path / "out" / "firmware" and Path(answer["elf"]).exists()
    assert os.access(answer["elf"], os.X_OK)
    assert answer["text_bytes"] > 10_000 and answer["data_bytes"] >= 0 and answer["bss_bytes"] > 0
    assert answer["arena_capacity_bytes"] == profile.ram_budget_bytes
    assert answer["ops"] == list(firmware_ops())
    assert (tmp_path / "out" / "build.json").exists()


# ---------------------------------------------------------------- device-sim --board

def test_device_sim_qemu_m4_answers_hello_as_stm32l4r5(tmp_path):
    cached_or_skip("qemu-m4")
    from firmware_bridge.host import connect
    from firmware_bridge.link import PortOptions

    state = tmp_path / "slots.bin"
    proc = subprocess.Popen([sys.executable, "-m", "lepton_edge", "device-sim", "--board", "qemu-m4", "--print-port",
                             "--state", str(state)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "device-sim.log", "wb"), text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        port = proc.stdout.readline().strip() if ready else ""
        assert port.startswith("/dev/"), (tmp_path / "device-sim.log").read_text()
        device = connect(PortOptions(port, 115200), hello_timeout=20)
        try:
            hello = device.hello
        finally:
            device.close()
        profile = load_profile("stm32l4r5")
        assert hello.profile == "stm32l4r5"
        assert hello.firmware.startswith("lepton-edge-fw ") and " qemu-m4 cmsis-nn" in hello.firmware
        assert hello.arena_ram_bytes == profile.ram_budget_bytes
        assert hello.slot_bytes == profile.flash_budget_bytes
        assert state.exists()  # the slots live in the file

        proc.send_signal(signal.SIGTERM)  # stops QEMU and exits 0
        assert proc.wait(20) == 0
        deadline = time.monotonic() + 10
        while os.path.exists(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(port), "QEMU's pseudo-terminal outlived device-sim"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
