# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled large-message transfer with one peer: the fragment sender and receiver.

Twin of :mod:`p2pfast._bulk_py` (same names, same behaviour, byte-identical frames, same
counters and timers; tests/test_bulk_twins.py drives both through the same random exchanges
and hostile frames). :mod:`p2pfast.bulk` explains the design.

How it is fast: the per-fragment paths (the transmit loop, settling an ACK frame, storing a
fragment, recording its packet number for the next ACK) run in C. They call the compiled
fragment bookkeeping (``_fragment``: RangeSet, Reassembly, SentLog, the frame layout) and the
congestion controller (``_congestion``: NewReno, Pacer, RttEstimator) through their C entry
points; the received packet ranges are two C arrays. Python is left where it runs once per
ACK frame or less: parsing the ACK's ranges, the loss scan's result, the path-MTU search
(:class:`p2pfast.pmtu.PathMtu`, pure Python: one ``on_packet_acked`` per ACK frame with the
largest size it settled, which is all the search learns from acknowledgements).

Differences from the pure twin, outside what the node does: a message given to ``send`` that
is not ``bytes`` is copied into ``bytes`` first; a frame given to ``on_fragment`` that is not
``bytes`` likewise; the classes do not pickle.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t

from p2pfast._congestion cimport NewReno, Pacer, RttEstimator
from p2pfast._fragment cimport (
    RangeSet,
    Reassembly,
    SentLog,
    fragment_frame,
    fragment_header,
)

from p2pfast._fragment import (
    encode_ack,
    encode_credit_request,
    encode_probe,
    parse_ack,
    parse_credit_request,
    parse_probe_ack,
)
from p2pfast.errors import ProtocolError, WindowFull
from p2pfast.pmtu import MAX_UDP_PAYLOAD as _MAX_UDP_PAYLOAD
from p2pfast.pmtu import PathMtu

FRAGMENT_HEADER = 22
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

cdef enum:
    _HEADER = 22
    _PACKET_THRESHOLD = 3
    _MAX_PTO_COUNT = 10
    _MAX_MESSAGES_AHEAD = 1024
    _MAX_RANGES_PER_MESSAGE = 256
    _MAX_RECEIVED_RANGES = 32
    _ADDED = 0
    _DUPLICATE = 1
    _MISMATCH = 2
    _TOO_FRAGMENTED = 3

cdef int64_t _MAX_QUEUED_BYTES = 16 * 1024 * 1024
cdef int64_t _MAX_U32 = 0xFFFFFFFF
cdef uint64_t _U64_MAX = 0xFFFFFFFFFFFFFFFF
cdef double _MAX_ACK_DELAY = 0.005
cdef double _INF = float("inf")


cdef inline double _dmin(double a, double b) noexcept:
    return b if b < a else a


cdef class OutgoingMessage:
    """One message being sent: its bytes, what is left to (re)send, what was acknowledged."""

    def __init__(self, int64_t number, data, handle):
        self.number = number
        self.data = data if type(data) is bytes else bytes(data)
        self.total = PyBytes_GET_SIZE(self.data)
        self.handle = handle
        self.to_send = RangeSet()
        self.to_send._add(0, self.total)
        self.acked = RangeSet()
        self.ready = True
        self.started = False
        self.active = True


cdef class Incoming:
    """One message being reassembled, with the time it last made progress."""

    def __init__(self, total, double now):
        self.reassembly = Reassembly(total, _MAX_RANGES_PER_MESSAGE)
        self.last_progress = now


cdef class BulkConnection:
    """Large-message transfer with one p2pfast peer, both directions (sans-I/O)."""

    def __init__(
        self,
        memory,
        *,
        peer_limit,
        max_datagram_size,
        pmtu_discovery,
        reassembly_timeout,
        now,
    ):
        self.memory = memory
        self.peer_limit = peer_limit
        self.reassembly_timeout = reassembly_timeout
        #: ``max_datagram_size`` is the size known to work (RFC 8899's BASE_PLPMTU); probing
        #: may raise it to the largest UDP payload, never lower it below.
        self.path = PathMtu(
            base=max_datagram_size,
            maximum=_MAX_UDP_PAYLOAD if pmtu_discovery else max_datagram_size,
            enabled=pmtu_discovery,
            now=now,
        )
        self._datagram_size = self.path.current
        self.rtt = RttEstimator()
        self.cc = NewReno(self._datagram_size)
        self.pacer = Pacer(self._datagram_size)
        self.log = SentLog()

        self._outgoing = {}
        self._ready = deque()
        self._next_message = 1
        self.queued_bytes = 0
        self.started_total = 0
        self.credit = 0
        self._credit_retry_at = -_INF
        self._last_sent = now
        self.pto_count = 0
        self._loss_at = _INF
        self._probes = {}
        self._pace_at = _INF
        self._credit_blocked = False
        self.owner = None
        self._next_probe = 1
        self.completed = []
        self.failed = []
        self.dead = False

        self._recv_count = 0
        self.ack_owed = 0
        self._ack_since = _INF
        self._incoming = {}
        self._done_below = 1
        self._done = set()
        self.allocated = 0
        self.released = 0
        self.granted = 0
        self._announced = 0
        self._grant_after = -_INF
        self._expiry_at = _INF
        self.timer_changed = False
        self.credit_update_owed = False

        self.fragments_sent = 0
        self.fragments_retransmitted = 0
        self.fragments_received = 0
        self.messages_reassembled = 0
        self.refused = {}
        self.work = 0

    # ------------------------------------------------------------------ sending

    @property
    def datagram_size(self):
        """The largest datagram this connection builds now (the path's confirmed size)."""
        return self._datagram_size

    def __len__(self):
        """Messages not yet fully acknowledged."""
        return len(self._outgoing)

    @property
    def incoming_count(self):
        """Messages being reassembled (memory committed, not yet complete)."""
        return len(self._incoming)

    def holds(self, handle):
        cdef OutgoingMessage m
        for m in self._outgoing.values():
            if m.handle == handle:
                return True
        return False

    def send(self, data, handle):
        """Queue one encoded message; WindowFull when too much is queued already."""
        cdef Py_ssize_t size = len(data)
        if self.queued_bytes + size > _MAX_QUEUED_BYTES and self._outgoing:
            raise WindowFull(f"{self.queued_bytes} bytes of large messages already queued")
        if len(self._outgoing) >= _MAX_MESSAGES_AHEAD:
            raise WindowFull(f"{len(self._outgoing)} large messages already queued")
        if self._next_message > _MAX_U32:
            raise WindowFull("message numbers of this session are exhausted")
        cdef OutgoingMessage message = OutgoingMessage(self._next_message, data, handle)
        self._next_message += 1
        self._outgoing[message.number] = message
        self._ready.append(message)
        self.queued_bytes += message.total

    def transmit(self, double now, list out, list probes):
        """Append the datagrams due now: a path-MTU probe to ``probes`` (they must leave with
        IP fragmentation forbidden), fragments (lost bytes first, in message order) to ``out``
        while the congestion window, the pacer and the peer's credit allow."""
        cdef NewReno cc
        cdef Pacer pacer
        cdef SentLog log
        cdef OutgoingMessage message
        cdef int64_t size, room, start, end, packet, datagram
        cdef bint probe_allowance
        cdef double at
        if self.dead:
            return
        probe_size = self.path.next_probe(now)
        if probe_size is not None:
            number = self._next_probe
            self._next_probe += 1
            if len(self._probes) >= 16:
                del self._probes[next(iter(self._probes))]
            self._probes[number] = probe_size
            probes.append(encode_probe(number, probe_size))
        ready = self._ready
        if not ready:
            return
        cc = self.cc
        pacer = self.pacer
        log = self.log
        size = self._datagram_size
        room = size - _HEADER
        probe_allowance = self.pto_count != 0
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
            message = <OutgoingMessage>ready[0]
            if not message.started:
                if <uint64_t>(self.started_total + message.total) > self.credit:
                    self._credit_blocked = True
                    self._request_credit(now, out)
                    break
                message.started = True
                self.started_total += message.total
            start = message.to_send._pop_front(room, &end)
            if start == end:  # nothing left to send of it
                message.ready = False
                ready.popleft()
                continue
            if not message.to_send.covered:
                message.ready = False
                ready.popleft()
            datagram = end - start + _HEADER
            packet = log._sent(message, start, end, datagram, now)
            out.append(
                fragment_frame(
                    <uint64_t>packet,
                    <uint32_t>message.number,
                    <uint32_t>message.total,
                    <uint32_t>start,
                    message.data,
                    start,
                    end,
                )
            )
            cc.on_packet_sent(datagram)
            pacer.on_packet_sent(datagram, now)
            self.fragments_sent += 1
            probe_allowance = False
            self._last_sent = now

    cdef int _request_credit(self, double now, list out) except -1:
        """Blocked by flow control: ask the peer for its current grant (at most once per
        probe timeout), in case an ACK carrying it was lost."""
        if now >= self._credit_retry_at:
            self._credit_retry_at = now + self.rtt.pto(_MAX_ACK_DELAY)
            out.append(encode_credit_request(self.credit))
        return 0

    def on_ack(self, frame, double now):
        """An ACK frame from the peer: settle packets, sample the RTT, detect losses, update
        the congestion controller and the peer's credit."""
        cdef SentLog log = self.log
        cdef NewReno cc = self.cc
        cdef OutgoingMessage message
        cdef tuple entry
        cdef list acked
        cdef int64_t size, largest = 0
        cdef unsigned long long work
        cdef double sent_time, delay
        credit, delay_us, ranges = parse_ack(frame)
        if credit > self.credit:
            self.credit = credit
        if ranges and ranges[0][1] >= log._next_packet:
            raise ProtocolError("bad_ack", "ACK for a packet never sent")
        work = log.work
        acked, sample = log.on_ack(ranges)
        sent_time = sample
        if sent_time >= 0.0:
            delay = <double>(<int64_t>delay_us) / 1e6
            self.rtt.update(now - sent_time, _dmin(delay, _MAX_ACK_DELAY))
            self.path.set_rtt(self.rtt.smoothed_rtt)
        for item in acked:
            entry = <tuple>item
            message = <OutgoingMessage>entry[0]
            size = entry[3]
            cc.on_packet_acked(size, <double>entry[4])
            if size > largest:
                largest = size
            if message.active:
                message.acked._add(<int64_t>entry[1], <int64_t>entry[2])
                if message.acked.covered == message.total:
                    self._finish(message)
        if acked:
            # Once per ACK frame, with the largest size it settled: all the path-MTU search
            # learns from an acknowledged datagram is that one larger than the base got through.
            self.path.on_packet_acked(largest, now)
            self.pto_count = 0
        self._detect_lost(now)
        self.work += <int64_t>(log.work - work)
        self.pacer.update_rate(cc.congestion_window, self.rtt.smoothed_rtt)

    cdef int _finish(self, OutgoingMessage message) except -1:
        del self._outgoing[message.number]
        message.active = False
        self.queued_bytes -= message.total
        message.to_send.clear()
        if message.ready:
            message.ready = False
            try:
                self._ready.remove(message)
            except ValueError:
                pass
        if message.handle is not None:
            self.completed.append(message.handle)
        return 0

    cdef int _detect_lost(self, double now) except -1:
        lost, loss_at = self.log.detect_lost(now, self.rtt.loss_delay(), _PACKET_THRESHOLD)
        self._loss_at = loss_at
        if lost:
            self._declare_lost(lost, now)
        return 0

    cdef int _declare_lost(self, list lost, double now) except -1:
        cdef int64_t lost_bytes = 0, size
        cdef double latest = -_INF, sent
        cdef tuple entry
        cdef OutgoingMessage message
        path = self.path
        for item in lost:
            entry = <tuple>item
            size = entry[3]
            sent = entry[4]
            lost_bytes += size
            if sent > latest:
                latest = sent
            path.on_packet_lost(size, now)
            message = <OutgoingMessage>entry[0]
            if message.active:
                self._resend(message, entry[1], entry[2])
        self.fragments_retransmitted += len(lost)
        self.cc.on_packets_lost(lost_bytes, latest, now)
        self._resize()
        return 0

    cdef int _resend(self, OutgoingMessage message, int64_t start, int64_t end) except -1:
        """Put back what was lost of ``message`` (less what was acknowledged meanwhile)."""
        cdef RangeSet acked = message.acked
        cdef Py_ssize_t k
        cdef int64_t first, last
        # the parts of [start, end) not acknowledged, in order (RangeSet.overlaps' walk)
        k = acked._upper_end(start)
        while k < acked._n and acked._starts[k] < end:
            first = acked._starts[k]
            last = acked._ends[k]
            if start < first:
                message.to_send._add(start, first)
            if last >= end:
                start = end
                break
            start = last
            k += 1
        if start < end:
            message.to_send._add(start, end)
        if message.to_send.covered and not message.ready:
            message.ready = True
            self._ready.appendleft(message)
        return 0

    cdef int _resize(self) except -1:
        """Follow the path's confirmed datagram size (it grows with probes, falls on black
        holes)."""
        cdef int64_t size = self.path.current
        if size != self._datagram_size:
            self._datagram_size = size
            self.cc.set_max_datagram_size(size)
            self.pacer.set_max_datagram_size(size)
        return 0

    def on_probe_refused(self, size, double now):
        """The local stack refused a probe of ``size`` bytes (EMSGSIZE: larger than the
        interface allows): that size fails at once, without waiting for timeouts."""
        if size in self._probes.values():
            self.path.on_probe_refused(size, now)

    def on_probe_ack(self, frame, double now):
        number, size = parse_probe_ack(frame)
        if self._probes.get(number) != size:
            return  # never probed (or forgotten): a peer's claim alone raises nothing
        del self._probes[number]
        self.path.on_probe_acked(size, now)
        self._resize()

    def on_credit_request(self, frame):
        parse_credit_request(frame)
        self.credit_update_owed = True

    def next_timer(self):
        """When :meth:`on_timer` wants to run (inf: never)."""
        cdef double at = self.path.next_timer()
        cdef double pto
        cdef int64_t shift
        if self.log._count:
            shift = self.pto_count if self.pto_count < 16 else 16
            pto = self._last_sent + self.rtt.pto(_MAX_ACK_DELAY) * <double>(1 << shift)
            at = _dmin(_dmin(at, pto), self._loss_at)
        if self._ready and not self.dead:
            if self._credit_blocked:
                at = _dmin(at, self._credit_retry_at)
            at = _dmin(at, self._pace_at)
        if self.ack_owed:
            at = _dmin(at, self._ack_since + _MAX_ACK_DELAY)
        if self._incoming:
            at = _dmin(at, self._expiry_at)
        return at

    @property
    def ack_deadline(self):
        """When the ACK owed must go at the latest."""
        return self._ack_since + _MAX_ACK_DELAY

    def on_timer(self, double now):
        """Loss and probe timeouts, path-MTU probe timers and reassembly expiry; returns the
        ``(message number, total)`` of incomplete messages expired (their memory is freed)."""
        cdef SentLog log = self.log
        cdef OutgoingMessage message
        cdef Incoming incoming
        cdef int64_t shift, size
        cdef double timeout, oldest
        self.path.handle_timer(now)
        self._resize()
        if self._loss_at <= now:
            self._detect_lost(now)
        shift = self.pto_count if self.pto_count < 16 else 16
        if log._count and now >= self._last_sent + self.rtt.pto(_MAX_ACK_DELAY) * <double>(
            1 << shift
        ):
            self.pto_count += 1
            if self.pto_count > _MAX_PTO_COUNT:
                self._fail_all("timeout")
                self.dead = True
            else:
                if self.pto_count == 3:
                    self.cc.on_persistent_congestion()
                # Resend the oldest fragment as the probe (see the pure twin for why it counts
                # as a lost datagram for the path-MTU search and not for congestion control).
                entry = log.pop_oldest()
                if entry is not None:
                    message = <OutgoingMessage>entry[0]
                    size = entry[3]
                    self.cc.on_packet_discarded(size)
                    self.path.on_packet_lost(size, now)
                    self._resize()
                    self.fragments_retransmitted += 1
                    if message.active:
                        self._resend(message, entry[1], entry[2])
                self._last_sent = now
        expired = []
        if self._incoming and now >= self._expiry_at:
            # One sweep per expiry period, not per timer: O(messages in progress) only then.
            timeout = self.reassembly_timeout
            oldest = _INF
            for number, item in list(self._incoming.items()):
                incoming = <Incoming>item
                if incoming.last_progress + timeout > now:
                    oldest = _dmin(oldest, incoming.last_progress)
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

    cdef int _fail_all(self, str reason) except -1:
        cdef OutgoingMessage message
        for item in self._outgoing.values():
            message = <OutgoingMessage>item
            message.active = False
            if message.handle is not None:
                self.failed.append((message.handle, reason))
        self._outgoing.clear()
        self._ready.clear()
        self.queued_bytes = 0
        for entry in self.log.clear():
            self.cc.on_packet_discarded(entry[3])
        return 0

    # ------------------------------------------------------------------ receiving

    def refuse(self, reason):
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def on_fragment(self, frame, double now):
        """A FRAGMENT frame: acknowledge it (unless refused), store its bytes, and return the
        whole message when this fragment completes it."""
        cdef uint64_t packet
        cdef uint32_t number, total, offset
        cdef Py_ssize_t n
        cdef const unsigned char* data
        cdef Incoming incoming
        cdef Reassembly reassembly
        cdef int result
        if type(frame) is not bytes:
            frame = bytes(frame)
        data = <const unsigned char*>PyBytes_AS_STRING(frame)
        n = PyBytes_GET_SIZE(frame)
        fragment_header(data, n, &packet, &number, &total, &offset)
        self.fragments_received += 1
        if number < self._done_below or (self._done and number in self._done):
            self._received_packet(packet, now)  # a late copy: ack it again, nothing else
            return None
        key = number
        item = self._incoming.get(key)
        if item is None:
            if number >= self._done_below + _MAX_MESSAGES_AHEAD:
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
            self._incoming[key] = incoming
            self.allocated += total
        else:
            incoming = <Incoming>item
        reassembly = incoming.reassembly
        if reassembly.total != total:
            self.refuse("fragment_total_changed")
            return None
        result = reassembly._insert(offset, data + _HEADER, n - _HEADER)
        if result == _MISMATCH:
            self.refuse("fragment_mismatch")
            return None
        if result == _TOO_FRAGMENTED:
            self.refuse("fragment_scattered")
            return None
        self._received_packet(packet, now)
        if result == _DUPLICATE:
            return None
        incoming.last_progress = now
        if reassembly._received.covered != reassembly.total:
            return None
        del self._incoming[key]
        self._mark_done(number)
        self.messages_reassembled += 1
        return reassembly.take()

    cdef int _mark_done(self, int64_t number) except -1:
        cdef int64_t below
        done = self._done
        if number == self._done_below:
            below = number + 1
            while done and below in done:
                done.discard(below)
                below += 1
            self._done_below = below
        else:  # numbers are taken below _done_below + MAX_MESSAGES_AHEAD only: bounded
            done.add(number)
        return 0

    cdef int _received_packet(self, uint64_t packet, double now) except -1:
        cdef uint64_t* firsts = self._recv_first
        cdef uint64_t* lasts = self._recv_last
        cdef Py_ssize_t n = self._recv_count, i, k, m
        self.ack_owed += 1
        if self.ack_owed == 1:
            self._ack_since = now
        # (x + 1 == packet and first - 1 == packet written so that nothing wraps at 2**64)
        if n and packet != 0 and lasts[0] == packet - 1:  # the common case: the next one
            lasts[0] = packet
            return 0
        for i in range(n):
            self.work += 1
            if firsts[i] <= packet <= lasts[i]:
                return 0
            if packet != 0 and lasts[i] == packet - 1:
                lasts[i] = packet
                return 0
            if packet != _U64_MAX and firsts[i] == packet + 1:
                firsts[i] = packet
                return 0
        # a new range, in its place by last (newest first; lasts are distinct), the oldest
        # beyond MAX_RECEIVED_RANGES dropped
        k = 0
        while k < n and lasts[k] > packet:
            k += 1
        for i in range(n, k, -1):
            firsts[i] = firsts[i - 1]
            lasts[i] = lasts[i - 1]
        firsts[k] = packet
        lasts[k] = packet
        n += 1
        if n > _MAX_RECEIVED_RANGES:
            n = _MAX_RECEIVED_RANGES
        # merge neighbours that now touch
        m = 0
        for i in range(n):
            if m and (lasts[i] == _U64_MAX or firsts[m - 1] <= lasts[i] + 1):
                if firsts[i] < firsts[m - 1]:
                    firsts[m - 1] = firsts[i]
            else:
                firsts[m] = firsts[i]
                lasts[m] = lasts[i]
                m += 1
        self._recv_count = m
        return 0

    def release(self, total, now):
        """A delivered message (of ``total`` bytes) was consumed, or an incomplete one expired:
        its memory is free, and the peer may be granted more."""
        self.released += total
        self.memory.outstanding -= total
        self.grant(now)

    def grant(self, double now):
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

    def ack_frame(self, double now):
        """The ACK frame owed: the received packet ranges (when fragments arrived since the
        last one; newest first, so the last few ACKs' worth is repeated and one lost ACK costs
        nothing) and the current grant; None when nothing is owed."""
        cdef int64_t owed = self.ack_owed
        cdef double delay
        cdef int64_t delay_us = 0
        cdef Py_ssize_t i
        if not owed and not self.credit_update_owed:
            return None
        if owed:
            delay = (now - self._ack_since) * 1e6
            if delay >= 4294967295.0:
                delay_us = _MAX_U32
            elif delay > 0.0:
                delay_us = <int64_t>delay
        self.ack_owed = 0
        self._ack_since = _INF
        self.credit_update_owed = False
        self._announced = self.granted
        ranges = []
        if owed:
            for i in range(self._recv_count):
                ranges.append((self._recv_first[i], self._recv_last[i]))
        return encode_ack(self.granted, delay_us, ranges)

    def close(self):
        """The session ended: fail what is unsent, return the grant to the node's budget."""
        self._fail_all("peer_gone")
        self.memory.outstanding -= self.granted - self.released
        self.released = self.granted
        self._incoming.clear()
        self.dead = True
