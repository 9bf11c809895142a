"""The simulated devices' own log: one JSON object a line, so tests count from the devices' side.

Every line has ``ts`` (unix seconds), ``device`` and ``event``:

* ``job``: an update job arrived (``job``, ``deployment``, ``sha256``, ``staged``, ``repeat``: true when
  it is the job already in progress or one already finished, sent again);
* ``command``: a revert or confirm arrived (``job``, ``action``, ``sha256``, ``repeat`` as above);
* ``block``: the device asked for a block (``job``, ``offset``, ``length``);
* ``state``: the device reported a state on ``ota/progress`` (``job``, ``state``, ``received``,
  ``reason``, ``sha256`` of the model it runs then, or null).

One file per simulator process (``<name>.jsonl``, appended to: a restarted simulator adds to it);
lines are written whole with one ``write`` on a file opened for appending and flushed at once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, TextIO


class EventLog:
    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.jsonl"
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")  # closed by close()
        self._lock = threading.Lock()

    def write(self, device: str, event: str, **fields: Any) -> None:
        line = json.dumps({"ts": round(time.time(), 3), "device": device, "event": event, **fields},
                          separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every event in ``directory``'s logs, in file then line order (a line cut by a kill is skipped)."""
    events = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
