"""``lepton-edge firmware build``: the reference firmware (firmware_bridge/firmware/) for a board."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from lepton_edge.firmware_build.boards import BOARDS

    p = sub.add_parser("firmware", help="build the reference firmware for a board",
                       description="The reference firmware: the device side of firmware_bridge/PROTOCOL.md in "
                                   "C++ on TFLite Micro, for emulated Cortex-M boards, Linux and a real board.")
    fsub = p.add_subparsers(dest="firmware_command", metavar="ACTION", parser_class=type(p))
    fsub.required = True
    b = fsub.add_parser("build", help="build the firmware for a board (cached by its inputs)",
                        description="Build the firmware for BOARD in a cache outside the clone keyed by its inputs "
                                    "(~/.cache/lepton-edge/firmware, or $LEPTON_FIRMWARE_CACHE): a second build of "
                                    "the same sources is instant, and TFLite Micro is compiled once per toolchain "
                                    "and flags. The TFLite Micro tree is $LEPTON_TFLM_DIR, else the one laid out "
                                    "from ../shared/third_party.")
    b.add_argument("--board", required=True, metavar="BOARD", help=f"one of {', '.join(BOARDS)}")
    b.add_argument("-o", "--out", metavar="DIR", help="also copy the firmware, its map file and build.json to DIR")
    b.add_argument("-j", "--jobs", type=int, metavar="N", help="parallel compile jobs (default: the CPU count)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("--skip-if-no-tree", action="store_true",
                   help="exit 0 with a note when there is no TFLite Micro tree at all (no $LEPTON_TFLM_DIR, "
                        "no ../shared/third_party): make test's way of letting the firmware tests skip")
    b.set_defaults(func=run_build)


def _progress(message: str) -> None:
    print(f"firmware: {message}", file=sys.stderr, flush=True)


def run_build(args: argparse.Namespace) -> int:
    from lepton_edge.errors import BadInput
    from lepton_edge.firmware_build.boards import get_board
    from lepton_edge.firmware_build.build import THIRD_PARTY, build, tflm_tree_available

    board = get_board(args.board)  # unknown board: one line, exit 2, before anything else
    if args.jobs is not None and args.jobs < 1:
        raise BadInput(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise BadInput(f"-o {args.out}: exists and is not a directory")
    if args.skip_if_no_tree and not tflm_tree_available():
        _progress(f"{board.name} skipped: no TFLite Micro tree ($LEPTON_TFLM_DIR is not set and "
                  f"{THIRD_PARTY} is missing); the firmware tests skip")
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM stops make too, not only us
    fw = build(board.name, progress=_progress, out_dir=out, jobs=args.jobs)
    if args.json:
        print(json.dumps(fw.to_json(), indent=2))
        return 0
    where = "cached" if fw.cached else f"built in {fw.build_seconds:.0f} s"
    print(f"{fw.board} ({fw.profile}, {board.core}, {board.kernels}): {fw.executable} ({where})")
    print(f"text {fw.text_bytes:,} B, data {fw.data_bytes:,} B, bss {fw.bss_bytes:,} B; "
          f"arena {fw.arena_capacity_bytes:,} B, slots {fw.slot_bytes:,} B each; {len(fw.ops)} operators")
    if not board.runs_here:
        print(f"map file: {fw.map_file} (flashing: firmware_bridge/firmware/boards/{fw.board}/README.md)")
    return 0
