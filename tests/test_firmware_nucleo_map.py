"""The ``nucleo-l4r5zi`` port links for the real chip: its map file places the firmware, the meta pages and
both model slots inside the STM32L4R5's 2 MB of flash, and the tensor arena inside its 640 KB of SRAM,
with nothing overlapping. The board cannot run here; this is what can be checked without one."""

from __future__ import annotations

import re

from lepton_edge.profiles import load_profile
from test_firmware_build import cached_or_skip

FLASH = (0x08000000, 0x08000000 + 2 * 1024 * 1024)  # RM0432: 2 MB, dual bank
SRAM = (0x20000000, 0x20000000 + 640 * 1024)  # SRAM1 + SRAM2 + SRAM3 at consecutive addresses
META_PAGES = 2


def _memory_regions(text: str) -> dict[str, tuple[int, int]]:
    block = text.split("Memory Configuration", 1)[1].split("Linker script and memory map", 1)[0]
    regions = {}
    for name, origin, length in re.findall(r"^(\w+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", block, re.M):
        regions[name] = (int(origin, 16), int(origin, 16) + int(length, 16))
    return regions


def _symbol(text: str, name: str) -> int:
    found = re.search(rf"^\s+0x([0-9a-f]+)\s+{name}\b", text, re.M)
    assert found, f"{name} is not in the map file"
    return int(found.group(1), 16)


def _section(text: str, name: str) -> tuple[int, int, int | None]:
    """(address, size, load address or None) of an output section."""
    found = re.search(rf"^{re.escape(name)}\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)(?:\s+load address 0x([0-9a-f]+))?",
                      text, re.M)
    assert found, f"section {name} is not in the map file"
    return int(found.group(1), 16), int(found.group(2), 16), int(found.group(3), 16) if found.group(3) else None


def test_map_file_places_slots_in_flash_and_the_arena_in_sram():
    fw = cached_or_skip("nucleo-l4r5zi")
    text = fw.map_file.read_text()
    regions = _memory_regions(text)
    assert regions["FLASH"] == FLASH and regions["SRAM"] == SRAM, regions

    # The firmware image: code and the initial values of .data, both loaded into flash.
    text_addr, text_size, _ = _section(text, ".text")
    data_addr, data_size, data_load = _section(text, ".data")
    assert FLASH[0] <= text_addr and data_load is not None
    image_end = max(text_addr + text_size, data_load + data_size)

    meta = _symbol(text, "lepton_meta")
    slot0, slot1 = _symbol(text, "lepton_slot0"), _symbol(text, "lepton_slot1")
    end = _symbol(text, "lepton_storage_end")
    slot_bytes = slot1 - slot0
    assert image_end <= meta, f"the firmware ({image_end:#x}) runs into the meta pages ({meta:#x})"
    assert slot0 - meta == META_PAGES * 4096
    assert end - slot1 == slot_bytes and end <= FLASH[1]
    assert meta % 4096 == 0 and slot0 % 4096 == 0 and slot1 % 4096 == 0, "slots start on flash pages"
    # What the port reports in HELLO: each slot must hold a real model (MLPerf IC int8 is ~100 KB).
    assert slot_bytes >= 512 * 1024

    arena_addr, arena_size, _ = _section(text, ".lepton_arena")
    assert _symbol(text, "lepton_arena") == arena_addr
    assert SRAM[0] <= arena_addr and arena_addr + arena_size <= SRAM[1]
    assert arena_addr % 16 == 0
    assert arena_size >= load_profile("stm32l4r5").ram_budget_bytes
    assert data_addr < arena_addr or data_addr >= arena_addr + arena_size, ".data overlaps the arena"
    bss_addr, bss_size, _ = _section(text, ".bss")
    assert bss_addr >= arena_addr + arena_size and bss_addr + bss_size <= SRAM[1]
