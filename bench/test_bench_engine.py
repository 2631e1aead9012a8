"""The protocol work per datagram without sockets: the endpoint shell + engine for a Data
that asks for an Ack, as the server handles it, with the endpoint's per-batch flush after
every 32 datagrams (what libuv reads per wake-up). Uses the active implementation, so run it
twice to compare: plain, then with P2PFAST_NO_EXTENSIONS=1."""

from __future__ import annotations

import asyncio
import time

import orjson

import p2pfast
from p2pfast.config import Config
from p2pfast.endpoint import NodeEndpoint
from p2pfast.node import Node

IMPL = "c" if p2pfast.USE_EXTENSIONS else "py"
PEER = ("127.0.0.1", 5000)


class _NullTransport:
    """Takes every datagram (no socket, so the endpoint has no batch sender)."""

    def sendto(self, data: bytes, addr: tuple) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return default

    def get_write_buffer_size(self) -> int:
        return 0


def _feed(endpoint: NodeEndpoint, datagrams) -> None:
    """Deliver ``datagrams`` as the event loop would: batches of 32, then the endpoint's flush."""
    received = endpoint.datagram_received
    for i, data in enumerate(datagrams, 1):
        received(data, PEER)
        if i % 32 == 0:
            endpoint._flush_batch()
    endpoint._flush_batch()


def _datagram(kind: str, seq: int | None = None, payload=None, requires_ack: bool = False) -> bytes:
    return orjson.dumps(
        {
            "id": "847332c3-d122-433c-99db-%012x" % (seq or 0),
            "message_type": kind,
            "timestamp": 1795634857,
            "payload": payload,
            "sender_addr": None,
            "sequence_number": seq,
            "requires_ack": requires_ack,
            "ack_for": None,
        }
    )


def _endpoint(loop: asyncio.AbstractEventLoop) -> NodeEndpoint:
    node = Node(
        Config(
            listen_address="127.0.0.1:18080", network_id="bench", enable_discovery=False, echo=False
        ),
        now=time.monotonic(),
    )

    async def make() -> NodeEndpoint:  # the endpoint binds to the running loop
        return NodeEndpoint(node, lambda: None)

    endpoint = loop.run_until_complete(make())
    endpoint.connection_made(_NullTransport())
    info = {
        "capabilities": ["handshake"],
        "id": "4b1bfa44-87cb-44de-a11e-b0d648397b65",
        "listen_addr": "0.0.0.0:1",
        "metadata": {},
        "name": "bench",
        "network_id": "bench",
        "version": "0.3.0",
    }
    _feed(endpoint, [_datagram("HandshakeRequest", payload=info)])
    return endpoint


def test_data_ack_per_datagram(benchmark):
    benchmark.group = "engine: Data+Ack per datagram (endpoint + engine, no socket)"
    benchmark.name = f"data_ack[{IMPL}]"
    loop = asyncio.new_event_loop()
    endpoint = _endpoint(loop)
    batch = [_datagram("Data", seq, {"blob": "x" * 64}, True) for seq in range(1, 200_001)]
    state = {"i": 0}

    def run():
        i = state["i"]
        _feed(endpoint, batch[i : i + 1000])
        state["i"] = i + 1000

    try:
        benchmark.pedantic(run, rounds=150, iterations=1)
    finally:
        loop.close()
    assert endpoint.node.counters.acks_sent >= 150_000


def test_ping_pong_per_datagram(benchmark):
    benchmark.group = "engine: Ping+Pong per datagram (endpoint + engine, no socket)"
    benchmark.name = f"ping_pong[{IMPL}]"
    loop = asyncio.new_event_loop()
    endpoint = _endpoint(loop)
    ping = _datagram("Ping")

    pings = [ping] * 1000

    def run():
        _feed(endpoint, pings)

    try:
        benchmark.pedantic(run, rounds=150, iterations=1)
    finally:
        loop.close()
    assert endpoint.node.counters.tx_by_type[3] >= 150_000
