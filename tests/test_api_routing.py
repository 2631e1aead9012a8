"""Sends and handshakes at the edges of the transport: more routed sends than the window holds
(the window that fills is the next hop's), handshakes through heavy loss retried until the
caller's deadline, and a timed-out connect that must not go on in the background."""

from __future__ import annotations

import asyncio

import pytest

from p2pfast import P2PServer, P2PTimeout

from .apiutil import Relay, config, until
from .netutil import LossyRelay, on_uvloop


@on_uvloop
async def test_more_routed_sends_than_the_window_holds_all_complete():
    """400 concurrent routed sends through a hub with a window of 64: send() waits on the
    window of the next hop (the hub), not on the destination's, and every one completes."""
    got: list = []
    async with (
        P2PServer(config()) as hub,
        P2PServer(config(send_window=64)) as alice,
        P2PServer(config(), on_data=got.append) as bob,
    ):
        await alice.connect_to_peer(hub.local_address)
        await bob.connect_to_peer(hub.local_address)
        await until(lambda: alice.node.routes.next_hop(bob.node_id) == hub.node_id)
        total = 400
        await asyncio.wait_for(
            asyncio.gather(*(alice.send(bob.node_id, {"n": n}) for n in range(total))), 30
        )
        await until(lambda: len(got) == total, timeout=10)
        assert sorted(m.payload["n"] for m in got) == list(range(total))
        assert all(m.route_id is not None for m in got)
        assert not alice._window_waiters and not alice._sends


@on_uvloop
async def test_sixteen_handshakes_through_thirty_percent_loss_all_succeed():
    """16 of 16 handshakes through a seeded 30 % loss relay (both directions) succeed within a
    15 s deadline: connect_to_peer retries until the caller's deadline, not 3 attempts."""
    async with P2PServer(config(max_connections=64)) as server:
        relays = [
            LossyRelay(server.local_address, loss=0.3, duplicate=0.0, reorder=0.0, seed=seed)
            for seed in range(16)
        ]
        clients = [P2PServer(config(rto_initial=0.1)) for _ in relays]
        try:
            addrs = [await relay.start() for relay in relays]
            for client in clients:
                await client.start()
            results = await asyncio.gather(
                *(c.connect_to_peer(a, timeout=15) for c, a in zip(clients, addrs, strict=True)),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            assert failed == [], failed
            assert results == [server.node_id] * 16
            assert sum(r.dropped for r in relays) > 0
        finally:
            for client in clients:
                await client.stop()
            for relay in relays:
                relay.close()


@on_uvloop
async def test_a_timed_out_connect_does_not_go_on_in_the_background():
    async with P2PServer(config()) as peer, P2PServer(config(rto_initial=0.2)) as client:
        relay = Relay(peer.local_address, lambda direction, kind: "drop")
        await relay.start()
        try:
            events = client.events()
            with pytest.raises(P2PTimeout):
                await client.connect_to_peer(relay.addr, timeout=0.5)
            assert not client.node._pending_connects  # abandoned, not retrying
            at_timeout = []
            while True:
                try:
                    at_timeout.append(await asyncio.wait_for(events.__anext__(), 0.2))
                except asyncio.TimeoutError:
                    break
            assert [(type(e).__name__, e.code) for e in at_timeout] in (
                [],
                [("ConnectFailed", "timeout")],  # the engine's own deadline, same moment
            )
            relay.rule = lambda direction, kind: None  # the path heals
            await asyncio.sleep(2.5)
            assert client.peers == {} and peer.peers == {}
            sent = [d for d, kind in relay.seen if kind == "HandshakeRequest"]
            late = len(sent)
            await asyncio.sleep(0.5)
            assert len([d for d, kind in relay.seen if kind == "HandshakeRequest"]) == late
            await client.stop()
            assert [type(e).__name__ async for e in events] == []  # nothing late
        finally:
            relay.close()


@on_uvloop
async def test_cancelling_connect_abandons_the_handshake():
    async with P2PServer(config(rto_initial=0.2)) as client:
        relay = Relay(("127.0.0.1", 9), lambda direction, kind: "drop")
        await relay.start()
        try:
            task = asyncio.ensure_future(client.connect_to_peer(relay.addr, timeout=30))
            await until(lambda: bool(client.node._pending_connects))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not client.node._pending_connects and not client._connects
        finally:
            relay.close()
