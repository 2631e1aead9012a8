"""Counters kept by the engine, and the snapshot ``P2PServer.get_stats()`` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .protocol import TYPE_NAMES


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


@dataclass
class PeerStats:
    total_peers: int
    max_connections: int
    in_flight: int
    routes: int


@dataclass
class ServerStats:
    """A point-in-time copy of the node's counters."""

    node_id: str
    listen_address: str
    uptime: float
    peer_stats: PeerStats
    messages_received: dict[str, int] = field(default_factory=dict)
    messages_sent: dict[str, int] = field(default_factory=dict)
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    acks_sent: int = 0
    acks_received: int = 0
    retransmits: int = 0
    retransmit_requests: int = 0
    duplicates: int = 0
    delivered: int = 0
    echoed: int = 0
    forwarded: int = 0
    send_failures: int = 0
    handshakes: int = 0
    evictions: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot(counters: Counters, **context: Any) -> ServerStats:
    """Copy ``counters`` into a :class:`ServerStats` (zero counts left out of the per-type maps)."""
    plain = {
        name: getattr(counters, name)
        for name in Counters.__slots__
        if name not in ("rx_by_type", "tx_by_type", "rejected", "malformed")
    }
    plain["datagrams_in"] = counters.datagrams_in
    plain["datagrams_out"] = counters.datagrams_out
    return ServerStats(
        messages_received={n: c for n, c in zip(TYPE_NAMES, counters.rx_by_type) if c},
        messages_sent={n: c for n, c in zip(TYPE_NAMES, counters.tx_by_type) if c},
        rejected=dict(counters.rejected),
        **plain,
        **context,
    )
