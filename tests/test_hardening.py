"""The reliable transport and the safety rules under loss and attack: one regression test per
defect found by hostile testing, on real engines over a seeded virtual network (the whole
suite runs once compiled and once with ``P2PFAST_NO_EXTENSIONS=1``), and an adversarial
property test of the engine."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast._speedups import codec
from p2pfast.errors import WindowFull
from p2pfast.events import DataReceived, SendCompleted, SendFailed
from p2pfast.node import Node
from p2pfast.peer import MAX_NODE_INFO_BYTES, validate_node_info
from p2pfast.protocol import MAX_DATAGRAM_SIZE
from p2pfast.protocol import MessageType as T
from p2pfast.reliability import MAX_ACK_RANGE_LEN, MAX_ACK_RANGES, RESEND_BURST, RESEND_RATE

from .helpers import envelope, handshake, node_info, routed
from .vnet import VirtualNet, make_node


def transfer(
    net: VirtualNet,
    client: Node,
    server: Node,
    total: int,
    *,
    payload=lambda n: {"n": n},
    seconds: float = 600.0,
) -> float:
    """Send ``total`` reliable messages as fast as the window allows; return the virtual
    seconds until every one completed (SendFailed fails the test)."""
    start, sent = net.now, 0
    done = net.events[client.local_addr]

    def completed() -> bool:
        nonlocal sent
        while sent < total:
            try:
                client.send_data(server.node_id, payload(sent), net.now)
            except WindowFull:
                break
            sent += 1
        net.flush()
        failed = [e for e in done if isinstance(e, SendFailed)]
        assert not failed, failed[:3]
        return sum(isinstance(e, SendCompleted) for e in done) == total

    assert net.run(seconds, completed), f"{sent} sent, transfer incomplete after {seconds} s"
    return net.now - start


def delivered(net: VirtualNet, node: Node) -> list:
    return [e.payload["n"] for e in net.events[node.local_addr] if isinstance(e, DataReceived)]


def p2p_pair(net: VirtualNet, **overrides) -> tuple[Node, Node]:
    server = net.add(make_node(9001, **overrides))
    client = net.add(make_node(9002, **overrides))
    server.app_attached = True
    net.connect(client, server)
    return server, client


# -- 1. the retransmission timer comes back down ----------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rto_stays_near_the_path_under_steady_loss_and_recovers(seed):
    """Under a few percent of loss the timer must not ratchet up to rto_max (it did: backoff
    was applied on every expiry pass and Karn's rule left no fresh sample)."""
    clean = VirtualNet(seed, delay=0.01)
    server, client = p2p_pair(clean)
    loss_free = transfer(clean, client, server, 2000)

    net = VirtualNet(seed, delay=0.01, loss=0.05)
    server, client = p2p_pair(net)
    window = client.peers_by_id[server.node_id].window
    worst = 0.0
    original = client.send_data

    def watched(*args, **kw):
        nonlocal worst
        worst = max(worst, window.timeout(window.backoff))
        return original(*args, **kw)

    client.send_data = watched  # type: ignore[method-assign]
    lossy = transfer(net, client, server, 2000)
    assert sorted(delivered(net, server)) == list(range(2000))
    assert worst <= 2.0, f"a new message waited up to {worst} s before its first retransmission"
    # a straggler lost k times waits rto * (2**k - 1): allow up to 5 losses of one message
    assert lossy <= 3 * loss_free + client.config.rto_min * 31, (lossy, loss_free)
    # the path is 20 ms round trip: the timer is back at its floor, nothing backed off
    assert window.rto == client.config.rto_min and window.backoff == 0


def test_a_dead_path_backs_off_per_message_and_the_timer_collapses_when_it_heals():
    net = VirtualNet(5, delay=0.01)
    server, client = p2p_pair(net, max_retries=10)
    window = client.peers_by_id[server.node_id].window
    net.drop_rules.append(lambda data, src, dst: True)  # the path dies
    client.send_data(server.node_id, {"n": 0}, net.now)
    net.flush()
    net.run(20.0)  # timeouts at 1, 3, 7 and 15 s
    assert window.backoff == 4  # a new message would start backed off: the path is silent
    net.drop_rules.clear()  # the path heals: the next retransmission gets through
    net.run(60.0, lambda: not len(window))
    assert window.backoff == 0  # the ack collapsed it (Karn: no sample from message 0)
    for n in range(1, 5):  # fresh messages: unambiguous samples bring the estimate back
        client.send_data(server.node_id, {"n": n}, net.now)
    net.flush()
    net.run(5.0, lambda: not len(window))
    assert window.rto == client.config.rto_min
    assert delivered(net, server) == [0, 1, 2, 3, 4]


# -- 2. acknowledged but never delivered ---------------------------------------------------


def test_the_oldest_lost_message_is_never_acked_without_being_delivered():
    """Message 1 and every Retransmit request are lost for a long while as newer messages
    flow: the sender must stall before its newest runs a receive window ahead of message 1
    (else the receiver would take 1 as too old, ack it and drop it)."""
    net = VirtualNet(7, delay=0.005)
    server, client = p2p_pair(net)
    first_seq = client.peers_by_id[server.node_id].next_seq
    healed_at = net.now + 30.0

    def blackhole(data: bytes, src: tuple, dst: tuple) -> bool:
        if net.now >= healed_at:
            return False
        msg = codec.decode(data)
        return (msg.type == T.Data and msg.sequence_number == first_seq) or msg.type == T.Retransmit

    net.drop_rules.append(blackhole)
    transfer(net, client, server, 3000, seconds=300)
    got = delivered(net, server)
    assert sorted(got) == list(range(3000))  # every acked message was delivered, once
    window = client.peers_by_id[server.node_id].window
    assert window.max_span == 1024 and server.counters.rejected.get("too_old", 0) == 0


def test_too_old_is_not_acknowledged_end_to_end():
    net = VirtualNet(8, delay=0.005)
    server, client = p2p_pair(net)
    peer = server.peers_by_addr[client.local_addr]
    peer.dup.check(5000)  # the receiver has moved far ahead (e.g. a peer with a bigger span)
    server.app_consumed(10)
    stale = codec.encode(T.Data, {"n": 1}, 1, sequence_number=5000 - 2000, requires_ack=True)
    net.inject(stale, client.local_addr, server.local_addr)
    net.run(0.5)
    assert server.counters.rejected.get("too_old") == 1
    assert server.counters.acks_sent == 0 or not [
        e for e in net.events[client.local_addr] if isinstance(e, SendCompleted)
    ]


# -- 5. Retransmit is not an amplifier ----------------------------------------------------


def test_retransmit_requests_are_deduplicated_paced_and_byte_capped():
    net = VirtualNet(9, delay=0.005)
    # 60 KB messages go whole (as JSON Data) only when the datagram size allows it; smaller
    # datagrams would carry them as fragments (tests/test_bulk.py).
    server, client = p2p_pair(net, max_datagram_size=65_507, pmtu_discovery=False)
    net.drop_rules.append(lambda data, src, dst: src == client.local_addr)  # nothing arrives
    big = "x" * 60_000
    for n in range(64):
        client.send_data(server.node_id, {"n": n, "pad": big}, net.now)
    net.flush()
    first = client.peers_by_id[server.node_id].next_seq - 64
    net.now += 0.5
    before = net.sent_to[server.local_addr]

    def ask(numbers: list[int]) -> int:
        request = envelope("Retransmit", {"sequence_numbers": numbers}, seq=None)
        start = net.sent_to[server.local_addr]
        net.inject(request, server.local_addr, client.local_addr)
        return net.sent_to[server.local_addr] - start

    one = ask([first] * 64)  # the same number 64 times: one copy
    assert 60_000 < one < 61_000
    assert ask([first] * 64) == 0  # again at once: the copy cannot have been lost yet
    everything = ask(list(range(first, first + 64)))
    assert everything <= RESEND_BURST  # capped per request
    total = one + everything
    for _ in range(100):  # a request every 10 ms for a second: capped per second
        net.now += 0.01
        total += ask(list(range(first, first + 64)))
    assert total <= RESEND_BURST + 1.1 * RESEND_RATE + 61_000
    assert net.sent_to[server.local_addr] - before == total
    assert client.counters.rejected.get("retransmit_limit", 0) > 0


# -- 6. coalesced Ack ranges cost bounded work ---------------------------------------------


def test_hostile_ack_ranges_cost_work_bounded_by_what_is_in_flight():
    net = VirtualNet(10, delay=0.005)
    server, client = p2p_pair(net)
    net.drop_rules.append(lambda data, src, dst: src == server.local_addr)  # no real acks
    for n in range(10):
        client.send_data(server.node_id, {"n": n}, net.now)
    net.flush()
    ranges = [
        [k * 10_000_000, k * 10_000_000 + MAX_ACK_RANGE_LEN - 1]
        for k in range(1, MAX_ACK_RANGES + 1)
    ]
    ack = codec.encode(T.Ack, {"seq": ranges}, 1, ack_for=str(uuid.uuid4()))
    assert len(ack) < 2000
    work = client.work
    for _ in range(200):
        net.inject(ack, server.local_addr, client.local_addr)
    per_datagram = (client.work - work) / 200
    assert per_datagram <= MAX_ACK_RANGES + 10 + 1  # the ranges, plus one walk of the window
    assert len(client.peers_by_id[server.node_id].window) == 10  # nothing acked


# -- 7. no exception escapes the engine ---------------------------------------------------


def test_a_payload_too_deep_to_echo_is_refused_not_raised():
    node = make_node(9001, echo=True)
    data, info, _ = handshake("alice")
    node.receive_datagram(data, ("127.0.0.1", 7000), 1000.0)
    node.peers_by_id[info["id"]].proven = True
    node.datagrams_to_send()
    deep = (
        b'{"id":"%s","message_type":"Data","timestamp":1,"payload":%s,"sender_addr":null,"sequence_number":2,"requires_ack":true,"ack_for":null}'
        % (
            str(uuid.uuid4()).encode(),
            b"[" * 300 + b"]" * 300,
        )
    )
    node.receive_datagram(deep, ("127.0.0.1", 7000), 1000.0)
    out = [codec.decode(d) for d, _ in node.datagrams_to_send()]
    assert [m.type for m in out] == [T.Ack, T.Error]
    assert out[1].payload["code"] == "bad_payload" and len(out[1].payload["error"]) <= 200
    assert "internal_error" not in node.counters.rejected


def test_a_routed_message_that_outgrows_a_datagram_is_refused():
    node = make_node(9001)
    alice, bob = ("127.0.0.1", 7000), ("127.0.0.1", 7001)
    ids = []
    for name, addr in (("alice", alice), ("bob", bob)):
        data, info, _ = handshake(name)
        node.receive_datagram(data, addr, 1000.0)
        node.peers_by_id[info["id"]].proven = True
        ids.append(info["id"])
    node.datagrams_to_send()
    # simple-form ids and a zero timestamp: re-encoded hyphenated with a real timestamp, longer
    datagram = routed(ids[0].replace("-", ""), ids[1].replace("-", ""), "")
    pad = MAX_DATAGRAM_SIZE - len(datagram) - 2
    datagram = routed(ids[0].replace("-", ""), ids[1].replace("-", ""), "y" * pad).replace(
        b'"timestamp":1795634857', b'"timestamp":0', 1
    )
    assert len(datagram) <= MAX_DATAGRAM_SIZE
    node.receive_datagram(datagram, alice, 1000.0)
    out = node.datagrams_to_send()
    assert all(len(d) <= MAX_DATAGRAM_SIZE for d, _ in out)
    msgs = [(codec.decode(d), a) for d, a in out]
    assert [(m.type, a) for m, a in msgs] == [(T.Error, alice)]
    assert msgs[0][0].payload["code"] == "too_large"


def test_a_defect_in_a_handler_is_counted_and_the_node_keeps_serving(monkeypatch, caplog):
    node = make_node(9001)
    alice = ("127.0.0.1", 7000)
    data, info, _ = handshake("alice")
    node.receive_datagram(data, alice, 1000.0)
    node.peers_by_id[info["id"]].proven = True
    node.datagrams_to_send()

    def broken(*args):
        raise RuntimeError("planted defect")

    node._handlers[T.DiscoveryRequest] = broken
    for i in range(50):
        node.receive_datagram(envelope("DiscoveryRequest"), alice, 1000.0 + i * 0.01)
    assert node.counters.rejected["internal_error"] == 50
    assert (
        len([r for r in caplog.records if "internal error" in r.getMessage()]) == 1
    )  # rate-limited
    node.receive_datagram(envelope("Ping"), alice, 1001.0)
    assert [codec.decode(d).type for d, _ in node.datagrams_to_send()] == [T.Pong]


# -- 8. anti-amplification after a spoofable handshake -------------------------------------


def test_a_spoofed_handshake_gets_at_most_three_times_its_bytes_whatever_follows():
    net = VirtualNet(11, delay=0.002)
    hub = net.add(
        make_node(9000, heartbeat_interval=1.0, connection_timeout=600.0, max_connections=500)
    )
    victim = ("127.0.0.9", 4444)  # no node there: whoever "sent" from it is a spoofer
    hello, _, _ = handshake("spoofed", caps=["handshake", "p2pfast"])
    net.inject(hello, victim, hub.local_addr)
    # a join burst: 120 peers (proven p2pfast engines) join, the hub broadcasts
    for i in range(120):
        peer = net.add(make_node(10000 + i))
        peer.connect(hub.local_addr, net.now)
    net.flush()
    net.run(3.0)
    assert len(hub.peers_by_id) == 121
    # list requests "from" the victim, and heartbeats for a while
    for _ in range(50):
        net.inject(envelope("ListNodesRequest"), victim, hub.local_addr)
        net.inject(envelope("DiscoveryRequest"), victim, hub.local_addr)
        net.run(0.2)
    assert net.sent_to[victim] <= 3 * net.sent_by[victim], (
        net.sent_to[victim],
        net.sent_by[victim],
    )
    assert hub.counters.rejected["amplification_limit"] > 0
    assert not hub.peers_by_addr[victim].proven


def test_only_the_right_token_from_the_right_address_proves_it():
    net = VirtualNet(12, delay=0.002)
    hub = net.add(make_node(9000))
    addr = ("127.0.0.1", 4445)
    hello, _, rid = handshake("seed")
    net.inject(hello, addr, hub.local_addr)
    peer = hub.peers_by_addr[addr]
    assert peer.token and not peer.proven
    wrong = codec.encode(T.Ack, {"token": "0" * 32}, 1, ack_for=rid)
    net.inject(wrong, addr, hub.local_addr)
    assert not peer.proven and hub.counters.rejected["bad_token"] == 1
    right = codec.encode(T.Ack, {"token": peer.token}, 1, ack_for=rid)
    net.inject(right, ("127.0.0.1", 4446), hub.local_addr)  # right token, other address
    assert not peer.proven
    net.inject(right, addr, hub.local_addr)
    assert peer.proven and not peer.token
    net.inject(right, addr, hub.local_addr)  # a replay proves nothing more, breaks nothing
    assert peer.proven


def test_a_p2pfast_node_proves_its_address_even_when_its_token_ack_is_lost():
    net = VirtualNet(13, delay=0.002)
    hub = net.add(make_node(9000, heartbeat_interval=1.0))
    client = net.add(make_node(9001))

    def lose_token(data: bytes, src: tuple, dst: tuple) -> bool:
        msg = codec.decode(data)
        return (
            msg.type == T.Ack
            and isinstance(msg.payload, dict)
            and "token" in msg.payload
            and net.now < 1001.5
        )

    net.drop_rules.append(lose_token)
    client.connect(hub.local_addr, net.now)
    net.flush()
    net.run(0.5)
    peer = hub.peers_by_addr[client.local_addr]
    assert not peer.proven
    net.run(5.0)  # the hub's heartbeat Ping carries the token; the client echoes it again
    assert peer.proven


# -- 9. routes are indexed by next hop and bounded per peer --------------------------------


class CountingDict(dict):
    scans = 0

    def items(self):
        CountingDict.scans += 1
        return super().items()

    def __iter__(self):
        CountingDict.scans += 1
        return super().__iter__()

    def values(self):
        CountingDict.scans += 1
        return super().values()


def test_a_peer_teaching_many_routes_cannot_make_joins_scan_the_table():
    node = make_node(9000, max_connections=200)
    teacher = ("127.0.0.1", 7000)
    data, info, _ = handshake("teacher")
    node.receive_datagram(data, teacher, 1000.0)
    node.peers_by_id[info["id"]].proven = True
    for _ in range(165):  # 66,000 routes offered, 400 per datagram
        entries = [{"addr": "127.0.0.1:1", "id": str(uuid.uuid4())} for _ in range(400)]
        node.receive_datagram(envelope("DiscoveryResponse", entries), teacher, 1000.0)
    assert len(node.routes) == node.config.max_routes_per_peer == node.routes.taught_by(info["id"])
    node.routes._routes = CountingDict(node.routes._routes)
    CountingDict.scans = 0
    for i in range(50):  # joins and leaves
        data, _, _ = handshake(f"p{i}")
        node.receive_datagram(data, ("127.0.0.1", 8000 + i), 1001.0)
        node.receive_datagram(
            envelope("Disconnect", {"reason": "bye"}), ("127.0.0.1", 8000 + i), 1001.0
        )
    node.handle_timer(1005.0)
    assert CountingDict.scans == 0
    node.receive_datagram(envelope("Disconnect", {"reason": "bye"}), teacher, 1006.0)
    assert len(node.routes) == 0  # forgetting the teacher drops what it taught, by index


# -- 10. discovery blinding ----------------------------------------------------------------


def test_a_large_node_info_cannot_blind_a_newcomer():
    node = make_node(9000)
    biggest = node_info("b" * 64, caps=[f"{i:02d}" + "c" * 30 for i in range(16)])
    biggest["metadata"] = {f"k{i}": "v" * 64 for i in range(8)}
    biggest["version"] = "9" * 20
    for key in ("name",):
        biggest[key] = biggest[key][:64]
    try:
        validate_node_info(biggest)
        fits = True
    except ValueError:
        fits = False
    # whichever way the bound is met, a peer announcing the most it may announce ...
    for i in range(3):
        node.receive_datagram(handshake(f"small{i}")[0], ("127.0.0.1", 7001 + i), 1000.0)
    big = envelope("HandshakeRequest", biggest, seq=1, requires_ack=True, sender_addr="0.0.0.0:0")
    node.receive_datagram(big, ("127.0.0.1", 7000), 1000.0)  # the newest: listed first
    for peer in node.peers_by_id.values():
        peer.proven = True  # only proven peers are advertised
    node.datagrams_to_send()
    # ... does not hide the others from a newcomer's first DiscoveryResponse
    node.receive_datagram(handshake("newcomer")[0], ("127.0.0.1", 7100), 1000.0)
    first = [codec.decode(d) for d, a in node.datagrams_to_send() if a == ("127.0.0.1", 7100)]
    listing = [m for m in first if m.type == T.DiscoveryResponse]
    # (a seed newcomer's first slice is small: 3x its request, less the handshake reply)
    assert listing and len(listing[0].payload) >= 1
    assert fits == (biggest["id"] in node.peers_by_id)


def test_node_info_is_bounded_so_one_entry_always_fits_a_list_datagram():
    too_big = node_info("x", caps=["c" * 200])
    with pytest.raises(ValueError):
        validate_node_info(too_big)
    many = node_info("x")
    many["metadata"] = {f"k{i}": "v" for i in range(9)}
    with pytest.raises(ValueError):
        validate_node_info(many)
    assert MAX_NODE_INFO_BYTES + 256 <= 1024  # the smallest max_datagram_size fits one entry


# -- the adversarial property test ---------------------------------------------------------

SPOOFED = [("127.0.0.66", 1000 + i) for i in range(3)]
FAST_ADDR, SEED_ADDR = ("127.0.0.1", 9002), ("127.0.0.1", 9003)


def _hostile_datagrams():
    uuids = st.builds(lambda: str(uuid.uuid4()))
    seqs = st.integers(0, 2**32 - 1) | st.integers(0, 40)
    ranges = st.lists(
        st.lists(seqs, min_size=2, max_size=2)
        | st.just([1, 2**31])
        | st.integers(-(2**63), 2**64 - 1),
        max_size=80,
    )
    routed_payload = st.fixed_dictionaries(
        {
            "destination_node": uuids | st.just("nope") | st.sampled_from(["dest"]),
            "source_node": uuids,
            "route_id": uuids | st.just("00000000-0000-4000-8000-000000000000"),
            "hop_count": st.integers(-2, 20) | st.just("x"),
            "max_hops": st.integers(-1, 20),
            "original_message": st.fixed_dictionaries(
                {"payload": st.text(max_size=50) | st.just("z" * 2000)}
            )
            | st.just(None),
        }
    )
    peer_entry = st.fixed_dictionaries(
        {
            "id": uuids | st.just("bad"),
            "addr": st.sampled_from(["127.0.0.1:1", "nonsense", "[::1]:5"]),
        }
    )
    payloads = st.one_of(
        st.tuples(
            st.just("Ack"),
            st.fixed_dictionaries({"seq": ranges})
            | st.fixed_dictionaries({"token": st.text(max_size=70)})
            | st.none(),
        ),
        st.tuples(
            st.just("Retransmit"),
            st.fixed_dictionaries(
                {"sequence_numbers": st.lists(seqs | st.text(max_size=3), max_size=300)}
            ),
        ),
        st.tuples(
            st.just("Data"), routed_payload | st.text(max_size=100) | st.just({"cmd": "get_routes"})
        ),
        st.tuples(st.just("DiscoveryResponse"), st.lists(peer_entry, max_size=300)),
        st.tuples(
            st.sampled_from(["ListNodesRequest", "DiscoveryRequest", "Ping", "Pong"]),
            st.none() | st.fixed_dictionaries({"token": st.text(max_size=5)}),
        ),
        st.tuples(
            st.just("HandshakeRequest"),
            st.builds(lambda n: node_info(n, caps=["p2pfast"]), st.text(min_size=1, max_size=10)),
        ),
        st.tuples(st.just("P2PConnect"), st.fixed_dictionaries({"peer_id": uuids})),
        st.tuples(st.just("Disconnect"), st.none()),
    )
    return st.builds(
        lambda kind_payload, src, seq, ack, ack_for, dt: (kind_payload, src, seq, ack, ack_for, dt),
        payloads,
        st.sampled_from([FAST_ADDR, SEED_ADDR, *SPOOFED]),
        st.none() | seqs,
        st.booleans(),
        st.none() | uuids,
        st.sampled_from([0.0, 0.001, 0.05, 0.3, 2.0, 31.0]),
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=st.lists(_hostile_datagrams(), min_size=1, max_size=60))
def test_hostile_datagram_sequences_never_break_the_engine_rules(steps):
    net = VirtualNet(21, delay=0.001)
    config = dict(
        max_connections=8,
        max_routes=300,
        max_routes_per_peer=100,
        route_cache_size=64,
        send_window=16,
        heartbeat_interval=5.0,
    )
    node = net.add(make_node(9000, echo=True, **config))
    fast = net.add(make_node(9002))
    net.connect(fast, node)  # a proven p2pfast peer
    seed_hello, _, _ = handshake("seed")
    net.inject(seed_hello, SEED_ADDR, node.local_addr)  # an unproven seed peer
    for n in range(12):  # something in flight towards both
        for target in list(node.peers_by_id):
            with contextlib.suppress(WindowFull):
                node.send_data(target, {"n": n}, net.now)
    net.flush()
    watched = {SEED_ADDR, *SPOOFED}
    for (kind, payload), src, seq, ack, ack_for, dt in steps:
        net.now += dt
        data = envelope(kind, payload, seq=seq, requires_ack=ack, ack_for=ack_for)
        work = node.work
        net.inject(data, src, node.local_addr)  # never raises
        net.run(0.0)
        assert node.work - work <= 600 + len(data) // 16
        peer = node.peers_by_addr.get(src)
        if peer is not None and peer.proven:
            watched.discard(src)
        for addr in watched:
            assert net.sent_to[addr] <= 3 * net.sent_by[addr], (
                addr,
                net.sent_to[addr],
                net.sent_by[addr],
            )
        assert len(node.peers_by_id) <= config["max_connections"]
        assert len(node.routes) <= config["max_routes"]
        assert all(
            node.routes.taught_by(p) <= config["max_routes_per_peer"] for p in node.peers_by_id
        )
        assert len(node.route_ids) <= config["route_cache_size"]
        assert all(len(p.window) <= config["send_window"] for p in node.peers_by_id.values())
        assert all(
            len(p.pings) <= 16 and len(p.list_requests) <= 16 for p in node.peers_by_id.values()
        )
        assert "internal_error" not in node.counters.rejected
    net.run(60.0)  # and the timers afterwards
    assert "internal_error" not in node.counters.rejected


def test_a_lost_first_message_is_asked_for_and_a_persisting_gap_again():
    net = VirtualNet(14, delay=0.005)
    server, client = p2p_pair(net, rto_initial=30.0, rto_min=30.0, rto_max=60.0)  # no timer help
    first = client.peers_by_id[server.node_id].next_seq
    requests: list[list[int]] = []

    def lose(data: bytes, src: tuple, dst: tuple) -> bool:
        msg = codec.decode(data)
        if msg.type == T.Retransmit:
            requests.append(msg.payload["sequence_numbers"])
            return len(requests) <= 2  # the first two requests are lost as well
        return msg.type == T.Data and msg.sequence_number == first and not requests

    net.drop_rules.append(lose)
    for n in range(3):
        client.send_data(server.node_id, {"n": n}, net.now)
    net.flush()
    assert net.run(10.0, lambda: len(delivered(net, server)) == 3)
    assert [r[0] for r in requests[:3]] == [first, first, first]  # the very first number too


@pytest.mark.parametrize("seed", range(4))
def test_sixteen_handshakes_through_thirty_percent_loss_all_succeed_by_default(seed):
    """Default settings, 30 % loss each way, a 15 s deadline: every handshake gets there."""
    net = VirtualNet(100 + seed, delay=0.01, loss=0.30)
    hub = net.add(make_node(9000, max_connections=64))
    clients = [net.add(make_node(9100 + i)) for i in range(16)]
    start = net.now
    for client in clients:
        client.connect(hub.local_addr, net.now, deadline=net.now + 15.0)
    net.flush()
    net.run(16.0, lambda: all(hub.local_addr in c.peers_by_addr for c in clients))
    joined = [c for c in clients if hub.local_addr in c.peers_by_addr]
    assert len(joined) == 16, f"{len(joined)}/16 within {net.now - start:.1f} s"
