"""A handshaken peer's session state, and validation of the NodeInfo that opens it."""

from __future__ import annotations

from typing import Any

from ._speedups import codec, receive, window
from .addr import format_addr, parse_addr
from .config import Config
from .errors import ProtocolError

dump_payload = codec.dump_payload
normalize_uuid = codec.normalize_uuid

#: Bounds on what a peer may announce about itself (memory per peer is fixed).
MAX_NAME_LEN = 256
MAX_CAPABILITIES = 32
MAX_METADATA = 32
MAX_FIELD_LEN = 256
_INF = float("inf")


class Peer(receive.Session):
    """A session with a node that completed a handshake, keyed by its UDP address.

    The fields the per-datagram receive path reads and writes (``addr``, ``node_id``,
    ``p2pfast``, ``last_seen``, ``dup``, ``gap_at``, ``pending_acks``, ``pending_ack_id``)
    live in the compiled ``Session`` base class."""

    __slots__ = (
        "addr_str",
        "node_info",
        "window",
        "next_seq",
        "peerinfo_prefix",
        "nodeinfo_json",
        "window_blocked",
        "ping_sent_at",
    )

    def __init__(self, addr: tuple, node_info: dict, now: float, config: Config) -> None:
        self.addr = addr
        self.addr_str = format_addr(addr)
        self.node_id: str = node_info["id"]
        self.node_info = node_info
        caps = node_info["capabilities"]
        self.p2pfast = "p2pfast" in caps
        self.last_seen = now
        self.dup = window.DuplicateFilter(config.duplicate_window)
        self.window = window.SendWindow(
            config.send_window,
            config.max_retries,
            config.rto_initial,
            config.rto_min,
            config.rto_max,
        )
        self.next_seq = 1
        self.gap_at = _INF
        self.window_blocked = False
        self.ping_sent_at = 0.0  # when our last ping() was sent, 0.0 if none is pending
        # Coalesced acknowledgements owed to a p2pfast peer: sequence numbers, last message id.
        self.pending_acks: list[int] = []
        self.pending_ack_id = ""
        # Pre-serialized list entries (keys sorted, as the Rust server emits them).
        self.peerinfo_prefix = (
            b'{"addr":"%s","capabilities":%s,"id":"%s","last_seen":'
            % (self.addr_str.encode(), dump_payload(caps), self.node_id.encode())
        )
        shown = dict(node_info)
        shown["listen_addr"] = self.addr_str
        self.nodeinfo_json = dump_payload(shown)

    def __repr__(self) -> str:
        return f"<Peer {self.node_id} at {self.addr_str}>"


def validate_node_info(payload: Any) -> dict:
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
        or not all(type(c) is str and len(c) <= MAX_FIELD_LEN for c in capabilities)
    ):
        raise ValueError("NodeInfo capabilities must be a short list of strings")
    if (
        type(metadata) is not dict
        or len(metadata) > MAX_METADATA
        or not all(
            type(v) is str and len(k) <= MAX_FIELD_LEN and len(v) <= MAX_FIELD_LEN
            for k, v in metadata.items()
        )
    ):
        raise ValueError("NodeInfo metadata must be a small string-to-string object")
    return {
        "capabilities": capabilities,
        "id": node_id,
        "listen_addr": listen_addr,
        "metadata": metadata,
        "name": name,
        "network_id": network_id,
        "version": version,
    }
