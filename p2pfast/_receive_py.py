"""Pure-Python receive path: the first stage of ``Node.receive_datagram``.

Twin of the compiled ``_receive`` module (same names, same behaviour). ``Receiver.receive``
does what every datagram needs and finishes the two commonest ones by itself:

* decode it, count it, find the sender's session (``Session``, the base of ``peer.Peer``);
* for a sequenced message from a session: record it in the duplicate filter (a duplicate is
  acked again, counted, and not processed further), note a gap in the numbering;
* acknowledge it when asked: one Ack datagram now, or, for a p2pfast peer, a sequence number
  owed to the next coalesced Ack (``Node.flush_acks``);
* finish in-order application Data (deliver or count it) and Ping (answer Pong);
* keep the anti-amplification budget of a session whose address is not proven (every byte
  received from it allows ``AMPLIFICATION_FACTOR`` bytes to it; replies beyond are dropped);
* hold back new application Data while the application's queue is full (``app_limit``): it
  is neither recorded nor acknowledged, so the sender retransmits it later;
* never acknowledge a number that fell behind the duplicate filter (``TOO_OLD``): it may not
  have been delivered, and an Ack would make the sender forget it.

Routed Data is acknowledged by the engine once it has decided what to do with it.

Everything else is handed back to the engine's handlers as ``(message, session, gap)``; the
session is ``None`` for an address without one. The receiver holds references to the node's
own tables and queues, so there is no copying between the two stages.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._codec_py import decode, encode_ack, encode_bare, encode_raw
from ._window_py import DUPLICATE, NEW, DuplicateFilter
from ._wire import TYPE_NAMES
from .addr import Address
from .events import DataReceived

T_HANDSHAKE_REQUEST = TYPE_NAMES.index("HandshakeRequest")
T_PING = TYPE_NAMES.index("Ping")
T_PONG = TYPE_NAMES.index("Pong")
T_DATA = TYPE_NAMES.index("Data")
T_ACK = TYPE_NAMES.index("Ack")

#: ``Receiver.deliver``: what happens to application Data (set by the node).
DELIVER_COUNT = 0  # no application attached and no echo: count it
DELIVER_APP = 1  # queue a DataReceived event
DELIVER_ENGINE = 2  # hand it to the engine (echo mode)

#: A Data payload with all of these keys is routed Data, handled by the engine.
ROUTED_KEYS = frozenset(
    ("destination_node", "source_node", "route_id", "hop_count", "max_hops", "original_message")
)
#: Bytes a node may send to an address whose return path is not proven, per byte received.
AMPLIFICATION_FACTOR = 3
_INF = float("inf")
#: What a Data payload is (decided before anything is recorded).
_APP = 1
_ROUTED = 2
_ENGINE = 3


class Counters:
    """Plain integer counters, cheap to bump on the per-datagram path."""

    __slots__ = (
        "acks_received",
        "acks_sent",
        "bytes_in",
        "bytes_out",
        "delivered",
        "duplicates",
        "echoed",
        "evictions",
        "forwarded",
        "fragments_received",
        "fragments_retransmitted",
        "fragments_sent",
        "frames_in",
        "frames_out",
        "handshakes",
        "malformed",
        "messages_reassembled",
        "rejected",
        "retransmit_requests",
        "retransmits",
        "rx_by_type",
        "send_failures",
        "tx_by_type",
    )

    def __init__(self) -> None:
        self.rx_by_type = [0] * len(TYPE_NAMES)
        self.tx_by_type = [0] * len(TYPE_NAMES)
        self.malformed = 0  # datagrams that did not decode
        self.bytes_in = 0
        self.bytes_out = 0
        self.acks_sent = 0
        self.acks_received = 0
        self.retransmits = 0
        self.retransmit_requests = 0
        self.duplicates = 0
        self.delivered = 0
        self.echoed = 0
        self.forwarded = 0
        self.send_failures = 0
        self.handshakes = 0
        self.evictions = 0
        #: Large messages: fragments and binary frames (p2pfast.bulk).
        self.fragments_sent = 0
        self.fragments_retransmitted = 0
        self.fragments_received = 0
        self.messages_reassembled = 0
        self.frames_in = 0
        self.frames_out = 0
        self.rejected: dict[str, int] = {}

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def datagrams_in(self) -> int:
        return sum(self.rx_by_type) + self.malformed + self.frames_in

    @property
    def datagrams_out(self) -> int:
        return sum(self.tx_by_type) + self.frames_out  # messages by type, and binary frames


#: The scalar counters, in the compiled twin's order (what ``stats.snapshot`` copies). Listed,
#: not derived from ``__slots__``, whose order is the formatter's (sorted), not the reader's.
COUNTER_FIELDS = (
    "malformed", "bytes_in", "bytes_out", "acks_sent", "acks_received", "retransmits",
    "retransmit_requests", "duplicates", "delivered", "echoed", "forwarded", "send_failures",
    "handshakes", "evictions", "fragments_sent", "fragments_retransmitted", "fragments_received",
    "messages_reassembled", "frames_in", "frames_out",
)  # fmt: skip


class Session:
    """Receive-side state of a handshaken peer (``peer.Peer`` adds the rest)."""

    __slots__ = (
        "addr",
        "budget",
        "dup",
        "gap_at",
        "last_seen",
        "node_id",
        "p2pfast",
        "pending_ack_id",
        "pending_acks",
        "proven",
    )

    addr: Address
    node_id: str
    p2pfast: bool
    last_seen: float
    dup: DuplicateFilter
    gap_at: float
    pending_acks: list[int]
    pending_ack_id: str
    #: The peer's address is proven (it echoed our token, or we contacted it first).
    proven: bool
    #: Bytes we may still send to an unproven address (3x what it sent, less what we sent).
    budget: int


class Receiver:
    """The first stage of ``Node.receive_datagram`` (see the module docstring)."""

    __slots__ = (
        "ack_now",
        "ack_peers",
        "app_limit",
        "app_pending",
        "counters",
        "deliver",
        "events",
        "local_addr",
        "out",
        "peers",
        "wall_offset",
    )

    def __init__(
        self,
        peers: dict[Address, Any],
        counters: Counters,
        out: list[tuple[bytes, Address]],
        events: deque[Any],
        ack_peers: list[Any],
        local_addr: str,
        wall_offset: float,
    ) -> None:
        self.peers = peers
        self.counters = counters
        self.out = out
        self.events = events
        self.ack_peers = ack_peers
        self.local_addr = local_addr
        self.wall_offset = wall_offset
        self.deliver = DELIVER_COUNT
        #: ``now`` of the latest datagram that left an Ack owed (its timestamp).
        self.ack_now = 0.0
        #: Messages the application may hold undelivered to its consumer (0: no limit), and
        #: how many it holds (the engine lowers it as the consumer takes them).
        self.app_limit = 0
        self.app_pending = 0

    def receive(
        self, data: bytes, addr: Address, now: float
    ) -> tuple[Any, Session | None, bool] | None:
        """Process ``data`` from ``addr``: None when done, else ``(message, session, gap)``
        for the engine (``message`` None: a binary frame, first byte 0xF5). Raises
        :class:`~p2pfast.errors.ProtocolError` if it does not decode."""
        counters = self.counters
        counters.bytes_in += len(data)
        if data[:1] == b"\xf5":
            # A binary frame (large messages between p2pfast peers): the engine's, with its
            # session (or None).
            return (None, self.peers.get(addr), False)
        msg = decode(data)
        mtype = msg.type
        counters.rx_by_type[mtype] += 1
        peer = self.peers.get(addr)
        if peer is None:
            return (msg, None, False)
        peer.last_seen = now
        if not peer.proven:
            peer.budget += AMPLIFICATION_FACTOR * len(data)
        kind = 0
        if mtype == T_DATA:
            payload = msg.payload
            kind = _APP
            if type(payload) is dict:
                if len(payload) >= 6 and ROUTED_KEYS.issubset(payload):
                    kind = _ROUTED
                elif len(payload) == 1 and payload.get("cmd") == "get_routes":
                    kind = _ENGINE
        app_full = (
            kind == _APP
            and self.deliver == DELIVER_APP
            and self.app_limit > 0
            and self.app_pending >= self.app_limit
        )
        seq = msg.sequence_number
        gap = False
        if seq is not None and mtype != T_HANDSHAKE_REQUEST:
            dup = peer.dup
            if app_full and not dup.contains(seq):
                # The application's queue is full: take nothing, the sender will retry.
                counters.reject("app_busy")
                return None
            highest = dup.highest
            verdict = dup.check(seq)
            if verdict != NEW:
                if verdict == DUPLICATE:
                    # Acked again (the first Ack may have been lost), never processed twice.
                    counters.duplicates += 1
                    # (routed Data too: one not taken was forgotten, so this one was taken)
                    if msg.requires_ack:
                        self._ack(peer, msg, seq, addr, now)
                else:  # behind the filter: maybe never delivered, so never acknowledged
                    counters.reject("too_old")
                return None
            gap = seq > highest + 1 and highest >= 0 and peer.gap_at == _INF
        elif app_full:
            counters.reject("app_busy")
            return None
        if msg.requires_ack and kind != _ROUTED:
            self._ack(peer, msg, seq, addr, now)
        if gap:
            return (msg, peer, True)
        if kind == _APP:
            if self.deliver != DELIVER_ENGINE:
                counters.delivered += 1
                if self.deliver == DELIVER_APP:
                    self.app_pending += 1
                    self.events.append(DataReceived(peer.node_id, msg.payload, msg.id, None, 0))
                return None
        elif mtype == T_PING and msg.payload is None:
            ts = int(now + self.wall_offset)
            if peer.p2pfast:  # name the Ping answered, so overlapping pings are told apart
                pong = encode_raw(T_PONG, b"null", ts, None, None, None, False, msg.id)
            else:
                pong = encode_bare(T_PONG, ts)
            self._send(peer, pong, T_PONG)
            return None
        return (msg, peer, False)

    def ack(self, peer: Session, msg: Any, now: float) -> None:
        """Acknowledge ``msg`` from ``peer`` (the engine's call for routed Data it accepted)."""
        self._ack(peer, msg, msg.sequence_number, peer.addr, now)

    def _ack(self, peer: Session, msg: Any, seq: int | None, addr: Address, now: float) -> None:
        if peer.p2pfast and seq is not None and msg.type != T_HANDSHAKE_REQUEST:
            # Owed to the next coalesced Ack (Node.flush_acks).
            pending = peer.pending_acks
            if not pending:
                self.ack_peers.append(peer)
            pending.append(seq)
            peer.pending_ack_id = msg.id
            self.ack_now = now
        else:
            if self._send(
                peer, encode_ack(msg.id, int(now + self.wall_offset), self.local_addr), T_ACK
            ):
                self.counters.acks_sent += 1

    def _send(self, peer: Session, data: bytes, mtype: int) -> bool:
        """Queue ``data`` to ``peer`` unless its address is unproven and the budget is spent."""
        if not peer.proven:
            if len(data) > peer.budget:
                self.counters.reject("amplification_limit")
                return False
            peer.budget -= len(data)
        self.out.append((data, peer.addr))
        counters = self.counters
        counters.tx_by_type[mtype] += 1
        counters.bytes_out += len(data)
        return True
