"""Each request is matched to its own reply: overlapping pings each get their own RTT, and
list_peers() returns the answer to its request, never an unrelated broadcast."""

from __future__ import annotations

import asyncio

from p2pfast import P2PServer, PongReceived

from .apiutil import Relay, config, until
from .netutil import on_uvloop

HOLD = 0.4


@on_uvloop
async def test_overlapping_pings_each_get_the_rtt_of_their_own_pong():
    async with P2PServer(config()) as peer, P2PServer(config()) as server:
        held = []

        def rule(direction: str, kind: str) -> object:
            if direction == "back" and kind == "Pong":
                held.append(kind)
                return HOLD if len(held) == 1 else None  # the first Pong comes back late
            return None

        relay = Relay(peer.local_address, rule)
        await relay.start()
        try:
            await server.connect_to_peer(relay.addr)
            events = server.events()
            first = asyncio.ensure_future(server.ping(peer.node_id))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(server.ping(peer.node_id))
            rtt_second = await second
            rtt_first = await first
            # The second Pong arrived first: it must not answer the first ping, nor the
            # first Pong the second.
            assert rtt_second < HOLD / 2, rtt_second
            assert rtt_first >= HOLD * 0.9, rtt_first  # its Pong was held back HOLD s
            pongs = []
            while len(pongs) < 2:
                ev = await asyncio.wait_for(events.__anext__(), 5)
                if isinstance(ev, PongReceived):
                    pongs.append(ev)
            assert pongs[0].ping_id and pongs[0].ping_id != pongs[1].ping_id
        finally:
            relay.close()


@on_uvloop
async def test_list_peers_returns_the_answer_to_its_request_not_a_broadcast():
    fast = dict(peerlist_broadcast_debounce_ms=10)
    async with (
        P2PServer(config(**fast)) as hub,
        P2PServer(config()) as alice,
        P2PServer(config()) as carol,
        P2PServer(config()) as bob,
    ):
        delay_next = False

        def rule(direction: str, kind: str) -> object:
            nonlocal delay_next
            if direction == "back" and kind == "DiscoveryResponse" and delay_next:
                delay_next = False
                return HOLD  # the answer to our request comes back late...
            return None

        relay = Relay(hub.local_address, rule)
        await relay.start()
        try:
            await alice.connect_to_peer(relay.addr)
            await carol.connect_to_peer(hub.local_address)
            await until(lambda: alice.node.routes.next_hop(carol.node_id) == hub.node_id)
            delay_next = True
            asking = asyncio.ensure_future(alice.list_peers(hub.node_id))
            await asyncio.sleep(0.05)
            await bob.connect_to_peer(hub.local_address)  # ...after a broadcast about bob
            listed = await asyncio.wait_for(asking, 5)
            assert {p.node_id for p in listed} == {carol.node_id}
        finally:
            relay.close()
