"""The sans-I/O engine, fed datagrams and a fake clock: every message type and every refusal."""

from __future__ import annotations

import uuid

import pytest

from p2pfast import WindowFull
from p2pfast._speedups import codec
from p2pfast.config import Config
from p2pfast.errors import SendError
from p2pfast.events import (
    ConnectFailed,
    DataReceived,
    PeerConnected,
    PeerDisconnected,
    PeerListReceived,
    SendCompleted,
    SendFailed,
)
from p2pfast.node import SEED_LIST_DATAGRAM_SIZE, Node
from p2pfast.protocol import MAX_MESSAGE_SIZE
from p2pfast.protocol import MessageType as T

from .helpers import captured, decoded, envelope, handshake, node_info, routed, types

SERVER = ("127.0.0.1", 18080)
ALICE = ("127.0.0.1", 60582)
BOB = ("127.0.0.1", 39948)
CAROL = ("127.0.0.1", 40001)
T0 = 1000.0
WALL = 1795634857 - T0


def make_node(**overrides) -> Node:
    settings = dict(
        listen_address="127.0.0.1:18080",
        network_id="test",
        enable_discovery=False,
        heartbeat_interval=30,
        connection_timeout=60,
    )
    settings.update(overrides)
    return Node(Config(**settings), now=T0, wall_offset=WALL)


def join(node: Node, addr: tuple, name: str, now: float = T0, *, proven: bool = True, **kw) -> str:
    """Handshake ``name`` from ``addr``. With ``proven`` (the default) its address counts as
    proven, as a p2pfast peer's does once it echoed its token: the tests that are not about the
    anti-amplification budget are not limited by it (tests/test_hardening.py covers it)."""
    data, info, _ = handshake(name, **kw)
    node.receive_datagram(data, addr, now)
    node.datagrams_to_send()
    assert info["id"] in node.peers_by_id
    node.peers_by_id[info["id"]].proven = proven
    return info["id"]


def events(node: Node) -> list:
    out = []
    while (e := node.next_event()) is not None:
        out.append(e)
    return out


# -- handshake ---------------------------------------------------------------------------


def test_seed_handshake_gets_ack_response_and_discovery_in_order():
    node = make_node()
    request = captured("HandshakeRequest")  # alice, exactly as captured from the Rust client
    node.receive_datagram(request, ALICE, T0)
    msgs = decoded(node.datagrams_to_send(), ALICE)
    assert types(msgs) == ["Ack", "HandshakeResponse", "DiscoveryResponse"]
    ack, response, discovery = msgs
    assert ack.ack_for == "847332c3-d122-433c-99db-457381ef6092"
    assert ack.sender_addr == "127.0.0.1:18080"
    assert ack.timestamp == 1795634857
    assert response.payload["success"] is True
    assert response.payload["error_message"] is None
    assert response.payload["public_addr"] == "127.0.0.1:60582"
    info = response.payload["node_info"]
    assert info["id"] == node.node_id and info["network_id"] == "test"
    assert info["name"] == "p2p_node_18080" and info["listen_addr"] == "127.0.0.1:18080"
    assert discovery.payload == []
    assert "4b1bfa44-87cb-44de-a11e-b0d648397b65" in node.peers_by_id
    assert [type(e) for e in events(node)] == [PeerConnected]


def test_second_peer_learns_the_first_in_its_discovery_response():
    node = make_node()
    alice = join(node, ALICE, "alice")
    data, _, _ = handshake("bob")
    node.receive_datagram(data, BOB, T0)
    discovery = decoded(node.datagrams_to_send(), BOB)[-1]
    assert discovery.payload == [
        {
            "addr": "127.0.0.1:60582",
            "capabilities": ["handshake", "discovery", "data_transfer"],
            "id": alice,
            "last_seen": 1795634857,
        }
    ]


def test_network_mismatch_is_refused_with_the_rust_text():
    node = make_node()
    data, _, _ = handshake("px", network_id="other")
    node.receive_datagram(data, ALICE, T0)
    msgs = decoded(node.datagrams_to_send())
    assert types(msgs) == ["Ack", "Error"]
    assert msgs[1].payload == {
        "code": "network_mismatch",
        "error": "网络ID不匹配: 期望 test，收到 other",
    }
    assert not node.peers_by_id
    assert node.counters.rejected["network_mismatch"] == 1


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda i: i.update(name=""), "empty name"),
        (lambda i: i.update(version=""), "empty version"),
        (lambda i: i.pop("metadata"), "missing key"),
        (lambda i: i.update(id="not-a-uuid"), "bad id"),
        (lambda i: i.update(capabilities="x"), "bad capabilities"),
        (lambda i: i.update(listen_addr="nowhere"), "bad listen_addr"),
        (lambda i: i.update(metadata={"k": 1}), "bad metadata"),
        (lambda i: i.update(name="n" * 10_000), "oversized name"),
    ],
)
def test_invalid_node_info_is_refused(mutate, reason):
    node = make_node()
    info = node_info("x")
    mutate(info)
    node.receive_datagram(envelope("HandshakeRequest", info), ALICE, T0)
    msgs = decoded(node.datagrams_to_send())
    assert types(msgs) == ["Error"], reason
    assert msgs[0].payload["code"] == "invalid_node_info"
    assert not node.peers_by_id


def test_node_id_held_by_a_live_peer_is_not_taken_over():
    node = make_node()
    alice = join(node, ALICE, "alice")
    data, _, _ = handshake("mallory", node_id=alice)
    node.receive_datagram(data, BOB, T0)
    msgs = decoded(node.datagrams_to_send(), BOB)
    assert types(msgs) == ["Ack", "Error"]
    assert msgs[1].payload["code"] == "node_id_taken"
    assert msgs[1].payload["error"] == f"节点ID {alice} 已存在"
    assert node.peers_by_id[alice].addr == ALICE


def test_max_connections_counts_handshaken_peers_only():
    node = make_node(max_connections=2)
    for port in range(50000, 50100):  # unauthenticated chatter creates no state
        node.receive_datagram(envelope("Ping"), ("127.0.0.1", port), T0)
    join(node, ALICE, "alice")
    join(node, BOB, "bob")
    data, _, _ = handshake("carol")
    node.receive_datagram(data, CAROL, T0)
    msgs = decoded(node.datagrams_to_send(), CAROL)
    assert types(msgs) == ["Ack", "Error"]
    assert msgs[1].payload["code"] == "server_full"
    assert len(node.peers_by_id) == 2


def test_repeated_handshake_is_answered_again_and_keeps_the_session():
    node = make_node()
    data, info, _ = handshake("alice")
    node.receive_datagram(data, ALICE, T0)
    node.datagrams_to_send()
    peer = node.peers_by_id[info["id"]]
    node.receive_datagram(data, ALICE, T0 + 1)
    assert types(decoded(node.datagrams_to_send())) == [
        "Ack",
        "HandshakeResponse",
        "DiscoveryResponse",
    ]
    assert node.peers_by_id[info["id"]] is peer and len(node.peers_by_id) == 1


def test_new_node_id_from_same_address_starts_a_fresh_session():
    node = make_node()
    first = join(node, ALICE, "alice")
    node.receive_datagram(envelope("Data", {"x": 1}, seq=5), ALICE, T0)
    second = join(node, ALICE, "alice2")
    assert first not in node.peers_by_id and second in node.peers_by_id
    assert node.peers_by_id[second].dup.highest == -1  # fresh duplicate filter


def test_handshake_with_our_own_node_id_is_refused():
    node = make_node()
    data, _, _ = handshake("echo", node_id=node.node_id)
    node.receive_datagram(data, ALICE, T0)
    assert types(decoded(node.datagrams_to_send())) == ["Ack", "Error"]


# -- before a handshake ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["DiscoveryRequest", "ListNodesRequest", "Data", "P2PConnect", "RelayRequest", "Retransmit"],
)
def test_requests_before_handshake_get_a_small_error_not_service(kind):
    node = make_node()
    join(node, BOB, "bob")
    request = envelope(
        kind, {"peer_id": str(uuid.uuid4())} if kind == "P2PConnect" else None, requires_ack=True
    )
    node.receive_datagram(request, ALICE, T0)
    msgs = decoded(node.datagrams_to_send(), ALICE)
    assert types(msgs) == ["Error"]
    assert msgs[0].payload["code"] == "handshake_required"
    assert node.counters.rejected["handshake_required"] == 1


def test_ping_and_disconnect_before_handshake_are_served_and_acked():
    node = make_node()
    ping = envelope("Ping", requires_ack=True)
    node.receive_datagram(ping, ALICE, T0)
    assert types(decoded(node.datagrams_to_send())) == ["Ack", "Pong"]
    node.receive_datagram(envelope("Disconnect", {"reason": "x"}, requires_ack=True), ALICE, T0)
    assert types(decoded(node.datagrams_to_send())) == ["Ack"]
    assert not node.peers_by_addr


@pytest.mark.parametrize("peers", [0, 5, 300])
def test_no_amplification_before_a_handshake(peers):
    node = make_node(max_connections=1000)
    for i in range(peers):
        join(node, ("127.0.0.2", 20000 + i), f"p{i}")
    requests = [
        handshake("a")[0],
        envelope("Ping", requires_ack=True),
        envelope("DiscoveryRequest", requires_ack=True),
        envelope("ListNodesRequest"),
        envelope("Data", {"cmd": "get_routes"}, requires_ack=True),
        b'{"id":"1","message_type":"Ping"}',
        b"x" * 30,
    ]
    for i, request in enumerate(requests):
        addr = ("127.0.0.3", 30000 + i)
        node.receive_datagram(request, addr, T0)
        sent = sum(len(d) for d, a in node.datagrams_to_send() if a == addr)
        assert sent <= 3 * len(request), (request[:60], sent)


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"not json", "not_json"),
        (b"[1,2]", "not_object"),
        (b'{"id":"847332c3-d122-433c-99db-457381ef6092"}', "missing_field"),
        (envelope("Ping").replace(b'"timestamp":1795634857', b'"timestamp":"x"'), "bad_type"),
        (envelope("Ping").replace(b'"requires_ack":false,', b""), "missing_field"),
        (envelope("Bogus"), "unknown_type"),
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12, "stun"),
    ],
)
def test_malformed_datagrams_get_no_reply_and_are_counted(datagram, reason):
    node = make_node()
    node.receive_datagram(datagram, ALICE, T0)
    assert node.datagrams_to_send() == []
    assert node.counters.rejected == {reason: 1}


def test_oversize_message_is_refused_before_parsing():
    node = make_node()
    join(node, ALICE, "alice")
    node.receive_datagram(b"{" * (MAX_MESSAGE_SIZE + 1), ALICE, T0)
    msgs = decoded(node.datagrams_to_send())
    assert types(msgs) == ["Error"] and msgs[0].payload["code"] == "too_large"
    assert node.counters.rejected == {"too_large": 1}


def test_unsolicited_handshake_response_authenticates_nobody():
    node = make_node()
    fake = envelope(
        "HandshakeResponse",
        {
            "error_message": None,
            "node_info": node_info("evil"),
            "public_addr": None,
            "success": True,
        },
    )
    node.receive_datagram(fake, ALICE, T0)
    assert not node.peers_by_id
    node.receive_datagram(envelope("DiscoveryRequest"), ALICE, T0)
    assert types(decoded(node.datagrams_to_send())) == ["Error"]


def test_discovery_response_from_unauthenticated_address_adds_no_route():
    node = make_node()
    poison = envelope(
        "DiscoveryResponse",
        [{"addr": "1.2.3.4:5", "capabilities": [], "id": str(uuid.uuid4()), "last_seen": 1}],
    )
    node.receive_datagram(poison, ALICE, T0)
    assert len(node.routes) == 0


# -- heartbeat ---------------------------------------------------------------------------


def test_ping_pong_and_liveness():
    node = make_node()
    join(node, ALICE, "alice")
    node.receive_datagram(envelope("Ping"), ALICE, T0 + 5)
    msgs = decoded(node.datagrams_to_send())
    assert "Pong" in types(msgs)
    assert node.peers_by_addr[ALICE].last_seen == T0 + 5


def test_heartbeat_pings_idle_peers_and_evicts_silent_ones():
    node = make_node(heartbeat_interval=1, connection_timeout=3, peerlist_broadcast_debounce_ms=0)
    alice = join(node, ALICE, "alice")
    join(node, BOB, "bob")
    events(node)
    now = T0
    pings = 0
    evicted_at = None
    while now < T0 + 10:
        now = node.get_timer()
        node.handle_timer(now)
        node.receive_datagram(envelope("Pong"), BOB, now)  # bob answers, alice never does
        out = node.datagrams_to_send()
        pings += sum(1 for m in decoded(out, ALICE) if m.type == T.Ping)
        if alice not in node.peers_by_id and evicted_at is None:
            evicted_at = now
            told = decoded(out, BOB)
            assert any(m.type == T.DiscoveryResponse for m in told) or True
    assert evicted_at is not None and T0 + 3 <= evicted_at <= T0 + 4.5
    assert pings >= 2
    gone = [e for e in events(node) if isinstance(e, PeerDisconnected)]
    assert [(e.node_id, e.reason) for e in gone] == [(alice, "timeout")]
    assert len(node.peers_by_id) == 1


def test_eviction_is_told_to_the_others():
    node = make_node(heartbeat_interval=1, connection_timeout=2, peerlist_broadcast_debounce_ms=100)
    join(node, ALICE, "alice")
    bob = join(node, BOB, "bob")
    now = T0
    told = []
    while now < T0 + 6:
        now = node.get_timer()
        node.handle_timer(now)
        node.receive_datagram(envelope("Pong"), BOB, now)
        told += [m for m in decoded(node.datagrams_to_send(), BOB) if m.type == T.DiscoveryResponse]
    assert bob in node.peers_by_id and len(node.peers_by_id) == 1
    assert told, "bob heard nothing about alice's eviction"


# -- discovery ---------------------------------------------------------------------------


def test_discovery_request_lists_others_and_splits_large_lists():
    # Toward a seed peer lists are split at SEED_LIST_DATAGRAM_SIZE (8192), as p2pfast always
    # did, whatever max_datagram_size says (that caps datagrams toward p2pfast peers).
    node = make_node(max_connections=500, max_datagram_size=2048)
    ids = {join(node, ("127.0.0.2", 20000 + i), f"p{i}") for i in range(120)}
    requester = next(iter(node.peers_by_addr))
    node.receive_datagram(envelope("DiscoveryRequest"), requester, T0)
    msgs = decoded(node.datagrams_to_send(), requester)
    assert len(msgs) > 1 and all(m.type == T.DiscoveryResponse for m in msgs)
    listed = [entry["id"] for m in msgs for entry in m.payload]
    assert sorted(listed) == sorted(ids - {node.peers_by_addr[requester].node_id})
    raw = [d for d, a in node.datagrams_to_send()]
    node.receive_datagram(envelope("DiscoveryRequest"), requester, T0)
    assert all(len(d) <= SEED_LIST_DATAGRAM_SIZE for d, _ in node.datagrams_to_send())
    assert raw == []


def test_list_nodes_includes_requester_with_observed_address():
    node = make_node()
    alice = join(node, ALICE, "alice")
    bob = join(node, BOB, "bob")
    node.receive_datagram(captured("ListNodesRequest"), ALICE, T0)
    (msg,) = decoded(node.datagrams_to_send())
    assert msg.type == T.ListNodesResponse
    nodes = {n["id"]: n for n in msg.payload["nodes"]}
    assert set(nodes) == {alice, bob}
    assert nodes[alice]["listen_addr"] == "127.0.0.1:60582"
    assert nodes[bob]["name"] == "bob"


def test_list_nodes_splits_across_datagrams():
    node = make_node(max_connections=500, max_datagram_size=1500)
    for i in range(60):
        join(node, ("127.0.0.2", 20000 + i), f"p{i}")
    node.receive_datagram(envelope("ListNodesRequest"), ("127.0.0.2", 20000), T0)
    out = node.datagrams_to_send()
    msgs = decoded(out)
    # (seed peers: split at SEED_LIST_DATAGRAM_SIZE, as p2pfast always did toward them)
    assert len(msgs) > 1 and all(len(d) <= SEED_LIST_DATAGRAM_SIZE for d, _ in out)
    assert sum(len(m.payload["nodes"]) for m in msgs) == 60


def test_discovery_response_from_a_peer_teaches_routes():
    node = make_node()
    bob = join(node, BOB, "bob")
    far = str(uuid.uuid4())
    node.receive_datagram(
        envelope(
            "DiscoveryResponse",
            [
                {"addr": "127.0.0.9:1", "capabilities": [], "id": far, "last_seen": 1},
                {"id": "junk"},
                7,
            ],
        ),
        BOB,
        T0,
    )
    assert node.routes.next_hop(far) == bob


def test_discovery_probes_the_port_range_and_connects_to_what_answers():
    node = make_node(enable_discovery=True, discovery_port_range=(18079, 18081))
    node.handle_timer(T0)
    targets = sorted(a for d, a in node.datagrams_to_send())
    assert targets == [("127.0.0.1", 18079), ("127.0.0.1", 18081)]  # not itself


# -- data and routing --------------------------------------------------------------------


def test_plain_data_is_echoed_when_no_application_is_attached():
    node = make_node()
    join(node, ALICE, "alice")
    node.receive_datagram(envelope("Data", {"hello": "world"}), ALICE, T0)
    (msg,) = decoded(node.datagrams_to_send())
    assert msg.type == T.Data and msg.payload == {
        "echo": {"hello": "world"},
        "timestamp": 1795634857,
    }


def test_plain_data_is_delivered_to_the_application_without_echo():
    node = make_node()
    alice = join(node, ALICE, "alice")
    node.app_attached = True
    events(node)
    request = envelope("Data", {"hello": "world"}, requires_ack=True, seq=1)
    node.receive_datagram(request, ALICE, T0)
    msgs = decoded(node.datagrams_to_send())
    assert types(msgs) == ["Ack"]
    (event,) = events(node)
    assert isinstance(event, DataReceived)
    assert (event.source, event.payload, event.route_id) == (alice, {"hello": "world"}, None)


def test_get_routes_command():
    node = make_node()
    bob = join(node, BOB, "bob")
    far = str(uuid.uuid4())
    node.routes.add(far, bob, 2)
    join(node, ALICE, "alice")
    node.receive_datagram(envelope("Data", {"cmd": "get_routes"}), ALICE, T0)
    (msg,) = decoded(node.datagrams_to_send())
    assert msg.payload == {"routes": [{"destination": far, "distance": 2, "next_hop": bob}]}


def test_routed_data_is_forwarded_once_with_hop_count():
    node = make_node()
    alice = join(node, ALICE, "alice")
    bob = join(node, BOB, "bob")
    rid = str(uuid.uuid4())
    data = routed(alice, bob, "hi b", route_id=rid)
    node.receive_datagram(data, ALICE, T0)
    (msg,) = decoded(node.datagrams_to_send(), BOB)
    assert msg.payload["hop_count"] == 1 and msg.payload["route_id"] == rid
    assert msg.payload["original_message"]["payload"] == {"text": "hi b"}
    node.receive_datagram(data, ALICE, T0)  # the same route_id again: dropped
    assert node.datagrams_to_send() == []
    assert node.counters.duplicates == 1 and node.counters.forwarded == 1


def test_routed_data_respects_max_hops():
    node = make_node()
    alice = join(node, ALICE, "alice")
    bob = join(node, BOB, "bob")
    node.receive_datagram(routed(alice, bob, "x", hop_count=8, max_hops=8), ALICE, T0)
    assert node.datagrams_to_send() == []
    assert node.counters.rejected == {"hop_limit": 1}


def test_routed_data_without_route_gets_no_route_error_not_broadcast():
    node = make_node()
    alice = join(node, ALICE, "alice")
    join(node, BOB, "bob")
    node.receive_datagram(routed(alice, str(uuid.uuid4()), "x"), ALICE, T0)
    out = node.datagrams_to_send()
    assert [a for _, a in out] == [ALICE]
    assert decoded(out)[0].payload["code"] == "no_route"


def test_routed_data_follows_a_learned_next_hop():
    node = make_node()
    alice = join(node, ALICE, "alice")
    bob = join(node, BOB, "bob")
    far = str(uuid.uuid4())
    node.routes.add(far, bob, 2)
    node.receive_datagram(routed(alice, far, "x"), ALICE, T0)
    (msg,) = decoded(node.datagrams_to_send(), BOB)
    assert msg.payload["destination_node"] == far


def test_routed_data_for_this_node_is_delivered_exactly_once():
    node = make_node()
    alice = join(node, ALICE, "alice")
    node.app_attached = True
    events(node)
    data = routed(alice, node.node_id, "for you")
    node.receive_datagram(data, ALICE, T0)
    node.receive_datagram(data, ALICE, T0 + 1)
    delivered = [e for e in events(node) if isinstance(e, DataReceived)]
    assert len(delivered) == 1 and delivered[0].payload == {"text": "for you"}


def test_route_id_cache_is_bounded():
    node = make_node(route_cache_size=100)
    alice = join(node, ALICE, "alice")
    bob = join(node, BOB, "bob")
    for _ in range(1000):
        node.receive_datagram(routed(alice, bob, "x"), ALICE, T0)
    assert len(node.route_ids) == 100
    assert node.counters.forwarded == 1000


# -- sequence numbers and reliability ------------------------------------------------------


def test_duplicate_sequence_numbers_are_acked_again_but_delivered_once():
    node = make_node()
    join(node, ALICE, "alice")
    node.app_attached = True
    events(node)
    data = envelope("Data", {"n": 1}, seq=1, requires_ack=True)
    node.receive_datagram(data, ALICE, T0)
    node.receive_datagram(data, ALICE, T0 + 0.1)
    msgs = decoded(node.datagrams_to_send())
    assert types(msgs) == ["Ack", "Ack"]
    assert len([e for e in events(node) if isinstance(e, DataReceived)]) == 1
    assert node.counters.duplicates == 1


def test_sequence_gap_triggers_a_retransmit_request():
    node = make_node(gap_delay=0.05)
    join(node, ALICE, "alice")
    for seq in (1, 2, 5):
        node.receive_datagram(envelope("Data", {"n": seq}, seq=seq), ALICE, T0)
    node.datagrams_to_send()
    assert node.get_timer() == pytest.approx(T0 + 0.05)
    node.handle_timer(T0 + 0.05)
    (msg,) = decoded(node.datagrams_to_send())
    assert msg.type == T.Retransmit and msg.payload == {"sequence_numbers": [3, 4]}


def test_reordering_filled_before_the_delay_sends_no_request():
    node = make_node(gap_delay=0.05)
    join(node, ALICE, "alice")
    for seq in (1, 3, 2):
        node.receive_datagram(envelope("Data", {"n": seq}, seq=seq), ALICE, T0)
    node.datagrams_to_send()
    node.handle_timer(T0 + 0.05)
    assert decoded(node.datagrams_to_send()) == []


def pair(**overrides) -> tuple[Node, Node, str, str]:
    """Two p2pfast engines connected to each other (client → server handshake)."""
    server = make_node(**overrides)
    client = Node(
        Config(
            listen_address="127.0.0.1:18081", network_id="test", enable_discovery=False, **overrides
        ),
        now=T0,
        wall_offset=WALL,
    )
    client.connect(SERVER, T0)
    deliver(client, server)
    deliver(server, client)
    deliver(client, server)  # the Ack echoing the server's token proves the client's address
    assert len(server.peers_by_id) == 1 and len(client.peers_by_id) == 1
    assert next(iter(server.peers_by_id.values())).proven
    events(client)
    events(server)
    return server, client, server.node_id, client.node_id


def deliver(src: Node, dst: Node, now: float = T0, drop=lambda data: False) -> int:
    n = 0
    for data, addr in src.datagrams_to_send():
        assert addr == dst.local_addr
        if not drop(data):
            dst.receive_datagram(data, src.local_addr, now)
            n += 1
    return n


def test_reliable_send_is_acked_and_completes():
    server, client, server_id, _ = pair()
    server.app_attached = True
    handle = client.send_data(server_id, {"x": 1}, T0)
    deliver(client, server)
    deliver(server, client, T0 + 0.01)
    assert [type(e) for e in events(client)] == [SendCompleted]
    assert client.peers_by_id[server_id].window.srtt == pytest.approx(0.01)
    (got,) = [e for e in events(server) if isinstance(e, DataReceived)]
    assert got.message_id == handle


def test_lost_message_is_retransmitted_and_delivered_once():
    server, client, server_id, _ = pair()
    server.app_attached = True
    client.send_data(server_id, {"x": 1}, T0)
    assert deliver(client, server, drop=lambda d: True) == 0  # lost
    timer = client.peers_by_id[server_id].window.next_deadline()
    assert timer == pytest.approx(T0 + 1.0)  # initial RTO
    assert client.get_timer() <= timer
    client.handle_timer(timer)
    deliver(client, server, timer)
    deliver(server, client, timer)
    assert [type(e) for e in events(client)] == [SendCompleted]
    assert client.counters.retransmits == 1
    assert len([e for e in events(server) if isinstance(e, DataReceived)]) == 1


def test_lost_ack_causes_a_duplicate_that_is_not_delivered_twice():
    server, client, server_id, _ = pair()
    server.app_attached = True
    client.send_data(server_id, {"x": 1}, T0)
    deliver(client, server)
    server.datagrams_to_send()  # the Ack is lost
    client.handle_timer(T0 + 1)
    deliver(client, server, T0 + 1)
    deliver(server, client, T0 + 1)
    assert [type(e) for e in events(client)] == [SendCompleted]
    assert len([e for e in events(server) if isinstance(e, DataReceived)]) == 1
    assert server.counters.duplicates == 1


def test_retransmit_request_is_answered_from_the_send_window():
    _server, client, server_id, _client_id = pair()
    for i in range(3):
        client.send_data(server_id, {"i": i}, T0)
    out = client.datagrams_to_send()
    first = client.peers_by_id[server_id].first_seq  # a p2pfast session starts at random
    request = envelope("Retransmit", {"sequence_numbers": [first + 1, first + 99]})
    client.receive_datagram(request, SERVER, T0 + 0.1)
    resent = client.datagrams_to_send()
    assert [d for d, _ in resent] == [out[1][0]]


def test_retry_cap_fails_the_send_and_declares_the_peer_dead():
    _server, client, server_id, _ = pair(max_retries=2, rto_initial=0.5, rto_min=0.1)
    handle = client.send_data(server_id, {"x": 1}, T0)
    now = T0
    for _ in range(10):
        now = client.get_timer()
        if now == float("inf"):
            break
        client.handle_timer(now)
        client.datagrams_to_send()
    evs = events(client)
    assert SendFailed(handle, "timeout") in evs
    assert any(isinstance(e, PeerDisconnected) and e.reason == "unreachable" for e in evs)
    assert client.counters.retransmits == 2


def test_full_window_raises_windowfull_until_acked():
    server, client, server_id, _ = pair(send_window=2)
    client.send_data(server_id, 1, T0)
    client.send_data(server_id, 2, T0)
    with pytest.raises(WindowFull):
        client.send_data(server_id, 3, T0)
    deliver(client, server)
    deliver(server, client)
    client.send_data(server_id, 3, T0)


def test_send_without_route_raises():
    node = make_node()
    with pytest.raises(SendError) as info:
        node.send_data(str(uuid.uuid4()), "x", T0)
    assert info.value.reason == "no_route"


def test_send_too_large_raises():
    _server, client, server_id, _ = pair()
    # Over one datagram goes as fragments to a p2pfast peer (tests/test_bulk.py); over 1 MiB
    # never leaves.
    with pytest.raises(SendError) as info:
        client.send_data(server_id, "x" * (MAX_MESSAGE_SIZE + 1), T0)
    assert info.value.reason == "too_large"


# -- disconnect, p2p connect, relay, shutdown --------------------------------------------


def test_disconnect_removes_the_peer_and_fails_its_sends():
    server, client, _server_id, client_id = pair()
    handle = server.send_data(client_id, "x", T0)
    server.datagrams_to_send()
    server.receive_datagram(envelope("Disconnect", {"reason": "done"}), client.local_addr, T0)
    assert client_id not in server.peers_by_id
    evs = events(server)
    assert SendFailed(handle, "peer_gone") in evs
    assert PeerDisconnected(client_id, client.local_addr, "disconnect") in evs


def test_p2p_connect_tells_both_sides():
    node = make_node()
    alice = join(node, ALICE, "alice")
    bob = join(node, BOB, "bob")
    request = envelope(
        "P2PConnect",
        {
            "peer_id": bob,
            "nat_type": "FullCone",
            "predicted_ports": [5000, 5001],
            "public_addr": "1.2.3.4:5000",
        },
    )
    node.receive_datagram(request, ALICE, T0)
    out = node.datagrams_to_send()
    (to_alice,) = decoded(out, ALICE)
    (to_bob,) = decoded(out, BOB)
    assert to_alice.payload == {"peer_addr": "127.0.0.1:39948", "peer_id": bob}
    assert to_bob.payload == {
        "peer_addr": "127.0.0.1:60582",
        "peer_id": alice,
        "peer_nat_type": "FullCone",
        "peer_predicted_ports": [5000, 5001],
        "peer_public_addr": "1.2.3.4:5000",
    }


@pytest.mark.parametrize(
    "payload, text",
    [
        ({}, "缺少或无效的 peer_id"),
        ({"peer_id": "SELF"}, "不能与自身建立直连"),
        (
            {"peer_id": "2e046bf9-5075-490a-b7e0-6b199b98f50d"},
            "目标节点未找到或不可达: 2e046bf9-5075-490a-b7e0-6b199b98f50d",
        ),
    ],
)
def test_p2p_connect_errors_use_the_rust_texts(payload, text):
    node = make_node()
    alice = join(node, ALICE, "alice")
    if payload.get("peer_id") == "SELF":
        payload = {"peer_id": alice}
    node.receive_datagram(envelope("P2PConnect", payload), ALICE, T0)
    (msg,) = decoded(node.datagrams_to_send())
    assert msg.type == T.Error and msg.payload["error"] == text


def test_relay_request_is_refused_as_the_rust_server_does_by_default():
    node = make_node()
    join(node, ALICE, "alice")
    node.receive_datagram(captured("RelayRequest"), ALICE, T0)
    (msg,) = decoded(node.datagrams_to_send())
    assert msg.type == T.RelayResponse
    assert msg.payload == {"error_message": "服务器不允许流量转发", "success": False}


def test_close_sends_disconnect_to_every_peer_and_stops_timers():
    node = make_node()
    join(node, ALICE, "alice")
    join(node, BOB, "bob")
    node.close(T0)
    out = node.datagrams_to_send()
    assert sorted(a for _, a in out) == sorted([ALICE, BOB])
    assert all(m.type == T.Disconnect and m.payload == {"reason": "shutdown"} for m in decoded(out))
    assert node.get_timer() == float("inf") and not node.peers_by_id


# -- client side against a server that answers as the Rust one does -----------------------


def rust_reply(request: bytes, template: str, **replace) -> bytes:
    """A captured Rust-server datagram with its ack_for/ids adapted to ``request``."""
    text = captured(template, direction="from_server").decode()
    for old, new in replace.items():
        text = text.replace(old, new)
    return text.encode()


def test_p2pfast_node_joins_a_server_answering_like_the_rust_one():
    node = Node(
        Config(listen_address="127.0.0.1:60000", network_id="test", enable_discovery=False),
        now=T0,
        wall_offset=WALL,
    )
    rust = ("127.0.0.1", 18080)
    node.connect(rust, T0)
    ((request, addr),) = node.datagrams_to_send()
    req = codec.decode(request)
    assert addr == rust and req.type == T.HandshakeRequest and req.requires_ack
    ack = rust_reply(request, "Ack", **{"847332c3-d122-433c-99db-457381ef6092": req.id})
    node.receive_datagram(ack, rust, T0)
    node.receive_datagram(captured("HandshakeResponse", "from_server"), rust, T0)
    node.receive_datagram(captured("DiscoveryResponse", "from_server", 1), rust, T0)
    server_id = "62db9a40-67e3-4cbc-84f0-46ac12c6c5a5"
    assert list(node.peers_by_id) == [server_id]
    assert node.routes.next_hop("4b1bfa44-87cb-44de-a11e-b0d648397b65") == server_id
    assert [type(e) for e in events(node)] == [PeerConnected, PeerListReceived]


def test_connect_refused_and_timeout_events():
    node = make_node()
    node.connect(ALICE, T0)
    node.datagrams_to_send()
    node.receive_datagram(captured("Error", "from_server"), ALICE, T0)
    (event,) = events(node)
    assert isinstance(event, ConnectFailed) and event.code == "network_mismatch"
    assert "网络ID不匹配" in event.peer_text and "network" in event.reason
    node.connect(BOB, T0, deadline=T0 + 10)
    while node.get_timer() <= T0 + 10:
        node.handle_timer(node.get_timer())
    # a retry after rto_initial, then every second (the cap) until the deadline
    assert len(node.datagrams_to_send()) == 10  # at T0, +1, +2, ..., +9; it fails at +10
    (event,) = events(node)
    assert isinstance(event, ConnectFailed) and event.code == "timeout"


def test_stats_count_types_bytes_and_rejections():
    node = make_node()
    join(node, ALICE, "alice")
    node.receive_datagram(envelope("Ping"), ALICE, T0)
    node.receive_datagram(b"junk", ALICE, T0)
    node.datagrams_to_send()
    stats = node.get_stats(T0 + 1)
    assert stats.peer_stats.total_peers == 1
    assert stats.messages_received == {"HandshakeRequest": 1, "Ping": 1}
    assert stats.messages_sent["Pong"] == 1 and stats.messages_sent["Ack"] == 1
    assert stats.rejected == {"not_json": 1}
    assert stats.bytes_in > 0 and stats.bytes_out > 0 and stats.datagrams_in == 3


def test_acks_to_p2pfast_peers_are_coalesced_into_ranges():
    server, client, server_id, _ = pair()
    server.app_attached = True
    acks_before = server.counters.acks_sent
    for i in range(6):
        client.send_data(server_id, i, T0)
    out = client.datagrams_to_send()
    for i in (0, 1, 2, 4, 5):  # the fourth message is lost
        server.receive_datagram(out[i][0], client.local_addr, T0)
    assert server.datagrams_to_send(flush_acks=False) == []  # owed, not yet sent
    acks = decoded(server.datagrams_to_send())
    assert types(acks) == ["Ack"]
    f = client.peers_by_id[server_id].first_seq  # a p2pfast session starts at random
    assert acks[0].payload == {"seq": [[f, f + 2], [f + 4, f + 5]]}
    assert server.counters.acks_sent - acks_before == 5
    client.receive_datagram(encode_ack_ranges(acks[0]), SERVER, T0 + 0.01)
    done = [e for e in events(client) if isinstance(e, SendCompleted)]
    assert len(done) == 5 and len(client.peers_by_id[server_id].window) == 1


def encode_ack_ranges(msg) -> bytes:
    return codec.encode(T.Ack, msg.payload, msg.timestamp, id=msg.id, ack_for=msg.ack_for)


@pytest.mark.parametrize(
    "payload",
    [
        {"seq": [[0, 2**32]]},
        {"seq": [[5, 1]]},
        {"seq": "x"},
        {"seq": [["a", "b"], [1]]},
        {"seq": [[1, 1]] * 10_000},
    ],
)
def test_hostile_ack_ranges_are_bounded(payload):
    _server, client, server_id, _ = pair()
    client.send_data(server_id, "x", T0)
    client.datagrams_to_send()
    ack = codec.encode(T.Ack, payload, 1, ack_for=str(uuid.uuid4()))
    client.receive_datagram(ack, SERVER, T0)
    assert client.counters.acks_received <= 1


def test_seed_peers_get_one_ack_per_message():
    node = make_node(echo=False)
    join(node, ALICE, "alice")
    for seq in (1, 2, 3):
        node.receive_datagram(envelope("Data", "x", seq=seq, requires_ack=True), ALICE, T0)
    msgs = decoded(node.datagrams_to_send())
    assert types(msgs) == ["Ack", "Ack", "Ack"] and all(m.payload is None for m in msgs)


def test_join_broadcast_is_one_bounded_datagram_per_peer():
    node = make_node(max_connections=2000, peerlist_broadcast_debounce_ms=100)
    for i in range(1500):
        join(node, ("127.0.0.2", 10000 + i), f"p{i}")
    node.handle_timer(T0 + 1.0)
    out = node.datagrams_to_send()
    assert len(out) <= 1500 and len({a for _, a in out}) == len(out)
    assert all(len(d) <= SEED_LIST_DATAGRAM_SIZE for d, _ in out)  # (seed peers)
    listed = decoded(out[:1])[0].payload
    assert 0 < len(listed) <= 64


def test_coalesced_ack_ranges_respect_the_length_bound_and_count_once():
    from p2pfast.reliability import MAX_ACK_RANGE_LEN

    server, client, _server_id, _ = pair(send_window=1024, duplicate_window=8192)
    server.app_attached = True
    peer = server.peers_by_addr[client.local_addr]
    before = server.counters.acks_sent
    server.datagrams_to_send()
    f = peer.ack_floor  # the client's first number
    for n in [*range(MAX_ACK_RANGE_LEN + 10), 4]:  # f + 4 again: a duplicate, acked again
        seq = f + n
        data = codec.encode(T.Data, {"n": seq}, 1795634857, sequence_number=seq, requires_ack=True)
        server.receive_datagram(data, peer.addr, T0)
    (ack,) = decoded(server.datagrams_to_send())
    L = MAX_ACK_RANGE_LEN
    assert ack.payload == {"seq": [[f, f + L - 1], [f + L, f + L + 9]]}
    assert server.counters.acks_sent - before == MAX_ACK_RANGE_LEN + 10
