"""Typed views of what peers tell us: :class:`NodeInfo` (a node's full description) and
:class:`PeerInfo` (one entry of a peer list). The wire carries them as JSON objects; the API
returns these frozen dataclasses, addresses as ``(host, port)`` tuples like everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .addr import Address, parse_addr


def _address(value: Any) -> Address | None:
    if type(value) is not str:
        return None
    try:
        return parse_addr(value)
    except ValueError:
        return None


def _strings(value: Any) -> tuple[str, ...]:
    if type(value) is not list:
        return ()
    return tuple(item for item in value if type(item) is str)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as it describes itself in a handshake or a ListNodesResponse.

    ``listen_addr`` is ``(host, port)`` (for a connected peer: the address we see it at), or
    None when the peer announced something that is not ``ip:port``.
    """

    node_id: str
    name: str
    network_id: str
    listen_addr: Address | None
    version: str
    capabilities: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, entry: Any) -> NodeInfo | None:
        """Build from a wire NodeInfo object; None if it lacks an id (untrusted input)."""
        if type(entry) is not dict or type(entry.get("id")) is not str:
            return None
        metadata = entry.get("metadata")
        return cls(
            node_id=entry["id"],
            name=str(entry.get("name", "")),
            network_id=str(entry.get("network_id", "")),
            listen_addr=_address(entry.get("listen_addr")),
            version=str(entry.get("version", "")),
            capabilities=_strings(entry.get("capabilities")),
            metadata=(
                {k: v for k, v in metadata.items() if type(k) is str and type(v) is str}
                if type(metadata) is dict
                else {}
            ),
        )


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer of some node: an entry of a DiscoveryResponse, or one of our own connected peers
    (:attr:`P2PServer.peers <p2pfast.server.P2PServer.peers>`).

    ``address`` is ``(host, port)``; ``last_seen`` is Unix seconds as the listing node saw it
    (None if it did not say); ``node_info`` is the full NodeInfo when known (our own peers).
    """

    node_id: str
    address: Address | None
    capabilities: tuple[str, ...] = ()
    last_seen: int | None = None
    node_info: NodeInfo | None = None

    @classmethod
    def from_wire(cls, entry: Any) -> PeerInfo | None:
        """Build from a wire PeerInfo object; None if it lacks an id (untrusted input)."""
        if type(entry) is not dict or type(entry.get("id")) is not str:
            return None
        last_seen = entry.get("last_seen")
        return cls(
            node_id=entry["id"],
            address=_address(entry.get("addr")),
            capabilities=_strings(entry.get("capabilities")),
            last_seen=last_seen if type(last_seen) is int else None,
        )


__all__ = ["NodeInfo", "PeerInfo"]
