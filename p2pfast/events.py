"""Events the protocol engine hands to the application (the sans-I/O side of the API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .addr import Address


class Event:
    """Base class of engine events."""

    __slots__ = ()


@dataclass(slots=True)
class PeerConnected(Event):
    """A handshake completed (either direction)."""

    node_id: str
    addr: Address
    node_info: dict[str, Any]


@dataclass(slots=True)
class PeerDisconnected(Event):
    """A peer left: ``reason`` is ``disconnect`` (it said so), ``timeout``, ``unreachable``,
    ``replaced`` or ``shutdown``."""

    node_id: str
    addr: Address
    reason: str


@dataclass(slots=True)
class DataReceived(Event):
    """Application data for this node, delivered exactly once per message.

    ``source`` is the sending node's id (for routed data, the ``source_node`` it claims);
    ``message_id`` is the envelope id; ``route_id`` is set for routed data.
    """

    source: str
    payload: Any
    message_id: str
    route_id: str | None = None
    hops: int = 0


@dataclass(slots=True)
class SendCompleted(Event):
    """A message sent with :meth:`Node.send_data` was acknowledged by the next hop."""

    handle: str


@dataclass(slots=True)
class SendFailed(Event):
    """A message sent with :meth:`Node.send_data` cannot be delivered (``reason``: ``timeout``,
    ``peer_gone``, ``no_route``, ``shutdown``)."""

    handle: str
    reason: str


@dataclass(slots=True)
class WindowOpened(Event):
    """The send window towards ``node_id`` has room again (backpressure released)."""

    node_id: str


@dataclass(slots=True)
class PongReceived(Event):
    """A peer answered our :meth:`Node.ping`; ``rtt`` in seconds; ``ping_id`` is the id
    :meth:`Node.ping` returned for the Ping answered."""

    node_id: str
    rtt: float
    ping_id: str = ""


@dataclass(slots=True)
class PeerListReceived(Event):
    """A peer sent its peer list: ``entries`` are PeerInfo (DiscoveryResponse) or NodeInfo
    (ListNodesResponse, ``full_info`` True) objects as the wire carries them (decoded JSON,
    unchecked: ``PeerInfo.from_wire`` / ``NodeInfo.from_wire`` check them), one datagram's
    worth. ``request_id`` is the id :meth:`Node.request_peers` returned for the request
    answered, None for a list the peer sent unasked (a join broadcast)."""

    node_id: str
    entries: list[Any]
    full_info: bool
    request_id: str | None = None


@dataclass(slots=True)
class ConnectFailed(Event):
    """An outgoing handshake to ``addr`` failed: ``code`` says why (``timeout``,
    ``network_mismatch``, ``server_full``, ``node_id_taken``, ``invalid_node_info``,
    ``refused``, ``shutdown``, ``busy``, ``family``), ``reason`` in English, ``peer_text`` the
    peer's own words when it sent any."""

    addr: Address
    reason: str
    code: str = "refused"
    peer_text: str = ""


__all__ = [
    "ConnectFailed",
    "DataReceived",
    "Event",
    "PeerConnected",
    "PeerDisconnected",
    "PeerListReceived",
    "PongReceived",
    "SendCompleted",
    "SendFailed",
    "WindowOpened",
]
