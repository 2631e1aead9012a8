"""The load generator: one asyncio ``DatagramProtocol`` per simulated peer.

Cheap per message, so that the server, not the generator, is what a run measures: datagrams
are formatted from pre-encoded templates (``bytes % (id, timestamp, seq)``), replies are
matched by slicing fixed offsets of the server's canonical encoding (falling back to the codec
for anything else), latencies go into a fixed 10 µs-bucket histogram, and nothing is logged
per message. A peer changes behaviour from phase to phase (handshake, closed loop,
disconnect) by changing its class.
"""

from __future__ import annotations

import array
import asyncio
import time
import warnings
from collections import deque
from time import perf_counter
from typing import Any

with warnings.catch_warnings():  # the server reports which implementation it runs
    warnings.simplefilter("ignore", RuntimeWarning)
    from .._speedups import codec as codec  # (re-exported for run.py)

from ..errors import ProtocolError
from ..protocol import MessageType

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is the safety net
    # (json.loads takes str | bytes, orjson's loads also bytearray/memoryview: same use here)
    from json import loads as _loads  # type: ignore[assignment]

T_HANDSHAKE_REQUEST = int(MessageType.HandshakeRequest)
T_HANDSHAKE_RESPONSE = int(MessageType.HandshakeResponse)
T_PING = int(MessageType.Ping)
T_PONG = int(MessageType.Pong)
T_DATA = int(MessageType.Data)
T_ERROR = int(MessageType.Error)
T_DISCONNECT = int(MessageType.Disconnect)
T_ACK = int(MessageType.Ack)
T_RETRANSMIT = int(MessageType.Retransmit)

#: Latency histogram: 10 µs buckets up to 2 s (the last bucket holds everything slower).
HIST_RES = 1e-5
HIST_BUCKETS = 200_001
HIST_MAX = HIST_BUCKETS - 1

# A coalesced Ack: {"id":..,"message_type":"Ack","timestamp":N,"payload":{"seq":[[lo,hi],..]},...
# (payload keys sorted, compact); the ranges are the JSON list from after _SEQ_AT to "]]".
_SEQ_AT = b'"payload":{"seq":'
_SEQ_AT_LEN = len(_SEQ_AT)
#: A range wider than this is matched against the outstanding messages instead of walked.
_RANGE_WALK_MAX = 64

# Offsets in a canonically encoded envelope: {"id":"<36>","message_type":"<Type>", ...
# The fast paths below slice these literally: the id is data[7:43], the type name starts at
# data[61], an Ack's ack_for is data[-38:-2] (the envelope ends ..."ack_for":"<36>"}).
_ID = slice(7, 43)
_ORIGINAL_ID = b'"original_message":{"ack_for":null,"id":"'
_ORIGINAL_ID_LEN = len(_ORIGINAL_ID)


# ---------------------------------------------------------------------------------------
# Message templates


def _template(data: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """Turn an encoded datagram into a ``bytes %`` template: every ``(placeholder, spec)`` in
    ``fields`` must occur, in that order, exactly as many times as listed."""
    out = data.replace(b"%", b"%%")
    pos = 0
    for placeholder, spec in fields:
        at = out.find(placeholder, pos)
        if at < 0:
            raise AssertionError(f"template placeholder {placeholder!r} missing or out of order")
        out = out[:at] + spec + out[at + len(placeholder) :]
        pos = at + len(spec)
    for placeholder, _ in fields:
        if placeholder in out:
            raise AssertionError(f"template placeholder {placeholder!r} occurs too often")
    return out


_PH_ID = "ffffffff-ffff-4fff-bfff-fffffffffff1"
_PH_ID2 = "ffffffff-ffff-4fff-bfff-fffffffffff2"
_PH_ID3 = "ffffffff-ffff-4fff-bfff-fffffffffff3"
_PH_TS = 9_999_999_991
_PH_SEQ = 4_294_967_295


def data_template(size: int) -> bytes:
    """Data, requires_ack, sequence number: ``tmpl % (id, ts, seq)``."""
    raw = codec.encode(
        T_DATA, {"blob": "x" * size}, _PH_TS, id=_PH_ID, sequence_number=_PH_SEQ, requires_ack=True
    )
    return _template(
        raw, [(_PH_ID.encode(), b"%s"), (b"%d" % _PH_TS, b"%d"), (b"%d" % _PH_SEQ, b"%d")]
    )


def ping_template() -> bytes:
    """Ping: ``tmpl % (id, ts)``."""
    raw = codec.encode(T_PING, None, _PH_TS, id=_PH_ID)
    return _template(raw, [(_PH_ID.encode(), b"%s"), (b"%d" % _PH_TS, b"%d")])


def routed_template(size: int, source: str, destination: str, max_hops: int = 8) -> bytes:
    """Routed Data A→B: ``tmpl % (envelope id, ts, original id, ts, route id)``."""
    payload = {
        "destination_node": destination,
        "hop_count": 0,
        "max_hops": max_hops,
        "original_message": {
            "ack_for": None,
            "id": _PH_ID2,
            "message_type": "Data",
            "payload": {"blob": "x" * size},
            "requires_ack": False,
            "sender_addr": None,
            "sequence_number": None,
            "timestamp": _PH_TS,
        },
        "route_id": _PH_ID3,
        "source_node": source,
    }
    raw = codec.encode(T_DATA, payload, _PH_TS, id=_PH_ID)
    ts = b"%d" % _PH_TS
    return _template(
        raw,
        [
            (_PH_ID.encode(), b"%s"),
            (ts, b"%d"),
            (_PH_ID2.encode(), b"%s"),
            (ts, b"%d"),
            (_PH_ID3.encode(), b"%s"),
        ],
    )


# ---------------------------------------------------------------------------------------
# The load generator: one DatagramProtocol per peer, behaviour switched per phase by class


class Shared:
    """State every peer of a run shares (kept in one object: one attribute hop from a peer)."""

    def __init__(self) -> None:
        self.running = False  # closed loop: send the next message on completion
        self.ts = int(time.time())
        self.hist = array.array("q", [0]) * HIST_BUCKETS
        self.last_push = 0.0  # last unsolicited datagram (settle detection)
        self.errors = 0
        self.first_error = ""
        self.icmp_errors = 0
        self.stray = 0
        self.retransmit_requests = 0  # Retransmit requests from the server (it saw a gap)
        self.reacked = 0  # coalesced Acks: sequence numbers acked again after they completed
        self.server_disconnects = 0
        self.hs_pending: deque[HandshakePeer] = deque()
        self.hs_done = 0
        self.hs_failed = 0
        self.hs_last = 0.0  # perf_counter() of the latest completed handshake
        self.server_node_id: str | None = None


class Peer(asyncio.DatagramProtocol):
    """One simulated node. Subclasses change only methods, so a peer moves from phase to
    phase by ``peer.__class__ = ...`` (uvloop looks ``datagram_received`` up on every call)."""

    __slots__ = (
        "b",
        "baseline",
        "counter",
        "done",
        "hist",
        "hs_at",
        "hs_data",
        "hs_id",
        "hs_tries",
        "idx",
        "nacks",
        "node_id",
        "oprefix",
        "out",
        "partner",
        "prefix",
        "retx",
        "rprefix",
        "state",
        "tmpl",
        "transport",
        "workload",
    )

    HS_IDLE, HS_SENT, HS_DONE, HS_FAILED = 0, 1, 2, 3

    def __init__(
        self, b: Shared, idx: int, node_id: str, run_tag: int, baseline: bool, workload: str
    ) -> None:
        self.b = b
        self.idx = idx
        self.transport: Any = None
        self.node_id = node_id
        self.baseline = baseline
        self.workload = workload
        self.hs_data = b""
        self.hs_id = b""
        self.hs_tries = 0
        self.hs_at = 0.0
        self.state = Peer.HS_IDLE
        # bytes message ids; int sequence numbers for CoalescedDataPeer
        self.out: dict[Any, float] = {}
        self.counter = 0
        # Message ids: <run tag>-<peer>-4<kind>-8000-<counter>, valid v4-shaped UUIDs, unique
        # per run, cheap to make. Kind 000: envelope, 001: original message, 002: route id.
        stem = b"%08x-%04x-4" % (run_tag & 0xFFFFFFFF, idx & 0xFFFF)
        self.prefix = stem + b"000-8000-"
        # Baseline echoes come back to the sender: the envelope id is the key there.
        self.oprefix = self.prefix if baseline else stem + b"001-8000-"
        self.rprefix = stem + b"002-8000-"
        self.tmpl = b""
        self.partner: Peer | None = None
        self.hist = b.hist
        self.done = 0
        self.retx = 0
        self.nacks = 0  # Ack datagrams received (data workload)

    # -- asyncio callbacks (defaults; phases override datagram_received) ------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def error_received(self, exc: Exception) -> None:
        self.b.icmp_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._slow(data)

    # -- the rare path: decode with the codec ------------------------------------------------

    def _completed(self, sent_at: float) -> float:
        """Count one completed message and its latency (10 µs histogram bins); return now."""
        now = perf_counter()
        i = int((now - sent_at) / HIST_RES)
        self.hist[i if i < HIST_MAX else HIST_MAX] += 1
        self.done += 1
        return now

    def _slow(self, data: bytes) -> None:
        b = self.b
        try:
            msg = codec.decode(data)
        except (ProtocolError, ValueError):
            b.stray += 1
            return
        mtype = msg.type
        if mtype == T_ERROR:
            b.errors += 1
            if not b.first_error:
                payload = msg.payload
                text = payload.get("error") if type(payload) is dict else None
                b.first_error = str(text or payload)[:200]
        elif mtype == T_DISCONNECT:
            b.server_disconnects += 1
        elif mtype == T_RETRANSMIT and self.workload == "data":
            b.retransmit_requests += 1
            payload = msg.payload
            seqs = payload.get("sequence_numbers") if type(payload) is dict else None
            if type(seqs) is list:
                for seq in seqs[:64]:
                    if type(seq) is int and 0 < seq <= self.counter:
                        key = self.key_of(seq)
                        if key in self.out:
                            self.retx += 1
                            self.resend(key, perf_counter())
        elif mtype in (T_ACK, T_PONG, T_DATA):
            self._complete_slow(msg, data)
        else:
            b.last_push = perf_counter()  # DiscoveryResponse pushes and the like

    def _complete_slow(self, msg: Any, data: bytes) -> None:
        """A reply in a form the fast path did not recognise (e.g. another server's encoding)."""
        b = self.b
        key: str | None = None
        owner: Peer = self
        if self.baseline:
            key = msg.id
        elif msg.type == T_ACK and self.workload == "data":
            self.nacks += 1
            payload = msg.payload
            if type(payload) is dict and "seq" in payload and isinstance(self, CoalescedDataPeer):
                if not self.complete_ranges(payload["seq"]):
                    b.stray += 1
                return
            key = msg.ack_for
        elif msg.type == T_PONG and self.workload == "ping":
            for k in self.out:
                key = k.decode()
                break
        elif msg.type == T_DATA and self.workload == "routed" and self.partner is not None:
            payload = msg.payload
            original = payload.get("original_message") if type(payload) is dict else None
            key = original.get("id") if type(original) is dict else None
            owner = self.partner
        t = owner.out.pop(owner.key_of_id(key), None) if type(key) is str else None
        if t is None:
            b.stray += 1
            return
        now = owner._completed(t)
        if b.running:
            owner.send_one(now)

    # -- keys of ``out``: message ids (bytes), or sequence numbers for CoalescedDataPeer -------

    def key_of(self, seq: int) -> Any:
        """The ``out`` key of this peer's Data with sequence number ``seq``."""
        return self.prefix + b"%012x" % seq

    def key_of_id(self, msg_id: str) -> Any:
        """The ``out`` key of the message with id ``msg_id``."""
        return msg_id.encode()

    # -- sending -----------------------------------------------------------------------------

    def send_one(self, now: float) -> None:
        raise NotImplementedError

    def resend(self, key: bytes, now: float) -> None:
        """A message outstanding for LOSS_TIMEOUT: send it (or a fresh one) again."""
        raise NotImplementedError


# Senders per workload ---------------------------------------------------------------------


class _DataSender(Peer):
    __slots__ = ()

    def send_one(self, now: float) -> None:
        c = self.counter + 1
        self.counter = c
        key = self.prefix + b"%012x" % c
        self.out[key] = now
        self.transport.sendto(self.tmpl % (key, self.b.ts, c))

    def resend(self, key: bytes, now: float) -> None:
        # Same id and sequence number: the server acks a duplicate again, never a gap.
        self.out[key] = now
        self.transport.sendto(self.tmpl % (key, self.b.ts, int(key[-12:], 16)))


class _SeqDataSender(Peer):
    """Data like :class:`_DataSender`, but ``out`` is keyed by sequence number (an int): a
    coalesced Ack names sequence-number ranges, and each lookup is then one dict probe."""

    __slots__ = ()

    def key_of(self, seq: int) -> Any:
        return seq

    def key_of_id(self, msg_id: str) -> Any:
        key = msg_id.encode()
        prefix = self.prefix
        if key[: len(prefix)] != prefix:
            return None
        try:
            return int(key[len(prefix) :], 16)
        except ValueError:
            return None

    def send_one(self, now: float) -> None:
        c = self.counter + 1
        self.counter = c
        self.out[c] = now
        self.transport.sendto(self.tmpl % (self.prefix + b"%012x" % c, self.b.ts, c))

    def resend(self, key: Any, now: float) -> None:
        # Same id and sequence number: the server acks a duplicate again (inside a range).
        self.out[key] = now
        self.transport.sendto(self.tmpl % (self.prefix + b"%012x" % key, self.b.ts, key))


class _PingSender(Peer):
    __slots__ = ()

    def send_one(self, now: float) -> None:
        c = self.counter + 1
        self.counter = c
        key = self.prefix + b"%012x" % c
        self.out[key] = now
        self.transport.sendto(self.tmpl % (key, self.b.ts))

    def resend(self, key: bytes, now: float) -> None:
        del self.out[key]
        self.send_one(now)


class _RoutedSender(Peer):
    __slots__ = ()

    def send_one(self, now: float) -> None:
        c = self.counter + 1
        self.counter = c
        hexc = b"%012x" % c
        key = self.oprefix + hexc
        self.out[key] = now
        ts = self.b.ts
        self.transport.sendto(self.tmpl % (self.prefix + hexc, ts, key, ts, self.rprefix + hexc))

    def resend(self, key: bytes, now: float) -> None:
        # A fresh route_id (the server drops a repeated one), so simply a fresh message.
        del self.out[key]
        self.send_one(now)


# Phase: handshake -------------------------------------------------------------------------


class HandshakePeer(Peer):
    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.state != Peer.HS_SENT:
            self.b.last_push = perf_counter()  # the server's peer-list pushes
            return
        if self.baseline:
            if data[_ID] == self.hs_id:
                self._handshake_done()
            return
        try:
            msg = codec.decode(data)
        except (ProtocolError, ValueError):
            self.b.stray += 1
            return
        if msg.type == T_HANDSHAKE_RESPONSE:
            payload = msg.payload
            if type(payload) is dict and payload.get("success") is True:
                info = payload.get("node_info")
                if type(info) is dict and self.b.server_node_id is None:
                    self.b.server_node_id = str(info.get("id"))
                token = payload.get("token")
                if type(token) is str:  # prove our address: no anti-amplification budget
                    self.transport.sendto(
                        codec.encode(T_ACK, {"token": token}, self.b.ts, ack_for=msg.id)
                    )
                self._handshake_done()
            else:
                text = payload.get("error_message") if type(payload) is dict else None
                self._handshake_failed(str(text or "HandshakeResponse success=false"))
        elif msg.type == T_ERROR:
            payload = msg.payload
            text = payload.get("error") if type(payload) is dict else None
            self._handshake_failed(str(text or payload))
        # Ack, DiscoveryResponse: part of the answer, nothing to do

    def _handshake_done(self) -> None:
        b = self.b
        self.state = Peer.HS_DONE
        b.hs_done += 1
        b.last_push = b.hs_last = perf_counter()
        start_next_handshake(b)

    def _handshake_failed(self, reason: str) -> None:
        b = self.b
        self.state = Peer.HS_FAILED
        b.hs_failed += 1
        if not b.first_error:
            b.first_error = reason[:200]
        start_next_handshake(b)

    def send_handshake(self, now: float) -> None:
        self.state = Peer.HS_SENT
        self.hs_tries += 1
        self.hs_at = now
        self.transport.sendto(self.hs_data)


def start_next_handshake(b: Shared) -> None:
    """Send the next queued peer's HandshakeRequest (keeps HANDSHAKE_CONCURRENCY in flight)."""
    if b.hs_pending:
        b.hs_pending.popleft().send_handshake(perf_counter())


# Phase: closed loop (fast paths) ----------------------------------------------------------


class DataPeer(_DataSender):
    """p2pfast, data: the Ack's ``ack_for`` (the last 36 characters) completes a message."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[61:65] == b'Ack"':
            self.nacks += 1
            t = self.out.pop(data[-38:-2], None)
            if t is None:
                self.b.stray += 1  # a late Ack for a message already resent and acked
                return
            now = self._completed(t)
            b = self.b
            if b.running:
                c = self.counter + 1
                self.counter = c
                key = self.prefix + b"%012x" % c
                self.out[key] = now
                self.transport.sendto(self.tmpl % (key, b.ts, c))
            return
        self._slow(data)


class CoalescedDataPeer(_SeqDataSender):
    """p2pfast, data, ``--acks coalesced``: an Ack's ``{"seq": [[lo, hi], ...]}`` completes
    every outstanding message whose sequence number is in a range (a plain Ack, from a server
    that does not coalesce, completes the message its ``ack_for`` names)."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[61:65] == b'Ack"':
            at = data.find(_SEQ_AT, 70)
            if at >= 0:
                at += _SEQ_AT_LEN
                end = data.find(b"]]}", at)
                if end >= 0:
                    try:
                        ranges = _loads(data[at : end + 2])
                    except ValueError:
                        ranges = None
                    if ranges is not None and self.complete_ranges(ranges):
                        self.nacks += 1
                        return
            elif data.find(b'"payload":null,', 70) >= 0:
                seq = self.key_of_id(data[-38:-2].decode("ascii", "replace"))
                t = self.out.pop(seq, None)
                self.nacks += 1
                if t is None:
                    self.b.stray += 1
                    return
                now = self._completed(t)
                if self.b.running:
                    self.send_one(now)
                return
        self._slow(data)

    def complete_ranges(self, ranges: Any) -> bool:
        """Complete the outstanding messages in ``[[lo, hi], ...]``; False if ``ranges`` is not
        a list of two-int lists (nothing is completed then). A sequence number acked again
        (a resend's duplicate, a late range) counts once, in ``Shared.reacked``."""
        if type(ranges) is not list:
            return False
        for item in ranges:
            if (
                type(item) is not list
                or len(item) != 2
                or type(item[0]) is not int
                or type(item[1]) is not int
            ):
                return False
        out = self.out
        hist = self.hist
        now = perf_counter()
        done = 0
        reacked = 0
        for lo, hi in ranges:
            if hi < lo:
                continue
            if hi - lo < _RANGE_WALK_MAX:
                for seq in range(lo, hi + 1):
                    t = out.pop(seq, None)
                    if t is None:
                        reacked += 1
                        continue
                    i = int((now - t) * 100000.0)
                    hist[i if i < HIST_MAX else HIST_MAX] += 1
                    done += 1
            else:  # wide: probe the few outstanding messages instead of the whole range
                hit = [seq for seq in out if lo <= seq <= hi]
                for seq in hit:
                    i = int((now - out.pop(seq)) * 100000.0)
                    hist[i if i < HIST_MAX else HIST_MAX] += 1
                done += len(hit)
                reacked += hi - lo + 1 - len(hit)
        b = self.b
        b.reacked += reacked
        if done:
            self.done += done
            if b.running:
                prefix, tmpl, ts, sendto = self.prefix, self.tmpl, b.ts, self.transport.sendto
                c = self.counter
                for _ in range(done):
                    c += 1
                    out[c] = now
                    sendto(tmpl % (prefix + b"%012x" % c, ts, c))
                self.counter = c
        return True


class PingPeer(_PingSender):
    """p2pfast, ping: a Pong completes the peer's oldest outstanding Ping."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[61:66] == b'Pong"':
            out = self.out
            for key in out:  # noqa: B007 - the first (oldest) key, used below
                break
            else:
                self.b.stray += 1
                return
            t = out.pop(key)
            now = self._completed(t)
            b = self.b
            if b.running:
                c = self.counter + 1
                self.counter = c
                key = self.prefix + b"%012x" % c
                out[key] = now
                self.transport.sendto(self.tmpl % (key, b.ts))
            return
        self._slow(data)


class RoutedSenderPeer(_RoutedSender):
    """p2pfast, routed, side A: sends; hears nothing in the normal case."""

    __slots__ = ()


class RoutedReceiverPeer(Peer):
    """p2pfast, routed, side B: the forwarded Data's original message id completes A's send."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        at = data.find(_ORIGINAL_ID)
        if at >= 0:
            a = self.partner  # set with this class (bench.run): never None here, hence the ignores
            at += _ORIGINAL_ID_LEN
            t = a.out.pop(data[at : at + 36], None)  # type: ignore[union-attr]
            if t is None:
                self.b.stray += 1
                return
            now = a._completed(t)  # type: ignore[union-attr]
            if self.b.running:
                a.send_one(now)  # type: ignore[union-attr]
            return
        self._slow(data)


def _echo_received(self: Peer, data: bytes, addr: Any) -> None:
    """Baseline: the echo is our own datagram; its id (bytes 7..43) completes it."""
    t = self.out.pop(data[7:43], None)
    if t is None:
        self._slow(data)
        return
    now = self._completed(t)
    if self.b.running:
        self.send_one(now)


class EchoDataPeer(_DataSender):
    __slots__ = ()
    datagram_received = _echo_received


class EchoPingPeer(_PingSender):
    __slots__ = ()
    datagram_received = _echo_received


class EchoRoutedPeer(_RoutedSender):
    __slots__ = ()
    datagram_received = _echo_received


class IdlePeer(Peer):
    """A peer with no part in the workload (routed B sides on the baseline, an odd one out)."""

    __slots__ = ()


# Phase: disconnect ------------------------------------------------------------------------


class ClosingPeer(Peer):
    """Counts the server's Disconnects (peers it still held when it shut down)."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[61:72] == b'Disconnect"':
            self.b.server_disconnects += 1


DATA_CLASSES: dict[tuple[bool, str], tuple[type[Peer], type[Peer]]] = {
    # (baseline, workload) -> (sender class, partner/receiver class)
    (False, "data"): (DataPeer, DataPeer),
    (False, "ping"): (PingPeer, PingPeer),
    (False, "routed"): (RoutedSenderPeer, RoutedReceiverPeer),
    (True, "data"): (EchoDataPeer, EchoDataPeer),
    (True, "ping"): (EchoPingPeer, EchoPingPeer),
    (True, "routed"): (EchoRoutedPeer, IdlePeer),
}
