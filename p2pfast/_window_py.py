"""Pure-Python reliability windows: receive-side duplicate filter and send-side retransmit window.

Twin of the compiled ``_window`` module (same names, same behaviour). Neither class reads a
clock: every time-dependent call takes ``now`` (seconds, any monotonic origin).
"""

from __future__ import annotations

from bisect import bisect_right
from heapq import heappop, heappush

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

    __slots__ = ("_bits", "_highest", "_lowest", "_mask", "width")

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
        """Classify ``seq`` and record it: ``NEW`` (deliver), ``DUPLICATE`` or ``TOO_OLD``
        (drop)."""
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

    def discard(self, seq: int) -> None:
        """Forget that ``seq`` was seen (a message taken back before it was acknowledged, so
        that its retransmission counts as new). Numbers outside the window are ignored."""
        offset = self._highest - seq
        if seq >= 0 and 0 <= offset < self.width:
            self._bits &= ~(1 << offset)

    def ranges(self, limit: int = 64) -> list[list[int]]:
        """The numbers seen inside the window as ``[lo, hi]`` runs, newest first, at most
        ``limit`` of them: what a coalesced Ack repeats so that one lost Ack costs nothing."""
        highest = self._highest
        out: list[list[int]] = []
        if highest < 0:
            return out
        bits = self._bits
        floor = max(self._lowest, highest - self.width + 1)
        offset = 0  # bit i stands for highest - i
        while bits and len(out) < limit:
            zeros = (bits & -bits).bit_length() - 1
            bits >>= zeros
            offset += zeros
            ones = (~bits & (bits + 1)).bit_length() - 1
            hi = highest - offset
            lo = max(hi - ones + 1, floor)
            if hi < floor:
                break
            out.append([lo, hi])
            bits >>= ones
            offset += ones
        return out

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
    __slots__ = (
        "ambiguous",
        "data",
        "deadline",
        "last_sent",
        "msg_id",
        "retries",
        "sent_at",
        "seq",
    )

    def __init__(self, seq: int, msg_id: str, data: bytes, now: float, deadline: float) -> None:
        self.seq = seq
        self.msg_id = msg_id
        self.data = data
        self.sent_at = now  # first transmission (RTT samples)
        self.last_sent = now  # latest transmission (explicit resends are paced from it)
        self.deadline = deadline
        self.retries = 0  # timeouts so far: this message's own backoff exponent
        self.ambiguous = False  # sent more than once: Karn's rule takes no sample from it


#: Backoff exponents are capped here (2**16 times the RTO is far beyond any ``rto_max``).
MAX_BACKOFF = 16
#: A message this many numbers below an acknowledged one, sent before it, is taken as lost.
PACKET_THRESHOLD = 3


class SendWindow:
    """Messages sent with ``requires_ack`` that are not yet acknowledged, for one peer.

    The retransmission timeout follows RFC 6298 for the estimate (SRTT/RTTVAR from RTT
    samples, Karn's rule: no sample from a message sent more than once, bounded by
    ``rto_min``/``rto_max``) and RFC 9002 for the backoff, which belongs to each message: a
    message that timed out ``k`` times waits ``rto * 2**k`` (at most ``rto_max``) before its
    next retransmission, while ``rto`` itself only ever moves with samples. Messages sent
    while the path is silent start at the window's ``backoff`` (the timeouts since the last
    acknowledgement, as RFC 9002's PTO count); any acknowledgement collapses it to 0, so the
    timer is back at the path's RTO as soon as the path answers again. A message that times
    out after ``max_retries`` retransmissions fails.

    Two limits make :meth:`add` raise :class:`~p2pfast.errors.WindowFull` (backpressure):
    ``capacity`` messages in flight, and ``max_span``: the newest sequence number may not run
    ``max_span`` or more ahead of the oldest one still unacknowledged, so that a retransmission
    of the oldest always lands inside the receiver's duplicate filter (which must be at least
    ``max_span`` wide) and is never mistaken there for an old duplicate.
    """

    __slots__ = (
        "_by_id",
        "_by_seq",
        "_earliest",
        "_largest_sent",
        "_order",
        "_sampled",
        "backoff",
        "capacity",
        "granularity",
        "largest_acked",
        "max_retries",
        "max_span",
        "rto",
        "rto_max",
        "rto_min",
        "rttvar",
        "srtt",
        "work",
    )

    def __init__(
        self,
        capacity: int = 256,
        max_retries: int = 8,
        rto_initial: float = 1.0,
        rto_min: float = 0.2,
        rto_max: float = 60.0,
        granularity: float = 0.001,
        max_span: int = 1024,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must be non-negative")
        if not 0 < rto_min <= rto_max:
            raise ValueError("need 0 < rto_min <= rto_max")
        if max_span < 1:
            raise ValueError("max_span must be at least 1")
        self.capacity = capacity
        self.max_retries = max_retries
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.granularity = granularity
        self.max_span = max_span
        self.srtt = 0.0  # 0.0 until the first sample
        self.rttvar = 0.0
        self._sampled = False  # not srtt == 0.0: a first sample of 0.0 is still a sample
        self.rto = min(max(rto_initial, rto_min), rto_max)
        #: Backoff exponent for messages sent now (0 once anything is acknowledged).
        self.backoff = 0
        #: Entries examined so far by acknowledgements, requests and timers (a work counter
        #: that tests use to prove the cost per datagram is bounded).
        self.work = 0
        #: Highest sequence number acknowledged so far (-1: none), and when the copy of it
        #: that was acknowledged left (its latest transmission).
        self.largest_acked = -1
        self._largest_sent = 0.0
        self._by_seq: dict[int, _InFlight] = {}
        self._by_id: dict[str, _InFlight] = {}
        self._order: list[int] = []  # min-heap of sequence numbers, lazily pruned
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

    def timeout(self, retries: int) -> float:
        """How long a message that timed out ``retries`` times waits: ``rto * 2**retries``,
        at most ``rto_max``."""
        if retries > MAX_BACKOFF:
            retries = MAX_BACKOFF
        return min(self.rto * (2.0**retries), self.rto_max)

    def oldest(self) -> int:
        """The lowest sequence number in flight, -1 when nothing is."""
        order = self._order
        by_seq = self._by_seq
        while order and order[0] not in by_seq:
            heappop(order)
        return order[0] if order else -1

    def blocked(self, seq: int) -> bool:
        """True when :meth:`add` of ``seq`` would raise WindowFull (capacity or span)."""
        if len(self._by_seq) >= self.capacity:
            return True
        oldest = self.oldest()
        return oldest >= 0 and seq - oldest >= self.max_span

    def add(self, seq: int, msg_id: str, data: bytes, now: float) -> None:
        """Track a message just sent; raise WindowFull at capacity or when ``seq`` would be
        ``max_span`` or more ahead of the oldest in flight, ValueError if ``seq`` or ``msg_id``
        is already in flight."""
        if len(self._by_seq) >= self.capacity:
            raise WindowFull(f"{self.capacity} messages awaiting acknowledgement")
        if seq in self._by_seq or msg_id in self._by_id:
            raise ValueError(f"sequence number {seq} / id {msg_id} already in flight")
        oldest = self.oldest()
        if oldest >= 0 and seq - oldest >= self.max_span:
            raise WindowFull(
                f"sequence number {seq} is {self.max_span} or more ahead of {oldest}, "
                "the oldest awaiting acknowledgement"
            )
        deadline = now + self.timeout(self.backoff)
        entry = _InFlight(seq, msg_id, data, now, deadline)
        self._by_seq[seq] = entry
        self._by_id[msg_id] = entry
        heappush(self._order, seq)
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

    def on_ack_ranges(self, ranges: list[tuple[int, int]], now: float) -> list[str]:
        """Acknowledge every sequence number in the inclusive ``(lo, hi)`` ranges; return the
        ids acknowledged, in the order found.

        The cost is bounded by what is in flight, not by the ranges: when the ranges cover
        more numbers than the window holds, the window is walked once instead."""
        by_seq = self._by_seq
        acked: list[str] = []
        total = 0
        for lo, hi in ranges:
            if hi >= lo:
                total += hi - lo + 1
        if total <= len(by_seq):
            for lo, hi in ranges:
                for seq in range(lo, hi + 1):
                    self.work += 1
                    entry = by_seq.pop(seq, None)
                    if entry is not None:
                        del self._by_id[entry.msg_id]
                        self._acked(entry, now)
                        acked.append(entry.msg_id)
            return acked
        merged = _merge(ranges)
        los = [lo for lo, _ in merged]
        for seq in list(by_seq):
            self.work += 1
            i = bisect_right(los, seq) - 1
            if i >= 0 and seq <= merged[i][1]:
                entry = by_seq.pop(seq)
                del self._by_id[entry.msg_id]
                self._acked(entry, now)
                acked.append(entry.msg_id)
        return acked

    def _acked(self, entry: _InFlight, now: float) -> None:
        self.backoff = 0  # the path answers: new messages start at the plain RTO again
        if entry.seq > self.largest_acked:
            self.largest_acked = entry.seq
            self._largest_sent = entry.last_sent
        if not entry.ambiguous:  # Karn's rule: only unambiguous samples
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

    def holds(self, msg_id: str) -> bool:
        """Whether the message ``msg_id`` is still in flight (not yet acknowledged)."""
        return msg_id in self._by_id

    def get(self, seq: int) -> bytes | None:
        """The datagram in flight under ``seq``, or None."""
        entry = self._by_seq.get(seq)
        return None if entry is None else entry.data

    def resend(self, seq: int, now: float) -> bytes | None:
        """Take the datagram under ``seq`` for an explicit retransmission (a peer's Retransmit
        request), or None when it is not in flight or was sent less than one smoothed RTT ago
        (the peer cannot know yet whether that copy arrived). A resent message counts as
        retransmitted for Karn's rule and its timer restarts; it does not use up a retry."""
        entry = self._by_seq.get(seq)
        self.work += 1
        if entry is None or now - entry.last_sent < max(self.srtt, self.granularity):
            return None
        entry.ambiguous = True
        entry.last_sent = now
        entry.deadline = now + self.timeout(entry.retries)
        if entry.deadline < self._earliest:
            self._earliest = entry.deadline
        return entry.data

    def lost(self, now: float) -> list[tuple[int, bytes]]:
        """Messages to retransmit now because later ones were acknowledged (RFC 9002's packet
        threshold): at least ``PACKET_THRESHOLD`` numbers below the largest acknowledged and
        last sent before it. Each is resent once per such evidence, without backoff; the
        retransmission timer remains for the tail, where no later message can be acked."""
        out: list[tuple[int, bytes]] = []
        limit = self.largest_acked - PACKET_THRESHOLD
        if limit < 0:
            return out
        sent_before = self._largest_sent
        for entry in self._by_seq.values():
            self.work += 1
            if entry.seq > limit:
                break
            if entry.last_sent < sent_before:
                entry.ambiguous = True
                entry.last_sent = now
                entry.deadline = now + self.timeout(entry.retries)
                out.append((entry.seq, entry.data))
        return out

    def next_deadline(self) -> float:
        """When :meth:`due` next has work (a lower bound; ``inf`` when nothing is in flight)."""
        return self._earliest if self._by_seq else _INF

    def due(self, now: float) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]]]:
        """Timeouts at ``now``: ``(resend, failed)``.

        ``resend`` lists ``(seq, datagram)`` to send again, each message backing off on its
        own; ``failed`` lists ``(seq, msg_id)`` of messages that used up their retries and
        left the window.
        """
        if now < self._earliest or not self._by_seq:
            return [], []
        resend: list[tuple[int, bytes]] = []
        failed: list[tuple[int, str]] = []
        earliest = _INF
        backoff = self.backoff
        for entry in list(self._by_seq.values()):
            self.work += 1
            if entry.deadline > now:
                if entry.deadline < earliest:
                    earliest = entry.deadline
                continue
            if entry.retries >= self.max_retries:
                del self._by_seq[entry.seq]
                del self._by_id[entry.msg_id]
                failed.append((entry.seq, entry.msg_id))
                continue
            entry.retries += 1
            entry.ambiguous = True
            entry.last_sent = now
            entry.deadline = now + self.timeout(entry.retries)
            if entry.deadline < earliest:
                earliest = entry.deadline
            resend.append((entry.seq, entry.data))
        if resend and backoff < MAX_BACKOFF:
            backoff += 1  # one more timeout with no acknowledgement in between
        self.backoff = backoff
        self._earliest = earliest
        return resend, failed

    def clear(self) -> list[tuple[int, str]]:
        """Drop everything in flight (peer gone); return ``(seq, msg_id)`` of what was dropped."""
        dropped = [(e.seq, e.msg_id) for e in self._by_seq.values()]
        self._by_seq.clear()
        self._by_id.clear()
        self._order.clear()
        self.largest_acked = -1
        self._earliest = _INF
        return dropped


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping union of the inclusive ``(lo, hi)`` ranges (empty ones dropped)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] >= r[0]):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged
