"""Give every planned tensor an offset in one arena so that tensors live at once never overlap.

Placing buffers of known lifetimes in least memory is NP-hard in general, so we place tensors one
by one at the lowest (or tightest) free offset, in several orders, keep the best, and, while that
best is above the lower bound, improve its order by a short local search. TFLite Micro's own
GreedyMemoryPlanner is the first of these orders (largest first), so our plan is never worse than
its own.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lepton_edge.plan.lifetimes import Lifetime, live_bytes_per_op, lower_bound


@dataclass(frozen=True)
class Assignment:
    offsets: dict[int, int]  # subgraph tensor index -> byte offset in the arena
    head_bytes: int
    strategy: str


def place(order: Sequence[Lifetime], *, best_fit: bool = False) -> dict[int, int]:
    """Offsets for the tensors, placed in ``order`` at the lowest (or tightest) gap that fits."""
    placed: list[tuple[Lifetime, int]] = []
    offsets: dict[int, int] = {}
    for lt in order:
        busy = sorted((off, off + other.size) for other, off in placed if other.overlaps(lt))
        cursor, chosen, chosen_gap = 0, None, None
        for start, end in busy:
            gap = start - cursor
            if gap >= lt.size:
                if not best_fit:
                    chosen = cursor
                    break
                if chosen_gap is None or gap < chosen_gap:
                    chosen, chosen_gap = cursor, gap
            cursor = max(cursor, end)
        if chosen is None:
            chosen = cursor
        offsets[lt.tensor] = chosen
        placed.append((lt, chosen))
    return offsets


def arena_head(lifetimes: Sequence[Lifetime], offsets: dict[int, int]) -> int:
    return max((offsets[lt.tensor] + lt.size for lt in lifetimes), default=0)


def find_conflicts(lifetimes: Sequence[Lifetime], offsets: dict[int, int]) -> list[tuple[int, int]]:
    """Pairs of tensors that are live together and overlap in memory (empty for a valid plan)."""
    bad = []
    for i, a in enumerate(lifetimes):
        for b in lifetimes[i + 1:]:
            if a.overlaps(b):
                a0, b0 = offsets[a.tensor], offsets[b.tensor]
                if a0 < b0 + b.size and b0 < a0 + a.size:
                    bad.append((a.tensor, b.tensor))
    return bad


def _breadth_order(lifetimes: Sequence[Lifetime], n_ops: int) -> list[Lifetime]:
    """Greedy by breadth: the tensors of the busiest operator first, largest first within it."""
    live = live_bytes_per_op(list(lifetimes), n_ops)
    seen: set[int] = set()
    order: list[Lifetime] = []
    for op in sorted(range(n_ops), key=lambda k: -live[k]):
        for lt in sorted((x for x in lifetimes if x.first <= op <= x.last), key=lambda x: -x.size):
            if lt.tensor not in seen:
                seen.add(lt.tensor)
                order.append(lt)
    return order


_ORDERS: dict[str, Callable[[Sequence[Lifetime], int], list[Lifetime]]] = {
    "size": lambda lts, n: sorted(lts, key=lambda x: (-x.size, x.first)),
    "size-long": lambda lts, n: sorted(lts, key=lambda x: (-x.size, x.first - x.last)),
    "area": lambda lts, n: sorted(lts, key=lambda x: (-x.size * (x.last - x.first + 1), x.first)),
    "duration": lambda lts, n: sorted(lts, key=lambda x: (x.first - x.last, -x.size)),
    "start": lambda lts, n: sorted(lts, key=lambda x: (x.first, -x.size)),
    "breadth": _breadth_order,
}


def assign_offsets(lifetimes: Sequence[Lifetime], n_ops: int, *, search_seconds: float = 1.0,
                   seed: int = 0) -> Assignment:
    """The best plan found: the lower bound when reached, else the smallest head within the time budget."""
    lifetimes = list(lifetimes)
    target = lower_bound(lifetimes, n_ops)
    best: Assignment | None = None
    best_order: list[Lifetime] = []
    for name, make in _ORDERS.items():
        order = make(lifetimes, n_ops)
        for best_fit in (False, True):
            offsets = place(order, best_fit=best_fit)
            head = arena_head(lifetimes, offsets)
            if best is None or head < best.head_bytes:
                best = Assignment(offsets, head, f"{name}/{'best' if best_fit else 'first'}-fit")
                best_order = order
        if best is not None and best.head_bytes == target:
            return best
    assert best is not None
    if len(lifetimes) < 2 or search_seconds <= 0:
        return best

    # Local search on the placement order: move one tensor elsewhere in the order, keep what is not worse.
    rng = random.Random(seed)
    deadline = time.monotonic() + search_seconds
    order, head = list(best_order), best.head_bytes
    best_fit = best.strategy.endswith("best-fit")
    while head > target and time.monotonic() < deadline:
        candidate = list(order)
        i, j = rng.randrange(len(candidate)), rng.randrange(len(candidate))
        candidate.insert(j, candidate.pop(i))
        offsets = place(candidate, best_fit=best_fit)
        new_head = arena_head(lifetimes, offsets)
        if new_head <= head:
            order, head = candidate, new_head
            if new_head < best.head_bytes:
                best = Assignment(offsets, new_head, f"search({best.strategy.split(' ')[0]})")
    return best
