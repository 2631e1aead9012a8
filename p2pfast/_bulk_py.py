"""Pure-Python large-message transfer with one peer: the fragment sender and receiver.

Twin of the compiled ``_bulk`` module (same names, same behaviour, byte-identical frames; the
parity tests in tests/test_bulk_twins.py drive both through the same random exchanges).
:mod:`p2pfast.bulk` explains the design and re-exports the one :mod:`p2pfast._speedups`
chose; this twin uses the pure fragment and congestion modules only.
"""

from __future__ import annotations

from collections import deque
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from . import _fragment_py as fragment
from . import congestion
from .errors import ProtocolError, WindowFull
from .pmtu import MAX_UDP_PAYLOAD, PathMtu

if TYPE_CHECKING:
    from .bulk import BulkMemory

FRAGMENT_HEADER = fragment.FRAGMENT_HEADER

#: RFC 9002 §6.1.1: a packet this many numbers older than one acknowledged is lost.
PACKET_THRESHOLD = 3
#: Most fragments acknowledged by one ACK frame before the receiver sends it anyway.
ACK_EVERY = 16
#: Longest the receiver holds an acknowledgement (it also sends one per receive batch).
MAX_ACK_DELAY = 0.005
#: Probe timeouts in a row after which the messages in flight fail (the peer is gone).
MAX_PTO_COUNT = 10
#: Messages a sender may have started and not finished at once (and the receiver in progress).
MAX_MESSAGES_AHEAD = 1024
#: Separate byte ranges one incomplete message may have.
MAX_RANGES_PER_MESSAGE = 256
#: Packet-number ranges the receiver keeps for its ACK frames.
MAX_RECEIVED_RANGES = 32
#: Bytes of messages queued at a sender before ``send`` raises WindowFull.
MAX_QUEUED_BYTES = 16 * 1024 * 1024
_INF = float("inf")


class OutgoingMessage:
    """One message being sent: its bytes, what is left to (re)send, what was acknowledged."""

    __slots__ = ("acked", "data", "handle", "number", "ready", "started", "to_send", "total")

    def __init__(self, number: int, data: bytes, handle: str | None) -> None:
        self.number = number
        self.data = data
        self.total = len(data)
        self.handle = handle
        self.to_send = fragment.RangeSet()
        self.to_send.add(0, self.total)
        self.acked = fragment.RangeSet()
        self.ready = True  # in the connection's ready queue
        self.started = False


class Incoming:
    """One message being reassembled, with the time it last made progress."""

    __slots__ = ("last_progress", "reassembly")

    def __init__(self, total: int, now: float) -> None:
        self.reassembly = fragment.Reassembly(total, MAX_RANGES_PER_MESSAGE)
        self.last_progress = now


class BulkConnection:
    """Large-message transfer with one p2pfast peer, both directions (sans-I/O)."""

    def __init__(
        self,
        memory: BulkMemory,
        *,
        peer_limit: int,
        max_datagram_size: int,
        pmtu_discovery: bool,
        reassembly_timeout: float,
        now: float,
    ) -> None:
        self.memory = memory
        self.peer_limit = peer_limit
        self.reassembly_timeout = reassembly_timeout
        #: ``max_datagram_size`` is the size known to work (RFC 8899's BASE_PLPMTU); probing
        #: may raise it to the largest UDP payload, never lower it below.
        self.path = PathMtu(
            base=max_datagram_size,
            maximum=MAX_UDP_PAYLOAD if pmtu_discovery else max_datagram_size,
            enabled=pmtu_discovery,
            now=now,
        )
        self.rtt = congestion.RttEstimator()
        self.cc = congestion.NewReno(self.path.current)
        self.pacer = congestion.Pacer(self.path.current)
        self.log = fragment.SentLog()
        self._datagram_size = self.path.current

        # -- sending
        self._outgoing: dict[int, OutgoingMessage] = {}
        self._ready: deque[OutgoingMessage] = deque()
        self._next_message = 1
        self.queued_bytes = 0
        #: Cumulative totals of messages started, and the peer's grant (flow control).
        self.started_total = 0
        self.credit = 0
        self._credit_retry_at = -_INF
        self._last_sent = now
        self.pto_count = 0
        self._loss_at = _INF
        self._probes: dict[int, int] = {}  # probe number -> size
        self._pace_at = _INF
        self._credit_blocked = False
        #: The peer this connection serves (the node's bookkeeping).
        self.owner: Any = None
        self._next_probe = 1
        #: Outcomes for the node: handles completed, ``(handle, reason)`` failed.
        self.completed: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.dead = False

        # -- receiving
        self._received: list[list[int]] = []  # packet ranges [first, last], newest first
        self.ack_owed = 0
        self._ack_since = _INF
        self._incoming: dict[int, Incoming] = {}
        self._done_below = 1
        self._done: set[int] = set()
        self.allocated = 0
        self.released = 0
        self.granted = 0
        self._announced = 0
        self._grant_after = -_INF
        self._expiry_at = _INF
        #: Set when receiving moved what :meth:`next_timer` says (the node re-arms then).
        self.timer_changed = False
        self.credit_update_owed = False

        # -- counters (read by the node's statistics)
        self.fragments_sent = 0
        self.fragments_retransmitted = 0
        self.fragments_received = 0
        self.messages_reassembled = 0
        self.refused: dict[str, int] = {}
        self.work = 0

    # ------------------------------------------------------------------ sending

    @property
    def datagram_size(self) -> int:
        """The largest datagram this connection builds now (the path's confirmed size)."""
        return self._datagram_size

    def __len__(self) -> int:
        """Messages not yet fully acknowledged."""
        return len(self._outgoing)

    @property
    def incoming_count(self) -> int:
        """Messages being reassembled (memory committed, not yet complete)."""
        return len(self._incoming)

    def holds(self, handle: str) -> bool:
        return any(m.handle == handle for m in self._outgoing.values())

    def send(self, data: bytes, handle: str | None) -> None:
        """Queue one encoded message; WindowFull when too much is queued already."""
        if self.queued_bytes + len(data) > MAX_QUEUED_BYTES and self._outgoing:
            raise WindowFull(f"{self.queued_bytes} bytes of large messages already queued")
        if len(self._outgoing) >= MAX_MESSAGES_AHEAD:
            raise WindowFull(f"{len(self._outgoing)} large messages already queued")
        if self._next_message > fragment.MAX_U32:
            raise WindowFull("message numbers of this session are exhausted")
        message = OutgoingMessage(self._next_message, data, handle)
        self._next_message += 1
        self._outgoing[message.number] = message
        self._ready.append(message)
        self.queued_bytes += message.total

    def transmit(self, now: float, out: list[bytes], probes: list[bytes]) -> None:
        """Append the datagrams due now: a path-MTU probe to ``probes`` (they must leave with
        IP fragmentation forbidden), fragments (lost bytes first, in message order) to ``out``
        while the congestion window, the pacer and the peer's credit allow."""
        if self.dead:
            return
        path = self.path
        probe_size = path.next_probe(now)
        if probe_size is not None:
            number = self._next_probe
            self._next_probe += 1
            if len(self._probes) >= 16:
                del self._probes[next(iter(self._probes))]
            self._probes[number] = probe_size
            probes.append(fragment.encode_probe(number, probe_size))
        ready = self._ready
        if not ready:
            return
        cc = self.cc
        pacer = self.pacer
        log = self.log
        size = self._datagram_size
        room = size - FRAGMENT_HEADER
        probe_allowance = 1 if self.pto_count else 0
        self._pace_at = _INF
        self._credit_blocked = False
        while ready:
            if cc.bytes_in_flight + size > cc.congestion_window and not probe_allowance:
                break
            if not probe_allowance:
                at = pacer.next_send_time(now)
                if at > now:
                    self._pace_at = at
                    break
            message = ready[0]
            if not message.started:
                if self.started_total + message.total > self.credit:
                    self._credit_blocked = True
                    self._request_credit(now, out)
                    break
                message.started = True
                self.started_total += message.total
            start, end = message.to_send.pop_front(room)
            if start == end:  # nothing left to send of it
                message.ready = False
                ready.popleft()
                continue
            if not message.to_send.covered:
                message.ready = False
                ready.popleft()
            packet = log.sent(message, start, end, end - start + FRAGMENT_HEADER, now)
            out.append(
                fragment.encode_fragment(
                    packet, message.number, message.total, start, message.data, start, end
                )
            )
            datagram = end - start + FRAGMENT_HEADER
            cc.on_packet_sent(datagram)
            pacer.on_packet_sent(datagram, now)
            self.fragments_sent += 1
            probe_allowance = 0
            self._last_sent = now

    def _request_credit(self, now: float, out: list[bytes]) -> None:
        """Blocked by flow control: ask the peer for its current grant (at most once per
        probe timeout), in case an ACK carrying it was lost."""
        if now >= self._credit_retry_at:
            self._credit_retry_at = now + self.rtt.pto(MAX_ACK_DELAY)
            out.append(fragment.encode_credit_request(self.credit))

    def on_ack(self, frame: bytes, now: float) -> None:
        """An ACK frame from the peer: settle packets, sample the RTT, detect losses, update
        the congestion controller and the peer's credit."""
        credit, delay_us, ranges = fragment.parse_ack(frame)
        if credit > self.credit:
            self.credit = credit
        log = self.log
        if ranges and ranges[0][1] >= log.next_packet:
            raise ProtocolError("bad_ack", "ACK for a packet never sent")
        work = log.work
        acked, sent_time = log.on_ack(ranges)
        if sent_time >= 0.0:
            self.rtt.update(now - sent_time, min(delay_us / 1e6, MAX_ACK_DELAY))
            self.path.set_rtt(self.rtt.smoothed_rtt)
        cc = self.cc
        largest = 0
        for message, start, end, size, sent in acked:
            cc.on_packet_acked(size, sent)
            if size > largest:
                largest = size
            if message.number in self._outgoing:
                message.acked.add(start, end)
                if message.acked.covered == message.total:
                    self._finish(message)
        if acked:
            # Once per ACK frame, with the largest size it settled: all the path-MTU search
            # learns from an acknowledged datagram is that one larger than the base got through.
            self.path.on_packet_acked(largest, now)
            self.pto_count = 0
        self._detect_lost(now)
        self.work += log.work - work
        self.pacer.update_rate(cc.congestion_window, self.rtt.smoothed_rtt)

    def _finish(self, message: OutgoingMessage) -> None:
        del self._outgoing[message.number]
        self.queued_bytes -= message.total
        message.to_send.clear()
        if message.ready:
            message.ready = False
            with suppress(ValueError):
                self._ready.remove(message)
        if message.handle is not None:
            self.completed.append(message.handle)

    def _detect_lost(self, now: float) -> None:
        rtt = self.rtt
        lost, self._loss_at = self.log.detect_lost(now, rtt.loss_delay(), PACKET_THRESHOLD)
        if lost:
            self._declare_lost(lost, now)

    def _declare_lost(self, lost: list[tuple[Any, int, int, int, float]], now: float) -> None:
        lost_bytes = 0
        latest = -_INF
        path = self.path
        for message, start, end, size, sent in lost:
            lost_bytes += size
            if sent > latest:
                latest = sent
            path.on_packet_lost(size, now)
            if message.number in self._outgoing:
                self._resend(message, start, end)
        self.fragments_retransmitted += len(lost)
        self.cc.on_packets_lost(lost_bytes, latest, now)
        self._resize()

    def _resend(self, message: OutgoingMessage, start: int, end: int) -> None:
        """Put back what was lost of ``message`` (less what was acknowledged meanwhile)."""
        acked = message.acked
        pieces = [(start, end)]
        for first, last in acked.overlaps(start, end):
            piece = pieces.pop()
            if piece[0] < first:
                pieces.append((piece[0], first))
            if last < piece[1]:
                pieces.append((last, piece[1]))
        for first, last in pieces:
            message.to_send.add(first, last)
        if message.to_send.covered and not message.ready:
            message.ready = True
            self._ready.appendleft(message)

    def _resize(self) -> None:
        """Follow the path's confirmed datagram size (it grows with probes, falls on black
        holes)."""
        size = self.path.current
        if size != self._datagram_size:
            self._datagram_size = size
            self.cc.set_max_datagram_size(size)
            self.pacer.set_max_datagram_size(size)

    def on_probe_refused(self, size: int, now: float) -> None:
        """The local stack refused a probe of ``size`` bytes (EMSGSIZE: larger than the
        interface allows): that size fails at once, without waiting for timeouts."""
        if size in self._probes.values():
            self.path.on_probe_refused(size, now)

    def on_probe_ack(self, frame: bytes, now: float) -> None:
        number, size = fragment.parse_probe_ack(frame)
        if self._probes.get(number) != size:
            return  # never probed (or forgotten): a peer's claim alone raises nothing
        del self._probes[number]
        self.path.on_probe_acked(size, now)
        self._resize()

    def on_credit_request(self, frame: bytes) -> None:
        fragment.parse_credit_request(frame)
        self.credit_update_owed = True

    def next_timer(self) -> float:
        """When :meth:`on_timer` wants to run (inf: never)."""
        at = self.path.next_timer()
        if len(self.log):
            pto = self._last_sent + self.rtt.pto(MAX_ACK_DELAY) * (1 << min(self.pto_count, 16))
            at = min(at, pto, self._loss_at)
        if self._ready and not self.dead:
            if self._credit_blocked:
                at = min(at, self._credit_retry_at)
            at = min(at, self._pace_at)
        if self.ack_owed:
            at = min(at, self._ack_since + MAX_ACK_DELAY)
        if self._incoming:
            at = min(at, self._expiry_at)
        return at

    @property
    def ack_deadline(self) -> float:
        """When the ACK owed must go at the latest."""
        return self._ack_since + MAX_ACK_DELAY

    def on_timer(self, now: float) -> list[tuple[int, int]]:
        """Loss and probe timeouts, path-MTU probe timers and reassembly expiry; returns the
        ``(message number, total)`` of incomplete messages expired (their memory is freed)."""
        self.path.handle_timer(now)
        self._resize()
        if self._loss_at <= now:
            self._detect_lost(now)
        log = self.log
        if len(log) and now >= self._last_sent + self.rtt.pto(MAX_ACK_DELAY) * (
            1 << min(self.pto_count, 16)
        ):
            self.pto_count += 1
            if self.pto_count > MAX_PTO_COUNT:
                self._fail_all("timeout")
                self.dead = True
            else:
                if self.pto_count == 3:
                    self.cc.on_persistent_congestion()
                # Resend the oldest fragment as the probe, cut at the current size. Nothing
                # was acknowledged for a probe timeout: for the path-MTU search that is a lost
                # datagram (a black hole shows itself this way), for congestion control it is
                # not (no acknowledgement told us anything).
                entry = log.pop_oldest()
                if entry is not None:
                    message, start, end, size, _sent = entry
                    self.cc.on_packet_discarded(size)
                    self.path.on_packet_lost(size, now)
                    self._resize()
                    self.fragments_retransmitted += 1
                    if message.number in self._outgoing:
                        self._resend(message, start, end)
                self._last_sent = now
        expired = []
        if self._incoming and now >= self._expiry_at:
            # One sweep per expiry period, not per timer: O(messages in progress) only then.
            timeout = self.reassembly_timeout
            oldest = _INF
            for number, incoming in list(self._incoming.items()):
                if incoming.last_progress + timeout > now:
                    oldest = min(oldest, incoming.last_progress)
                    continue
                del self._incoming[number]
                total = incoming.reassembly.total
                expired.append((number, total))
                self.refuse("reassembly_expired")
                # Its memory returns to the node, not to this peer: a peer that leaves
                # messages half-sent gets no new credit for a while (others may use it).
                self._grant_after = now + timeout
                self.release(total, now)
            self._expiry_at = oldest + timeout
        return expired

    def _fail_all(self, reason: str) -> None:
        for message in self._outgoing.values():
            if message.handle is not None:
                self.failed.append((message.handle, reason))
        self._outgoing.clear()
        self._ready.clear()
        self.queued_bytes = 0
        for _m, _s, _e, size, _t in self.log.clear():
            self.cc.on_packet_discarded(size)

    # ------------------------------------------------------------------ receiving

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def on_fragment(self, frame: bytes, now: float) -> bytes | None:
        """A FRAGMENT frame: acknowledge it (unless refused), store its bytes, and return the
        whole message when this fragment completes it."""
        packet, number, total, offset = fragment.parse_fragment(frame)
        self.fragments_received += 1
        if number < self._done_below or number in self._done:
            self._received_packet(packet, now)  # a late copy: ack it again, nothing else
            return None
        incoming = self._incoming.get(number)
        if incoming is None:
            if number >= self._done_below + MAX_MESSAGES_AHEAD:
                self.refuse("message_too_far_ahead")
                return None
            if self.allocated + total > self.granted:
                # A penalty for an expired message may have ended since the last grant: the
                # resent fragments of that message must not be refused for ever.
                self.grant(now)
            if self.allocated + total > self.granted:
                self.refuse("over_credit")  # not acknowledged: resent once credit allows
                self.credit_update_owed = True
                return None
            incoming = Incoming(total, now)
            if not self._incoming:
                self._expiry_at = now + self.reassembly_timeout
                self.timer_changed = True
            self._incoming[number] = incoming
            self.allocated += total
        reassembly = incoming.reassembly
        if reassembly.total != total:
            self.refuse("fragment_total_changed")
            return None
        result = reassembly.insert(offset, frame, FRAGMENT_HEADER)
        if result == fragment.MISMATCH:
            self.refuse("fragment_mismatch")
            return None
        if result == fragment.TOO_FRAGMENTED:
            self.refuse("fragment_scattered")
            return None
        self._received_packet(packet, now)
        if result == fragment.DUPLICATE:
            return None
        incoming.last_progress = now
        if not reassembly.complete:
            return None
        del self._incoming[number]
        self._mark_done(number)
        self.messages_reassembled += 1
        return reassembly.take()

    def _mark_done(self, number: int) -> None:
        done = self._done
        if number == self._done_below:
            below = number + 1
            while below in done:
                done.discard(below)
                below += 1
            self._done_below = below
        else:  # numbers are taken below _done_below + MAX_MESSAGES_AHEAD only: bounded
            done.add(number)

    def _received_packet(self, packet: int, now: float) -> None:
        ranges = self._received
        self.ack_owed += 1
        if self.ack_owed == 1:
            self._ack_since = now
        if ranges and ranges[0][1] + 1 == packet:  # the common case: the next one
            ranges[0][1] = packet
            return
        for entry in ranges:
            self.work += 1
            if entry[0] <= packet <= entry[1]:
                return
            if entry[1] + 1 == packet:
                entry[1] = packet
                return
            if entry[0] - 1 == packet:
                entry[0] = packet
                return
        ranges.append([packet, packet])
        ranges.sort(key=lambda r: -r[1])
        del ranges[MAX_RECEIVED_RANGES:]
        # merge neighbours that now touch
        merged: list[list[int]] = []
        for entry in ranges:
            if merged and merged[-1][0] <= entry[1] + 1:
                merged[-1][0] = min(merged[-1][0], entry[0])
            else:
                merged.append(entry)
        self._received = merged

    def release(self, total: int, now: float) -> None:
        """A delivered message (of ``total`` bytes) was consumed, or an incomplete one expired:
        its memory is free, and the peer may be granted more."""
        self.released += total
        self.memory.outstanding -= total
        self.grant(now)

    def grant(self, now: float) -> None:
        """Raise the peer's credit to ``released + peer_limit`` as far as the node's memory
        budget allows (not while the peer is penalised for an expired message); an update is
        owed once the grant has grown by a quarter of the limit."""
        if now < self._grant_after:
            return
        memory = self.memory
        target = self.released + self.peer_limit
        more = min(target - self.granted, memory.free)
        if more > 0:
            self.granted += more
            memory.outstanding += more
            if self.granted - self._announced >= self.peer_limit // 4:
                self.credit_update_owed = True

    def ack_frame(self, now: float) -> bytes | None:
        """The ACK frame owed: the received packet ranges (when fragments arrived since the
        last one; newest first, so the last few ACKs' worth is repeated and one lost ACK costs
        nothing) and the current grant; None when nothing is owed."""
        owed = self.ack_owed
        if not owed and not self.credit_update_owed:
            return None
        delay = max(0, int((now - self._ack_since) * 1e6)) if owed else 0
        self.ack_owed = 0
        self._ack_since = _INF
        self.credit_update_owed = False
        self._announced = self.granted
        ranges = [(first, last) for first, last in self._received] if owed else []
        return fragment.encode_ack(self.granted, delay, ranges)

    def close(self) -> None:
        """The session ended: fail what is unsent, return the grant to the node's budget."""
        self._fail_all("peer_gone")
        self.memory.outstanding -= self.granted - self.released
        self.released = self.granted
        self._incoming.clear()
        self.dead = True
