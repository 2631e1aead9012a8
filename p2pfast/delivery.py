"""End-to-end delivery confirmation for routed reliable sends (sans-I/O bookkeeping).

A routed message is carried hop by hop, each hop reliable on its own; the hop's Ack only
says that the next node has it. Between p2pfast nodes the destination also confirms to the
origin with a routed ``Ack`` (a routed Data whose ``original_message`` is an Ack naming the
message id), and only that confirmation completes the sender's ``send()``. This module keeps
the origin's side: which handles wait for a confirmation, until when, and how many per
destination (the end-to-end window: a sender may not have more than ``per_destination``
unconfirmed messages towards one node, so a slow or vanished destination holds the sender).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class DeliveryTracker:
    """Handles of routed reliable sends awaiting the destination's confirmation.

    Deadlines are ``now + timeout`` at the time of sending, so they are in insertion order and
    expiring them costs only what expires.
    """

    __slots__ = ("_blocked", "_count", "_pending", "per_destination", "quiet", "timeout")

    def __init__(self, timeout: float, per_destination: int) -> None:
        self.timeout = timeout
        self.per_destination = per_destination
        self._pending: OrderedDict[str, tuple[float, str, Any]] = OrderedDict()
        self._count: dict[str, int] = {}
        self._blocked: set[str] = set()
        #: Ids whose hop events the application must not see: the node's own confirmations
        #: in flight, and sends already settled end to end while the first hop still holds
        #: them (each leaves the set when its hop outcome arrives).
        self.quiet: set[str] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, handle: object) -> bool:
        return handle in self._pending

    def full(self, destination: str) -> bool:
        """True when ``destination`` has its quota unconfirmed (the caller will wait)."""
        if self._count.get(destination, 0) >= self.per_destination:
            self._blocked.add(destination)
            return True
        return False

    def expect(self, handle: str, destination: str, now: float, hop: Any = None) -> None:
        """``handle`` was sent to ``destination`` (through ``hop``, the first hop's session)
        and waits for its confirmation."""
        self._pending[handle] = (now + self.timeout, destination, hop)
        self._count[destination] = self._count.get(destination, 0) + 1

    def confirm(self, handle: str, source: str) -> tuple[bool, Any]:
        """A confirmation from ``source``: ``(True, hop)`` when it completes ``handle`` (it
        must come from the node the message was sent to)."""
        entry = self._pending.get(handle)
        if entry is None or entry[1] != source:
            return False, None
        self._drop(handle)
        return True, entry[2]

    def fail(self, handle: str) -> tuple[bool, Any]:
        """Stop waiting for ``handle`` (it failed on the way): ``(True, hop)`` if it was
        waiting."""
        entry = self._pending.get(handle)
        if entry is None:
            return False, None
        self._drop(handle)
        return True, entry[2]

    def expire(self, now: float) -> list[tuple[str, Any]]:
        """``(handle, hop)`` of the sends whose confirmation did not come in time (they are
        forgotten)."""
        out: list[tuple[str, Any]] = []
        pending = self._pending
        while pending:
            handle, (deadline, _, hop) = next(iter(pending.items()))
            if deadline > now:
                break
            self._drop(handle)
            out.append((handle, hop))
        return out

    def next_deadline(self) -> float:
        if not self._pending:
            return float("inf")
        return next(iter(self._pending.values()))[0]

    def reopened(self) -> list[str]:
        """Destinations that were full and now have room (each reported once)."""
        if not self._blocked:
            return []
        ready = [d for d in self._blocked if self._count.get(d, 0) < self.per_destination]
        self._blocked.difference_update(ready)
        return ready

    def clear(self) -> list[str]:
        """Forget everything (the node closes); return the handles that were waiting."""
        handles = list(self._pending)
        self._pending.clear()
        self._count.clear()
        self._blocked.clear()
        self.quiet.clear()
        return handles

    def _drop(self, handle: str) -> None:
        _, destination, _ = self._pending.pop(handle)
        left = self._count[destination] - 1
        if left:
            self._count[destination] = left
        else:
            del self._count[destination]
