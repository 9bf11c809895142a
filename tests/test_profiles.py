"""Device profiles: the shipped ones load, the CLI lists and shows them, bad files fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, run_cli
from lepton_edge.errors import BadInput
from lepton_edge.profiles import Profile, list_profiles, load_profile, parse_profile, profiles_dir

EXPECTED = [
    "arduino-nano-33-ble",
    "esp32-s3",
    "esp32-s3-psram",
    "stm32h743",
    "stm32l4r5",
    "rp2040",
    "coral-dev-board-micro",
    "raspberry-pi-4",
    "raspberry-pi-zero-2w",
    "jetson-orin-nano",
]

GOOD = """\
name = "{name}"
board = "Custom board"
vendor = "Nobody"
core = "Cortex-M4F"
clock_mhz = 80
cores = 1
pointer_bytes = 4
ram_bytes = 131072
flash_bytes = 524288
ram_share = 0.5
flash_share = 0.75
runtime = "tflm"
kernel_library = "cmsis-nn"
arena_margin_bytes = 2048
tensor_types = ["int8", "float32"]
macs_per_cycle = 0.2
"""


@pytest.fixture(autouse=True)
def _default_profiles_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEPTON_PROFILES_DIR", raising=False)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def replace_line(text: str, key: str, new: str | None) -> str:
    """``text`` with the line setting ``key`` replaced by ``new`` (or removed when ``new`` is None)."""
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
    assert len(lines) == len(text.splitlines()) - 1, key
    if new is not None:
        lines.append(new)
    return "\n".join(lines) + "\n"


# --- the shipped profiles -------------------------------------------------------------------


def test_profiles_dir_is_repo_device_profiles() -> None:
    assert profiles_dir() == REPO / "device_profiles"


def test_every_shipped_profile_loads() -> None:
    files = sorted((REPO / "device_profiles").glob("*.toml"))
    assert files
    for path in files:
        profile = parse_profile(path)
        assert profile.name == path.stem
        assert 0 < profile.ram_budget_bytes <= profile.ram_bytes
        assert 0 < profile.flash_budget_bytes <= profile.flash_bytes
        # every shipped file names its source at the top
        assert path.read_text(encoding="utf-8").startswith("#"), path


@pytest.mark.parametrize("name", EXPECTED)
def test_expected_profile_exists(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, Profile)
    assert profile.name == name
    if profile.runtime == "litert":
        assert profile.kernel_library == "xnnpack" and profile.arena_margin_bytes == 0
        assert "float16" in profile.tensor_types and profile.pointer_bytes == 8


def test_list_profiles_sorted_and_complete() -> None:
    names = [p.name for p in list_profiles()]
    assert names == sorted(names)
    assert set(EXPECTED) <= set(names)


def test_stm32h743_budgets_the_contiguous_axi_sram() -> None:
    profile = load_profile("stm32h743")
    assert profile.ram_bytes == 512 * 1024
    assert profile.ram_budget_bytes == int(512 * 1024 * profile.ram_share)


def test_load_by_path() -> None:
    profile = load_profile(str(REPO / "device_profiles" / "rp2040.toml"))
    assert profile.name == "rp2040" and profile.cores == 2


# --- validation, in process (fast) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "new", "fragment"),
    [
        ("runtime", None, "missing field 'runtime'"),
        ("ram_bytes", 'ram_bytes = "128K"', "'ram_bytes'"),
        ("cores", "cores = true", "'cores'"),  # bool is not an int
        ("ram_share", "ram_share = 1.5", "'ram_share'"),
        ("flash_share", "flash_share = 0", "'flash_share'"),
        ("flash_bytes", "flash_bytes = 0", "'flash_bytes'"),
        ("arena_margin_bytes", "arena_margin_bytes = -1", "'arena_margin_bytes'"),
        ("runtime", 'runtime = "tvm"', "'runtime'"),
        ("kernel_library", 'kernel_library = "xnnpack"', "'kernel_library'"),  # not with tflm
        ("tensor_types", 'tensor_types = ["int4"]', "'tensor_types'"),
        ("pointer_bytes", "pointer_bytes = 2", "'pointer_bytes'"),
        ("macs_per_cycle", "macs_per_cycle = 0", "'macs_per_cycle'"),
    ],
)
def test_bad_field_names_file_and_field(tmp_path: Path, key: str, new: str | None, fragment: str) -> None:
    path = write(tmp_path, "custom", replace_line(GOOD.format(name="custom"), key, new))
    with pytest.raises(BadInput) as info:
        parse_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and fragment in message


def test_unknown_extra_field(tmp_path: Path) -> None:
    path = write(tmp_path, "custom", GOOD.format(name="custom") + "ram_shar = 0.5\n")
    with pytest.raises(BadInput, match=r"unknown field 'ram_shar' \(did you mean 'ram_share'\?\)"):
        parse_profile(path)


def test_good_custom_profile(tmp_path: Path) -> None:
    path = write(tmp_path, "custom", GOOD.format(name="custom") + 'notes = "mine"\n')
    profile = load_profile(str(path))
    assert profile.ram_budget_bytes == 65536 and profile.flash_budget_bytes == 393216
    assert profile.tensor_types == ("int8", "float32") and profile.notes == "mine"


def test_unknown_name_in_process() -> None:
    with pytest.raises(BadInput) as info:
        load_profile("stm32l4")
    assert str(info.value) == ("unknown profile 'stm32l4' (closest: stm32l4r5, stm32h743); "
                               "see 'lepton-edge profiles list'")


# --- the command line -----------------------------------------------------------------------


def test_cli_list_json() -> None:
    proc = run_cli("profiles", "list", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = [entry["name"] for entry in data]
    assert set(EXPECTED) <= set(names)
    entry = next(e for e in data if e["name"] == "stm32l4r5")
    assert entry["ram_bytes"] == 655360 and entry["runtime"] == "tflm"
    assert entry["ram_budget_bytes"] == int(655360 * entry["ram_share"])
    assert entry["path"].endswith("stm32l4r5.toml")


def test_cli_list_table_and_show() -> None:
    proc = run_cli("profiles", "list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "arena budget" in proc.stdout and "stm32h743" in proc.stdout
    proc = run_cli("profiles", "show", "esp32-s3", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "512.0 KiB" in proc.stdout and "esp-nn" in proc.stdout
    proc = run_cli("profiles", "show", "esp32-s3", "--json", timeout=60)
    assert json.loads(proc.stdout)["kernel_library"] == "esp-nn"


def test_cli_unknown_name_lists_closest() -> None:
    line = assert_one_line_error(run_cli("profiles", "show", "stm32l4", timeout=60))
    assert "unknown profile 'stm32l4'" in line and "stm32l4r5" in line and "stm32h743" in line


MALFORMED = {
    "missing": (lambda text: replace_line(text, "ram_bytes", None), "ram_bytes"),
    "wrongtype": (lambda text: replace_line(text, "clock_mhz", 'clock_mhz = "fast"'), "clock_mhz"),
    "badruntime": (lambda text: replace_line(text, "runtime", 'runtime = "onnx"'), "runtime"),
    "syntax": (lambda text: text.replace("cores = 1", "cores = = 1"), "TOML"),
    "misnamed": (lambda text: text.replace('name = "misnamed"', 'name = "other"'), "name"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_cli_malformed_profile_one_line(tmp_path: Path, case: str) -> None:
    mutate, field = MALFORMED[case]
    path = write(tmp_path, case if case != "misnamed" else "misnamed", mutate(GOOD.format(name=case)))
    env = {"LEPTON_PROFILES_DIR": str(tmp_path)}
    for args in (("profiles", "show", case), ("profiles", "list"), ("profiles", "show", str(path))):
        line = assert_one_line_error(run_cli(*args, env=env, timeout=60))
        assert str(path) in line and field in line, line
    if case == "syntax":
        assert "line" in line  # the parser's message, with its position


def test_cli_missing_profiles_dir(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli("profiles", "list", env={"LEPTON_PROFILES_DIR": str(tmp_path / "nope")},
                                         timeout=60))
    assert "profiles directory not found" in line
