"""End-to-end delivery confirmation of routed reliable sends: a send completes when the
destination has the message, and fails (``no_route``, ``timeout``) when it cannot get there;
engines on the virtual network, and the asyncio API on real sockets."""

from __future__ import annotations

import asyncio

import pytest

from p2pfast import Config, P2PServer, SendError
from p2pfast._speedups import codec
from p2pfast.errors import WindowFull
from p2pfast.events import DataReceived, SendCompleted, SendFailed, WindowOpened
from p2pfast.node import Node
from p2pfast.protocol import MessageType as T

from .helpers import envelope, handshake
from .netutil import on_uvloop
from .vnet import VirtualNet, make_node


def triangle(**overrides) -> tuple[VirtualNet, Node, Node, Node]:
    """alice and bob, each connected to a hub only; alice has learned a route to bob."""
    net = VirtualNet(4, delay=0.005)
    hub = net.add(make_node(9000, **overrides))
    alice = net.add(make_node(9001, **overrides))
    bob = net.add(make_node(9002, **overrides))
    bob.app_attached = True
    net.connect(alice, hub)
    net.connect(bob, hub)
    assert net.run(2.0, lambda: alice.routes.next_hop(bob.node_id) == hub.node_id)
    assert alice.routes.speaks_p2pfast(bob.node_id)
    return net, hub, alice, bob


def outcome(net: VirtualNet, node: Node, handle: str):
    for event in net.events[node.local_addr]:
        if isinstance(event, (SendCompleted, SendFailed)) and event.handle == handle:
            return event
    return None


def test_a_routed_send_completes_only_when_the_destination_confirms():
    net, _hub, alice, bob = triangle()
    # the destination's confirmation is lost: the hop's Ack alone must not complete the send
    net.drop_rules.append(
        lambda data, src, dst: (
            src == bob.local_addr and b'"message_type":"Ack","payload":null' in data
        )
    )
    handle = alice.send_data(bob.node_id, {"n": 1}, net.now)
    net.flush()
    net.run(1.0)
    assert [e.payload for e in net.events[bob.local_addr] if isinstance(e, DataReceived)] == [
        {"n": 1}
    ]
    assert outcome(net, alice, handle) is None  # delivered, but alice has no word of it yet
    assert handle in alice.deliveries
    net.drop_rules.clear()
    handle2 = alice.send_data(bob.node_id, {"n": 2}, net.now)
    net.flush()
    assert net.run(2.0, lambda: outcome(net, alice, handle2) is not None)
    assert isinstance(outcome(net, alice, handle2), SendCompleted)
    # the confirmation's own hop events never reach the application
    handles = {
        e.handle for e in net.events[bob.local_addr] if isinstance(e, (SendCompleted, SendFailed))
    }
    assert handles == set()


def test_a_routed_send_to_a_node_that_left_fails_with_no_route():
    net, hub, alice, bob = triangle()
    bob.close(net.now)
    net.flush()
    net.run(0.5)
    assert bob.node_id not in hub.peers_by_id
    alice.routes.add(bob.node_id, hub.node_id, 2, True)  # alice has not heard yet
    handle = alice.send_data(bob.node_id, {"n": 1}, net.now)
    net.flush()
    assert net.run(1.0, lambda: outcome(net, alice, handle) is not None)
    event = outcome(net, alice, handle)
    assert isinstance(event, SendFailed) and event.reason == "no_route"


def test_an_unconfirmed_routed_send_times_out():
    net, hub, alice, bob = triangle(delivery_timeout=3.0)
    net.drop_rules.append(lambda data, src, dst: src == hub.local_addr and dst == bob.local_addr)
    handle = alice.send_data(bob.node_id, {"n": 1}, net.now)
    net.flush()
    start = net.now
    assert net.run(10.0, lambda: outcome(net, alice, handle) is not None)
    event = outcome(net, alice, handle)
    assert isinstance(event, SendFailed) and event.reason in ("timeout", "peer_gone")
    assert net.now - start <= 3.5


def test_the_end_to_end_window_holds_the_sender():
    net, _hub, alice, bob = triangle(send_window=8)
    bob.app_queue_limit = 0
    handles = [alice.send_data(bob.node_id, {"n": n}, net.now) for n in range(8)]
    with pytest.raises(WindowFull) as info:
        alice.send_data(bob.node_id, {"n": 8}, net.now)
    assert info.value.node_id == bob.node_id  # wait for this node's WindowOpened
    net.flush()
    assert net.run(2.0, lambda: all(outcome(net, alice, h) for h in handles))
    assert any(
        isinstance(e, WindowOpened) and e.node_id == bob.node_id
        for e in net.events[alice.local_addr]
    )
    alice.send_data(bob.node_id, {"n": 8}, net.now)


def test_a_seed_destination_completes_at_the_first_hop():
    """A destination without the p2pfast capability cannot confirm: the hop Ack completes."""
    net = VirtualNet(5, delay=0.005)
    hub = net.add(make_node(9000))
    alice = net.add(make_node(9001))
    net.connect(alice, hub)
    seed = ("127.0.0.1", 9555)
    hello, info, _ = handshake("seed")
    net.inject(hello, seed, hub.local_addr)
    hub.peers_by_addr[seed].proven = True
    assert net.run(2.0, lambda: alice.routes.next_hop(info["id"]) == hub.node_id)
    assert not alice.routes.speaks_p2pfast(info["id"])
    handle = alice.send_data(info["id"], "hi", net.now)
    net.flush()
    assert net.run(1.0, lambda: outcome(net, alice, handle) is not None)
    assert isinstance(outcome(net, alice, handle), SendCompleted)


def test_discovery_does_not_redial_a_peer_that_left_at_once():
    net = VirtualNet(6, delay=0.005)
    hub = net.add(
        make_node(
            9000, enable_discovery=True, discovery_port_range=(9001, 9001), reconnect_cooldown=30.0
        )
    )
    peer = net.add(make_node(9001))
    net.connect(hub, peer)
    hub.disconnect(peer.node_id, net.now)
    net.flush()
    # the peer is announced again (e.g. by another node's list): no redial during the cooldown
    hub._maybe_connect(peer.local_addr, net.now + 1)
    assert peer.local_addr not in hub._pending_connects
    hub._maybe_connect(peer.local_addr, net.now + 31)
    assert peer.local_addr in hub._pending_connects


def test_a_forged_confirmation_from_another_node_completes_nothing():
    net, hub, alice, bob = triangle()
    net.drop_rules.append(lambda data, src, dst: src == hub.local_addr and dst == bob.local_addr)
    handle = alice.send_data(bob.node_id, {"n": 1}, net.now)
    net.flush()
    net.run(0.2)
    forged = {
        "destination_node": alice.node_id,
        "source_node": hub.node_id,
        "route_id": codec.new_id(),
        "hop_count": 0,
        "max_hops": 8,
        "original_message": {"message_type": "Ack", "ack_for": handle, "id": codec.new_id()},
    }
    net.inject(envelope("Data", forged), hub.local_addr, alice.local_addr)
    assert outcome(net, alice, handle) is None and handle in alice.deliveries


def config(**kw) -> Config:
    settings = dict(listen_address="127.0.0.1:0", network_id="e2e", enable_discovery=False)
    settings.update(kw)
    return Config(**settings)


@on_uvloop
async def test_a_reliable_routed_send_to_a_node_that_left_raises():
    async with P2PServer(config()) as hub, P2PServer(config()) as alice, P2PServer(config()) as bob:
        inbox = bob.messages()
        await alice.connect_to_peer(("127.0.0.1", hub.local_address[1]))
        await bob.connect_to_peer(("127.0.0.1", hub.local_address[1]))
        for _ in range(200):
            if alice.node.routes.next_hop(bob.node_id):
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(alice.send(bob.node_id, "first"), 5)  # confirmed by bob
        got = await asyncio.wait_for(inbox.__anext__(), 5)
        assert got.payload == "first"
        bob_id = bob.node_id
        await bob.stop()
        for _ in range(200):
            if bob_id not in hub.node.peers_by_id:
                break
            await asyncio.sleep(0.01)
        alice.node.routes.add(bob_id, hub.node_id, 2, True)  # as if the hub's news were late
        with pytest.raises(SendError) as info:
            await asyncio.wait_for(alice.send(bob_id, "lost"), 5)
        assert info.value.reason == "no_route"


def test_a_destination_without_a_route_back_confirms_the_way_the_message_came():
    """bob joined first and has not heard of alice yet (the hub's broadcast is debounced): his
    confirmation goes back through the hub the message came from."""
    net = VirtualNet(7, delay=0.005)
    hub = net.add(make_node(9000, peerlist_broadcast_debounce_ms=5000))
    alice = net.add(make_node(9001))
    bob = net.add(make_node(9002))
    bob.app_attached = True
    net.connect(bob, hub)
    net.connect(alice, hub)
    assert alice.routes.next_hop(bob.node_id) == hub.node_id  # from the hub's first slice
    assert bob.routes.next_hop(alice.node_id) is None
    handle = alice.send_data(bob.node_id, {"n": 1}, net.now)
    net.flush()
    assert net.run(1.0, lambda: outcome(net, alice, handle) is not None)
    assert isinstance(outcome(net, alice, handle), SendCompleted)
    assert "confirmation_unroutable" not in bob.counters.rejected


def test_a_routed_send_has_exactly_one_outcome_whatever_order_they_come_in():
    """The destination's confirmation may overtake the first hop's Ack (lost, then sent
    again), and a refusal may come while the hop still holds the message: one event each."""
    net, hub, alice, bob = triangle()
    hop_acks = []

    def lose_first_hop_ack(data: bytes, src: tuple, dst: tuple) -> bool:
        msg = codec.decode(data)
        if src == hub.local_addr and dst == alice.local_addr and msg.type == T.Ack and not hop_acks:
            hop_acks.append(msg)
            return True
        return False

    net.drop_rules.append(lose_first_hop_ack)
    handle = alice.send_data(bob.node_id, {"n": 1}, net.now)
    net.flush()
    net.run(5.0)
    outcomes = [
        e
        for e in net.events[alice.local_addr]
        if isinstance(e, (SendCompleted, SendFailed)) and e.handle == handle
    ]
    assert hop_acks and [type(e) for e in outcomes] == [SendCompleted]
    assert not alice.deliveries.quiet and not len(alice.peers_by_id[hub.node_id].window)
    # a refusal that settles a send the hop has not acknowledged yet
    net.drop_rules = [
        lambda data, src, dst: src == hub.local_addr and codec.decode(data).type == T.Ack
    ]
    bob_id = bob.node_id
    bob.close(net.now)
    net.flush()
    net.run(0.5)
    alice.routes.add(bob_id, hub.node_id, 2, True)
    handle = alice.send_data(bob_id, {"n": 2}, net.now)
    net.flush()
    net.run(0.5)
    net.drop_rules.clear()
    net.run(5.0)
    outcomes = [
        e
        for e in net.events[alice.local_addr]
        if isinstance(e, (SendCompleted, SendFailed)) and e.handle == handle
    ]
    assert [(type(e), e.reason) for e in outcomes] == [(SendFailed, "no_route")]
    assert not alice.deliveries.quiet
