"""Types of the compiled receive path (``_receive.pyx``); twin: ``_receive_py``."""

from collections import deque
from typing import Any, final

from typing_extensions import disjoint_base

from ._codec import Message
from ._window import DuplicateFilter
from .events import DataReceived as DataReceived

TYPE_NAMES: tuple[str, ...]
T_HANDSHAKE_REQUEST: int
T_PING: int
T_PONG: int
T_DATA: int
T_ACK: int
AMPLIFICATION_FACTOR: int
DELIVER_COUNT: int
DELIVER_APP: int
DELIVER_ENGINE: int
ROUTED_KEYS: frozenset[str]
COUNTER_FIELDS: tuple[str, ...]

@disjoint_base
class Counters:
    rx_by_type: list[int]
    tx_by_type: list[int]
    malformed: int
    bytes_in: int
    bytes_out: int
    acks_sent: int
    acks_received: int
    retransmits: int
    retransmit_requests: int
    duplicates: int
    delivered: int
    echoed: int
    forwarded: int
    send_failures: int
    handshakes: int
    evictions: int
    fragments_sent: int
    fragments_retransmitted: int
    fragments_received: int
    messages_reassembled: int
    frames_in: int
    frames_out: int
    rejected: dict[str, int]
    def __init__(self) -> None: ...
    def reject(self, reason: str) -> None: ...
    @property
    def datagrams_in(self) -> int: ...
    @property
    def datagrams_out(self) -> int: ...

@disjoint_base
class Session:
    addr: tuple[str, int]
    node_id: str
    p2pfast: bool
    last_seen: float
    dup: DuplicateFilter
    gap_at: float
    pending_acks: list[int]
    pending_ack_id: str | None
    proven: bool
    budget: int

@final
class Receiver:
    peers: dict[tuple[str, int], Any]
    counters: Counters
    out: list[tuple[bytes, tuple[str, int]]]
    events: deque[Any]
    ack_peers: list[Any]
    local_addr: str
    wall_offset: float
    deliver: int
    ack_now: float
    app_limit: int
    app_pending: int
    def __init__(
        self,
        peers: dict[tuple[str, int], Any],
        counters: Counters,
        out: list[tuple[bytes, tuple[str, int]]],
        events: deque[Any],
        ack_peers: list[Any],
        local_addr: str,
        wall_offset: float,
    ) -> None: ...
    def receive(
        self, data: bytes, addr: tuple[str, int], now: float
    ) -> tuple[Any, Session | None, bool] | None: ...
    def ack(self, peer: Session, msg: Message, now: float) -> None: ...
