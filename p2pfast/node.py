"""The sans-I/O protocol engine: node state, peer sessions, routing and reliability.

``Node`` never touches a socket, a clock or an event loop. It is fed datagrams
(:meth:`Node.receive_datagram`), timer expiries (:meth:`Node.handle_timer`) and commands
(:meth:`Node.connect`, :meth:`Node.send_data`, :meth:`Node.close`), always with ``now``
(seconds, monotonic). It answers with datagrams to send (:meth:`Node.datagrams_to_send`),
application events (:meth:`Node.next_event`) and the time it next wants to be woken
(:meth:`Node.get_timer`). The uvloop endpoint in :mod:`p2pfast.endpoint` is a thin shell
around it; tests and the benchmark drive it directly.

Security model: nothing from an address that has not completed a handshake creates state;
everything sent to an address whose return path is not proven stays within 3× the bytes
received from it (cumulatively, as in QUIC); a p2pfast peer proves its address by echoing a
token from our HandshakeResponse; every table is bounded, no datagram can raise out of the
engine, and the work one datagram causes is bounded by its size and by what is in flight
(docs/reliability.md).

This module is longer than the ~1,000 lines the project aims for, on purpose: the handlers of
the seventeen message types and the timers all read and write the same session, window and
routing tables, and splitting them into mixins would spread one state machine over many
files. What does not touch that state lives in its own module: sessions (``peer``), the
compiled first stage of every datagram (``_receive``), the windows (``_window``), routing
tables (``routing``), peer lists (``peerlist``), Ack ranges and the resend allowance
(``reliability``), handshake retries, refusals and tokens (``handshake``), and end-to-end
confirmation (``delivery``).
"""

from __future__ import annotations

import logging
import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import orjson

from ._speedups import codec, fragment, receive
from .addr import Address, format_addr, parse_addr
from .bulk import ACK_EVERY, BulkConnection, BulkMemory
from .config import Config
from .delivery import DeliveryTracker
from .errors import ProtocolError, SendError, WindowFull
from .events import (
    ConnectFailed,
    DataReceived,
    Event,
    PeerConnected,
    PeerDisconnected,
    PeerListReceived,
    PongReceived,
    SendCompleted,
    SendFailed,
    WindowOpened,
)
from .handshake import (
    MAX_TOKEN_LEN,
    REFUSAL_REASONS,
    TOKEN_HEX,
    PendingConnect,
    guess_refusal,
    same_token,
)
from .logutil import LogLimiter
from .peer import DEFAULT_RX_WINDOW, MAX_OUTSTANDING, RX_WINDOW_KEY, Peer, validate_node_info
from .peerlist import (
    ENVELOPE_OVERHEAD,
    discovery_datagrams,
    discovery_slice,
    node_list_datagrams,
)
from .protocol import MAX_DATAGRAM_SIZE, MAX_MESSAGE_SIZE, MessageType
from .reliability import (
    MAX_ACK_RANGES,
    MAX_RETRANSMIT_REQUEST,
    ResendAllowance,
    ack_ranges,
    parse_ack_ranges,
)
from .routing import RouteIdCache, RoutingTable
from .stats import Counters, PeerStats, ServerStats, format_stats_line, snapshot

log = logging.getLogger("p2pfast")

decode = codec.decode
encode = codec.encode
encode_raw = codec.encode_raw
encode_ack = codec.encode_ack
encode_bare = codec.encode_bare
dump_payload = codec.dump_payload
new_id = codec.new_id
normalize_uuid = codec.normalize_uuid
DELIVER_COUNT = receive.DELIVER_COUNT
DELIVER_APP = receive.DELIVER_APP
DELIVER_ENGINE = receive.DELIVER_ENGINE

T_HANDSHAKE_REQUEST = int(MessageType.HandshakeRequest)
T_HANDSHAKE_RESPONSE = int(MessageType.HandshakeResponse)
T_PING = int(MessageType.Ping)
T_PONG = int(MessageType.Pong)
T_DISCOVERY_REQUEST = int(MessageType.DiscoveryRequest)
T_DISCOVERY_RESPONSE = int(MessageType.DiscoveryResponse)
T_LIST_REQUEST = int(MessageType.ListNodesRequest)
T_LIST_RESPONSE = int(MessageType.ListNodesResponse)
T_DATA = int(MessageType.Data)
T_ERROR = int(MessageType.Error)
T_DISCONNECT = int(MessageType.Disconnect)
T_ACK = int(MessageType.Ack)
T_RETRANSMIT = int(MessageType.Retransmit)
T_P2P_CONNECT = int(MessageType.P2PConnect)
T_RELAY_REQUEST = int(MessageType.RelayRequest)
T_RELAY_RESPONSE = int(MessageType.RelayResponse)
T_RELAY_DATA = int(MessageType.RelayData)

#: Version string announced in NodeInfo (the Rust server's, for its clients' sake).
PROTOCOL_VERSION = "0.3.0"
#: Capabilities we announce; ``p2pfast`` marks a peer that speaks this implementation's extensions.
CAPABILITIES = ("handshake", "discovery", "data_transfer", "reliable", "p2pfast")
#: Bytes sent to an address whose return path is not proven stay within this factor of the
#: bytes received from it (per datagram for addresses without a session, cumulatively for
#: sessions).
AMPLIFICATION_FACTOR = receive.AMPLIFICATION_FACTOR
#: Peers listed in one broadcast (about what fits a SEED_LIST_DATAGRAM_SIZE DiscoveryResponse).
BROADCAST_LIMIT = 64
#: A persisting sequence gap is asked for at most this many times, at most this far apart.
GAP_REQUESTS = 32
GAP_RETRY_MAX = 2.0
#: Pending outgoing handshakes held at once.
MAX_PENDING_CONNECTS = 1024
#: New addresses one received peer list may make this node dial.
DIALS_PER_LIST = 8
#: A peer's allowance for the dials its lists cause is capped here (bytes).
DIAL_ALLOWANCE_MAX = 64 * 1024
#: A session's first sequence number is drawn below this (leaving 2**31 numbers before u32 ends).
FIRST_SEQ_LIMIT = 2**31 - 2
#: Largest peer-list datagram toward a peer without the p2pfast capability: what p2pfast has
#: always sent them (it fits one UDP datagram; they take no fragments).
SEED_LIST_DATAGRAM_SIZE = 8192
#: Addresses remembered for the reconnect cooldown after a disconnect.
MAX_COOLDOWNS = 1024
_INF = float("inf")
#: Requests that an unauthenticated address is told to handshake first.
_REQUEST_TYPES = frozenset(
    (
        T_DISCOVERY_REQUEST,
        T_LIST_REQUEST,
        T_DATA,
        T_P2P_CONNECT,
        T_RELAY_REQUEST,
        T_RETRANSMIT,
    )
)
_ROUTED_KEYS = receive.ROUTED_KEYS
#: First byte of every binary frame (fragments and their control frames): see p2pfast.bulk.
_FRAME_PREFIX = bytes((fragment.FRAME_MAGIC,))


def _is_echo(payload: Any) -> bool:
    """Whether a Data payload is an echo (``{"echo": ..., "timestamp": ...}``): it is never
    echoed again, so two echoing nodes cannot bounce a message between them."""
    return (
        type(payload) is dict and len(payload) == 2 and "echo" in payload and "timestamp" in payload
    )


#: ``Receiver.receive`` over this node's sessions: ``(message, peer, gap)`` or None.
_ReceivePeer = Callable[[bytes, Address, float], tuple[Any, Peer | None, bool] | None]


class Node:
    """A p2pfast node's protocol state machine (server and client at once)."""

    def __init__(
        self,
        config: Config,
        *,
        now: float,
        local_addr: Address | None = None,
        wall_offset: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        #: Where ids, tokens and random choices come from: a seeded ``rng`` makes a node's
        #: behaviour reproducible (the simulator); by default, the OS's randomness.
        self._new_id: Callable[[], str]
        self._new_token: Callable[[], str]
        self._first_seq: Callable[[], int]
        if rng is None:
            self._new_id = new_id
            self._new_token = lambda: secrets.token_hex(TOKEN_HEX // 2)
            self._first_seq = lambda: 1 + secrets.randbelow(FIRST_SEQ_LIMIT)
            self._pick: Callable[[int], int] = random.randrange
        else:
            self._new_id = lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))
            self._new_token = lambda: f"{rng.getrandbits(TOKEN_HEX * 4):0{TOKEN_HEX}x}"
            self._first_seq = lambda: 1 + rng.randrange(FIRST_SEQ_LIMIT)
            self._pick = rng.randrange
        self.node_id: str = config.node_id or self._new_id()
        self.local_addr: Address = local_addr or parse_addr(config.listen_address)
        self.local_addr_str = format_addr(self.local_addr)
        self.started_at = now
        #: Wire timestamps are ``int(now + wall_offset)`` (Unix seconds).
        self.wall_offset = time.time() - now if wall_offset is None else wall_offset
        self.node_info = {
            "capabilities": list(CAPABILITIES),
            "id": self.node_id,
            "listen_addr": self.local_addr_str,
            "metadata": (
                {}
                if config.duplicate_window == DEFAULT_RX_WINDOW
                else {RX_WINDOW_KEY: str(config.duplicate_window)}
            ),
            "name": config.node_name or f"p2p_node_{self.local_addr[1]}",
            "network_id": config.network_id,
            "version": PROTOCOL_VERSION,
        }
        self.closed = False
        #: What one discovery dial may send: two handshake requests.
        self._dial_cost = 2 * len(
            encode(
                T_HANDSHAKE_REQUEST,
                self.node_info,
                int(now + self.wall_offset),
                sender_addr=self.local_addr_str,
                sequence_number=FIRST_SEQ_LIMIT,
                requires_ack=True,
            )
        )

        self.peers_by_addr: dict[Address, Peer] = {}
        self.peers_by_id: dict[str, Peer] = {}
        self.routes = RoutingTable(config.max_routes, config.max_routes_per_peer)
        self.route_ids = RouteIdCache(config.route_cache_size, config.route_cache_ttl)
        #: Routed reliable sends waiting for the destination's confirmation.
        self.deliveries = DeliveryTracker(config.delivery_timeout, config.send_window)
        #: Addresses discovery leaves alone until the time given (after a disconnect).
        self._cooldown: dict[Address, float] = {}
        self.counters = Counters()
        #: Loop iterations spent on hostile-controllable work (lists, ranges, routes) outside
        #: the send windows' own count: see :attr:`work`.
        self._work = 0
        #: Size of the datagram being handled (handlers budget by what a peer sent).
        self._datagram_size = 0

        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._pending_connects: dict[Address, PendingConnect] = {}
        self._announce: list[Peer] = []  # joined since the last broadcast
        self._removed_since_broadcast = False
        # Peers with something in flight / a sequence gap: dicts used as ordered sets, so the
        # timers visit peers in a reproducible order (a set of Peers would follow addresses).
        self._inflight: dict[Peer, None] = {}
        #: Peers owed a coalesced Ack (see :meth:`flush_acks`).
        self.ack_peers: list[Peer] = []
        self._gapped: dict[Peer, None] = {}
        #: Large messages (fragments): the node's reassembly budget, the peers with a transfer
        #: that wants its timer, those owed an ACK frame, completed messages waiting for room in
        #: the application's queue, and delivered ones the application has not consumed yet.
        self.bulk_memory = BulkMemory(config.reassembly_node_limit)
        self._bulk_active: dict[Peer, None] = {}
        self.bulk_acks: dict[Peer, None] = {}
        self._bulk_held: deque[tuple[Peer, bytes]] = deque()
        #: Path-MTU probes to send with IP fragmentation forbidden (an I/O shell that cannot
        #: sends them as ordinary datagrams; :meth:`datagrams_to_send` includes them).
        self.probes: list[tuple[bytes, Address]] = []
        self._bulk_unconsumed: dict[int, tuple[BulkConnection, int]] = {}
        #: Messages larger than this go to a p2pfast peer as fragments until its path is probed.
        self._bulk_threshold = config.max_datagram_size
        #: The first stage of every datagram (compiled): see :mod:`p2pfast._receive_py`.
        self._receiver = receive.Receiver(
            self.peers_by_addr,
            self.counters,
            self._out,
            self._events,
            self.ack_peers,
            self.local_addr_str,
            self.wall_offset,
        )
        # The sessions the receiver hands back are the ones it was given: Peers.
        self._receive = cast(_ReceivePeer, self._receiver.receive)
        self.app_attached = False

        self._heartbeat_at = now + config.heartbeat_interval
        self._housekeeping_at = now + min(30.0, config.route_cache_ttl)
        self._stats_at = now + config.stats_interval if config.stats_interval else _INF
        self._broadcast_at = _INF
        self._broadcast_latest = _INF
        self._window_at = _INF
        self._gap_at = _INF
        self._connect_at = _INF
        self._discovery_at = now if config.enable_discovery else _INF
        self._delivery_at = _INF
        self._bulk_at = _INF
        #: The latest ``now`` seen by the large-message paths (for work the application's
        #: consumer triggers, which comes without a clock).
        self._bulk_now = now
        self._next_timer = _INF
        self._retimer()
        self._log_hostile = LogLimiter()

        self._handlers: list[Callable[[Peer, Any, float], None]] = [
            self._on_handshake_request,
            self._on_handshake_response,
            self._on_ping,
            self._on_pong,
            self._on_discovery_request,
            self._on_discovery_response,
            self._on_list_request,
            self._on_list_response,
            self._on_data,
            self._on_error,
            self._on_disconnect,
            self._on_ack,
            self._on_retransmit,
            self._on_p2p_connect,
            self._on_relay_request,
            self._on_ignored,  # RelayResponse
            self._on_ignored,  # RelayData
        ]

    @property
    def app_attached(self) -> bool:
        """Deliver Data to the application as events (else echo it, if ``config.echo``)."""
        return self._receiver.deliver == DELIVER_APP

    @app_attached.setter
    def app_attached(self, value: bool) -> None:
        self._receiver.deliver = (
            DELIVER_APP if value else DELIVER_ENGINE if self.config.echo else DELIVER_COUNT
        )

    @property
    def app_queue_limit(self) -> int:
        """How many delivered messages the application may hold before the node stops taking
        new Data for it (0: no limit). Beyond it, reliable Data is neither recorded nor
        acknowledged (its sender retransmits later: backpressure) and unreliable Data is
        dropped and counted (``rejected["app_busy"]``)."""
        return int(self._receiver.app_limit)

    @app_queue_limit.setter
    def app_queue_limit(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("app_queue_limit must be >= 0")
        self._receiver.app_limit = limit

    @property
    def app_pending(self) -> int:
        """DataReceived events delivered and not yet reported consumed."""
        return int(self._receiver.app_pending)

    def app_consumed(self, count: int = 1, message: Event | None = None) -> None:
        """The application's consumer took ``count`` delivered messages: room for as many.
        Passing the DataReceived taken (``message``) frees the reassembly memory of a large
        message, so its sender is granted more."""
        receiver = self._receiver
        receiver.app_pending = max(0, receiver.app_pending - count)
        if message is not None and self._bulk_unconsumed:
            entry = self._bulk_unconsumed.pop(id(message), None)
            if entry is not None:
                conn, total = entry
                self._release(conn, total)
        if self._bulk_held:
            self._deliver_held(self._bulk_now)

    @property
    def work(self) -> int:
        """Loop iterations spent so far on work a peer's datagrams can ask for (entries of
        send windows examined, ranges, list entries, routes). Tests bound it per datagram."""
        return self._work + sum(p.window.work for p in self.peers_by_id.values())

    # ------------------------------------------------------------------------------------
    # Output side of the sans-I/O interface

    def datagrams_to_send(self, *, flush_acks: bool = True) -> list[tuple[bytes, Address]]:
        """Take the datagrams queued since the last call, as ``(data, addr)`` pairs.

        Acks owed to p2pfast peers are coalesced: they are encoded here when ``flush_acks``
        is true, or by :meth:`flush_acks`, which an I/O shell calls once per batch of datagrams.
        """
        if flush_acks and (self.ack_peers or self.bulk_acks):
            self.flush_acks()
        out = self._out[:]  # the list itself is shared with the receive path: keep it
        self._out.clear()
        if self.probes:
            out.extend(self.probes)
            self.probes.clear()
        return out

    def next_event(self) -> Event | None:
        """Pop the next application event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float:
        """The time at which :meth:`handle_timer` should next be called (``inf``: never)."""
        return self._next_timer

    def _retimer(self) -> None:
        self._next_timer = min(
            self._heartbeat_at,
            self._housekeeping_at,
            self._stats_at,
            self._broadcast_at,
            self._window_at,
            self._gap_at,
            self._connect_at,
            self._discovery_at,
            self._delivery_at,
            self._bulk_at,
        )

    # ------------------------------------------------------------------------------------
    # Input: datagrams

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one datagram from ``addr``. Never raises for bad input: it is counted,
        logged (rate-limited) and answered with at most a small Error.

        The receive path (:class:`~p2pfast._receive_py.Receiver`) decodes, filters duplicates,
        acknowledges, and finishes in-order Data and Ping itself; the rest comes back here."""
        try:
            handoff = self._receive(data, addr, now)
        except ProtocolError as exc:
            counters = self.counters
            counters.malformed += 1
            counters.reject(exc.reason)
            self._log_hostile(exc.reason, now, "dropped datagram from %s: %s", addr, exc)
            peer = self.peers_by_addr.get(addr)
            if exc.reason == "too_large" and peer is not None:
                self._error_to(peer, "message exceeds 1 MiB", "too_large", now)
            return
        if handoff is None:
            return
        msg, peer, gap = handoff
        if msg is None:
            try:
                self._on_frame(data, addr, peer, now)
            except Exception as exc:  # a defect of ours must not take the node down with it
                self._internal_error(exc, f"binary frame from {format_addr(addr)}", now)
            return
        self._datagram_size = len(data)  # for the handlers that budget by what they were sent
        try:
            if peer is None:
                self._unauthenticated(msg, addr, len(data), now)
                return
            if gap:  # a sequence number was skipped: ask for it if it does not turn up soon
                peer.gap_at = due = now + self.config.gap_delay
                self._gapped[peer] = None
                if due < self._gap_at:
                    self._gap_at = due
                    if due < self._next_timer:
                        self._next_timer = due
            self._handlers[msg.type](peer, msg, now)
        except Exception as exc:  # a defect of ours must not take the node down with it
            self._internal_error(exc, f"{msg.type_name} from {format_addr(addr)}", now)

    def _internal_error(self, exc: BaseException, what: str, now: float) -> None:
        """Count and log (rate-limited, with the traceback) an exception that escaped a handler."""
        self.counters.reject("internal_error")
        self._log_hostile(
            "internal_error", now, "internal error while handling %s: %r", what, exc, exc_info=exc
        )

    def flush_acks(self) -> None:
        """Encode one Ack per p2pfast peer for everything it is owed, as sequence-number
        ranges in the payload (``{"seq": [[lo, hi], ...]}``, each shorter than
        ``MAX_ACK_RANGE_LEN``); ``ack_for`` is the id of the last of those messages received.

        Like a QUIC ACK frame, the Ack also repeats the newest runs its duplicate filter has
        seen (up to ``MAX_ACK_RANGES`` ranges in all), so a lost Ack is made good by the next
        one instead of by a retransmission timeout."""
        if self.bulk_acks:
            self._flush_bulk_acks(self._bulk_now)
        if not self.ack_peers:
            return
        ts = int(self._receiver.ack_now + self.wall_offset)
        counters = self.counters
        for peer in self.ack_peers:
            owed = peer.pending_acks
            peer.pending_acks = []
            ranges = ack_ranges(owed, peer.dup.ranges(MAX_ACK_RANGES), peer.ack_floor)
            for start in range(0, len(ranges), MAX_ACK_RANGES):
                data = encode_raw(
                    T_ACK,
                    dump_payload({"seq": ranges[start : start + MAX_ACK_RANGES]}),
                    ts,
                    None,
                    self.local_addr_str,
                    None,
                    False,
                    peer.pending_ack_id,
                )
                self._queue(data, peer, T_ACK)
            counters.acks_sent += len(set(owed))
        self.ack_peers.clear()  # shared with the receive path

    def _unauthenticated(self, msg: Any, addr: Address, size: int, now: float) -> None:
        """Serve an address with no session: HandshakeRequest, Ping, Disconnect, the reply to a
        handshake we started, and a small Error for the rest; all within 3× ``size`` bytes."""
        mtype = msg.type
        budget = AMPLIFICATION_FACTOR * size
        if mtype == T_HANDSHAKE_REQUEST:
            self._on_handshake_request(None, msg, now, addr=addr, budget=budget)
            return
        pending = self._pending_connects.get(addr)
        if pending is not None and mtype in (
            T_HANDSHAKE_RESPONSE,
            T_ERROR,
            T_ACK,
            T_DISCOVERY_RESPONSE,
        ):
            if mtype == T_HANDSHAKE_RESPONSE:
                self._on_handshake_response(None, msg, now, addr=addr)
            elif mtype == T_ERROR:
                self._on_connect_refused(addr, msg.payload)
            elif mtype == T_DISCOVERY_RESPONSE and pending.early_list is None:
                # the first slice overtook the HandshakeResponse: read it once that arrives
                pending.early_list = msg
            return
        replies: list[tuple[bytes, int]] = []
        ts = int(now + self.wall_offset)
        if msg.requires_ack and mtype in (T_PING, T_DISCONNECT):
            replies.append((encode_ack(msg.id, ts, self.local_addr_str), T_ACK))
        if mtype == T_PING:
            replies.append((encode_bare(T_PONG, ts), T_PONG))
        elif mtype not in _REQUEST_TYPES:
            # Never answer a response, an Ack or an Error: two nodes must not ping-pong errors.
            self.counters.reject("handshake_required")
        else:
            self.counters.reject("handshake_required")
            refusal = {"code": "handshake_required", "error": "handshake required"}
            replies.append((encode(T_ERROR, refusal, ts), T_ERROR))
            self._log_hostile(
                "handshake_required",
                now,
                "%s from %s before a handshake: refused",
                msg.type_name,
                addr,
            )
        self._send_within_budget(replies, addr, budget)

    def _send_within_budget(
        self, replies: list[tuple[bytes, int]], addr: Address, budget: int
    ) -> None:
        """Queue ``replies`` in order while their total stays within ``budget`` bytes."""
        for data, mtype in replies:
            budget -= len(data)
            if budget < 0:
                self.counters.reject("amplification_limit")
                break
            self._emit(data, addr, mtype)

    # ------------------------------------------------------------------------------------
    # Handlers (peer is the sender's session; None only where noted)

    def _on_ignored(self, peer: Peer, msg: Any, now: float) -> None:
        pass

    def _on_handshake_request(
        self,
        peer: Peer | None,
        msg: Any,
        now: float,
        *,
        addr: Address | None = None,
        budget: int | None = None,
    ) -> None:
        addr = peer.addr if peer is not None else addr
        assert addr is not None
        ts = int(now + self.wall_offset)
        replies: list[tuple[bytes, int]] = []
        if peer is None and msg.requires_ack:
            replies.append((encode_ack(msg.id, ts, self.local_addr_str), T_ACK))
            self.counters.acks_sent += 1
        base = msg.sequence_number if type(msg.sequence_number) is int else 0
        error = self._admit(peer, msg.payload, addr, now, base, msg.id)
        if isinstance(error, tuple):
            text, code = error
            self.counters.reject(code)
            self._log_hostile(code, now, "handshake from %s refused: %s", addr, text)
            replies.append((encode(T_ERROR, {"code": code, "error": text}, ts), T_ERROR))
            if peer is not None:
                for data, mtype in replies:
                    self._queue(data, peer, mtype)
            else:
                assert budget is not None
                self._send_within_budget(replies, addr, budget)
            return
        new_peer: Peer = error
        response: dict[str, Any] = {
            "error_message": None,
            "node_info": self.node_info,
            "public_addr": new_peer.addr_str,
            "success": True,
        }
        if not new_peer.proven:
            # Proof of the return path: the peer echoes this in an Ack (docs/protocol.md).
            # Seed clients ignore the extra key and stay within the budget.
            if not new_peer.token:
                new_peer.token = self._new_token()
            response["token"] = new_peer.token
        our_base = new_peer.first_seq - 1 if new_peer.p2pfast else None
        replies.append(
            (
                encode(T_HANDSHAKE_RESPONSE, response, ts, sequence_number=our_base),
                T_HANDSHAKE_RESPONSE,
            )
        )
        if peer is None:  # a new session starts with the budget this request earned
            assert budget is not None
            new_peer.budget = budget
        # A first slice of the peer list, sized so the whole reply stays within the budget
        # (a spoofed handshake cannot amplify); the rest comes by broadcast or on request.
        used = sum(len(data) for data, _ in replies)
        room = self._room(new_peer) if new_peer.proven else new_peer.budget
        others = [p for p in self._sample_peers(64) if p is not new_peer]
        replies.append((discovery_slice(others, ts, room - used), T_DISCOVERY_RESPONSE))
        for data, mtype in replies:
            if not self._queue(data, new_peer, mtype):
                break

    def _admit(
        self, peer: Peer | None, payload: Any, addr: Address, now: float, base: int, hello_id: str
    ) -> Peer | tuple[str, str]:
        """Validate a HandshakeRequest and create or refresh the session; return the Peer, or
        ``(error text, code)``. ``base`` is the number just before the requester's first
        message (a p2pfast node announces it in the request's ``sequence_number``).

        The request that opened the session, repeated (its answer was lost), is answered
        again and the session kept. A new request from the same node means it dropped its
        side or restarted and numbers afresh: the session starts over on both sides (what we
        had in flight fails with ``peer_gone``), so no message of the new session can be
        taken for a duplicate of the old one."""
        try:
            info = validate_node_info(payload)
        except ValueError as exc:
            return str(exc), "invalid_node_info"
        network_id = info["network_id"]
        if network_id != self.config.network_id:
            # The Rust server's exact text, so its clients show the same message.
            return (
                f"网络ID不匹配: 期望 {self.config.network_id}，收到 {network_id}",
                "network_mismatch",
            )
        node_id = info["id"]
        if node_id == self.node_id:
            return "cannot handshake with itself", "node_id_taken"
        holder = self.peers_by_id.get(node_id)
        if holder is not None and holder.addr != addr:
            return f"节点ID {node_id} 已存在", "node_id_taken"
        if peer is not None:
            if peer.node_id == node_id and peer.hello_id == hello_id:  # repeated: answer again
                peer.node_info = info
                return peer
            self._remove_peer(
                peer, "restarted" if peer.node_id == node_id else "replaced", now, notify=False
            )
            new_peer = self._add_peer(addr, info, now, base)
            new_peer.hello_id = hello_id
            # Same address: what it proved, and the bytes it is owed, carry over.
            new_peer.proven, new_peer.budget = peer.proven, peer.budget
            return new_peer
        if len(self.peers_by_id) >= self.config.max_connections:
            return (
                f"server full: {self.config.max_connections} peers connected",
                "server_full",
            )
        new_peer = self._add_peer(addr, info, now, base)
        new_peer.hello_id = hello_id
        return new_peer

    def _add_peer(self, addr: Address, info: dict[str, Any], now: float, base: int) -> Peer:
        """A new session; ``base`` is the number before the peer's first message."""
        pending = self._pending_connects.pop(addr, None)  # simultaneous open: theirs came first
        # Our numbering: the one our own request announced, if we sent one, else a new one.
        first = pending.first_seq if pending is not None else self._first_seq()
        peer = Peer(addr, info, now, self.config, first_seq=first, peer_base=base)
        peer.resend_allowance = ResendAllowance(now)
        self.peers_by_addr[addr] = peer
        self.peers_by_id[peer.node_id] = peer
        self._work += self.routes.remove_via(peer.node_id)  # a direct peer needs no learned route
        self.counters.handshakes += 1
        self._events.append(PeerConnected(peer.node_id, addr, info))
        self._announce.append(peer)
        if len(self._announce) > 2 * BROADCAST_LIMIT:
            del self._announce[:-BROADCAST_LIMIT]
        self._schedule_broadcast(now)
        log.info("peer %s (%s) connected from %s", peer.node_id, info["name"], peer.addr_str)
        return peer

    def _remove_peer(
        self,
        peer: Peer,
        reason: str,
        now: float,
        *,
        notify: bool = True,
        failure: str = "peer_gone",
    ) -> None:
        conn = peer.bulk
        if conn is not None:  # first: messages it holds for the application are delivered
            self._close_bulk(peer, conn, failure)
        if self.peers_by_addr.get(peer.addr) is peer:
            del self.peers_by_addr[peer.addr]
        if self.peers_by_id.get(peer.node_id) is peer:
            del self.peers_by_id[peer.node_id]
        self._work += self.routes.remove_via(peer.node_id) + peer.window.work
        peer.window.work = 0
        self._inflight.pop(peer, None)
        self._gapped.pop(peer, None)
        for _seq, msg_id in peer.window.clear():
            self._hop_failed(msg_id, failure)

        self._events.append(PeerDisconnected(peer.node_id, peer.addr, reason))
        if notify:
            self._removed_since_broadcast = True
            self._schedule_broadcast(now)
        log.info("peer %s at %s removed: %s", peer.node_id, peer.addr_str, reason)

    def _on_handshake_response(
        self, peer: Peer | None, msg: Any, now: float, *, addr: Address | None = None
    ) -> None:
        """The answer to a handshake we started (a HandshakeResponse from anyone else is
        ignored: it cannot authenticate the sender, unlike in the Rust server)."""
        if peer is not None:
            return  # we already hold a session with this address
        pending = self._pending_connects.pop(addr, None) if addr is not None else None
        if pending is None or addr is None:  # (no addr: no pending connect either)
            self.counters.reject("unsolicited_response")
            return
        payload = msg.payload
        if type(payload) is not dict or payload.get("success") is not True:
            text = payload.get("error_message") if type(payload) is dict else None
            self._connect_failed(addr, "refused", "the peer refused the handshake", text)
            return
        try:
            info = validate_node_info(payload.get("node_info"))
        except ValueError as exc:
            self._connect_failed(addr, "invalid_node_info", f"invalid HandshakeResponse: {exc}")
            return
        if info["network_id"] != self.config.network_id:
            self._connect_failed(
                addr,
                "network_mismatch",
                f"the peer is on network {info['network_id']!r}, "
                f"this node on {self.config.network_id!r}",
            )
            return
        holder = self.peers_by_id.get(info["id"])
        if holder is not None or info["id"] == self.node_id:
            self._connect_failed(
                addr, "node_id_taken", f"node id {info['id']} is already connected"
            )
            return
        if len(self.peers_by_id) >= self.config.max_connections:
            self._connect_failed(
                addr, "server_full", f"max_connections ({self.config.max_connections}) reached"
            )
            return
        base = msg.sequence_number if type(msg.sequence_number) is int else 0
        self._pending_connects[addr] = pending  # _add_peer takes our numbering from it
        peer = self._add_peer(addr, info, now, base)
        peer.proven = True  # we sent the request there and it answered its id: a proven path
        if pending.early_list is not None:
            self._on_discovery_response(peer, pending.early_list, now)
        token = payload.get("token")
        if type(token) is str and 0 < len(token) <= MAX_TOKEN_LEN:
            peer.echo_token = token
            self._echo_token(peer, msg.id, now)

    def _echo_token(self, peer: Peer, answering: str, now: float) -> None:
        """Prove our address to ``peer``: an Ack carrying the token it gave us."""
        data = encode(
            T_ACK,
            {"token": peer.echo_token},
            int(now + self.wall_offset),
            sender_addr=self.local_addr_str,
            ack_for=answering,
        )
        self._queue(data, peer, T_ACK)

    def _connect_failed(self, addr: Address, code: str, reason: str, peer_text: Any = None) -> None:
        """Report a failed outgoing handshake (English ``reason``, machine-readable ``code``,
        and the peer's own words when it gave any)."""
        self._pending_connects.pop(addr, None)
        text = str(peer_text)[:512] if peer_text else ""
        self._events.append(ConnectFailed(addr, reason, code, text))
        log.debug("handshake with %s failed (%s): %s %s", format_addr(addr), code, reason, text)

    def _on_connect_refused(self, addr: Address, payload: Any) -> None:
        text = payload.get("error") if type(payload) is dict else payload
        code = payload.get("code") if type(payload) is dict else None
        if code not in REFUSAL_REASONS:
            code = guess_refusal(str(text or ""))
        self._connect_failed(addr, code, REFUSAL_REASONS[code], text)

    def _on_ping(self, peer: Peer, msg: Any, now: float) -> None:
        """A Ping the receive path did not finish: one with a payload (a token to echo) or
        one that opened a sequence gap."""
        ts = int(now + self.wall_offset)
        answering = msg.id if peer.p2pfast else None
        self._queue(
            encode_raw(T_PONG, b"null", ts, None, None, None, False, answering), peer, T_PONG
        )
        payload = msg.payload
        if type(payload) is dict and peer.echo_token:
            token = payload.get("token")
            if type(token) is str and same_token(token, peer.echo_token):
                self._echo_token(peer, msg.id, now)

    def _on_pong(self, peer: Peer, msg: Any, now: float) -> None:
        # Liveness is refreshed by every datagram; a pending ping() also gets its RTT.
        pings = peer.pings
        if not pings:
            return
        ping_id = msg.ack_for
        if ping_id is None or ping_id not in pings:
            if peer.p2pfast and ping_id is not None:
                return  # the answer to a ping we no longer wait for
            ping_id = next(iter(pings))  # a seed peer names no Ping: the oldest is answered
        sent_at = pings.pop(ping_id)
        self._events.append(PongReceived(peer.node_id, now - sent_at, ping_id))

    def _answered_request(self, peer: Peer, msg: Any, full_info: bool) -> str | None:
        """The id of our peer-list request that ``msg`` answers, None for an unasked list."""
        requests = peer.list_requests
        request_id = msg.ack_for
        if request_id is not None:
            requests.pop(request_id, None)
            return str(request_id)
        if peer.p2pfast:
            return None  # p2pfast peers name the request: this one was not asked for
        for rid, kind in requests.items():  # seed peers: the oldest request of that kind
            if kind == full_info:
                del requests[rid]
                return rid
        return None

    def _on_list_response(self, peer: Peer, msg: Any, now: float) -> None:
        payload = msg.payload
        nodes = payload.get("nodes") if type(payload) is dict else None
        if type(nodes) is list:
            request_id = self._answered_request(peer, msg, True)
            self._events.append(PeerListReceived(peer.node_id, nodes, True, request_id))

    def _on_discovery_request(self, peer: Peer, msg: Any, now: float) -> None:
        ts = int(now + self.wall_offset)
        answering = msg.id if peer.p2pfast else None
        others = [p for p in self.peers_by_id.values() if p is not peer and p.proven]
        self._work += len(others)
        for chunk in discovery_datagrams(others, ts, self._room(peer), answering):
            if not self._queue(chunk, peer, T_DISCOVERY_RESPONSE):
                break  # an unproven address's budget is spent: the rest would be dropped too

    def _on_list_request(self, peer: Peer, msg: Any, now: float) -> None:
        ts = int(now + self.wall_offset)
        answering = msg.id if peer.p2pfast else None
        peers = self.peers_by_id.values()  # includes the requester, as the Rust server does
        self._work += len(peers)
        for chunk in node_list_datagrams(peers, ts, self._room(peer), answering):
            if not self._queue(chunk, peer, T_LIST_RESPONSE):
                break  # an unproven address's budget is spent

    def _on_discovery_response(self, peer: Peer, msg: Any, now: float) -> None:
        """Learn routes (distance 2, via the sender) and, with discovery on, connect to new peers.

        Dialling an address a peer listed sends to an address that has not asked for it, so
        the peer pays for it: its lists earn an allowance of 3x their bytes (at most one
        minute's worth of lists is kept), each dial spends two handshake requests' worth, and
        one list makes at most ``DIALS_PER_LIST`` dials: a lying list cannot turn this node
        into more than 3x its own traffic towards addresses nobody holds."""
        entries = msg.payload
        if type(entries) is not list:
            self.counters.reject("bad_payload")
            return
        request_id = self._answered_request(peer, msg, False)
        self._events.append(PeerListReceived(peer.node_id, entries, False, request_id))
        peer.dial_allowance = min(
            peer.dial_allowance + AMPLIFICATION_FACTOR * self._datagram_size, DIAL_ALLOWANCE_MAX
        )
        dials = 0
        for entry in entries[: self.config.max_routes]:
            self._work += 1
            if type(entry) is not dict:
                continue
            try:
                node_id = normalize_uuid(entry.get("id"))
            except ProtocolError:
                continue
            if node_id == self.node_id or node_id == peer.node_id or node_id in self.peers_by_id:
                continue
            caps = entry.get("capabilities")
            self.routes.add(node_id, peer.node_id, 2, type(caps) is list and "p2pfast" in caps)
            if self.config.enable_discovery and dials < DIALS_PER_LIST:
                addr_text = entry.get("addr")
                if type(addr_text) is str:
                    try:
                        target = parse_addr(addr_text)
                    except ValueError:
                        continue
                    if (
                        target not in self.peers_by_addr
                        and target not in self._pending_connects
                        and peer.dial_allowance >= self._dial_cost
                        and self._maybe_connect(target, now)
                    ):
                        dials += 1
                        peer.dial_allowance -= self._dial_cost

    def _on_data(self, peer: Peer, msg: Any, now: float) -> None:
        payload = msg.payload
        if type(payload) is dict:
            if len(payload) >= 6 and _ROUTED_KEYS.issubset(payload):
                self._on_routed(peer, msg, payload, now)
                return
            if payload.get("cmd") == "get_routes" and len(payload) == 1:
                routes = self.routes.dump(self._routes_room(peer))
                self._work += len(routes)
                self._queue(
                    encode(T_DATA, {"routes": routes}, int(now + self.wall_offset)), peer, T_DATA
                )
                return
        self._deliver(peer, peer.node_id, payload, msg.id, None, 0, now)

    def _routes_room(self, peer: Peer) -> int:
        """How many routes one ``get_routes`` reply lists (what fits one datagram)."""
        return max(1, (self._room(peer) - ENVELOPE_OVERHEAD) // 120)

    def _room(self, peer: Peer) -> int:
        """The largest datagram to build for ``peer``: its path's confirmed size for a p2pfast
        peer (``max_datagram_size`` until probed), what it always got for any other."""
        if peer.p2pfast:
            conn = peer.bulk
            return conn.datagram_size if conn is not None else self.config.max_datagram_size
        return max(self.config.max_datagram_size, SEED_LIST_DATAGRAM_SIZE)

    def _deliver(
        self,
        peer: Peer,
        source: str,
        payload: Any,
        msg_id: str,
        route_id: str | None,
        hops: int,
        now: float,
    ) -> None:
        if self.app_attached:
            self.counters.delivered += 1
            self._receiver.app_pending += 1
            self._events.append(DataReceived(source, payload, msg_id, route_id, hops))
        elif self.config.echo and route_id is None and not _is_echo(payload):
            ts = int(now + self.wall_offset)
            try:
                data = encode(T_DATA, {"echo": payload, "timestamp": ts}, ts)
            except ProtocolError as exc:  # e.g. nested too deeply to serialize again
                self._refuse(peer, f"cannot echo this payload: {exc.reason}", "bad_payload", now)
                return
            if len(data) > MAX_DATAGRAM_SIZE:
                self._refuse(peer, "the echo would not fit one datagram", "too_large", now)
                return
            self.counters.echoed += 1
            self._queue(data, peer, T_DATA)
        else:
            self.counters.delivered += 1  # counted; an echo is never echoed (no echo loops)

    def _on_routed(self, peer: Peer, msg: Any, payload: dict[str, Any], now: float) -> None:
        """Routed Data: deliver it here or forward it one hop. The receive path leaves its
        Ack to this handler: a message we cannot take now (our application's queue is full,
        the next hop's window is full) is neither acknowledged nor remembered, so the previous
        hop retransmits it later; everything else is acknowledged once decided."""
        verdict = self._route(peer, msg, payload, now)
        if verdict is None:  # not taken: forget it, the previous hop will send it again
            if msg.sequence_number is not None:
                peer.dup.discard(msg.sequence_number)
            return
        if msg.requires_ack:
            self._receiver.ack(peer, msg, now)

    def _route(self, peer: Peer, msg: Any, payload: dict[str, Any], now: float) -> bool | None:
        """Decide a routed Data: True when taken (delivered, forwarded, or refused for good),
        None when it must wait."""
        try:
            destination = normalize_uuid(payload["destination_node"])
            source = normalize_uuid(payload["source_node"])
            route_id = normalize_uuid(payload["route_id"])
        except ProtocolError:
            self._refuse(peer, "routed Data with an invalid id", "bad_payload", now)
            return True
        hop_count = payload["hop_count"]
        max_hops = payload["max_hops"]
        original = payload["original_message"]
        if (
            type(hop_count) is not int
            or type(max_hops) is not int
            or hop_count < 0
            or max_hops < 0
            or type(original) is not dict
        ):
            self._refuse(peer, "routed Data with invalid fields", "bad_payload", now)
            return True
        if self.route_ids.contains(route_id, now):
            self.counters.duplicates += 1
            if destination == self.node_id and original.get("requires_ack") is True:
                message_id = original.get("id")
                if type(message_id) is str:  # our confirmation may have been lost: again
                    self._confirm_delivery(source, message_id, peer, now)
            return True
        hop_count += 1
        if hop_count > max_hops:
            self.counters.reject("hop_limit")
            return True
        if destination == self.node_id:
            return self._routed_to_us(peer, source, route_id, original, hop_count, now)
        target = self.peers_by_id.get(destination)
        if target is None:
            hop_id = self.routes.next_hop(destination)
            target = self.peers_by_id.get(hop_id) if hop_id is not None else None
        if target is None or target is peer:
            self._refuse(peer, f"no route to {destination}", "no_route", now, answering=msg.id)
            return True
        forwarded = dict(payload)
        forwarded["hop_count"] = hop_count
        forwarded["destination_node"] = destination
        forwarded["source_node"] = source
        forwarded["route_id"] = route_id
        ts = int(now + self.wall_offset)
        # Reliable towards a p2pfast next hop (we acknowledge the previous hop, so this hop
        # must carry it on); seed peers never acknowledge, so they get it once.
        reliable = bool(msg.requires_ack) and target.p2pfast
        try:
            self._send_data_to(target, forwarded, self._new_id(), ts, reliable, now)
        except WindowFull:
            self.counters.reject("next_hop_busy")
            return None
        except SendError as exc:
            self._refuse(
                peer,
                f"cannot forward: {exc.detail or exc.reason}",
                exc.reason,
                now,
                answering=msg.id,
            )
            return True
        self.route_ids.seen(route_id, now)
        self.counters.forwarded += 1
        return True

    def _routed_to_us(
        self,
        peer: Peer,
        source: str,
        route_id: str,
        original: dict[str, Any],
        hops: int,
        now: float,
    ) -> bool | None:
        """A routed message for this node: a confirmation of one we sent, or data for the
        application (confirmed to its origin when asked); None when the application's queue
        is full (the previous hop will offer it again)."""
        if original.get("message_type") == "Ack":
            self.route_ids.seen(route_id, now)
            handle = original.get("ack_for")
            if type(handle) is str:
                confirmed, hop = self.deliveries.confirm(handle, source)
                if confirmed:
                    self._settle(SendCompleted(handle), hop)
            return True
        receiver = self._receiver
        if receiver.deliver == DELIVER_APP and 0 < receiver.app_limit <= receiver.app_pending:
            self.counters.reject("app_busy")
            return None
        self.route_ids.seen(route_id, now)
        message_id = original.get("id")
        self._deliver(peer, source, original.get("payload"), message_id or "", route_id, hops, now)
        if original.get("requires_ack") is True and type(message_id) is str:
            self._confirm_delivery(source, message_id, peer, now)
        return True

    def _on_error(self, peer: Peer, msg: Any, now: float) -> None:
        payload = msg.payload
        text = payload.get("error") if type(payload) is dict else payload
        code = payload.get("code") if type(payload) is dict else None
        handle = msg.ack_for
        if handle is not None:
            failed, hop = self.deliveries.fail(handle)
            if failed:  # the refusal names one of our routed messages: it will not arrive
                reason = code if code in ("no_route", "too_large") else "refused"
                self._settle(SendFailed(handle, reason), hop)
        log.info("peer %s reported an error: %.200s", peer.node_id, text)

    def _on_disconnect(self, peer: Peer, msg: Any, now: float) -> None:
        self._cool_down(peer.addr, now)
        self._remove_peer(peer, "disconnect", now)

    def _cool_down(self, addr: Address, now: float) -> None:
        """Discovery leaves ``addr`` alone for ``reconnect_cooldown`` (a peer that said
        goodbye, or that we left, is not dialled again at once)."""
        cooldown = self._cooldown
        if len(cooldown) >= MAX_COOLDOWNS:
            for stale in [a for a, until in cooldown.items() if until <= now] or [
                next(iter(cooldown))
            ]:
                del cooldown[stale]
        cooldown[addr] = now + self.config.reconnect_cooldown

    def _on_ack(self, peer: Peer, msg: Any, now: float) -> None:
        ack_for = msg.ack_for
        if ack_for is None:
            return
        win = peer.window
        payload = msg.payload
        if type(payload) is dict and "token" in payload:
            if not peer.proven:
                self._check_token(peer, payload["token"], now)
            if not peer.p2pfast:
                return
        if type(payload) is dict and peer.p2pfast:
            ranges = payload.get("seq")
            if ranges is None:
                return
            if not self._on_ack_ranges(peer, ranges, now):
                return
        else:
            self.counters.acks_received += 1
            if win.on_ack(ack_for, now) < 0:
                return
            self._hop_completed(ack_for)
        lost = win.lost(now)
        if lost:
            log.debug(
                "retransmitting %d message(s) to peer %s: later ones were acked",
                len(lost),
                peer.node_id,
            )
        for _seq, data in lost:  # later messages got through: these did not
            self.counters.retransmits += 1
            self._queue(data, peer, T_DATA)
        if peer.window_blocked:
            peer.window_blocked = False
            self._events.append(WindowOpened(peer.node_id))
        if not len(win):
            self._inflight.pop(peer, None)

    def _hop_completed(self, msg_id: str) -> None:
        """The next hop acknowledged ``msg_id``: the send is complete unless it waits for the
        destination's own confirmation (or it is one of ours)."""
        if msg_id in self.deliveries:
            return
        quiet = self.deliveries.quiet
        if msg_id in quiet:
            quiet.discard(msg_id)
            return
        self._events.append(SendCompleted(msg_id))

    def _hop_failed(self, msg_id: str, reason: str) -> None:
        """``msg_id`` cannot reach the next hop."""
        quiet = self.deliveries.quiet
        if msg_id in quiet:
            quiet.discard(msg_id)
            return
        self.deliveries.fail(msg_id)
        self._reopen_destinations()
        self.counters.send_failures += 1
        self._events.append(SendFailed(msg_id, reason))

    def _settle(self, event: SendCompleted | SendFailed, hop: Peer | None) -> None:
        """A routed send resolved end to end: its one outcome. If the first hop still holds
        the message, the hop's own outcome, when it comes, stays internal."""
        if isinstance(event, SendFailed):
            self.counters.send_failures += 1
        self._events.append(event)
        if (
            hop is not None
            and self.peers_by_id.get(hop.node_id) is hop
            and (
                hop.window.holds(event.handle)
                or (hop.bulk is not None and hop.bulk.holds(event.handle))
            )
        ):
            self.deliveries.quiet.add(event.handle)
        self._reopen_destinations()

    def _reopen_destinations(self) -> None:
        for destination in self.deliveries.reopened():
            self._events.append(WindowOpened(destination))

    def _check_token(self, peer: Peer, token: Any, now: float) -> None:
        """The peer echoed a token: its address is proven when it is the one we gave it."""
        if peer.token and type(token) is str and same_token(token, peer.token):
            peer.proven = True
            peer.token = ""
            self._announce.append(peer)  # only now may others be told of it
            self._schedule_broadcast(now)
            log.debug("peer %s proved its address %s", peer.node_id, peer.addr_str)
        else:
            self.counters.reject("bad_token")

    def _on_ack_ranges(self, peer: Peer, ranges: Any, now: float) -> int:
        """A coalesced Ack: ``[[lo, hi], ...]`` sequence numbers, at most ``MAX_ACK_RANGES``
        ranges each shorter than ``MAX_ACK_RANGE_LEN``. The send window walks whichever is
        smaller, the ranges or what is in flight, so the work stays bounded by both."""
        parsed = parse_ack_ranges(ranges)
        if parsed is None:
            self.counters.reject("bad_payload")
            return 0
        valid, looked_at = parsed
        self._work += looked_at
        acked = peer.window.on_ack_ranges(valid, now)
        for msg_id in acked:
            self._hop_completed(msg_id)
        self.counters.acks_received += len(acked)
        return len(acked)

    def _on_retransmit(self, peer: Peer, msg: Any, now: float) -> None:
        """Answer a Retransmit request (``{"sequence_numbers": [..]}``) from the send window.

        Each number counts once, only messages still in flight are resent, none more than
        once per smoothed RTT (the peer cannot have lost a copy it has not yet had time to
        receive), and the bytes resent are capped per request and per second per peer, so a
        Retransmit cannot be used to multiply traffic."""
        payload = msg.payload
        numbers = payload.get("sequence_numbers") if type(payload) is dict else None
        if type(numbers) is not list:
            self.counters.reject("bad_payload")
            return
        self.counters.retransmit_requests += 1
        log.debug("peer %s asks for %d retransmission(s)", peer.node_id, len(numbers))
        allowance = peer.resend_allowance
        allowance.refill(now)
        win = peer.window
        asked: set[int] = set()
        for seq in numbers[:MAX_RETRANSMIT_REQUEST]:
            self._work += 1
            if type(seq) is not int or seq in asked:
                continue
            asked.add(seq)
            pending = win.get(seq)
            if pending is None:
                continue
            if len(pending) > allowance.tokens:
                self.counters.reject("retransmit_limit")
                break
            data = win.resend(seq, now)
            if data is not None:
                allowance.take(len(data))
                self.counters.retransmits += 1
                self._queue(data, peer, T_DATA)

    def _on_p2p_connect(self, peer: Peer, msg: Any, now: float) -> None:
        """Hole-punch coordination as the Rust server does it: each side learns the other's
        observed address."""
        payload = msg.payload
        target_id = payload.get("peer_id") if type(payload) is dict else None
        try:
            target_id = normalize_uuid(target_id)
        except ProtocolError:
            self._refuse(peer, "缺少或无效的 peer_id", "bad_payload", now)
            return
        if target_id == peer.node_id:
            self._refuse(peer, "不能与自身建立直连", "bad_payload", now)
            return
        target = self.peers_by_id.get(target_id)
        if target is None:
            self._refuse(peer, f"目标节点未找到或不可达: {target_id}", "no_route", now)
            return
        ts = int(now + self.wall_offset)
        self._queue(
            encode(T_P2P_CONNECT, {"peer_addr": target.addr_str, "peer_id": target.node_id}, ts),
            peer,
            T_P2P_CONNECT,
        )
        notice = {"peer_addr": peer.addr_str, "peer_id": peer.node_id}
        for key in ("nat_type", "predicted_ports", "public_addr"):
            if key in payload:
                notice["peer_" + key] = payload[key]
        try:
            data = encode(T_P2P_CONNECT, notice, ts)
        except ProtocolError:
            return
        if len(data) <= self._room(target):
            self._queue(data, target, T_P2P_CONNECT)

    def _on_relay_request(self, peer: Peer, msg: Any, now: float) -> None:
        # The Rust server's answer when relaying is disabled (its default).
        self._queue(
            encode(
                T_RELAY_RESPONSE,
                {"error_message": "服务器不允许流量转发", "success": False},
                int(now + self.wall_offset),
            ),
            peer,
            T_RELAY_RESPONSE,
        )

    # ------------------------------------------------------------------------------------
    # Commands

    def connect(self, addr: Address, now: float, *, deadline: float | None = None) -> None:
        """Start a handshake with ``addr``; a PeerConnected or ConnectFailed event follows.

        The request is sent again with exponential backoff (``rto_initial``, doubling, at
        most ``handshake.CONNECT_RETRY_MAX`` apart) until ``deadline`` (default ``now +
        config.connect_timeout``), when ConnectFailed(code ``timeout``) follows. A second
        call for a handshake in progress extends its deadline if the new one is later."""
        if deadline is None:
            deadline = now + self.config.connect_timeout
        if self.closed:
            self._events.append(ConnectFailed(addr, "the node is closed", "shutdown"))
            return
        if addr in self.peers_by_addr:
            peer = self.peers_by_addr[addr]
            self._events.append(PeerConnected(peer.node_id, addr, peer.node_info))
            return
        pending = self._pending_connects.get(addr)
        if pending is not None:
            pending.deadline = max(pending.deadline, deadline)
            return
        if len(self._pending_connects) >= MAX_PENDING_CONNECTS:
            self._events.append(ConnectFailed(addr, "too many handshakes in progress", "busy"))
            return
        if (":" in str(addr[0])) != (":" in str(self.local_addr[0])):
            self._events.append(
                ConnectFailed(
                    addr,
                    f"cannot reach {format_addr(addr)} from {self.local_addr_str}: "
                    "IPv4 and IPv6 do not mix",
                    "family",
                )
            )
            return
        info = dict(self.node_info)
        msg_id = self._new_id()
        first_seq = self._first_seq()
        data = encode(
            T_HANDSHAKE_REQUEST,
            info,
            int(now + self.wall_offset),
            id=msg_id,
            sender_addr=self.local_addr_str,
            sequence_number=first_seq - 1,  # where our numbering starts (docs/protocol.md)
            requires_ack=True,
        )
        pending = PendingConnect(msg_id, data, now, self.config.rto_initial, deadline)
        pending.first_seq = first_seq
        self._pending_connects[addr] = pending
        self._connect_at = min(self._connect_at, pending.next_at)
        self._next_timer = min(self._next_timer, pending.next_at)
        log.debug("handshake with %s: request sent", format_addr(addr))
        self._emit(data, addr, T_HANDSHAKE_REQUEST)

    def cancel_connect(self, addr: Address) -> bool:
        """Give up a handshake in progress (no event follows); False when there was none."""
        return self._pending_connects.pop(addr, None) is not None

    def _maybe_connect(self, addr: Address, now: float) -> bool:
        """Discovery's connect: only new addresses, within max_connections, not cooling down;
        a short attempt (two requests), and an address that does not answer cools down, so a
        peer that lists invented addresses cannot make this node hammer them."""
        if (
            addr in self.peers_by_addr
            or addr in self._pending_connects
            or addr == self.local_addr
            or len(self.peers_by_id) + len(self._pending_connects) >= self.config.max_connections
        ):
            return False
        until = self._cooldown.get(addr)
        if until is not None:
            if now < until:
                return False
            del self._cooldown[addr]
        self.connect(addr, now, deadline=now + 2 * self.config.rto_initial)
        pending = self._pending_connects.get(addr)
        if pending is None:
            return False
        pending.discovered = True
        return True

    def send_data(self, node_id: str, payload: Any, now: float, *, reliable: bool = True) -> str:
        """Queue application data for ``node_id``; return a handle (the message id).

        Direct peers get a Data message; others a routed Data via the learned next hop. With
        ``reliable`` the message is retransmitted until acked by the next hop, and a
        SendCompleted or SendFailed event carries the handle: for a direct peer when it has
        the message; for a routed p2pfast destination when the destination confirms it end to
        end (SendFailed ``no_route`` or ``timeout`` when it cannot be delivered); for a routed
        seed destination, which cannot confirm, when the first hop has it. Raises WindowFull
        when the next hop's window (or the destination's end-to-end window) is full, SendError
        when there is no route or it is too large.
        """
        if self.closed:
            raise SendError("shutdown", "node is closed")
        peer = self.peers_by_id.get(node_id)
        msg_id = self._new_id()
        ts = int(now + self.wall_offset)
        confirmed = False
        if peer is None:
            hop_id = self.routes.next_hop(node_id)
            peer = self.peers_by_id.get(hop_id) if hop_id is not None else None
            if peer is None:
                raise SendError("no_route", f"no peer or route for {node_id}")
            confirmed = reliable and self.routes.speaks_p2pfast(node_id)
            if confirmed and self.deliveries.full(node_id):
                waiting = self.deliveries.per_destination
                exc = WindowFull(f"{waiting} messages to {node_id} await its confirmation")
                exc.node_id = node_id
                raise exc
            payload = self._routed(node_id, msg_id, payload, ts, confirm=confirmed)
        self._send_data_to(peer, payload, msg_id, ts, reliable, now)
        if confirmed:
            self.deliveries.expect(msg_id, node_id, now, peer)
            deadline = now + self.deliveries.timeout
            if deadline < self._delivery_at:
                self._delivery_at = deadline
                if deadline < self._next_timer:
                    self._next_timer = deadline
        return msg_id

    def _routed(
        self,
        destination: str,
        msg_id: str,
        payload: Any,
        ts: int,
        *,
        confirm: bool = False,
        kind: str = "Data",
        answering: str | None = None,
    ) -> dict[str, Any]:
        """A routed Data payload from this node: ``original_message`` carries the application
        payload (``kind`` Data; ``requires_ack`` asks the destination to confirm end to end),
        or a confirmation (``kind`` Ack, ``answering`` the confirmed message's id)."""
        return {
            "destination_node": destination,
            "hop_count": 0,
            "max_hops": self.config.max_hops,
            "original_message": {
                "ack_for": answering,
                "id": msg_id,
                "message_type": kind,
                "payload": payload,
                "requires_ack": confirm,
                "sender_addr": None,
                "sequence_number": None,
                "timestamp": ts,
            },
            "route_id": self._new_id(),
            "source_node": self.node_id,
        }

    def _confirm_delivery(self, destination: str, message_id: str, via: Peer, now: float) -> None:
        """Tell the origin of a routed message we received that we have it (a routed Ack,
        carried reliably hop by hop like any routed message; its own events stay internal).
        Without a route of our own to the origin (we may not have heard of it yet), the
        confirmation goes back the way the message came, through ``via``."""
        hop = self.peers_by_id.get(destination)
        if hop is None:
            hop_id = self.routes.next_hop(destination)
            hop = self.peers_by_id.get(hop_id) if hop_id is not None else None
        if hop is None and self.peers_by_id.get(via.node_id) is via:
            hop = via
        if hop is None:
            self.counters.reject("confirmation_unroutable")
            return
        ts = int(now + self.wall_offset)
        ack_id = self._new_id()
        payload = self._routed(destination, ack_id, None, ts, kind="Ack", answering=message_id)
        try:
            self._send_data_to(hop, payload, ack_id, ts, hop.p2pfast, now)
        except (WindowFull, SendError):
            self.counters.reject("confirmation_dropped")  # the origin times out
            return
        if hop.p2pfast:
            self.deliveries.quiet.add(ack_id)

    def _send_data_to(
        self, peer: Peer, payload: Any, msg_id: str, ts: int, reliable: bool, now: float
    ) -> None:
        """Encode a Data message for ``peer`` with the session's next sequence number and,
        when ``reliable``, keep it in the send window until acked.

        Raises WindowFull (its ``node_id`` is ``peer``'s, whose WindowOpened event follows)
        when the window is full or when the next sequence number would run a full receive
        window ahead of the oldest unacknowledged message: a message of either kind must not
        push the peer's duplicate filter past a message it may still have to accept."""
        if peer.p2pfast:
            limit = peer.bulk.datagram_size if peer.bulk is not None else self._bulk_threshold
            if type(payload) is str and len(payload) > limit:
                self._send_large(
                    peer, self._encode_large(payload, msg_id, ts), msg_id, reliable, now
                )
                return
        else:
            limit = MAX_DATAGRAM_SIZE
        win = peer.window
        seq = peer.next_seq
        if (reliable and win.full) or win.blocked(seq):
            peer.window_blocked = True
            exc = WindowFull(
                f"{win.capacity} messages to {peer.node_id} awaiting acknowledgement"
                if win.full
                else f"messages to {peer.node_id} are {win.max_span} ahead of the oldest "
                "awaiting acknowledgement"
            )
            exc.node_id = peer.node_id
            raise exc
        try:
            data = encode(
                T_DATA, payload, ts, id=msg_id, sequence_number=seq, requires_ack=reliable
            )
        except ProtocolError as exc:
            reason = "too_large" if exc.reason == "too_large" else "bad_payload"
            raise SendError(reason, exc.detail or exc.reason) from None
        if len(data) > limit:
            if peer.p2pfast:
                self._send_large(
                    peer, self._encode_large(payload, msg_id, ts), msg_id, reliable, now
                )
                return
            raise SendError(
                "too_large",
                f"{len(data)} bytes do not fit one datagram ({MAX_DATAGRAM_SIZE} bytes, the most "
                "a peer without the p2pfast capability takes)",
            )
        peer.next_seq = seq + 1
        if reliable:
            win.add(seq, msg_id, data, now)
            self._inflight[peer] = None
            deadline = win.next_deadline()
            if deadline < self._window_at:
                self._window_at = deadline
                if deadline < self._next_timer:
                    self._next_timer = deadline
        self._queue(data, peer, T_DATA)

    # ------------------------------------------------------------------------------------
    # Large messages: binary frames between p2pfast peers (p2pfast.bulk)

    def _bulk(self, peer: Peer, now: float) -> BulkConnection:
        conn = peer.bulk
        if conn is None:
            config = self.config
            conn = peer.bulk = BulkConnection(
                self.bulk_memory,
                peer_limit=config.reassembly_peer_limit,
                max_datagram_size=config.max_datagram_size,
                pmtu_discovery=config.pmtu_discovery,
                reassembly_timeout=config.reassembly_timeout,
                now=now,
            )
            conn.owner = peer
        return conn

    def _on_frame(self, data: bytes, addr: Address, peer: Peer | None, now: float) -> None:
        """A binary frame (0xF5 first): only from a p2pfast peer with a session; a bad one is
        counted and dropped, never answered with more than it is (no amplification)."""
        counters = self.counters
        counters.frames_in += 1
        self._bulk_now = now
        if peer is None or not peer.p2pfast:
            counters.reject("frame_without_session")
            self._log_hostile("frame_without_session", now, "binary frame from %s dropped", addr)
            return
        peer.last_seen = now
        if not peer.proven:
            peer.budget += AMPLIFICATION_FACTOR * len(data)
        conn = peer.bulk
        if conn is None:
            conn = self._bulk(peer, now)
        kind = data[1] if len(data) > 1 else 0
        try:
            if kind == fragment.KIND_FRAGMENT:
                # The per-fragment path: store, owe an ACK (sent once per batch of datagrams, or
                # after ACK_EVERY fragments), deliver a completed message. Nothing to send or
                # re-arm unless a new message began or something was refused.
                counters.fragments_received += 1
                message = conn.on_fragment(data, now)
                if conn.ack_owed >= ACK_EVERY:
                    self._bulk_ack(peer, conn, now)
                    self.bulk_acks.pop(peer, None)
                elif conn.ack_owed or conn.credit_update_owed:
                    self.bulk_acks[peer] = None
                if message is not None:
                    counters.messages_reassembled += 1
                    self._reassembled(peer, conn, message, now)
                if not conn.timer_changed and not conn.refused:
                    return
                conn.timer_changed = False
            elif kind == fragment.KIND_ACK:
                conn.on_ack(data, now)
            elif kind == fragment.KIND_PROBE:
                number = fragment.parse_probe(data)
                self._queue_frame(fragment.encode_probe_ack(number, len(data)), peer)
            elif kind == fragment.KIND_PROBE_ACK:
                conn.on_probe_ack(data, now)
            elif kind == fragment.KIND_CREDIT_REQUEST:
                conn.on_credit_request(data)
                conn.grant(now)
                self.bulk_acks[peer] = None
            else:
                raise ProtocolError("unknown_frame", f"frame kind {kind}")
        except ProtocolError as exc:
            counters.malformed += 1
            counters.reject(exc.reason)
            self._log_hostile(exc.reason, now, "dropped frame from %s: %s", addr, exc)
        self._bulk_step(peer, conn, now)

    def _reassembled(self, peer: Peer, conn: BulkConnection, data: bytes, now: float) -> None:
        """A large message is whole: deliver it like a datagram, or hold it while the
        application's queue is full (its fragments were acknowledged: it must not be lost)."""
        if self._bulk_held or self._app_full():
            self._bulk_held.append((peer, data))
            return
        self._deliver_large(peer, conn, data, now)

    def _app_full(self) -> bool:
        """The application's queue holds all it may (a message delivered now would be lost)."""
        receiver = self._receiver
        return bool(
            receiver.deliver == DELIVER_APP
            and receiver.app_limit > 0
            and receiver.app_pending >= receiver.app_limit
        )

    def _deliver_held(self, now: float) -> None:
        held = self._bulk_held
        while held and not self._app_full():
            peer, data = held.popleft()
            conn = peer.bulk
            if conn is not None:
                self._deliver_large(peer, conn, data, now)

    def _deliver_large(self, peer: Peer, conn: BulkConnection, data: bytes, now: float) -> None:
        """Hand a reassembled message to the ordinary receive path (as one datagram of up to
        1 MiB). Its memory is released when the application consumes the DataReceived it
        yields (or at once, if it yields none)."""
        total = len(data)
        if data[:1] == _FRAME_PREFIX:  # a frame inside a message: never unwrapped twice
            self.counters.reject("nested_frame")
            self._release(conn, total)
            return
        events = self._events
        before = len(events)
        self.counters.bytes_in -= total  # its fragments were counted already
        self.receive_datagram(data, peer.addr, now)
        if self._receiver.deliver == DELIVER_APP:
            for event in list(events)[before:]:
                if type(event) is DataReceived:
                    self._bulk_unconsumed[id(event)] = (conn, total)
                    return
        self._release(conn, total)

    def _release(self, conn: BulkConnection, total: int) -> None:
        if conn.dead:
            return
        conn.release(total, self._bulk_now)
        if conn.credit_update_owed:
            self.bulk_acks[conn.owner] = None

    def _close_bulk(self, peer: Peer, conn: BulkConnection, failure: str) -> None:
        """The session ends: messages held for the application are delivered (they were
        acknowledged), unfinished sends fail, the peer's grant returns to the node."""
        if self._bulk_held and any(p is peer for p, _ in self._bulk_held):
            keep = deque(entry for entry in self._bulk_held if entry[0] is not peer)
            mine = [data for p, data in self._bulk_held if p is peer]
            self._bulk_held = keep
            limit = self._receiver.app_limit
            self._receiver.app_limit = 0  # over the limit, once: they must not be lost
            try:
                for data in mine:
                    self._deliver_large(peer, conn, data, self._bulk_now)
            finally:
                self._receiver.app_limit = limit
        conn.close()
        for handle, _reason in conn.failed:
            self._hop_failed(handle, failure)
        conn.failed.clear()
        self._bulk_active.pop(peer, None)
        self.bulk_acks.pop(peer, None)

    def probe_refused(self, data: bytes, addr: Address, now: float) -> None:
        """The I/O shell could not send a probe: the local stack refused its size (EMSGSIZE)."""
        peer = self.peers_by_addr.get(addr)
        if peer is None or peer.bulk is None:
            return
        peer.bulk.on_probe_refused(len(data), now)
        self._bulk_step(peer, peer.bulk, now)

    def _bulk_ack(self, peer: Peer, conn: BulkConnection, now: float) -> None:
        frame = conn.ack_frame(now)
        if frame is not None:
            self._queue_frame(frame, peer)

    def _flush_bulk_acks(self, now: float) -> None:
        for peer in self.bulk_acks:
            conn = peer.bulk
            if conn is not None and not conn.dead:
                self._bulk_ack(peer, conn, now)
        self.bulk_acks.clear()

    def _queue_frame(self, data: bytes, peer: Peer) -> bool:
        """Queue one binary frame to a session (within its budget while unproven)."""
        if not peer.proven:
            if len(data) > peer.budget:
                self.counters.reject("amplification_limit")
                return False
            peer.budget -= len(data)
        self._out.append((data, peer.addr))
        self.counters.bytes_out += len(data)
        self.counters.frames_out += 1
        return True

    def _bulk_step(self, peer: Peer, conn: BulkConnection, now: float) -> None:
        """After anything happened to a transfer: send what is due, report outcomes, re-arm."""
        out: list[bytes] = []
        probes: list[bytes] = []
        sent = conn.fragments_sent
        conn.transmit(now, out, probes)
        for probe in probes:
            if peer.proven:
                self.probes.append((probe, peer.addr))
                self.counters.bytes_out += len(probe)
                self.counters.frames_out += 1
            else:  # an unproven address gets a probe only within its budget
                self._queue_frame(probe, peer)
        counters = self.counters
        counters.fragments_sent += conn.fragments_sent - sent
        addr = peer.addr
        if out:
            if peer.proven:
                self._out.extend([(data, addr) for data in out])
                counters.bytes_out += sum(map(len, out))
                counters.frames_out += len(out)
            else:
                for data in out:
                    self._queue_frame(data, peer)
        self._work += conn.work
        conn.work = 0
        if conn.fragments_retransmitted:
            counters.fragments_retransmitted += conn.fragments_retransmitted
            conn.fragments_retransmitted = 0
        if conn.refused:
            for reason, count in conn.refused.items():
                for _ in range(count):
                    counters.reject(reason)
            conn.refused.clear()
        completed = conn.completed
        if completed:
            for handle in completed:
                self._hop_completed(handle)
            completed.clear()
            if peer.window_blocked:
                peer.window_blocked = False
                self._events.append(WindowOpened(peer.node_id))
        if conn.failed:
            for handle, reason in conn.failed:
                self._hop_failed(handle, reason)
            conn.failed.clear()
        if conn.dead:
            self._bulk_active.pop(peer, None)
            if self.peers_by_id.get(peer.node_id) is peer:
                self._remove_peer(peer, "unreachable", now)
                counters.evictions += 1
            return
        due = conn.next_timer()
        if due < _INF:
            self._bulk_active[peer] = None
            if due < self._bulk_at:
                self._bulk_at = due
                if due < self._next_timer:
                    self._next_timer = due
        else:
            self._bulk_active.pop(peer, None)

    def _run_bulk(self, now: float) -> None:
        self._bulk_now = now
        self._bulk_at = _INF
        for peer in list(self._bulk_active):
            conn = peer.bulk
            if conn is None or conn.dead:
                self._bulk_active.pop(peer, None)
                continue
            conn.on_timer(now)
            if conn.ack_owed and now >= conn.ack_deadline:
                self._bulk_ack(peer, conn, now)
                self.bulk_acks.pop(peer, None)
            self._bulk_step(peer, conn, now)

    def _encode_large(self, payload: Any, msg_id: str, ts: int) -> bytes:
        """A Data message for fragments: no sequence number and no Ack asked (the fragments
        are acknowledged; the message is delivered once by its message number)."""
        if type(payload) is str:
            # The usual bulk payload: one serialization into one buffer. A string has no keys
            # to sort, so these are exactly encode()'s bytes, without its 1 MiB intermediate.
            try:
                data: bytes = orjson.dumps(
                    {
                        "id": msg_id,
                        "message_type": "Data",
                        "timestamp": ts,
                        "payload": payload,
                        "sender_addr": None,
                        "sequence_number": None,
                        "requires_ack": False,
                        "ack_for": None,
                    }
                )
            except TypeError as exc:  # (orjson.JSONEncodeError: a lone surrogate)
                raise SendError("bad_payload", f"payload is not JSON-serializable: {exc}") from None
            if len(data) > MAX_MESSAGE_SIZE:
                raise SendError("too_large", f"{len(data)} bytes > {MAX_MESSAGE_SIZE}")
            return data
        try:
            return encode(T_DATA, payload, ts, id=msg_id)
        except ProtocolError as exc:
            reason = "too_large" if exc.reason == "too_large" else "bad_payload"
            raise SendError(reason, exc.detail or exc.reason) from None

    def _send_large(self, peer: Peer, data: bytes, msg_id: str, reliable: bool, now: float) -> None:
        """Queue an encoded message too large for one datagram to ``peer`` as fragments."""
        conn = self._bulk(peer, now)
        try:
            conn.send(data, msg_id if reliable else None)
        except WindowFull as exc:
            peer.window_blocked = True
            exc.node_id = peer.node_id
            raise
        self._bulk_now = now
        self._bulk_step(peer, conn, now)

    def ping(self, node_id: str, now: float) -> str:
        """Ping a peer; return the Ping's id, which the PongReceived event answering it names."""
        peer = self.peers_by_id.get(node_id)
        if peer is None:
            raise SendError("no_route", f"not connected to {node_id}")
        ping_id = self._new_id()
        pings = peer.pings
        if len(pings) >= MAX_OUTSTANDING:
            del pings[next(iter(pings))]  # the oldest is forgotten: it will not be matched
        pings[ping_id] = now
        self._queue(encode_raw(T_PING, b"null", int(now + self.wall_offset), ping_id), peer, T_PING)
        return ping_id

    def request_peers(self, node_id: str, now: float, *, full_info: bool = False) -> str:
        """Ask a peer for its peer list (DiscoveryRequest, or ListNodesRequest with
        ``full_info``); return the request's id, which the PeerListReceived answering names."""
        peer = self.peers_by_id.get(node_id)
        if peer is None:
            raise SendError("no_route", f"not connected to {node_id}")
        request_id = self._new_id()
        requests = peer.list_requests
        if len(requests) >= MAX_OUTSTANDING:
            del requests[next(iter(requests))]
        requests[request_id] = full_info
        mtype = T_LIST_REQUEST if full_info else T_DISCOVERY_REQUEST
        self._queue(
            encode_raw(mtype, b"null", int(now + self.wall_offset), request_id), peer, mtype
        )
        return request_id

    def disconnect(self, node_id: str, now: float, reason: str = "disconnect") -> None:
        peer = self.peers_by_id.get(node_id)
        if peer is None:
            return
        self._queue(
            encode(T_DISCONNECT, {"reason": reason}, int(now + self.wall_offset)),
            peer,
            T_DISCONNECT,
        )
        self._cool_down(peer.addr, now)
        self._remove_peer(peer, "shutdown" if reason == "shutdown" else "disconnect", now)

    def close(self, now: float, reason: str = "shutdown") -> None:
        """Say Disconnect to every peer, fail everything pending, stop all timers."""
        if self.closed:
            return
        ts = int(now + self.wall_offset)
        data = encode(T_DISCONNECT, {"reason": reason}, ts)
        for peer in list(self.peers_by_id.values()):
            self._queue(data, peer, T_DISCONNECT)
            self._remove_peer(peer, "shutdown", now, notify=False, failure="shutdown")
        for handle in self.deliveries.clear():
            self._events.append(SendFailed(handle, "shutdown"))
        for addr in list(self._pending_connects):
            self._events.append(ConnectFailed(addr, "the node is shutting down", "shutdown"))
        self._pending_connects.clear()
        self.closed = True
        self._heartbeat_at = self._housekeeping_at = self._stats_at = _INF
        self._broadcast_at = self._window_at = self._gap_at = self._connect_at = _INF
        self._discovery_at = self._delivery_at = self._bulk_at = _INF
        self._next_timer = _INF

    # ------------------------------------------------------------------------------------
    # Timers

    def handle_timer(self, now: float) -> None:
        """Run everything that is due at ``now``."""
        if self.closed:
            return
        try:
            self._run_timers(now)
        except Exception as exc:  # a defect of ours must not stop the timers for good
            self._internal_error(exc, "timers", now)
        self._retimer()

    def _run_timers(self, now: float) -> None:
        if now >= self._window_at:
            self._run_windows(now)
        if now >= self._gap_at:
            self._run_gaps(now)
        if now >= self._connect_at:
            self._run_connects(now)
        if now >= self._broadcast_at:
            self._run_broadcast(now)
        if now >= self._heartbeat_at:
            self._run_heartbeat(now)
        if now >= self._discovery_at:
            self._run_discovery(now)
        if now >= self._bulk_at:
            self._run_bulk(now)
        if now >= self._delivery_at:
            for handle, hop in self.deliveries.expire(now):
                self._settle(SendFailed(handle, "timeout"), hop)
            self._reopen_destinations()
            self._delivery_at = self.deliveries.next_deadline()
        if now >= self._housekeeping_at:
            self.route_ids.expire(now)
            self._housekeeping_at = now + min(30.0, self.config.route_cache_ttl)
        if now >= self._stats_at:
            self._log_stats(now)
            self._stats_at = now + self.config.stats_interval

    def _run_windows(self, now: float) -> None:
        earliest = _INF
        counters = self.counters
        for peer in list(self._inflight):
            win = peer.window
            resend, failed = win.due(now)
            if resend:
                log.debug(
                    "retransmitting %d message(s) to peer %s on timeout (rto %.3f s)",
                    len(resend),
                    peer.node_id,
                    win.rto,
                )
            for _seq, data in resend:
                counters.retransmits += 1
                self._queue(data, peer, T_DATA)
            if failed:
                for _seq, msg_id in failed:
                    self._hop_failed(msg_id, "timeout")
                if peer.window_blocked:
                    peer.window_blocked = False
                    self._events.append(WindowOpened(peer.node_id))
                if peer.p2pfast:
                    # Retries exhausted towards a peer that does ack: it is unreachable. (Seed
                    # clients never ack, so for them only the send fails.)
                    self._remove_peer(peer, "unreachable", now)
                    counters.evictions += 1
                    continue
            if not len(win):
                self._inflight.pop(peer, None)
                continue
            deadline = win.next_deadline()
            if deadline < earliest:
                earliest = deadline
        self._window_at = earliest

    def _run_gaps(self, now: float) -> None:
        """Ask for what is missing: once a gap has lasted ``gap_delay``, then again (backing
        off, ``GAP_REQUESTS`` times at most) while it lasts, since a request, or the
        retransmission it asks for, may be lost too."""
        earliest = _INF
        ts = int(now + self.wall_offset)
        for peer in list(self._gapped):
            if peer.gap_at > now:
                earliest = min(earliest, peer.gap_at)
                continue
            missing = peer.dup.missing(MAX_RETRANSMIT_REQUEST)
            if not missing or peer.gap_requests >= GAP_REQUESTS:
                peer.gap_at = _INF
                peer.gap_requests = 0
                self._gapped.pop(peer, None)
                continue
            self.counters.retransmit_requests += 1
            log.debug("asking peer %s to retransmit %d message(s)", peer.node_id, len(missing))
            self._queue(encode(T_RETRANSMIT, {"sequence_numbers": missing}, ts), peer, T_RETRANSMIT)
            peer.gap_requests += 1
            wait = max(self.config.gap_delay, peer.window.rto) * 2.0**peer.gap_requests
            peer.gap_at = now + min(wait, GAP_RETRY_MAX)
            earliest = min(earliest, peer.gap_at)
        self._gap_at = earliest

    def _run_connects(self, now: float) -> None:
        earliest = _INF
        for addr, pending in list(self._pending_connects.items()):
            if pending.next_at > now:
                earliest = min(earliest, pending.next_at)
                continue
            if now >= pending.deadline:
                del self._pending_connects[addr]
                if pending.discovered:
                    self._cool_down(addr, now)
                waited = now - pending.started
                self._events.append(
                    ConnectFailed(
                        addr,
                        f"no answer from {format_addr(addr)} after {pending.attempts} "
                        f"handshake attempts",
                        "timeout",
                    )
                )
                log.debug("handshake with %s timed out (%.1f s)", format_addr(addr), waited)
                continue
            pending.retried(now, self.config.rto_initial)
            earliest = min(earliest, pending.next_at)
            log.debug("handshake with %s: attempt %d", format_addr(addr), pending.attempts)
            self._emit(pending.data, addr, T_HANDSHAKE_REQUEST)
        self._connect_at = earliest

    def _run_heartbeat(self, now: float) -> None:
        """Evict peers silent for ``connection_timeout``; ping the ones idle for an interval."""
        config = self.config
        ts = int(now + self.wall_offset)
        ping = encode_bare(T_PING, ts)
        idle_since = now - config.heartbeat_interval
        dead_since = now - config.connection_timeout
        for peer in list(self.peers_by_id.values()):
            if peer.last_seen < dead_since:
                self.counters.evictions += 1
                log.debug(
                    "peer %s silent since %.1f s: evicted", peer.node_id, now - peer.last_seen
                )
                self._remove_peer(peer, "timeout", now)
            elif peer.token and peer.p2pfast:
                # A p2pfast peer whose token Ack was lost: ask again (it echoes the token).
                self._queue(encode(T_PING, {"token": peer.token}, ts), peer, T_PING)
            elif peer.last_seen <= idle_since:
                self._queue(ping, peer, T_PING)
        self._heartbeat_at = now + config.heartbeat_interval

    def _run_discovery(self, now: float) -> None:
        """Probe ``discovery_port_range`` on our own host, then again every 10 heartbeats."""
        low, high = self.config.discovery_port_range
        host = self.local_addr[0]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        for port in range(low, high + 1):
            target = (host, port)
            if port != self.local_addr[1]:
                self._maybe_connect(target, now)
        if self.peers_by_id:
            # Gossip: ask one peer for its whole list, so a node missed by the debounced
            # broadcasts (only the newest joins fit one) is learned all the same.
            ids = list(self.peers_by_id)
            self.request_peers(ids[self._pick(len(ids))], now)
        self._discovery_at = now + 10 * self.config.heartbeat_interval

    def _schedule_broadcast(self, now: float) -> None:
        """Debounce: broadcast once arrivals pause for the debounce time, but no later than
        ten debounce periods after the first pending change."""
        delay = self.config.peerlist_broadcast_debounce_ms / 1000.0
        if self._broadcast_latest == _INF:
            self._broadcast_latest = now + 10 * delay
        self._broadcast_at = min(now + delay, self._broadcast_latest)
        if self._broadcast_at < self._next_timer:
            self._next_timer = self._broadcast_at

    def _run_broadcast(self, now: float) -> None:
        """Tell every peer about the peers that joined since the last broadcast (or, after a
        removal, the current list): one datagram per peer, so the cost stays O(peers) per
        broadcast whatever the churn."""
        self._broadcast_at = self._broadcast_latest = _INF
        # Only the newest joins fit one datagram: keep the per-broadcast work O(peers).
        announce = [
            p
            for p in dict.fromkeys(self._announce[-BROADCAST_LIMIT:])  # (a proof re-announces)
            if p.proven and self.peers_by_addr.get(p.addr) is p
        ]
        self._announce = []
        if self._removed_since_broadcast:
            self._removed_since_broadcast = False
            announce = self._sample_peers(BROADCAST_LIMIT)
        if not announce:
            return
        ts = int(now + self.wall_offset)
        shared: dict[int, bytes] = {}  # one slice per datagram size in use
        listed = set(announce)
        for peer in self.peers_by_id.values():
            room = self._room(peer)
            if peer in listed:
                others = [p for p in announce if p is not peer]
                if not others:
                    continue
                self._queue(discovery_slice(others, ts, room), peer, T_DISCOVERY_RESPONSE)
            else:
                data = shared.get(room)
                if data is None:
                    data = shared[room] = discovery_slice(announce, ts, room)
                self._queue(data, peer, T_DISCOVERY_RESPONSE)

    def _log_stats(self, now: float) -> None:
        log.info("%s", format_stats_line(self.get_stats(now)))

    # ------------------------------------------------------------------------------------
    # Helpers

    def _emit(self, data: bytes, addr: Address, mtype: int) -> None:
        """Queue one datagram and count it."""
        self._out.append((data, addr))
        counters = self.counters
        counters.tx_by_type[mtype] += 1
        counters.bytes_out += len(data)

    def _queue(self, data: bytes, peer: Peer, mtype: int) -> bool:
        """Queue one datagram to a session, within its anti-amplification budget while its
        address is unproven; False (and counted) when the budget does not cover it."""
        if not peer.proven:
            if len(data) > peer.budget:
                self.counters.reject("amplification_limit")
                return False
            peer.budget -= len(data)
        self._emit(data, peer.addr, mtype)
        return True

    def _refuse(
        self, peer: Peer, text: str, code: str, now: float, *, answering: str | None = None
    ) -> None:
        """Refuse a peer's request: counted, and a small Error (within the budget) that names
        the refused message in ``ack_for`` when given."""
        self.counters.reject(code)
        log.debug("refused a request from peer %s (%s): %.200s", peer.node_id, code, text)
        self._error_to(peer, text, code, now, answering)

    def _error_to(
        self, peer: Peer, text: str, code: str, now: float, answering: str | None = None
    ) -> None:
        payload = {"code": code, "error": text[:200]}
        data = encode(T_ERROR, payload, int(now + self.wall_offset), ack_for=answering)
        self._queue(data, peer, T_ERROR)

    def _sample_peers(self, limit: int) -> list[Peer]:
        """Up to ``limit`` peers to advertise, most recently joined first: only those whose
        address is proven, so a forged handshake never makes others dial an address that
        never asked for it (O(limit) in the common case)."""
        out: list[Peer] = []
        for peer in reversed(self.peers_by_id.values()):
            if peer.proven:
                out.append(peer)
                if len(out) >= limit:
                    break
        return out

    # ------------------------------------------------------------------------------------
    # Introspection

    def get_stats(self, now: float) -> ServerStats:
        return snapshot(
            self.counters,
            node_id=self.node_id,
            listen_address=self.local_addr_str,
            uptime=now - self.started_at,
            peer_stats=PeerStats(
                total_peers=len(self.peers_by_id),
                max_connections=self.config.max_connections,
                in_flight=sum(len(p.window) for p in self._inflight),
                routes=len(self.routes),
            ),
        )
