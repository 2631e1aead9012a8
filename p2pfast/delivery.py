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


class DeliveryTracker:
    """Handles of routed reliable sends awaiting the destination's confirmation.

    Deadlines are ``now + timeout`` at the time of sending, so they are in insertion order and
    expiring them costs only what expires.
    """

    __slots__ = ("timeout", "per_destination", "_pending", "_count", "_blocked", "quiet")

    def __init__(self, timeout: float, per_destination: int) -> None:
        self.timeout = timeout
        self.per_destination = per_destination
        self._pending: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._count: dict[str, int] = {}
        self._blocked: set[str] = set()
        #: Ids of the node's own confirmations in flight: their hop events are not the
        #: application's business.
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

    def expect(self, handle: str, destination: str, now: float) -> None:
        """``handle`` was sent to ``destination`` and waits for its confirmation."""
        self._pending[handle] = (now + self.timeout, destination)
        self._count[destination] = self._count.get(destination, 0) + 1

    def confirm(self, handle: str, source: str) -> bool:
        """A confirmation from ``source``: True when it completes ``handle`` (it must come
        from the node the message was sent to)."""
        entry = self._pending.get(handle)
        if entry is None or entry[1] != source:
            return False
        self._drop(handle)
        return True

    def fail(self, handle: str) -> bool:
        """Stop waiting for ``handle`` (it failed on the way); True if it was waiting."""
        if handle not in self._pending:
            return False
        self._drop(handle)
        return True

    def expire(self, now: float) -> list[str]:
        """Handles whose confirmation did not come in time (they are forgotten)."""
        out: list[str] = []
        pending = self._pending
        while pending:
            handle, (deadline, _) = next(iter(pending.items()))
            if deadline > now:
                break
            self._drop(handle)
            out.append(handle)
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
        _, destination = self._pending.pop(handle)
        left = self._count[destination] - 1
        if left:
            self._count[destination] = left
        else:
            del self._count[destination]
