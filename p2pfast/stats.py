"""Counters kept by the engine, and the snapshot ``P2PServer.get_stats()`` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._speedups import receive
from .protocol import TYPE_NAMES

#: The engine's counters (compiled with the receive path that bumps most of them).
Counters = receive.Counters
COUNTER_FIELDS: tuple[str, ...] = receive.COUNTER_FIELDS


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
    fragments_sent: int = 0
    fragments_retransmitted: int = 0
    fragments_received: int = 0
    messages_reassembled: int = 0
    frames_in: int = 0
    frames_out: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot(counters: Any, **context: Any) -> ServerStats:
    """Copy ``counters`` into a :class:`ServerStats` (zero counts left out of the per-type maps)."""
    plain = {name: getattr(counters, name) for name in COUNTER_FIELDS if name != "malformed"}
    plain["datagrams_in"] = counters.datagrams_in
    plain["datagrams_out"] = counters.datagrams_out
    return ServerStats(
        messages_received={n: c for n, c in zip(TYPE_NAMES, counters.rx_by_type, strict=True) if c},
        messages_sent={n: c for n, c in zip(TYPE_NAMES, counters.tx_by_type, strict=True) if c},
        rejected=dict(counters.rejected),
        **plain,
        **context,
    )


def format_stats_line(stats: ServerStats) -> str:
    """The periodic log line, in words a reader understands without the source::

    stats: 3/100 peers, datagrams 1200 in / 1180 out, messages acked by us 500 / by peers
    498, retransmitted 2, duplicates dropped 0, delivered 10, forwarded 4, send failures 0,
    evicted 0, rejected 3 (not_json 2, handshake_required 1)
    """
    peers = stats.peer_stats
    rejected = sum(stats.rejected.values())
    detail = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.rejected.items()))
    return (
        f"stats: {peers.total_peers}/{peers.max_connections} peers, "
        f"datagrams {stats.datagrams_in} in / {stats.datagrams_out} out, "
        f"messages acked by us {stats.acks_sent} / by peers {stats.acks_received}, "
        f"retransmitted {stats.retransmits}, duplicates dropped {stats.duplicates}, "
        f"delivered {stats.delivered}, forwarded {stats.forwarded}, "
        f"send failures {stats.send_failures}, in flight {peers.in_flight}, "
        f"evicted {stats.evictions}, rejected {rejected}" + (f" ({detail})" if detail else "")
    )
