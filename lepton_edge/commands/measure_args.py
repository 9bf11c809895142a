"""``--measure auto|host|target``: where ``plan`` and ``convert`` measure the arena (one definition)."""

from __future__ import annotations

import argparse

from lepton_edge.plan.target import MEASURE_MODES


def add_measure_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--measure", choices=MEASURE_MODES, default="auto",
                        help="where the tail and the recommended arena are measured: target = the emulated core "
                             "that plays the profile, with its kernel library (needs QEMU and a cached firmware "
                             "build; no margin added), host = x86-64 TFLite Micro plus the profile's margin; "
                             "auto (default): target when both are there")
