"""Pure-Python reliability windows: receive-side duplicate filter and send-side retransmit window.

Twin of the compiled ``_window`` module (same names, same behaviour). Neither class reads a
clock: every time-dependent call takes ``now`` (seconds, any monotonic origin).
"""

from __future__ import annotations

from .errors import WindowFull

#: ``DuplicateFilter.check`` results.
NEW = 0
DUPLICATE = 1
TOO_OLD = 2

_INF = float("inf")


class DuplicateFilter:
    """Sliding-window duplicate detection over sequence numbers (RFC 4303 §3.4.3 style).

    Remembers the last ``width`` numbers up to the highest seen, in fixed memory. A number
    above the highest slides the window (a jump of ``width`` or more clears it); one that has
    fallen out of the window is ``TOO_OLD`` (it may or may not be a duplicate, so it must not be
    delivered).
    """

    __slots__ = ("width", "_highest", "_lowest", "_bits", "_mask")

    def __init__(self, width: int = 1024) -> None:
        if width < 64 or width > 1 << 20 or width & (width - 1):
            raise ValueError("width must be a power of two between 64 and 1048576")
        self.width = width
        self._highest = -1  # no number seen yet
        self._lowest = -1
        self._bits = 0  # bit i set <=> (highest - i) seen
        self._mask = (1 << width) - 1

    @property
    def highest(self) -> int:
        """Highest sequence number accepted so far, -1 before the first."""
        return self._highest

    def check(self, seq: int) -> int:
        """Classify ``seq`` and record it: ``NEW`` (deliver), ``DUPLICATE`` or ``TOO_OLD`` (drop)."""
        if seq < 0:
            raise ValueError("sequence numbers are non-negative")
        highest = self._highest
        if seq > highest:
            shift = seq - highest
            if highest < 0 or shift >= self.width:
                self._bits = 1
            else:
                self._bits = ((self._bits << shift) | 1) & self._mask
            self._highest = seq
            if self._lowest < 0 or seq < self._lowest:
                self._lowest = seq
            return NEW
        offset = highest - seq
        if offset >= self.width:
            return TOO_OLD
        bit = 1 << offset
        if self._bits & bit:
            return DUPLICATE
        self._bits |= bit
        if seq < self._lowest:
            self._lowest = seq
        return NEW

    def contains(self, seq: int) -> bool:
        """True when ``seq`` is inside the window and was seen (does not record anything)."""
        offset = self._highest - seq
        if seq < 0 or offset < 0 or offset >= self.width:
            return False
        return bool(self._bits >> offset & 1)

    def missing(self, limit: int = 64) -> list[int]:
        """Numbers not yet seen between the lowest seen (or the window's floor) and the highest,
        oldest first, at most ``limit``: what a ``Retransmit`` request should ask for."""
        highest = self._highest
        if highest < 0 or limit <= 0:
            return []
        start = max(self._lowest, highest - self.width + 1)
        bits = self._bits
        out: list[int] = []
        for seq in range(start, highest):
            if not bits >> (highest - seq) & 1:
                out.append(seq)
                if len(out) >= limit:
                    break
        return out


class _InFlight:
    __slots__ = ("seq", "msg_id", "data", "sent_at", "deadline", "retries")

    def __init__(self, seq: int, msg_id: str, data: bytes, now: float, deadline: float) -> None:
        self.seq = seq
        self.msg_id = msg_id
        self.data = data
        self.sent_at = now
        self.deadline = deadline
        self.retries = 0


class SendWindow:
    """Messages sent with ``requires_ack`` that are not yet acknowledged, for one peer.

    The retransmission timeout follows RFC 6298: SRTT/RTTVAR smoothing from RTT samples,
    Karn's rule (no sample from a message that was sent more than once), exponential backoff
    on every timeout, bounded by ``rto_min``/``rto_max``. A message that times out after
    ``max_retries`` retransmissions fails. At ``capacity`` messages the window is full and
    :meth:`add` raises :class:`~p2pfast.errors.WindowFull` (backpressure).
    """

    __slots__ = (
        "capacity",
        "max_retries",
        "rto_min",
        "rto_max",
        "granularity",
        "srtt",
        "rttvar",
        "rto",
        "_sampled",
        "_by_seq",
        "_by_id",
        "_earliest",
    )

    def __init__(
        self,
        capacity: int = 256,
        max_retries: int = 8,
        rto_initial: float = 1.0,
        rto_min: float = 0.2,
        rto_max: float = 60.0,
        granularity: float = 0.001,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must be non-negative")
        if not 0 < rto_min <= rto_max:
            raise ValueError("need 0 < rto_min <= rto_max")
        self.capacity = capacity
        self.max_retries = max_retries
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.granularity = granularity
        self.srtt = 0.0  # 0.0 until the first sample
        self.rttvar = 0.0
        self._sampled = False  # not srtt == 0.0: a first sample of 0.0 is still a sample
        self.rto = min(max(rto_initial, rto_min), rto_max)
        self._by_seq: dict[int, _InFlight] = {}
        self._by_id: dict[str, _InFlight] = {}
        self._earliest = _INF  # lower bound of every deadline in the window

    def __len__(self) -> int:
        return len(self._by_seq)

    def __contains__(self, seq: object) -> bool:
        return seq in self._by_seq

    @property
    def available(self) -> int:
        """How many more messages fit before the window is full."""
        return self.capacity - len(self._by_seq)

    @property
    def full(self) -> bool:
        return len(self._by_seq) >= self.capacity

    def add(self, seq: int, msg_id: str, data: bytes, now: float) -> None:
        """Track a message just sent; raise WindowFull at capacity, ValueError if ``seq`` or ``msg_id`` is already in flight."""
        if len(self._by_seq) >= self.capacity:
            raise WindowFull(f"{self.capacity} messages awaiting acknowledgement")
        if seq in self._by_seq or msg_id in self._by_id:
            raise ValueError(f"sequence number {seq} / id {msg_id} already in flight")
        deadline = now + self.rto
        entry = _InFlight(seq, msg_id, data, now, deadline)
        self._by_seq[seq] = entry
        self._by_id[msg_id] = entry
        if deadline < self._earliest:
            self._earliest = deadline

    def on_ack(self, msg_id: str, now: float) -> int:
        """Acknowledge by message id; return its sequence number, or -1 if it is not in flight."""
        entry = self._by_id.pop(msg_id, None)
        if entry is None:
            return -1
        del self._by_seq[entry.seq]
        self._acked(entry, now)
        return entry.seq

    def on_ack_seq(self, seq: int, now: float) -> str | None:
        """Acknowledge by sequence number; return the message id, or None if it is not in flight."""
        entry = self._by_seq.pop(seq, None)
        if entry is None:
            return None
        del self._by_id[entry.msg_id]
        self._acked(entry, now)
        return entry.msg_id

    def _acked(self, entry: _InFlight, now: float) -> None:
        if entry.retries == 0:  # Karn's rule: only unambiguous samples
            self._sample(now - entry.sent_at)

    def _sample(self, rtt: float) -> None:
        if rtt < 0.0:
            rtt = 0.0
        if not self._sampled:  # RFC 6298 (2.2): first measurement
            self._sampled = True
            self.srtt = rtt
            self.rttvar = rtt / 2.0
        else:  # (2.3)
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        rto = self.srtt + max(self.granularity, 4.0 * self.rttvar)
        self.rto = min(max(rto, self.rto_min), self.rto_max)

    def get(self, seq: int) -> bytes | None:
        """The datagram in flight under ``seq``, or None."""
        entry = self._by_seq.get(seq)
        return None if entry is None else entry.data

    def resend(self, seq: int, now: float) -> bytes | None:
        """Take the datagram under ``seq`` for an explicit retransmission (a peer's Retransmit
        request): it counts as retransmitted for Karn's rule and its timer restarts."""
        entry = self._by_seq.get(seq)
        if entry is None:
            return None
        entry.retries += 1
        entry.deadline = now + self.rto
        if entry.deadline < self._earliest:
            self._earliest = entry.deadline
        return entry.data

    def next_deadline(self) -> float:
        """When :meth:`due` next has work (a lower bound; ``inf`` when nothing is in flight)."""
        return self._earliest if self._by_seq else _INF

    def due(self, now: float) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]]]:
        """Timeouts at ``now``: ``(resend, failed)``.

        ``resend`` lists ``(seq, datagram)`` to send again; ``failed`` lists ``(seq, msg_id)`` of
        messages that used up their retries and left the window. Any timeout doubles the RTO.
        """
        if now < self._earliest or not self._by_seq:
            return [], []
        expired = [e for e in self._by_seq.values() if e.deadline <= now]
        resend: list[tuple[int, bytes]] = []
        failed: list[tuple[int, str]] = []
        if expired:
            self.rto = min(self.rto * 2.0, self.rto_max)
            for entry in expired:
                if entry.retries >= self.max_retries:
                    del self._by_seq[entry.seq]
                    del self._by_id[entry.msg_id]
                    failed.append((entry.seq, entry.msg_id))
                else:
                    entry.retries += 1
                    entry.deadline = now + self.rto
                    resend.append((entry.seq, entry.data))
        earliest = _INF
        for entry in self._by_seq.values():
            if entry.deadline < earliest:
                earliest = entry.deadline
        self._earliest = earliest
        return resend, failed

    def clear(self) -> list[tuple[int, str]]:
        """Drop everything in flight (peer gone); return ``(seq, msg_id)`` of what was dropped."""
        dropped = [(e.seq, e.msg_id) for e in self._by_seq.values()]
        self._by_seq.clear()
        self._by_id.clear()
        self._earliest = _INF
        return dropped
