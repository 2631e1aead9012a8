"""The virtual clock and the event queue: time jumps from one scheduled event to the next.

Time is kept in integer ticks of 100 µs, so event ordering never depends on float rounding:
two events compare by ``(tick, sequence number)``, the sequence number being the order in
which they were scheduled. The engine still sees seconds (``tick / TICKS_PER_SECOND``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

#: Ticks per virtual second (one tick = 100 µs: the I/O batch the endpoint models).
TICKS_PER_SECOND = 10_000

#: Event kinds, in the order they are handled when they share a tick and were queued together.
DELIVER = 0
TIMER = 1
ACTION = 2


def to_ticks(seconds: float) -> int:
    """The first tick at or after ``seconds`` (never a tick whose time is before it)."""
    tick = math.ceil(seconds * TICKS_PER_SECOND)
    if tick / TICKS_PER_SECOND < seconds:
        tick += 1
    return tick


def to_seconds(tick: int) -> float:
    return tick / TICKS_PER_SECOND


class EventQueue:
    """A heap of ``(tick, seq, kind, a, b, c, d)`` tuples; ``seq`` breaks ties in FIFO order."""

    __slots__ = ("counter", "heap", "now")

    def __init__(self) -> None:
        self.heap: list[tuple[Any, ...]] = []
        #: Sequence numbers; the network's hot path draws from it directly.
        self.counter = itertools.count(1)
        self.now = 0  # the tick being processed

    def __len__(self) -> int:
        return len(self.heap)

    def push(
        self, tick: int, kind: int, a: Any = None, b: Any = None, c: Any = None, d: Any = None
    ) -> None:
        """Schedule an event; a tick in the past runs at the current tick."""
        when = tick if tick > self.now else self.now
        heapq.heappush(self.heap, (when, next(self.counter), kind, a, b, c, d))

    def peek_tick(self) -> int | None:
        return self.heap[0][0] if self.heap else None

    def pop(self) -> tuple[Any, ...]:
        event = heapq.heappop(self.heap)
        self.now = event[0]
        return event
