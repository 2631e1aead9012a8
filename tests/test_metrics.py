"""Live metrics (``--metrics``) and the periodic stats line: a real ``p2pfast-server`` scraped
over 127.0.0.1, values checked before and after traffic; the collector on its own."""

from __future__ import annotations

import re
import sys
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from p2pfast.metrics import metric_families
from p2pfast.protocol import TYPE_NAMES
from p2pfast.protocol import MessageType as T
from p2pfast.stats import PeerStats, ServerStats, format_stats_line

from .helpers import envelope, handshake
from .netutil import SeedClient, ServerProcess, needs_posix_signals

METRICS_LINE = re.compile(r"metrics at (http://127\.0\.0\.1:\d+/metrics)")


def scrape(url: str) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], str]:
    """``{(sample name, sorted labels): value}`` and the Content-Type of one scrape."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, content_type


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def server_with_metrics():
    with ServerProcess("--network-id", "test", "--metrics", "127.0.0.1:0") as proc:
        match = None
        for line in proc.stderr_lines:
            match = METRICS_LINE.search(line) or match
        assert match, proc.stderr_lines
        yield proc, match.group(1)


def test_metrics_are_off_by_default() -> None:
    with ServerProcess("--network-id", "test") as proc:
        assert not any("metrics at" in line for line in proc.stderr_lines)


def test_scrape_reports_the_node_and_values_move_after_traffic(server_with_metrics) -> None:
    proc, url = server_with_metrics
    before, content_type = scrape(url)
    assert content_type.startswith("text/plain")
    assert value(before, "p2pfast_peers") == 0
    assert value(before, "p2pfast_messages_received_total", type="Ping") == 0
    assert value(before, "p2pfast_handshakes_total") == 0
    info = [key for key in before if key[0] == "p2pfast_node_info"]
    assert (
        len(info) == 1
        and ("node_id", proc.node_id) in info[0][1]
        and ("network_id", "test") in info[0][1]
    )
    # Every type is listed from the start (so rate() works), received and sent.
    for name in TYPE_NAMES:
        assert value(before, "p2pfast_messages_sent_total", type=name) >= 0

    client, stranger = SeedClient(proc.addr), SeedClient(proc.addr)
    try:
        data, _, _ = handshake("scraped", network_id="test")
        client.send(data)
        client.recv_type(T.HandshakeResponse)
        for _ in range(7):
            client.send(envelope("Ping"))
            client.recv_type(T.Pong)
        client.send(envelope("Data", {"x": 1}))
        client.recv_type(T.Data)  # the echo
        for _ in range(3):
            stranger.send(b"not json")
        stranger.send(envelope("ListNodesRequest"))
        stranger.recv_type(T.Error)
        time.sleep(0.2)
        after, _ = scrape(url)
    finally:
        client.close()
        stranger.close()

    assert value(after, "p2pfast_peers") == 1
    assert value(after, "p2pfast_handshakes_total") == 1
    assert value(after, "p2pfast_messages_received_total", type="Ping") == 7
    assert value(after, "p2pfast_messages_sent_total", type="Pong") == 7
    assert value(after, "p2pfast_messages_received_total", type="Data") == 1
    assert value(after, "p2pfast_echoed_total") == 1
    assert value(after, "p2pfast_rejected_total", reason="not_json") == 3
    assert value(after, "p2pfast_rejected_total", reason="handshake_required") == 1
    assert value(after, "p2pfast_datagrams_received_total") >= 13
    assert value(after, "p2pfast_received_bytes_total") > value(
        before, "p2pfast_received_bytes_total"
    )
    assert value(after, "p2pfast_uptime_seconds") > value(before, "p2pfast_uptime_seconds")
    # Conventions: our names are prefixed, counters end in _total.
    ours = {name for name, _ in after if not name.startswith(("python_", "process_"))}
    assert all(name.startswith("p2pfast_") for name in ours), ours
    if sys.platform != "win32":  # and it exits cleanly on SIGTERM (Windows has none to send)
        assert proc.terminate() == 0


def make_stats(**overrides: Any) -> ServerStats:
    fields: dict[str, Any] = {
        "node_id": "6f1c0d0e-0000-4000-8000-000000000001",
        "listen_address": "127.0.0.1:9000",
        "uptime": 12.5,
        "peer_stats": PeerStats(total_peers=3, max_connections=100, in_flight=4, routes=2),
        "messages_received": {"Data": 10, "Ping": 2},
        "messages_sent": {"Ack": 10},
        "datagrams_in": 12,
        "datagrams_out": 11,
        "acks_sent": 10,
        "acks_received": 9,
        "retransmits": 1,
        "duplicates": 2,
        "delivered": 8,
        "rejected": {"not_json": 2, "handshake_required": 1},
    }
    fields.update(overrides)
    return ServerStats(**fields)


def test_metric_families_map_every_counter() -> None:
    families = {
        f.name: f for f in metric_families(make_stats(), network_id="n", implementation="pure")
    }
    assert families["p2pfast_peers"].samples[0].value == 3
    assert families["p2pfast_messages_in_flight"].samples[0].value == 4
    assert families["p2pfast_messages_received"].type == "counter"
    received = {
        s.labels["type"]: s.value
        for s in families["p2pfast_messages_received"].samples
        if s.name.endswith("_total")
    }
    assert received["Data"] == 10 and received["Ping"] == 2 and received["Pong"] == 0
    assert len(received) == len(TYPE_NAMES)
    rejected = {
        s.labels["reason"]: s.value
        for s in families["p2pfast_rejected"].samples
        if s.name.endswith("_total")
    }
    assert rejected == {"not_json": 2, "handshake_required": 1}
    assert families["p2pfast_acks_received"].samples[0].value == 9
    assert families["p2pfast_acks_received"].samples[0].name == "p2pfast_acks_received_total"
    assert families["p2pfast_node"].samples[0].labels["implementation"] == "pure"


def test_stats_line_says_what_each_number_is() -> None:
    line = format_stats_line(make_stats())
    assert line == (
        "stats: 3/100 peers, datagrams 12 in / 11 out, messages acked by us 10 / by peers 9, "
        "retransmitted 1, duplicates dropped 2, delivered 8, forwarded 0, send failures 0, "
        "in flight 4, evicted 0, rejected 3 (handshake_required 1, not_json 2)"
    )
    assert "acks=" not in line and "\n" not in line
    assert format_stats_line(make_stats(rejected={})).endswith("rejected 0")


def test_library_node_serves_metrics_from_its_own_loop() -> None:
    """In-process use: the scrape runs on the exporter's thread, the snapshot on the loop."""
    import asyncio

    from p2pfast import Config, P2PServer
    from p2pfast.metrics import start_metrics_server

    from .netutil import on_uvloop

    @on_uvloop
    async def scenario() -> None:
        config = Config(listen_address="127.0.0.1:0", enable_discovery=False, network_id="lib")
        async with P2PServer(config) as hub, P2PServer(config) as peer:
            metrics = start_metrics_server(hub, "127.0.0.1:0")
            try:
                assert metrics.url.startswith("http://127.0.0.1:")
                await peer.connect_to_peer(hub.local_address)
                await peer.ping(hub.node_id)
                samples, _ = await asyncio.to_thread(scrape, metrics.url)
            finally:
                metrics.close()
            assert value(samples, "p2pfast_peers") == 1
            assert value(samples, "p2pfast_messages_received_total", type="Ping") >= 1
            assert value(samples, "p2pfast_handshakes_total") == 1

    scenario()


def test_every_scalar_counter_of_the_stats_is_exported() -> None:
    """A counter added to ServerStats must get a metric (COUNTERS in p2pfast/metrics.py)."""
    import dataclasses

    from p2pfast.metrics import COUNTERS

    exported = {field_name for field_name, _, _ in COUNTERS}
    scalar = {
        f.name
        for f in dataclasses.fields(ServerStats)
        if f.type in ("int", int) and f.name not in ("uptime",)
    }
    assert scalar, "no scalar counters found: the test no longer sees ServerStats' fields"
    assert scalar <= exported, scalar - exported


@needs_posix_signals
def test_server_stats_log_line_has_labels_a_reader_understands() -> None:
    with ServerProcess("--network-id", "test", "--stats-interval", "0.3") as proc:
        time.sleep(1.0)
        assert proc.terminate() == 0
        text = "".join(proc.stderr_lines) + proc.proc.stderr.read()  # type: ignore[union-attr]
    lines = [line for line in text.splitlines() if "stats:" in line]
    assert lines, text
    assert all("acks=" not in line for line in lines), lines
    assert any("peers, datagrams" in line and "messages acked by us" in line for line in lines)
