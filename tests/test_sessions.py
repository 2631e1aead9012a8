"""Sessions and discovery under restarts, forgeries and lies (defects the network simulator
found): a restarted node is served exactly once, a forged repeated handshake changes nothing,
a forged handshake is never advertised, a lying peer list costs few dials, and a node missed by
the broadcasts is still found."""

from __future__ import annotations

import uuid

from p2pfast._speedups import codec
from p2pfast.events import DataReceived, SendCompleted
from p2pfast.node import DIALS_PER_LIST, Node
from p2pfast.protocol import MessageType as T

from .helpers import envelope, handshake, node_info
from .vnet import VirtualNet, make_node


def got(net: VirtualNet, node: Node) -> list:
    return [e.payload["n"] for e in net.events[node.local_addr] if isinstance(e, DataReceived)]


def send_all(net: VirtualNet, src: Node, dst_id: str, numbers: range) -> None:
    for n in numbers:
        src.send_data(dst_id, {"n": n}, net.now)
        net.flush()
        net.run(0.01)


def test_a_restarted_node_with_the_same_id_is_served_exactly_once():
    net = VirtualNet(31, delay=0.005)
    fixed_id = str(uuid.uuid4())
    bob = net.add(make_node(9000))
    alice = net.add(make_node(9001, node_id=fixed_id))
    bob.app_attached = alice.app_attached = True
    net.connect(alice, bob)
    send_all(net, alice, bob.node_id, range(50))
    send_all(net, bob, alice.node_id, range(50))
    net.run(1.0)
    assert got(net, bob) == list(range(50)) and got(net, alice) == list(range(50))
    # alice restarts: same id, same address, a fresh engine; bob still holds the old session
    reborn = make_node(9001, node_id=fixed_id)
    reborn.app_attached = True
    net.nodes[reborn.local_addr] = reborn
    net.events[reborn.local_addr] = []
    net.connect(reborn, bob)
    assert bob.peers_by_id[fixed_id].addr == reborn.local_addr
    send_all(net, reborn, bob.node_id, range(50, 100))
    send_all(net, bob, fixed_id, range(50, 100))
    net.run(2.0)
    assert got(net, bob) == list(range(100))  # nothing taken for a duplicate of the old session
    assert got(net, reborn) == list(range(50, 100))


def test_a_forged_repeated_handshake_cannot_make_a_message_acked_but_lost():
    """Without authentication a forged handshake can restart a session (as in the seed
    protocol); it must not make any message acknowledged and not delivered."""
    net = VirtualNet(32, delay=0.005)
    bob = net.add(make_node(9000))
    alice = net.add(make_node(9001))
    bob.app_attached = True
    net.connect(alice, bob)
    send_all(net, alice, bob.node_id, range(10))
    forged_info = node_info("alice", node_id=alice.node_id, caps=["handshake", "p2pfast"])
    for base in (5, 2**31 - 10):  # below and far above alice's real numbering
        forged = envelope(
            "HandshakeRequest", forged_info, seq=base, requires_ack=True, sender_addr="0.0.0.0:0"
        )
        net.inject(forged, alice.local_addr, bob.local_addr)
        handles = []
        for n in range(10):
            try:
                handles.append(alice.send_data(bob.node_id, {"n": 100 + n}, net.now))
            except Exception:
                break
            net.flush()
            net.run(0.01)
        net.run(60.0)
        completed = {e.handle for e in net.events[alice.local_addr] if isinstance(e, SendCompleted)}
        delivered_ids = {
            e.message_id for e in net.events[bob.local_addr] if isinstance(e, DataReceived)
        }
        assert completed & set(handles) <= delivered_ids  # acked => delivered
    assert len(got(net, bob)) == len(set(got(net, bob)))  # and never twice


def test_a_forged_handshake_is_never_advertised_nor_dialled():
    net = VirtualNet(33, delay=0.002)
    hub = net.add(make_node(9000, enable_discovery=False))
    nodes = [
        net.add(make_node(9001 + i, enable_discovery=True, discovery_port_range=(1, 1)))
        for i in range(5)
    ]
    for node in nodes:
        net.connect(node, hub)
    victim = ("127.0.0.9", 5555)
    hello, info, _ = handshake("forged", caps=["handshake", "p2pfast"])
    net.inject(hello, victim, hub.local_addr)
    for node in nodes:  # they also ask the hub for its whole list
        node.request_peers(hub.node_id, net.now)
    net.flush()
    net.run(5.0)
    assert info["id"] in hub.peers_by_id
    assert net.sent_to[victim] <= 3 * net.sent_by[victim]  # the hub's own replies, budgeted
    from_others = sum(
        1 for n in nodes if victim in n._pending_connects or victim in n.peers_by_addr
    )
    assert from_others == 0
    assert all(n.routes.next_hop(info["id"]) is None for n in nodes)


def test_a_lying_peer_list_costs_few_dials():
    net = VirtualNet(34, delay=0.002)
    liar = net.add(make_node(9000))
    honest = net.add(
        make_node(9001, enable_discovery=True, discovery_port_range=(1, 1), reconnect_cooldown=60.0)
    )
    net.connect(honest, liar)
    invented = [
        {"addr": f"127.0.1.{i % 250}:{2000 + i}", "id": str(uuid.uuid4())} for i in range(300)
    ]
    lie = envelope("DiscoveryResponse", invented)
    dial_bytes = 0
    for _ in range(20):  # the same lie, again and again
        start = sum(net.sent_to[a] for a in net.sent_to if a[0].startswith("127.0.1."))
        net.inject(lie, liar.local_addr, honest.local_addr)
        net.run(3.0)
        dial_bytes += (
            sum(net.sent_to[a] for a in net.sent_to if a[0].startswith("127.0.1.")) - start
        )
    dialled = [a for a in net.sent_to if a[0].startswith("127.0.1.")]
    assert len(dialled) <= 20 * DIALS_PER_LIST
    per_address = max(net.sent_to[a] for a in dialled)
    assert per_address <= 2 * 700  # two handshake requests, then the address cools down
    assert dial_bytes <= 20 * DIALS_PER_LIST * 2 * 700
    assert dial_bytes <= 3 * 20 * len(lie)  # the liar pays: at most 3x what it sent


def test_a_peer_list_that_overtakes_the_handshake_response_is_kept():
    net = VirtualNet(35, delay=0.005)
    hub = net.add(make_node(9000))
    known = net.add(make_node(9001))
    net.connect(known, hub)
    newcomer = net.add(make_node(9002))
    # the hub's answer arrives in the wrong order: its first slice before its HandshakeResponse
    held: list = []

    def overtake(data: bytes, src: tuple, dst: tuple) -> bool:
        if dst != newcomer.local_addr:
            return False
        kind = codec.decode(data).type
        if kind == T.HandshakeResponse and not held:
            held.append(data)
            return True
        return False

    net.drop_rules.append(overtake)
    newcomer.connect(hub.local_addr, net.now)
    net.flush()
    net.run(0.1)
    assert held and hub.local_addr in newcomer._pending_connects
    net.drop_rules.clear()
    newcomer.receive_datagram(held[0], hub.local_addr, net.now)
    net.flush()
    assert newcomer.routes.next_hop(known.node_id) == hub.node_id


def test_gossip_finds_a_node_the_broadcasts_missed():
    net = VirtualNet(36, delay=0.002)
    hub = net.add(make_node(9000))
    late = net.add(
        make_node(9001, enable_discovery=True, discovery_port_range=(1, 1), heartbeat_interval=1.0)
    )
    net.connect(late, hub)
    other = net.add(make_node(9002))
    net.connect(other, hub)
    late.routes.remove_via(other.node_id)  # as if the broadcast about it had been lost
    assert late.routes.next_hop(other.node_id) is None
    net.run(25.0)  # the next discovery round asks a random peer for its list
    assert late.routes.next_hop(other.node_id) == hub.node_id or other.node_id in late.peers_by_id


def test_routed_sends_complete_after_a_restart_of_the_destination():
    net = VirtualNet(37, delay=0.005)
    fixed_id = str(uuid.uuid4())
    hub = net.add(make_node(9000))
    alice = net.add(make_node(9001))
    bob = net.add(make_node(9002, node_id=fixed_id))
    bob.app_attached = True
    net.connect(alice, hub)
    net.connect(bob, hub)
    assert net.run(2.0, lambda: alice.routes.next_hop(fixed_id) == hub.node_id)
    handle = alice.send_data(fixed_id, {"n": 0}, net.now)
    net.flush()
    assert net.run(
        2.0,
        lambda: any(
            isinstance(e, SendCompleted) and e.handle == handle
            for e in net.events[alice.local_addr]
        ),
    )
