"""Pure-Python fragment frames and their bookkeeping: byte ranges, reassembly, sent packets.

Twin of the compiled ``_fragment`` module (same names, same behaviour). These are the per-
datagram hot paths of large-message transfer (:mod:`p2pfast.bulk` drives them): building and
parsing the binary frames, merging byte ranges, copying fragments into a reassembly buffer,
and matching acknowledged packet numbers against what is in flight. Nothing here reads a
clock: times are passed in.

Frames (docs/protocol.md §12.4; integers big-endian). Every frame starts with the byte 0xF5,
which never occurs in UTF-8 text (so no JSON envelope starts with it) and has its top two bits
set (so it is never a STUN packet, whose first two bits are zero):

- FRAGMENT ``F5 01 | packet u64 | message u32 | total u32 | offset u32 | data``
- ACK      ``F5 02 | credit u64 | delay_us u32 | count u8 | (first u64, last u64) × count``
- PROBE    ``F5 03 | probe u32 | padding`` (a path-MTU probe: its size is what is tested)
- PROBE_ACK ``F5 04 | probe u32 | size u32``
- CREDIT_REQUEST ``F5 05 | credit u64`` (the sender is blocked at this credit)
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from struct import Struct
from typing import Any

from ._wire import MAX_MESSAGE_SIZE
from .errors import ProtocolError

FRAME_MAGIC = 0xF5
KIND_FRAGMENT = 1
KIND_ACK = 2
KIND_PROBE = 3
KIND_PROBE_ACK = 4
KIND_CREDIT_REQUEST = 5

_FRAGMENT = Struct(">BBQIII")
_ACK_HEAD = Struct(">BBQIB")
_RANGE = Struct(">QQ")
_PROBE = Struct(">BBI")
_PROBE_ACK = Struct(">BBII")
_CREDIT_REQUEST = Struct(">BBQ")

#: Bytes of a FRAGMENT frame before its data.
FRAGMENT_HEADER = _FRAGMENT.size
#: Packet-number ranges one ACK frame carries at most.
MAX_ACK_FRAME_RANGES = 32
#: Smallest PROBE frame (a probe smaller than this tests nothing).
PROBE_HEADER = _PROBE.size
#: Largest message number (u32) on the wire.
MAX_U32 = 0xFFFFFFFF

#: ``Reassembly.insert`` results.
ADDED = 0
DUPLICATE = 1
MISMATCH = 2
TOO_FRAGMENTED = 3


def encode_fragment(
    packet: int, message: int, total: int, offset: int, data: bytes, start: int, end: int
) -> bytes:
    """A FRAGMENT frame carrying ``data[start:end]`` (the message's bytes ``offset`` onwards)."""
    return (
        _FRAGMENT.pack(FRAME_MAGIC, KIND_FRAGMENT, packet, message, total, offset) + data[start:end]
    )


def parse_fragment(frame: bytes) -> tuple[int, int, int, int]:
    """``(packet, message, total, offset)`` of a FRAGMENT frame whose data is
    ``frame[FRAGMENT_HEADER:]``; ProtocolError ``bad_fragment`` if the fields are inconsistent
    (no data, a total over 1 MiB or an end beyond the total)."""
    if len(frame) <= FRAGMENT_HEADER:
        raise ProtocolError("bad_fragment", "fragment without data")
    _, _, packet, message, total, offset = _FRAGMENT.unpack_from(frame)
    if total > MAX_MESSAGE_SIZE:
        raise ProtocolError("too_large", f"fragment of a {total}-byte message > {MAX_MESSAGE_SIZE}")
    if offset + len(frame) - FRAGMENT_HEADER > total:
        raise ProtocolError("bad_fragment", "fragment beyond its message's total")
    if message == 0:
        raise ProtocolError("bad_fragment", "message number 0")
    return packet, message, total, offset


def encode_ack(credit: int, delay_us: int, ranges: list[tuple[int, int]]) -> bytes:
    """An ACK frame: ``ranges`` of received packet numbers (inclusive, newest first, at most
    ``MAX_ACK_FRAME_RANGES`` are sent) and the receiver's cumulative flow-control ``credit``."""
    ranges = ranges[:MAX_ACK_FRAME_RANGES]
    parts = [_ACK_HEAD.pack(FRAME_MAGIC, KIND_ACK, credit, min(delay_us, MAX_U32), len(ranges))]
    parts.extend(_RANGE.pack(first, last) for first, last in ranges)
    return b"".join(parts)


def parse_ack(frame: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """``(credit, delay_us, ranges)`` of an ACK frame; ProtocolError ``bad_ack`` if its length
    does not match its range count or a range is reversed."""
    if len(frame) < _ACK_HEAD.size:
        raise ProtocolError("bad_ack", "short ACK frame")
    _, _, credit, delay_us, count = _ACK_HEAD.unpack_from(frame)
    if len(frame) != _ACK_HEAD.size + count * _RANGE.size or count > MAX_ACK_FRAME_RANGES:
        raise ProtocolError("bad_ack", "ACK frame length does not match its range count")
    ranges = []
    at = _ACK_HEAD.size
    for _ in range(count):
        first, last = _RANGE.unpack_from(frame, at)
        if first > last:
            raise ProtocolError("bad_ack", "reversed ACK range")
        ranges.append((first, last))
        at += _RANGE.size
    return credit, delay_us, ranges


def encode_probe(probe: int, size: int) -> bytes:
    """A PROBE frame padded to ``size`` bytes (zeros: they compress on nothing and mean nothing)."""
    return _PROBE.pack(FRAME_MAGIC, KIND_PROBE, probe) + bytes(max(0, size - PROBE_HEADER))


def parse_probe(frame: bytes) -> int:
    if len(frame) < PROBE_HEADER:
        raise ProtocolError("bad_probe", "short PROBE frame")
    return int(_PROBE.unpack_from(frame)[2])


def encode_probe_ack(probe: int, size: int) -> bytes:
    return _PROBE_ACK.pack(FRAME_MAGIC, KIND_PROBE_ACK, probe, size)


def parse_probe_ack(frame: bytes) -> tuple[int, int]:
    if len(frame) != _PROBE_ACK.size:
        raise ProtocolError("bad_probe", "PROBE_ACK frame of the wrong length")
    _, _, probe, size = _PROBE_ACK.unpack_from(frame)
    return probe, size


def encode_credit_request(credit: int) -> bytes:
    return _CREDIT_REQUEST.pack(FRAME_MAGIC, KIND_CREDIT_REQUEST, credit)


def parse_credit_request(frame: bytes) -> int:
    if len(frame) != _CREDIT_REQUEST.size:
        raise ProtocolError("bad_credit", "CREDIT_REQUEST frame of the wrong length")
    return int(_CREDIT_REQUEST.unpack_from(frame)[2])


class RangeSet:
    """Disjoint, non-touching half-open byte ranges ``[start, end)``, kept merged.

    Used for the bytes a receiver holds, the bytes a sender has had acknowledged and the bytes
    it still has to (re)send. In-order use keeps a single range, so each operation is O(1)
    then; ``count`` lets callers bound the fragmentation a peer can cause."""

    __slots__ = ("_ends", "_starts", "covered")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        #: Bytes covered by the ranges.
        self.covered = 0

    @property
    def count(self) -> int:
        """Number of separate ranges."""
        return len(self._starts)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def add(self, start: int, end: int) -> int:
        """Cover ``[start, end)``; return how many bytes were not covered before."""
        if end <= start:
            return 0
        starts, ends = self._starts, self._ends
        if not starts or start > ends[-1]:  # the common case: beyond everything
            starts.append(start)
            ends.append(end)
            self.covered += end - start
            return end - start
        lo = bisect_left(ends, start)
        hi = bisect_right(starts, end)
        if lo == hi:
            starts.insert(lo, start)
            ends.insert(lo, end)
            self.covered += end - start
            return end - start
        had = 0
        for k in range(lo, hi):
            had += ends[k] - starts[k]
        new_start = min(start, starts[lo])
        new_end = max(end, ends[hi - 1])
        starts[lo:hi] = [new_start]
        ends[lo:hi] = [new_end]
        added = (new_end - new_start) - had
        self.covered += added
        return added

    def overlaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` already covered (none for an empty ``[start, end)``)."""
        if end <= start:
            return []
        starts, ends = self._starts, self._ends
        out = []
        k = bisect_right(ends, start)
        n = len(starts)
        while k < n and starts[k] < end:
            out.append((max(start, starts[k]), min(end, ends[k])))
            k += 1
        return out

    def pop_front(self, limit: int) -> tuple[int, int]:
        """Remove and return up to ``limit`` bytes from the start of the first range
        (``(0, 0)`` when empty); ``limit`` must not be negative."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        starts, ends = self._starts, self._ends
        if not starts:
            return 0, 0
        start = starts[0]
        end = min(ends[0], start + limit)
        if end >= ends[0]:
            del starts[0]
            del ends[0]
        else:
            starts[0] = end
        self.covered -= end - start
        return start, end

    def _opens_range(self, start: int, end: int) -> bool:
        """Whether adding ``[start, end)`` would add a range (it neither overlaps nor touches
        one), rather than extend or merge existing ones."""
        lo = bisect_left(self._ends, start)
        return lo == len(self._starts) or self._starts[lo] > end

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self.covered = 0


class Reassembly:
    """One incoming message: a buffer of its declared ``total`` bytes (committed when the first
    fragment is accepted, after the total was checked) and the ranges received so far."""

    __slots__ = ("_buffer", "_received", "_total", "max_ranges")

    def __init__(self, total: int, max_ranges: int = 256) -> None:
        if not 0 < total <= MAX_MESSAGE_SIZE:
            raise ValueError(f"total must be 1..{MAX_MESSAGE_SIZE}")
        self._total = total
        #: Separate received ranges allowed at once (a peer sending scattered pieces cannot
        #: make bookkeeping grow without bound).
        self.max_ranges = max_ranges
        self._buffer: bytearray | None = bytearray(total)
        self._received = RangeSet()

    @property
    def total(self) -> int:
        """The message's declared size (the buffer's size; fixed)."""
        return self._total

    @property
    def received(self) -> int:
        return self._received.covered

    @property
    def complete(self) -> bool:
        return self._received.covered == self._total

    def insert(self, offset: int, frame: bytes, at: int) -> int:
        """Copy ``frame[at:]`` to ``offset``: ``ADDED`` (something new), ``DUPLICATE`` (all seen
        before, identical), ``MISMATCH`` (it differs from bytes already received: refused) or
        ``TOO_FRAGMENTED`` (it would open one range too many: refused, to be resent later).
        Nothing new (empty data) is ``DUPLICATE``; ValueError if ``frame[at:]`` does not fit
        in the message at ``offset`` (parse_fragment has checked that for wire input)."""
        buffer = self._buffer
        if buffer is None:
            raise ValueError("message already taken")
        end = offset + len(frame) - at
        if offset < 0 or not 0 <= at <= len(frame) or end > self._total:
            raise ValueError("fragment outside its message")
        if end == offset:
            return DUPLICATE
        received = self._received
        overlaps = received.overlaps(offset, end)
        view = memoryview(frame)
        for first, last in overlaps:
            if buffer[first:last] != view[at + first - offset : at + last - offset]:
                return MISMATCH
        if overlaps:
            covered = sum(last - first for first, last in overlaps)
            if covered == end - offset:
                return DUPLICATE
        elif received.count >= self.max_ranges and received._opens_range(offset, end):
            return TOO_FRAGMENTED
        buffer[offset:end] = view[at:]
        received.add(offset, end)
        return ADDED

    def take(self) -> bytes:
        """The whole message (once complete; bytes not received are zeros); the buffer is
        released, so this is the reassembly's last use (ValueError after)."""
        if self._buffer is None:
            raise ValueError("message already taken")
        data = bytes(self._buffer)
        self._buffer = None
        return data


class SentLog:
    """Fragments in flight, by packet number (each transmission gets a new number, as in QUIC,
    so an acknowledgement is never ambiguous).

    ``on_ack`` and ``detect_lost`` do work proportional to the packets they settle, not to a
    peer's claims: ranges are clipped to the numbers actually outstanding."""

    __slots__ = ("_next_packet", "_order", "_packets", "largest_acked", "work")

    def __init__(self, first_packet: int = 0) -> None:
        if not 0 <= first_packet < 1 << 62:
            raise ValueError("first_packet must be 0..2**62-1")
        #: packet number -> (message, start, end, size, sent_time)
        self._packets: dict[int, tuple[Any, int, int, int, float]] = {}
        self._order: deque[int] = deque()
        self._next_packet = first_packet
        #: Largest packet number acknowledged so far (-1 before the first).
        self.largest_acked = -1
        #: Loop iterations spent (tests bound it per datagram).
        self.work = 0

    def __len__(self) -> int:
        return len(self._packets)

    @property
    def next_packet(self) -> int:
        """The number the next fragment sent gets (read-only: numbers are never reused)."""
        return self._next_packet

    def sent(self, message: Any, start: int, end: int, size: int, now: float) -> int:
        """Record a fragment sent now; return its packet number."""
        packet = self._next_packet
        self._next_packet = packet + 1
        self._packets[packet] = (message, start, end, size, now)
        self._order.append(packet)
        return packet

    def on_ack(
        self, ranges: list[tuple[int, int]]
    ) -> tuple[list[tuple[Any, int, int, int, float]], float]:
        """Settle the packets ``ranges`` acknowledges; return them (``(message, start, end,
        size, sent_time)``) and the send time of the largest newly acknowledged packet if it is
        the largest ever acknowledged (-1.0 otherwise: no RTT sample)."""
        packets = self._packets
        order = self._order
        acked: list[tuple[Any, int, int, int, float]] = []
        sample = -1.0
        if not order:
            return acked, sample
        oldest = order[0]
        newest = self._next_packet - 1
        for first, last in ranges:
            lo = max(first, oldest)
            hi = min(last, newest)
            if lo > hi:
                continue
            hits: list[int] | range
            if hi - lo + 1 > len(packets):  # a wide claim: walk what is outstanding instead
                hits = [p for p in packets if lo <= p <= hi]
                self.work += len(packets)
            else:
                hits = range(lo, hi + 1)
                self.work += hi - lo + 1
            for packet in hits:
                entry = packets.pop(packet, None)
                if entry is not None:
                    acked.append(entry)
                    if packet > self.largest_acked:
                        self.largest_acked = packet
                        sample = entry[4]
        while order and order[0] not in packets:
            order.popleft()
        return acked, sample

    def detect_lost(
        self, now: float, loss_delay: float, threshold: int
    ) -> tuple[list[tuple[Any, int, int, int, float]], float]:
        """RFC 9002 §6.1: packets below the largest acknowledged that are ``threshold`` numbers
        older or were sent ``loss_delay`` ago are lost; return them and the time at which the
        oldest remaining candidate will be (inf if none)."""
        packets = self._packets
        order = self._order
        largest = self.largest_acked
        lost: list[tuple[Any, int, int, int, float]] = []
        while order:
            packet = order[0]
            entry = packets.get(packet)
            if entry is None:
                order.popleft()
                continue
            if packet >= largest:
                return lost, float("inf")
            # (sent + delay <= now, exactly the deadline returned below: no timer can fire
            # at a time this test still finds early)
            if packet <= largest - threshold or entry[4] + loss_delay <= now:
                order.popleft()
                del packets[packet]
                lost.append(entry)
                self.work += 1
                continue
            return lost, entry[4] + loss_delay
        return lost, float("inf")

    def oldest(self) -> tuple[Any, int, int, int, float] | None:
        """The oldest packet in flight."""
        order = self._order
        packets = self._packets
        while order:
            entry = packets.get(order[0])
            if entry is not None:
                return entry
            order.popleft()
        return None

    def pop_oldest(self) -> tuple[Any, int, int, int, float] | None:
        entry = self.oldest()
        if entry is not None:
            del self._packets[self._order.popleft()]
        return entry

    def clear(self) -> list[tuple[Any, int, int, int, float]]:
        """Forget everything in flight; return it."""
        entries = list(self._packets.values())
        self._packets.clear()
        self._order.clear()
        return entries
