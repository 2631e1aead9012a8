"""A handshaken peer's session state, and validation of the NodeInfo that opens it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._speedups import codec, receive, window
from .addr import Address, format_addr, parse_addr
from .config import Config
from .errors import ProtocolError

if TYPE_CHECKING:
    from .bulk import BulkConnection

dump_payload = codec.dump_payload
normalize_uuid = codec.normalize_uuid

#: Bounds on what a peer may announce about itself: memory per peer is fixed, and one peer's
#: entry always fits one peer-list datagram, so no peer can crowd others out of a list.
MAX_NAME_LEN = 64
MAX_CAPABILITIES = 16
MAX_CAPABILITY_LEN = 32
MAX_METADATA = 8
MAX_METADATA_KEY_LEN = 32
MAX_METADATA_VALUE_LEN = 64
#: The whole NodeInfo, serialized, at most (it is what a ListNodesResponse carries per peer).
MAX_NODE_INFO_BYTES = 700
#: Receive window a p2pfast peer announces in its NodeInfo metadata when it is not the default.
RX_WINDOW_KEY = "rx_window"
DEFAULT_RX_WINDOW = 1024
#: Requests (ping, peer lists) awaiting their answer, per peer; older ones are forgotten.
MAX_OUTSTANDING = 16
_INF = float("inf")


class Peer(receive.Session):
    """A session with a node that completed a handshake, keyed by its UDP address.

    The fields the per-datagram receive path reads and writes (``addr``, ``node_id``,
    ``p2pfast``, ``last_seen``, ``dup``, ``gap_at``, ``pending_acks``, ``pending_ack_id``)
    live in the compiled ``Session`` base class."""

    __slots__ = (
        "ack_floor",
        "addr_str",
        "bulk",
        "dial_allowance",
        "echo_token",
        "first_seq",
        "gap_requests",
        "hello_id",
        "list_requests",
        "next_seq",
        "node_info",
        "nodeinfo_json",
        "peerinfo_prefix",
        "pings",
        "resend_allowance",
        "token",
        "window",
        "window_blocked",
    )

    def __init__(
        self,
        addr: Address,
        node_info: dict[str, Any],
        now: float,
        config: Config,
        *,
        first_seq: int = 1,
        peer_base: int = 0,
    ) -> None:
        self.addr = addr
        self.addr_str = format_addr(addr)
        self.node_id: str = node_info["id"]
        self.node_info = node_info
        caps = node_info["capabilities"]
        self.p2pfast = "p2pfast" in caps
        self.last_seen = now
        self.dup = window.DuplicateFilter(config.duplicate_window)
        if self.p2pfast:
            # A p2pfast peer announced the number before its first message: marked seen, so
            # the loss of the very first one is a gap like any other (asked for, not skipped).
            self.dup.check(peer_base)
        #: Coalesced Acks never repeat numbers below this (the base is not a message).
        self.ack_floor = peer_base + 1
        self.window = window.SendWindow(
            config.send_window,
            config.max_retries,
            config.rto_initial,
            config.rto_min,
            config.rto_max,
            0.001,
            peer_rx_window(node_info) if self.p2pfast else DEFAULT_RX_WINDOW,
        )
        #: Bytes of dials this peer's lists have earned (see Node._on_discovery_response).
        self.dial_allowance = 0
        #: Id of the HandshakeRequest that opened the session (None: we opened it).
        self.hello_id: str | None = None
        #: Our first sequence number in this session (random for a p2pfast node), and the next.
        self.first_seq = first_seq
        self.next_seq = first_seq
        self.gap_at = _INF
        self.gap_requests = 0  # Retransmit requests sent for the gap being waited on
        self.window_blocked = False
        #: Large-message transfer (fragments), created with the first one either way.
        self.bulk: BulkConnection | None = None
        #: Our pings awaiting a Pong, id -> time sent (oldest first).
        self.pings: dict[str, float] = {}
        #: Our peer-list requests awaiting an answer, id -> full_info (oldest first).
        self.list_requests: dict[str, bool] = {}
        # Anti-amplification: unproven until the peer echoes ``token`` (sent in our
        # HandshakeResponse) or we contacted it first; ``echo_token`` is the one it gave us.
        self.proven = False
        self.budget = 0
        self.token = ""
        self.echo_token = ""
        # Bytes we may still resend on the peer's Retransmit requests (set by the engine).
        self.resend_allowance: Any = None
        # Coalesced acknowledgements owed to a p2pfast peer: sequence numbers, last message id.
        self.pending_acks: list[int] = []
        self.pending_ack_id = ""
        # Pre-serialized list entries (keys sorted, as the Rust server emits them).
        self.peerinfo_prefix = b'{"addr":"%s","capabilities":%s,"id":"%s","last_seen":' % (
            self.addr_str.encode(),
            dump_payload(caps),
            self.node_id.encode(),
        )
        shown = dict(node_info)
        shown["listen_addr"] = self.addr_str
        self.nodeinfo_json = dump_payload(shown)

    def __repr__(self) -> str:
        return f"<Peer {self.node_id} at {self.addr_str}>"


def peer_rx_window(node_info: dict[str, Any]) -> int:
    """The duplicate-filter width a p2pfast peer announced (metadata ``rx_window``), else the
    default; the span of our send window towards it must stay below it."""
    text = node_info["metadata"].get(RX_WINDOW_KEY)
    if text is None:
        return DEFAULT_RX_WINDOW
    try:
        width = int(text)
    except ValueError:
        return 64
    return min(max(width, 64), 1 << 20)


def validate_node_info(payload: Any) -> dict[str, Any]:
    """Check a NodeInfo payload (all seven keys, types, non-empty name/version, bounded sizes).

    Returns a normalized copy; raises ValueError with a short reason.
    """
    if type(payload) is not dict:
        raise ValueError("NodeInfo must be an object")
    try:
        node_id = payload["id"]
        name = payload["name"]
        version = payload["version"]
        listen_addr = payload["listen_addr"]
        capabilities = payload["capabilities"]
        metadata = payload["metadata"]
        network_id = payload["network_id"]
    except KeyError as exc:
        raise ValueError(f"NodeInfo lacks {exc.args[0]!r}") from None
    try:
        node_id = normalize_uuid(node_id)
    except ProtocolError:
        raise ValueError("NodeInfo id is not a UUID") from None
    for key, value in (("name", name), ("version", version), ("network_id", network_id)):
        if type(value) is not str or len(value) > MAX_NAME_LEN:
            raise ValueError(f"NodeInfo {key} must be a string of at most {MAX_NAME_LEN} chars")
    if not name or not version:
        raise ValueError("NodeInfo name and version must not be empty")
    if type(listen_addr) is not str:
        raise ValueError("NodeInfo listen_addr must be a string")
    try:
        parse_addr(listen_addr)
    except ValueError:
        raise ValueError("NodeInfo listen_addr is not ip:port") from None
    if (
        type(capabilities) is not list
        or len(capabilities) > MAX_CAPABILITIES
        or not all(type(c) is str and len(c) <= MAX_CAPABILITY_LEN for c in capabilities)
    ):
        raise ValueError(
            f"NodeInfo capabilities must be at most {MAX_CAPABILITIES} strings of at most "
            f"{MAX_CAPABILITY_LEN} chars"
        )
    if (
        type(metadata) is not dict
        or len(metadata) > MAX_METADATA
        or not all(
            type(v) is str and len(k) <= MAX_METADATA_KEY_LEN and len(v) <= MAX_METADATA_VALUE_LEN
            for k, v in metadata.items()
        )
    ):
        raise ValueError(
            f"NodeInfo metadata must be at most {MAX_METADATA} strings of at most "
            f"{MAX_METADATA_VALUE_LEN} chars"
        )
    if len(listen_addr) > MAX_NAME_LEN:
        raise ValueError("NodeInfo listen_addr is too long")
    info = {
        "capabilities": capabilities,
        "id": node_id,
        "listen_addr": listen_addr,
        "metadata": metadata,
        "name": name,
        "network_id": network_id,
        "version": version,
    }
    if len(dump_payload(info)) > MAX_NODE_INFO_BYTES:
        raise ValueError(f"NodeInfo larger than {MAX_NODE_INFO_BYTES} bytes")
    return info
