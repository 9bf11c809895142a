"""``lepton-edge profiles list | show NAME [--json]``: the boards the kit knows."""

from __future__ import annotations

import argparse
from typing import Any

from lepton_edge.console import human_bytes, print_json, render_table
from lepton_edge.profiles import Profile, list_profiles, load_profile

_SIZE_FIELDS = ("ram_bytes", "flash_bytes", "arena_margin_bytes", "ram_budget_bytes", "flash_budget_bytes")


def register(subparsers: Any) -> None:
    """Add ``profiles`` and its subcommands."""
    parser = subparsers.add_parser("profiles", help="list device profiles or show one",
                                   description="Device profiles: the boards a model can be planned and converted for.")
    sub = parser.add_subparsers(dest="profiles_command", metavar="SUBCOMMAND")
    sub.required = True

    p_list = sub.add_parser("list", help="list every profile", description="List every device profile.")
    p_list.add_argument("--json", action="store_true", help="print JSON for scripts")
    p_list.set_defaults(func=run_list)

    p_show = sub.add_parser("show", help="show one profile", description="Show every field of one device profile.")
    p_show.add_argument("name", metavar="NAME", help="a profile name, or the path of a .toml file for a custom board")
    p_show.add_argument("--json", action="store_true", help="print JSON for scripts")
    p_show.set_defaults(func=run_show)


def _clock(profile: Profile) -> str:
    mhz = profile.clock_mhz
    text = f"{mhz:g} MHz" if mhz < 1000 else f"{mhz / 1000:g} GHz"
    return text if profile.cores == 1 else f"{profile.cores}x {text}"


def run_list(args: argparse.Namespace) -> int:
    """Print every profile as a table, or as a JSON list."""
    profiles = list_profiles()
    if args.json:
        print_json([p.as_dict() for p in profiles])
        return 0
    headers = ("name", "board", "core", "clock", "RAM", "flash", "arena budget", "runtime", "kernels", "margin")
    rows = [
        (p.name, p.board, p.core, _clock(p), human_bytes(p.ram_bytes), human_bytes(p.flash_bytes),
         human_bytes(p.ram_budget_bytes), p.runtime, p.kernel_library, human_bytes(p.arena_margin_bytes))
        for p in profiles
    ]
    print(render_table(headers, rows, align="llllrrrllr"))
    return 0


def _show_value(key: str, value: Any) -> str:
    if key in _SIZE_FIELDS:
        return f"{value} ({human_bytes(value)})"
    if key in ("ram_share", "flash_share"):
        return f"{value:g} ({value * 100:g} %)"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def run_show(args: argparse.Namespace) -> int:
    """Print one profile's fields as a two-column table, or as a JSON object."""
    profile = load_profile(args.name)
    data = profile.as_dict()
    if args.json:
        print_json(data)
        return 0
    rows = [(key, _show_value(key, value)) for key, value in data.items() if not (key == "notes" and not value)]
    print(render_table(("field", "value"), rows, align="ll"))
    return 0
