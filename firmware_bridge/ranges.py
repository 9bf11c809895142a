"""A set of byte ranges: which parts of a transfer are held (device) or still to send (host)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator


class RangeSet:
    """Disjoint, sorted half-open ranges ``[start, end)``, merged as they touch."""

    def __init__(self, ranges: list[tuple[int, int]] | None = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges or ():
            self.add(start, end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=False))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)})"

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)  # first range that ends at or after start
        j = bisect.bisect_right(self._starts, end)  # ranges before j start at or before end
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_right(self._ends, start)  # first range that ends after start
        j = bisect.bisect_left(self._starts, end)  # ranges before j start before end
        if i >= j:
            return
        keep: list[tuple[int, int]] = []
        if self._starts[i] < start:
            keep.append((self._starts[i], start))
        if self._ends[j - 1] > end:
            keep.append((end, self._ends[j - 1]))
        self._starts[i:j] = [s for s, _ in keep]
        self._ends[i:j] = [e for _, e in keep]

    def contains(self, start: int, end: int) -> bool:
        """Whether all of ``[start, end)`` is in the set."""
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def prefix(self, origin: int = 0) -> int:
        """The end of the range that starts at ``origin`` (``origin`` when there is none)."""
        if self._starts and self._starts[0] <= origin < self._ends[0]:
            return self._ends[0]
        return origin

    def first(self) -> tuple[int, int] | None:
        return (self._starts[0], self._ends[0]) if self._starts else None

    def first_gap(self, origin: int, end: int) -> int | None:
        """The first offset in ``[origin, end)`` not in the set, or None."""
        at = origin
        for s, e in self:
            if e <= at:
                continue
            if s > at:
                break
            at = e
        return at if at < end else None
