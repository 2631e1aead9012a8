"""Pure-Python receive path: the first stage of ``Node.receive_datagram``.

Twin of the compiled ``_receive`` module (same names, same behaviour). ``Receiver.receive``
does what every datagram needs and finishes the two commonest ones by itself:

* decode it, count it, find the sender's session (``Session``, the base of ``peer.Peer``);
* for a sequenced message from a session: record it in the duplicate filter (a duplicate is
  acked again, counted, and not processed further), note a gap in the numbering;
* acknowledge it when asked: one Ack datagram now, or, for a p2pfast peer, a sequence number
  owed to the next coalesced Ack (``Node.flush_acks``);
* finish in-order application Data (deliver or count it) and Ping (answer Pong).

Everything else is handed back to the engine's handlers as ``(message, session, gap)``; the
session is ``None`` for an address without one. The receiver holds references to the node's
own tables and queues, so there is no copying between the two stages.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._codec_py import decode, encode_ack, encode_bare
from ._window_py import NEW, DuplicateFilter
from ._wire import TYPE_NAMES
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
_INF = float("inf")


class Counters:
    """Plain integer counters, cheap to bump on the per-datagram path."""

    __slots__ = (
        "rx_by_type",
        "tx_by_type",
        "malformed",
        "bytes_in",
        "bytes_out",
        "acks_sent",
        "acks_received",
        "retransmits",
        "retransmit_requests",
        "duplicates",
        "delivered",
        "echoed",
        "forwarded",
        "send_failures",
        "handshakes",
        "evictions",
        "rejected",
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
        self.rejected: dict[str, int] = {}

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def datagrams_in(self) -> int:
        return sum(self.rx_by_type) + self.malformed

    @property
    def datagrams_out(self) -> int:
        return sum(self.tx_by_type)  # every datagram queued is counted by type


#: The scalar counters, in declaration order (what ``stats.snapshot`` copies).
COUNTER_FIELDS = tuple(n for n in Counters.__slots__ if n not in ("rx_by_type", "tx_by_type", "rejected"))


class Session:
    """Receive-side state of a handshaken peer (``peer.Peer`` adds the rest)."""

    __slots__ = ("addr", "node_id", "p2pfast", "last_seen", "dup", "gap_at", "pending_acks", "pending_ack_id")

    addr: tuple
    node_id: str
    p2pfast: bool
    last_seen: float
    dup: DuplicateFilter
    gap_at: float
    pending_acks: list[int]
    pending_ack_id: str


class Receiver:
    """The first stage of ``Node.receive_datagram`` (see the module docstring)."""

    __slots__ = ("peers", "counters", "out", "events", "ack_peers", "local_addr", "wall_offset", "deliver", "ack_now")

    def __init__(
        self,
        peers: dict[tuple, Any],
        counters: Counters,
        out: list[tuple[bytes, tuple]],
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

    def receive(self, data: bytes, addr: tuple, now: float) -> tuple[Any, Session | None, bool] | None:
        """Process ``data`` from ``addr``: None when done, else ``(message, session, gap)`` for
        the engine. Raises :class:`~p2pfast.errors.ProtocolError` if it does not decode."""
        counters = self.counters
        counters.bytes_in += len(data)
        msg = decode(data)
        mtype = msg.type
        counters.rx_by_type[mtype] += 1
        peer = self.peers.get(addr)
        if peer is None:
            return (msg, None, False)
        peer.last_seen = now
        seq = msg.sequence_number
        gap = False
        if seq is not None and mtype != T_HANDSHAKE_REQUEST:
            dup = peer.dup
            highest = dup.highest
            if dup.check(seq) != NEW:
                # Acked again (the first Ack may have been lost), never processed twice.
                counters.duplicates += 1
                if msg.requires_ack:
                    self._ack(peer, msg, seq, addr, now)
                return None
            gap = seq > highest + 1 and highest >= 0 and peer.gap_at == _INF
        if msg.requires_ack:
            self._ack(peer, msg, seq, addr, now)
        if gap:
            return (msg, peer, True)
        if mtype == T_DATA:
            if self.deliver != DELIVER_ENGINE:
                payload = msg.payload
                if type(payload) is not dict or not (
                    (len(payload) >= 6 and ROUTED_KEYS.issubset(payload))
                    or (len(payload) == 1 and payload.get("cmd") == "get_routes")
                ):
                    counters.delivered += 1
                    if self.deliver == DELIVER_APP:
                        self.events.append(DataReceived(peer.node_id, payload, msg.id, None, 0))
                    return None
        elif mtype == T_PING:
            self._emit(encode_bare(T_PONG, int(now + self.wall_offset)), addr, T_PONG)
            return None
        return (msg, peer, False)

    def _ack(self, peer: Session, msg: Any, seq: int | None, addr: tuple, now: float) -> None:
        if peer.p2pfast and seq is not None and msg.type != T_HANDSHAKE_REQUEST:
            # Owed to the next coalesced Ack (Node.flush_acks).
            pending = peer.pending_acks
            if not pending:
                self.ack_peers.append(peer)
            pending.append(seq)
            peer.pending_ack_id = msg.id
            self.ack_now = now
        else:
            self._emit(encode_ack(msg.id, int(now + self.wall_offset), self.local_addr), addr, T_ACK)
            self.counters.acks_sent += 1

    def _emit(self, data: bytes, addr: tuple, mtype: int) -> None:
        self.out.append((data, addr))
        counters = self.counters
        counters.tx_by_type[mtype] += 1
        counters.bytes_out += len(data)
