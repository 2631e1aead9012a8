"""Live metrics in the Prometheus text format, read from the node at scrape time.

``start_metrics_server(server, "127.0.0.1:9100")`` serves ``/metrics`` from a
``prometheus_client`` HTTP server thread. Nothing is counted twice and nothing runs per
datagram: on each scrape, :class:`NodeCollector` takes one :meth:`P2PServer.get_stats`
snapshot on the node's own event loop and turns it into metric families (names prefixed
``p2pfast_``, counters ending in ``_total``, per-type and per-reason counts as labels).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

from .addr import parse_addr
from .protocol import TYPE_NAMES
from .stats import ServerStats

if TYPE_CHECKING:  # pragma: no cover
    from wsgiref.simple_server import WSGIServer

    from .server import P2PServer

#: ``ServerStats`` field → (metric name without ``_total``, help text), all counters.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("datagrams_in", "p2pfast_datagrams_received", "UDP datagrams received"),
    ("datagrams_out", "p2pfast_datagrams_sent", "UDP datagrams sent"),
    ("bytes_in", "p2pfast_received_bytes", "Bytes of UDP payload received"),
    ("bytes_out", "p2pfast_sent_bytes", "Bytes of UDP payload sent"),
    ("acks_sent", "p2pfast_acks_sent", "Messages this node acknowledged"),
    ("acks_received", "p2pfast_acks_received", "Sent messages the next hop acknowledged"),
    ("retransmits", "p2pfast_retransmits", "Data messages sent again (timer or request)"),
    ("retransmit_requests", "p2pfast_retransmit_requests", "Retransmit requests sent or answered"),
    ("duplicates", "p2pfast_duplicates", "Data messages received more than once and dropped"),
    ("delivered", "p2pfast_delivered", "Messages delivered to the application"),
    ("echoed", "p2pfast_echoed", "Plain Data messages echoed back (no application attached)"),
    ("forwarded", "p2pfast_forwarded", "Routed Data messages passed on to the next hop"),
    ("send_failures", "p2pfast_send_failures", "Reliable sends given up (timeout, peer gone)"),
    ("handshakes", "p2pfast_handshakes", "Handshakes completed (either direction)"),
    ("evictions", "p2pfast_evictions", "Peers evicted for silence or unreachability"),
    ("fragments_sent", "p2pfast_fragments_sent", "Fragments of large messages sent"),
    (
        "fragments_retransmitted",
        "p2pfast_fragments_retransmitted",
        "Fragments declared lost (or probed after a timeout) and sent again",
    ),
    ("fragments_received", "p2pfast_fragments_received", "Fragments of large messages received"),
    ("messages_reassembled", "p2pfast_messages_reassembled", "Large messages reassembled whole"),
    ("frames_in", "p2pfast_frames_received", "Binary frames received (fragments and control)"),
    ("frames_out", "p2pfast_frames_sent", "Binary frames sent (fragments and control)"),
)

#: How long a scrape waits for the node's event loop to take the snapshot.
SNAPSHOT_TIMEOUT = 5.0


def metric_families(
    stats: ServerStats, *, network_id: str = "", implementation: str = ""
) -> list[Metric]:
    """The metric families for one stats snapshot (pure: no I/O, no clock)."""
    peers = stats.peer_stats
    info = InfoMetricFamily("p2pfast_node", "This node's identity")
    info.add_metric(
        [],
        {
            "node_id": stats.node_id,
            "listen_address": stats.listen_address,
            "network_id": network_id,
            "implementation": implementation,
        },
    )
    families: list[Metric] = [info]
    for name, help_text, value in (
        ("p2pfast_peers", "Handshaken peers connected now", peers.total_peers),
        ("p2pfast_max_connections", "Most peers this node accepts", peers.max_connections),
        ("p2pfast_messages_in_flight", "Reliable messages awaiting an ack", peers.in_flight),
        ("p2pfast_routes", "Routes learned from discovery", peers.routes),
        ("p2pfast_uptime_seconds", "Seconds since the node started", stats.uptime),
    ):
        families.append(GaugeMetricFamily(name, help_text, value=value))
    for direction, counts in (("received", stats.messages_received), ("sent", stats.messages_sent)):
        family = CounterMetricFamily(
            f"p2pfast_messages_{direction}",
            f"Messages {direction}, by message type",
            labels=["type"],
        )
        for type_name in TYPE_NAMES:  # every type, zeros included, so rate() works at once
            family.add_metric([type_name], counts.get(type_name, 0))
        families.append(family)
    for field_name, name, help_text in COUNTERS:
        families.append(CounterMetricFamily(name, help_text, value=getattr(stats, field_name)))
    rejected = CounterMetricFamily(
        "p2pfast_rejected", "Datagrams refused or dropped, by reason", labels=["reason"]
    )
    for reason, count in sorted(stats.rejected.items()):
        rejected.add_metric([reason], count)
    families.append(rejected)
    return families


class NodeCollector(Collector):
    """A ``prometheus_client`` collector that asks ``snapshot()`` for the stats on each scrape."""

    def __init__(
        self,
        snapshot: Callable[[], ServerStats],
        *,
        network_id: str = "",
        implementation: str = "",
    ) -> None:
        self._snapshot = snapshot
        self._network_id = network_id
        self._implementation = implementation

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(
            self._snapshot(), network_id=self._network_id, implementation=self._implementation
        )


def loop_snapshot(server: P2PServer, loop: asyncio.AbstractEventLoop) -> Callable[[], ServerStats]:
    """A ``snapshot()`` that takes ``server.get_stats()`` on ``loop``'s thread (the node is
    not thread-safe), waiting at most :data:`SNAPSHOT_TIMEOUT` seconds."""

    def snapshot() -> ServerStats:
        if _running_loop() is loop:
            return server.get_stats()
        result: concurrent.futures.Future[ServerStats] = concurrent.futures.Future()

        def take() -> None:
            try:
                result.set_result(server.get_stats())
            except BaseException as exc:  # handed to the scraping thread
                result.set_exception(exc)

        loop.call_soon_threadsafe(take)
        return result.result(SNAPSHOT_TIMEOUT)

    return snapshot


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass
class MetricsServer:
    """A running metrics endpoint; :meth:`close` stops it."""

    address: tuple[str, int]
    registry: CollectorRegistry
    _httpd: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(SNAPSHOT_TIMEOUT)


def start_metrics_server(server: P2PServer, address: str) -> MetricsServer:
    """Serve ``server``'s metrics at ``http://address/metrics`` (``ip:port``; port 0 picks a
    free one, see :attr:`MetricsServer.address`). Call from the server's event loop, after
    ``start()``. Raises OSError if the address cannot be bound."""
    from . import USE_EXTENSIONS

    host, port = parse_addr(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        NodeCollector(
            loop_snapshot(server, asyncio.get_running_loop()),
            network_id=server.config.network_id,
            implementation="compiled" if USE_EXTENSIONS else "pure",
        )
    )
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    bound = httpd.socket.getsockname()
    return MetricsServer((str(bound[0]), int(bound[1])), registry, httpd, thread)


__all__ = [
    "MetricsServer",
    "NodeCollector",
    "loop_snapshot",
    "metric_families",
    "start_metrics_server",
]
