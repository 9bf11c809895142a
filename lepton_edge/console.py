"""Output for people (tables, sizes, progress) and for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO


def human_bytes(n: float) -> str:
    """``123456`` -> ``'120.6 KiB'``; exact bytes below 1 KiB."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, align: str | None = None) -> str:
    """A plain-text table; ``align`` has one letter per column, ``l`` or ``r`` (numbers default right)."""
    body = [["" if c is None else str(c) for c in row] for row in rows]
    if align is None:
        first = body[0] if body else []
        align = "".join("r" if _looks_numeric(c) else "l" for c in first) or "l" * len(headers)
    align = align.ljust(len(headers), "l")
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if align[i] == "r" else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in body]
    return "\n".join(lines)


def _looks_numeric(cell: str) -> bool:
    token = cell.split(" ")[0].replace(",", "").replace("%", "").replace("x", "")
    try:
        float(token)
        return True
    except ValueError:
        return False


def print_json(obj: Any, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    label: str
    total: float
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    width: int = 30
    _done: float = 0.0
    _last_draw: float = 0.0

    @property
    def enabled(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: float) -> None:
        self._done = done
        now = time.monotonic()
        if self.enabled and (now - self._last_draw > 0.05 or done >= self.total):
            self._last_draw = now
            frac = 0.0 if self.total <= 0 else min(1.0, done / self.total)
            bar = "#" * int(frac * self.width)
            self.stream.write(f"\r{self.label} [{bar.ljust(self.width)}] {frac * 100:5.1f}%")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.total)
            self.stream.write("\n")
            self.stream.flush()


def step(message: str, stream: TextIO | None = None) -> None:
    """Announce a step of a long job on a terminal (quiet when piped or with ``--json``)."""
    out = stream or sys.stderr
    if getattr(out, "isatty", lambda: False)():
        out.write(f"• {message}\n")
        out.flush()
