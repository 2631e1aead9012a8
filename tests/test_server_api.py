"""The asyncio library API (``Config``, ``P2PServer``) on real loopback sockets under uvloop,
including delivery through a seeded lossy, duplicating, reordering relay."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from p2pfast import Config, P2PServer, SendError
from p2pfast.server import BindError

from .netutil import LossyRelay, on_uvloop


async def anext_(stream):
    async for item in stream:
        return item
    raise AssertionError("stream ended")


def config(**kw) -> Config:
    settings = dict(listen_address="127.0.0.1:0", network_id="api", enable_discovery=False)
    settings.update(kw)
    return Config(**settings)


@on_uvloop
async def test_connect_send_receive_and_stats():
    received: list = []
    async with (
        P2PServer(config(), on_data=received.append) as server,
        P2PServer(config()) as client,
    ):
        if sys.platform != "win32":  # Windows has no uvloop: the standard loop runs p2pfast
            import uvloop

            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        peer_id = await client.connect_to_peer(f"127.0.0.1:{server.local_address[1]}")
        assert peer_id == server.node_id
        assert client.node_id in server.peers
        assert server.peers[client.node_id].address == client.local_address
        for i in range(50):
            await client.send(server.node_id, {"i": i})
        assert [m.payload for m in received] == [{"i": i} for i in range(50)]
        assert {m.source for m in received} == {client.node_id}
        stats = server.get_stats()
        assert stats.peer_stats.total_peers == 1
        assert stats.messages_received["Data"] == 50
        assert stats.acks_sent >= 50 and stats.delivered == 50
        assert client.get_stats().acks_received >= 50


@on_uvloop
async def test_messages_async_iterator_and_routing_through_a_hub():
    async with P2PServer(config()) as hub, P2PServer(config()) as alice, P2PServer(config()) as bob:
        inbox = bob.messages()
        hub_addr = ("127.0.0.1", hub.local_address[1])
        await alice.connect_to_peer(hub_addr)
        await bob.connect_to_peer(hub_addr)
        # alice learns bob through the hub's discovery broadcast, then routes via the hub
        for _ in range(100):
            if alice.node.routes.next_hop(bob.node_id):
                break
            await asyncio.sleep(0.02)
        assert alice.node.routes.next_hop(bob.node_id) == hub.node_id
        await alice.send(bob.node_id, "via the hub")
        msg = await asyncio.wait_for(anext_(inbox), 5)
        assert (msg.payload, msg.source, msg.route_id is not None) == (
            "via the hub",
            alice.node_id,
            True,
        )


@on_uvloop
async def test_send_to_unknown_node_raises():
    async with P2PServer(config()) as server:
        with pytest.raises(SendError) as info:
            await server.send("4b1bfa44-87cb-44de-a11e-b0d648397b65", "x")
        assert info.value.reason == "no_route"


@on_uvloop
async def test_connect_refused_on_network_mismatch():
    async with P2PServer(config()) as server, P2PServer(config(network_id="other")) as client:
        with pytest.raises(ConnectionRefusedError, match="different network") as info:
            await client.connect_to_peer(server.local_address)
        assert info.value.code == "network_mismatch"


@on_uvloop
async def test_connect_timeout_when_nobody_answers():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        async with P2PServer(config(rto_initial=0.1, rto_min=0.05)) as client:
            with pytest.raises(TimeoutError):
                await client.connect_to_peer(sink.getsockname(), timeout=5)
    finally:
        sink.close()


@on_uvloop
async def test_bind_error_on_an_occupied_port():
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(BindError, match="address already in use"):
            await P2PServer(config(listen_address=f"127.0.0.1:{busy.getsockname()[1]}")).start()
    finally:
        busy.close()


@on_uvloop
async def test_stop_sends_disconnect_and_fails_pending_sends():
    async with P2PServer(config()) as server:
        client = P2PServer(config(rto_initial=5.0))
        await client.start()
        await client.connect_to_peer(server.local_address)
        await client.send(server.node_id, "first")
        await server.stop()
        await asyncio.sleep(0.1)
        assert server.node_id not in client.peers  # it heard the Disconnect
        await client.stop()


@on_uvloop
async def test_backpressure_waits_for_room_in_the_window():
    got: list = []
    async with (
        P2PServer(config(), on_data=got.append) as server,
        P2PServer(config(send_window=4, duplicate_window=64)) as client,
    ):
        await client.connect_to_peer(server.local_address)
        await asyncio.gather(*(client.send(server.node_id, i) for i in range(40)))
        assert sorted(m.payload for m in got) == list(range(40))


@pytest.mark.parametrize("seed", [1, 2])
@on_uvloop
async def test_exactly_once_delivery_through_a_lossy_relay(seed):
    """20% loss, 10% duplication, 10% reordering, both directions: every message arrives once."""
    got: list = []
    fast = dict(rto_initial=0.05, rto_min=0.02, rto_max=0.5, max_retries=30, gap_delay=0.01)
    async with (
        P2PServer(config(**fast), on_data=got.append) as server,
        P2PServer(config(**fast)) as client,
    ):
        relay = LossyRelay(server.local_address, loss=0.2, duplicate=0.1, reorder=0.1, seed=seed)
        relay_addr = await relay.start()
        try:
            for _ in range(10):  # the handshake itself may be lost: retry
                try:
                    await client.connect_to_peer(relay_addr, timeout=2)
                    break
                except TimeoutError:
                    continue
            total = 200
            await asyncio.wait_for(
                asyncio.gather(*(client.send(server.node_id, {"n": n}) for n in range(total))), 30
            )
            payloads = [m.payload["n"] for m in got]
            assert sorted(payloads) == list(range(total))  # all, and none twice
            assert relay.dropped > 0 and relay.duplicated > 0 and relay.reordered > 0
            stats = client.get_stats()
            assert stats.retransmits > 0
            assert server.get_stats().duplicates > 0
        finally:
            relay.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@on_uvloop
async def test_ipv6_nodes_exchange_data_through_the_batched_sender():
    received: list = []
    v6 = dict(listen_address="[::1]:0")
    async with (
        P2PServer(config(**v6), on_data=received.append) as server,
        P2PServer(config(**v6)) as client,
    ):
        peer_id = await client.connect_to_peer(f"[::1]:{server.local_address[1]}")
        assert peer_id == server.node_id
        # Many sends at once: the replies of one loop iteration leave in one batch.
        await asyncio.gather(*(client.send(server.node_id, {"i": i}) for i in range(64)))
        assert sorted(m.payload["i"] for m in received) == list(range(64))
        assert client.get_stats().acks_received >= 64
        assert server._endpoint.send_errors == 0 and client._endpoint.send_errors == 0
        assert server._endpoint._batch.syscalls > 0  # the acks went out through it
