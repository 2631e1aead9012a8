"""Logging that hostile input cannot flood."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("p2pfast")


class LogLimiter:
    """At most one log line per reason every ``interval`` seconds, with a count of the rest."""

    __slots__ = ("_next", "_suppressed", "interval")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(
        self, reason: str, now: float, message: str, *args: Any, exc_info: Any = None
    ) -> None:
        if now < self._next.get(reason, 0.0):
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        if len(self._next) > 256:  # reasons are a small fixed set; never grow unbounded
            self._next.clear()
        self._next[reason] = now + self.interval
        skipped = self._suppressed.pop(reason, 0)
        suffix = f" ({skipped} more since last report)" if skipped else ""
        log.warning(message + suffix, *args, exc_info=exc_info)
