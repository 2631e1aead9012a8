"""Events the protocol engine hands to the application (the sans-I/O side of the API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Event:
    """Base class of engine events."""

    __slots__ = ()


@dataclass(slots=True)
class PeerConnected(Event):
    """A handshake completed (either direction)."""

    node_id: str
    addr: tuple
    node_info: dict


@dataclass(slots=True)
class PeerDisconnected(Event):
    """A peer left: ``reason`` is ``disconnect`` (it said so), ``timeout``, ``unreachable``,
    ``replaced`` or ``shutdown``."""

    node_id: str
    addr: tuple
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
    """A peer answered our :meth:`Node.ping`; ``rtt`` in seconds. ``ping_id`` is the id of the
    Ping it answers (as :meth:`Node.ping` returned it)."""

    node_id: str
    rtt: float
    ping_id: str = ""


@dataclass(slots=True)
class PeerListReceived(Event):
    """A peer sent its peer list: ``entries`` are PeerInfo (DiscoveryResponse) or NodeInfo
    (ListNodesResponse, ``full_info`` True) objects, one datagram's worth."""

    node_id: str
    entries: list
    full_info: bool
    #: The id of the request this answers (as :meth:`Node.request_peers` returned it), None
    #: for an unsolicited broadcast.
    request_id: str | None = None


@dataclass(slots=True)
class ConnectFailed(Event):
    """An outgoing handshake to ``addr`` failed. ``code``: ``timeout``, ``network_mismatch``,
    ``server_full``, ``node_id_taken``, ``invalid_node_info``, ``refused`` (another refusal),
    ``shutdown``, ``busy`` (too many handshakes pending) or ``family`` (IPv4 node, IPv6 peer or
    the reverse). ``reason`` is English text; ``peer_text`` keeps the peer's own words."""

    addr: tuple
    reason: str
    code: str = ""
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
