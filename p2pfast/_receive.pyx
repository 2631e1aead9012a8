# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled receive path: the first stage of ``Node.receive_datagram``.

Twin of :mod:`p2pfast._receive_py` (same names, same behaviour; see its docstring for what
the stage does). Compiled so that the commonest datagrams, in-order Data and Ping from a
session, are decoded, filtered, acknowledged and finished without running Python code:
the message fields, the session's duplicate filter and the counters are C-level accesses,
and the Ack is encoded by a direct call into the codec.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact
from libc.stdint cimport uint64_t

from p2pfast._codec cimport Message, decode, encode_ack_c, encode_bare_c, encode_reply_c
from p2pfast._window cimport DuplicateFilter

from p2pfast._wire import TYPE_NAMES
from p2pfast.events import DataReceived

cdef extern from "Python.h":
    bint PyDict_CheckExact(object)
    bint PyLong_CheckExact(object)


cdef enum:
    _T_HANDSHAKE_REQUEST = 0
    _T_PING = 2
    _T_PONG = 3
    _T_DATA = 8
    _T_ACK = 11
    _NEW = 0
    _DUPLICATE = 1
    _KIND_APP = 1
    _KIND_ROUTED = 2
    _KIND_ENGINE = 3
    _DELIVER_COUNT = 0
    _DELIVER_APP = 1
    _DELIVER_ENGINE = 2

assert (
    TYPE_NAMES[_T_HANDSHAKE_REQUEST], TYPE_NAMES[_T_PING], TYPE_NAMES[_T_PONG],
    TYPE_NAMES[_T_DATA], TYPE_NAMES[_T_ACK],
) == ("HandshakeRequest", "Ping", "Pong", "Data", "Ack")

T_HANDSHAKE_REQUEST = _T_HANDSHAKE_REQUEST
T_PING = _T_PING
T_PONG = _T_PONG
T_DATA = _T_DATA
T_ACK = _T_ACK
DELIVER_COUNT = _DELIVER_COUNT
DELIVER_APP = _DELIVER_APP
DELIVER_ENGINE = _DELIVER_ENGINE

ROUTED_KEYS = frozenset(
    ("destination_node", "source_node", "route_id", "hop_count", "max_hops", "original_message")
)
cdef frozenset _ROUTED_KEYS = ROUTED_KEYS
#: Bytes a node may send to an address whose return path is not proven, per byte received.
AMPLIFICATION_FACTOR = 3
cdef long long _AMPLIFICATION = AMPLIFICATION_FACTOR
cdef object _DataReceived = DataReceived
cdef double _INF = float("inf")


cdef class Counters:
    """Plain integer counters, cheap to bump on the per-datagram path."""

    def __init__(self):
        self.rx_by_type = [0] * len(TYPE_NAMES)
        self.tx_by_type = [0] * len(TYPE_NAMES)
        self.rejected = {}

    def reject(self, reason):
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def datagrams_in(self):
        return sum(self.rx_by_type) + self.malformed + self.frames_in

    @property
    def datagrams_out(self):
        return sum(self.tx_by_type) + self.frames_out  # messages by type, and binary frames


COUNTER_FIELDS = (
    "malformed", "bytes_in", "bytes_out", "acks_sent", "acks_received", "retransmits",
    "retransmit_requests", "duplicates", "delivered", "echoed", "forwarded", "send_failures",
    "handshakes", "evictions", "fragments_sent", "fragments_retransmitted", "fragments_received",
    "messages_reassembled", "frames_in", "frames_out",
)


cdef class Session:
    """Receive-side state of a handshaken peer (``peer.Peer`` adds the rest)."""


cdef inline void _bump(list counts, int i):
    counts[i] = counts[i] + 1


@cython.final
cdef class Receiver:
    """The first stage of ``Node.receive_datagram`` (see the pure twin's docstring)."""

    def __init__(self, dict peers, Counters counters, list out, events, list ack_peers,
                 local_addr, double wall_offset):
        self.peers = peers
        self.counters = counters
        self.out = out
        self.events = events
        self.ack_peers = ack_peers
        self.local_addr = local_addr
        self.wall_offset = wall_offset
        self.deliver = _DELIVER_COUNT
        self.ack_now = 0.0
        self.app_limit = 0
        self.app_pending = 0

    cpdef object receive(self, object data, object addr, double now):
        """Process ``data`` from ``addr``: None when done, else ``(message, session, gap)`` for
        the engine (``message`` None: a binary frame, first byte 0xF5). Raises :class:`~p2pfast.errors.ProtocolError` if it does not decode."""
        cdef Counters counters = self.counters
        cdef Message msg
        cdef Session peer
        cdef DuplicateFilter dup
        cdef object found, seq, payload
        cdef int mtype, verdict
        cdef int kind = 0
        cdef bint gap = False
        cdef bint app_full
        cdef long long highest
        cdef uint64_t s
        cdef Py_ssize_t n
        cdef Py_ssize_t size = len(data)

        counters.bytes_in += size
        if size and PyBytes_CheckExact(data) and (<const unsigned char*>PyBytes_AS_STRING(data))[0] == 0xF5:
            # A binary frame (large messages between p2pfast peers): the engine's, with its
            # session (or None).
            return (None, self.peers.get(addr), False)
        msg = <Message>decode(data)
        mtype = msg.type
        _bump(counters.rx_by_type, mtype)
        found = self.peers.get(addr)
        if found is None:
            return (msg, None, False)
        peer = <Session?>found
        peer.last_seen = now
        if not peer.proven:
            peer.budget += _AMPLIFICATION * size
        if mtype == _T_DATA:
            payload = msg.payload
            kind = _KIND_APP
            if PyDict_CheckExact(payload):
                n = len(<dict>payload)
                if n >= 6 and _ROUTED_KEYS.issubset(payload):
                    kind = _KIND_ROUTED
                elif n == 1 and (<dict>payload).get("cmd") == "get_routes":
                    kind = _KIND_ENGINE
        app_full = (
            kind == _KIND_APP
            and self.deliver == _DELIVER_APP
            and self.app_limit > 0
            and self.app_pending >= self.app_limit
        )
        seq = msg.sequence_number
        if seq is not None and mtype != _T_HANDSHAKE_REQUEST:
            # The decoder guarantees an int in 0..2**32-1.
            s = seq
            dup = peer.dup
            if app_full and not dup.contains_seq(s):
                # The application's queue is full: take nothing, the sender will retry.
                counters.reject("app_busy")
                return None
            highest = -1 if dup._empty else <long long>dup._highest
            verdict = dup.check_seq(s)
            if verdict != _NEW:
                if verdict == _DUPLICATE:
                    # Acked again (the first Ack may have been lost), never processed twice.
                    counters.duplicates += 1
                    # (routed Data too: one not taken was forgotten, so this one was taken)
                    if msg.requires_ack is True:
                        self._ack(peer, msg.id, mtype, seq, now)
                else:  # behind the filter: maybe never delivered, so never acknowledged
                    counters.reject("too_old")
                return None
            gap = <long long>s > highest + 1 and highest >= 0 and peer.gap_at == _INF
        elif app_full:
            counters.reject("app_busy")
            return None
        if msg.requires_ack is True and kind != _KIND_ROUTED:
            self._ack(peer, msg.id, mtype, seq, now)
        if gap:
            return (msg, peer, True)
        if kind == _KIND_APP:
            if self.deliver != _DELIVER_ENGINE:
                counters.delivered += 1
                if self.deliver == _DELIVER_APP:
                    self.app_pending += 1
                    self.events.append(_DataReceived(peer.node_id, msg.payload, msg.id, None, 0))
                return None
        elif mtype == _T_PING and msg.payload is None:
            if peer.p2pfast:  # name the Ping answered, so overlapping pings are told apart
                self._send(
                    peer,
                    encode_reply_c(_T_PONG, <long long>(now + self.wall_offset), msg.id),
                    _T_PONG,
                )
            else:
                self._send(peer, encode_bare_c(_T_PONG, <long long>(now + self.wall_offset)), _T_PONG)
            return None
        return (msg, peer, False)

    def ack(self, Session peer, Message msg, double now):
        """Acknowledge ``msg`` from ``peer`` (the engine's call for routed Data it accepted)."""
        self._ack(peer, msg.id, msg.type, msg.sequence_number, now)

    cdef void _ack(self, Session peer, object msg_id, int mtype, object seq, double now) except *:
        cdef list pending
        if peer.p2pfast and seq is not None and mtype != _T_HANDSHAKE_REQUEST:
            # Owed to the next coalesced Ack (Node.flush_acks).
            pending = peer.pending_acks
            if not pending:
                self.ack_peers.append(peer)
            pending.append(seq)
            peer.pending_ack_id = msg_id
            self.ack_now = now
        elif self._send(
            peer, encode_ack_c(msg_id, <long long>(now + self.wall_offset), self.local_addr), _T_ACK
        ):
            self.counters.acks_sent += 1

    cdef bint _send(self, Session peer, bytes data, int mtype) except -1:
        """Queue ``data`` to ``peer`` unless its address is unproven and the budget is spent."""
        cdef Py_ssize_t size = len(data)
        if not peer.proven:
            if size > peer.budget:
                self.counters.reject("amplification_limit")
                return False
            peer.budget -= size
        self.out.append((data, peer.addr))
        _bump(self.counters.tx_by_type, mtype)
        self.counters.bytes_out += size
        return True
