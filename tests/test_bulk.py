"""Large messages between p2pfast peers (fragments, loss recovery, congestion and flow control,
path-MTU discovery) on real engines over the seeded virtual network, and the rules a hostile
peer must not break: the 1 MiB limit before any memory is committed, the reassembly memory
caps, refused inconsistent fragments, bounded work per frame, exactly-once delivery.

Runs once compiled and once with ``P2PFAST_NO_EXTENSIONS=1`` (as the whole suite does)."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast._speedups import codec, fragment
from p2pfast.bulk import MAX_MESSAGES_AHEAD
from p2pfast.errors import SendError, WindowFull
from p2pfast.events import DataReceived, SendCompleted, SendFailed
from p2pfast.node import Node
from p2pfast.protocol import MAX_DATAGRAM_SIZE, MAX_MESSAGE_SIZE
from p2pfast.protocol import MessageType as T

from .vnet import VirtualNet, make_node

MiB = 1024 * 1024


def pair(net: VirtualNet, **overrides) -> tuple[Node, Node]:
    a = net.add(make_node(9001, **overrides))
    b = net.add(make_node(9002, **overrides))
    b.app_attached = True
    net.connect(a, b)
    return a, b


def payload_of_size(size: int, seed: int = 0) -> str:
    """A str payload whose Data envelope (as ``send_data`` encodes it for fragments) is about
    ``size`` bytes; random printable text so corruption cannot hide."""
    rng = random.Random(seed)
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=max(1, size - 200)))


def consume_all(net: VirtualNet, node: Node) -> list[DataReceived]:
    """The DataReceived events ``node`` produced, each reported consumed (with the message,
    so their reassembly memory is released); they are removed from the record."""
    events = net.events[node.local_addr]
    got = [e for e in events if isinstance(e, DataReceived)]
    events[:] = [e for e in events if not isinstance(e, DataReceived)]
    for e in got:
        node.app_consumed(1, e)
    return got


def push(net: VirtualNet, a: Node, b: Node, pending: list[str]) -> None:
    """Send from the front of ``pending`` until the window is full (backpressure)."""
    while pending:
        try:
            a.send_data(b.node_id, pending[0], net.now)
        except WindowFull:
            return
        pending.pop(0)


def send_all(net, a, b, payloads, seconds=300.0, consume=True) -> list[str]:
    """Send every payload reliably (waiting on WindowFull); return the received payloads."""
    pending = list(payloads)
    received: list[str] = []
    outcomes = net.events[a.local_addr]
    base = sum(isinstance(e, (SendCompleted, SendFailed)) for e in outcomes)

    def done() -> bool:
        push(net, a, b, pending)
        net.flush()
        if consume:
            received.extend(e.payload for e in consume_all(net, b))
        settled = sum(isinstance(e, (SendCompleted, SendFailed)) for e in outcomes) - base
        return not pending and settled == len(payloads) and len(received) >= len(payloads)

    assert net.run(seconds, done), f"{len(pending)} unsent; transfer incomplete"
    failed = [e for e in outcomes if isinstance(e, SendFailed)]
    assert not failed, failed[:3]
    return received


def digest(items) -> list[str]:
    return sorted(hashlib.sha256(p.encode()).hexdigest() for p in items)


# ----------------------------------------------------------------------------------------
# Delivery


@pytest.mark.parametrize(
    ("loss", "duplicate", "reorder", "seed"),
    [(0.0, 0.0, 0.0, 1), (0.05, 0.02, 0.05, 2), (0.05, 0.02, 0.05, 3), (0.2, 0.05, 0.2, 4)],
)
def test_large_messages_arrive_whole_and_exactly_once(loss, duplicate, reorder, seed):
    net = VirtualNet(seed, delay=0.005, loss=loss, duplicate=duplicate, reorder=reorder)
    a, b = pair(net)
    rng = random.Random(seed)
    sizes = [MAX_MESSAGE_SIZE - 400, 1300, 70_000, *[rng.randrange(1201, MiB) for _ in range(5)]]
    payloads = [payload_of_size(n, i) for i, n in enumerate(sizes)]
    received = send_all(net, a, b, payloads)
    assert digest(received) == digest(payloads)  # intact, each exactly once
    assert b.counters.messages_reassembled == len(payloads)
    if loss:
        assert a.counters.fragments_retransmitted > 0
    net.run(2.0)  # late duplicates of fragments change nothing
    assert not consume_all(net, b)


def test_a_message_of_exactly_1_mib_is_carried_and_one_byte_more_is_refused_before_sending():
    net = VirtualNet(5, delay=0.001)
    a, b = pair(net)
    base = codec.encode(int(T.Data), "", 1795634857, id="6f1c1f0e-1111-4222-8333-444455556666")
    exact = "x" * (MAX_MESSAGE_SIZE - len(base))
    assert send_all(net, a, b, [exact]) == [exact]
    sent_before = a.counters.fragments_sent
    out_before = a.counters.bytes_out
    with pytest.raises(SendError) as info:
        a.send_data(b.node_id, exact + "x", net.now)
    assert info.value.reason == "too_large"
    assert a.counters.fragments_sent == sent_before
    assert a.datagrams_to_send() == [] and a.counters.bytes_out == out_before


def test_a_seed_peer_gets_whole_datagrams_and_too_large_beyond_one():
    net = VirtualNet(6, delay=0.001)
    a = net.add(make_node(9001))
    seed_node = net.add(make_node(9002))
    seed_node.node_info["capabilities"] = ["handshake", "discovery", "data_transfer", "reliable"]
    seed_node.app_attached = True
    net.connect(a, seed_node)
    assert not a.peers_by_id[seed_node.node_id].p2pfast
    whole = "y" * 30_000  # over max_datagram_size, under one UDP datagram: sent whole
    a.send_data(seed_node.node_id, whole, net.now, reliable=False)
    out = a.datagrams_to_send()
    assert len(out) == 1 and len(out[0][0]) > a.config.max_datagram_size
    with pytest.raises(SendError) as info:
        a.send_data(seed_node.node_id, "y" * MAX_DATAGRAM_SIZE, net.now)
    assert info.value.reason == "too_large" and str(MAX_DATAGRAM_SIZE) in str(info.value)
    assert a.counters.fragments_sent == 0 and a.datagrams_to_send() == []


def test_small_messages_still_go_whole_and_large_ones_wait_for_the_window():
    net = VirtualNet(7, delay=0.002)
    a, b = pair(net)
    a.send_data(b.node_id, "small", net.now)
    out = a.datagrams_to_send()
    assert len(out) == 1 and out[0][0][:1] == b"{"
    # The sender's queue of large messages is bounded: WindowFull, then WindowOpened.
    big = payload_of_size(MiB - 1000)
    with pytest.raises(WindowFull) as info:
        for _ in range(100):
            a.send_data(b.node_id, big, net.now)
    assert info.value.node_id == b.node_id


# ----------------------------------------------------------------------------------------
# Flow control and memory


def test_an_application_that_stops_reading_holds_the_sender_not_the_receivers_memory():
    net = VirtualNet(8, delay=0.002)
    a, b = pair(net, reassembly_peer_limit=2 * MiB)
    b.app_queue_limit = 1
    payloads = [payload_of_size(MiB - 1000, i) for i in range(8)]
    pending = list(payloads)
    for _ in range(400):
        push(net, a, b, pending)
        net.flush()
        net.run(0.05)
        conn = b.peers_by_id[a.node_id].bulk
        assert conn is not None
        held = conn.allocated - conn.released
        assert held <= 2 * MiB, held  # never more than the grant
        assert b.bulk_memory.outstanding <= b.config.reassembly_node_limit
    done = [e for e in net.events[a.local_addr] if isinstance(e, SendCompleted)]
    assert len(done) < len(payloads)  # the sender waits
    delivered = [e for e in net.events[b.local_addr] if isinstance(e, DataReceived)]
    assert len(delivered) <= 1
    # The application reads again: everything arrives, once.
    received: list[str] = []

    def all_received() -> bool:
        push(net, a, b, pending)
        net.flush()
        received.extend(e.payload for e in consume_all(net, b))
        return len(received) == len(payloads)

    assert net.run(120, all_received)
    assert digest(received) == digest(payloads)
    net.run(1.0)
    assert not consume_all(net, b)


def flood_first_fragments(net, target: Node, src: Node, count: int, total: int = MiB) -> None:
    """From handshaken peer ``src``: ask for credit, then start ``count`` messages of ``total``
    bytes and never finish them."""
    net.inject(fragment.encode_credit_request(0), src.local_addr, target.local_addr)
    chunk = b"z" * 1000
    for number in range(1, count + 1):
        frame = fragment.encode_fragment(number, number, total, 0, chunk, 0, len(chunk))
        net.inject(frame, src.local_addr, target.local_addr)


def test_half_sent_messages_cannot_push_a_node_past_its_reassembly_caps():
    net = VirtualNet(9, delay=0.001)
    limits = dict(reassembly_peer_limit=2 * MiB, reassembly_node_limit=5 * MiB)
    victim = net.add(make_node(9100, **limits))
    victim.app_attached = True
    attackers = [net.add(make_node(9101 + i)) for i in range(4)]
    for attacker in attackers:
        net.connect(attacker, victim)
    for attacker in attackers:
        flood_first_fragments(net, victim, attacker, 3000)
    committed = 0
    for attacker in attackers:
        conn = victim.peers_by_id[attacker.node_id].bulk
        assert conn is not None
        assert conn.allocated <= conn.granted <= 2 * MiB
        assert conn.incoming_count <= 2
        committed += conn.allocated - conn.released
    assert committed <= 5 * MiB
    assert victim.bulk_memory.outstanding <= 5 * MiB
    assert victim.counters.rejected.get("over_credit", 0) > 0
    # An honest peer is still served (small messages at once; large ones once memory frees).
    honest = net.add(make_node(9200))
    net.connect(honest, victim)
    honest.send_data(victim.node_id, "hello", net.now)
    net.flush()
    net.run(1.0)
    assert any(
        isinstance(e, DataReceived) and e.payload == "hello" for e in net.events[victim.local_addr]
    )
    consume_all(net, victim)
    # The half-sent messages expire and their memory returns.
    net.run(victim.config.reassembly_timeout + 2.0)
    assert victim.counters.rejected.get("reassembly_expired", 0) >= 1
    for attacker in attackers:
        conn = victim.peers_by_id[attacker.node_id].bulk
        assert conn is not None and not conn.incoming_count
    big = payload_of_size(MiB - 1000, 3)
    got = send_all(net, honest, victim, [big], seconds=60)
    assert got == [big]


def test_fragments_are_checked_before_memory_is_committed():
    net = VirtualNet(10, delay=0.001)
    a, b = pair(net)
    src, dst = a.local_addr, b.local_addr
    acks: list[bytes] = []
    net.drop_rules.append(lambda d, s, t: d[:2] == b"\xf5\x02" and bool(acks.append(d)))
    net.inject(fragment.encode_credit_request(0), src, dst)
    conn = b.peers_by_id[a.node_id].bulk
    assert conn is not None
    data = b"q" * 500
    # A total over 1 MiB: refused from its header, nothing allocated, nothing acknowledged.
    net.inject(fragment.encode_fragment(1, 1, MAX_MESSAGE_SIZE + 1, 0, data, 0, 500), src, dst)
    assert b.counters.rejected.get("too_large") == 1 and conn.allocated == 0
    # An end beyond the total.
    net.inject(fragment.encode_fragment(2, 1, 400, 0, data, 0, 500), src, dst)
    assert b.counters.rejected.get("bad_fragment") == 1 and conn.allocated == 0
    # A message then a fragment of it that changes its total, and one that differs on overlap.
    net.inject(fragment.encode_fragment(3, 1, 2000, 0, data, 0, 500), src, dst)
    assert conn.allocated == 2000
    net.inject(fragment.encode_fragment(4, 1, 3000, 500, data, 0, 500), src, dst)
    assert b.counters.rejected.get("fragment_total_changed") == 1
    other = b"r" * 500
    net.inject(fragment.encode_fragment(5, 1, 2000, 250, other, 0, 500), src, dst)
    assert b.counters.rejected.get("fragment_mismatch") == 1
    # Message number 0 and unknown frame kinds.
    net.inject(fragment.encode_fragment(6, 0, 2000, 0, data, 0, 500), src, dst)
    net.inject(b"\xf5\x09junk", src, dst)
    assert b.counters.rejected.get("unknown_frame") == 1
    # Refused fragments are not acknowledged: only packet 3 was accepted.
    acked = {p for d in acks for lo, hi in fragment.parse_ack(d)[2] for p in range(lo, hi + 1)}
    assert acked == {3}


def test_frames_without_a_p2pfast_session_are_dropped_unanswered():
    net = VirtualNet(11, delay=0.001)
    b = net.add(make_node(9002))
    stranger = ("127.0.0.1", 4444)
    for frame in (
        fragment.encode_credit_request(0),
        fragment.encode_probe(1, 1200),
        fragment.encode_fragment(1, 1, 1000, 0, b"x" * 1000, 0, 1000),
    ):
        net.inject(frame, stranger, b.local_addr)
    assert net.sent_to[stranger] == 0
    assert b.counters.rejected.get("frame_without_session") == 3
    # A seed peer (no p2pfast capability) is not served frames either.
    seed_node = net.add(make_node(9003))
    seed_node.node_info["capabilities"] = ["handshake"]
    net.connect(seed_node, b)
    before = net.sent_to[seed_node.local_addr]
    net.inject(fragment.encode_probe(1, 1200), seed_node.local_addr, b.local_addr)
    assert net.sent_to[seed_node.local_addr] == before
    assert b.counters.rejected.get("frame_without_session") == 4


def test_acks_for_packets_never_sent_are_refused_and_hostile_ranges_cost_bounded_work():
    net = VirtualNet(12, delay=0.01)
    a, b = pair(net)
    a.send_data(b.node_id, payload_of_size(MiB // 2), net.now)
    net.flush()
    net.run(0.015)  # fragments in flight, none acknowledged yet
    conn = a.peers_by_id[b.node_id].bulk
    assert conn is not None
    net.inject(fragment.encode_ack(0, 0, [(0, 10**12)]), b.local_addr, a.local_addr)
    assert a.counters.rejected.get("bad_ack") == 1
    outstanding = len(conn.log)
    work = a.work
    hostile = [(i * 3, i * 3 + 1) for i in range(fragment.MAX_ACK_FRAME_RANGES)]
    hostile[0] = (0, 2**40)
    for _ in range(50):
        net.inject(fragment.encode_ack(0, 0, hostile[::-1]), b.local_addr, a.local_addr)
    # Each ACK walks at most what is outstanding (plus its ranges), whatever it claims.
    assert a.work - work <= 50 * (outstanding + 2 * fragment.MAX_ACK_FRAME_RANGES) + 1000


def test_a_replayed_message_is_not_delivered_twice():
    net = VirtualNet(13, delay=0.002)
    a, b = pair(net)
    captured: list[bytes] = []
    net.drop_rules.append(
        lambda d, s, t: captured.append(d) if d[:2] == b"\xf5\x01" else False  # type: ignore[func-returns-value]
    )
    payload = payload_of_size(200_000)
    received = send_all(net, a, b, [payload])
    assert received == [payload]
    net.drop_rules.clear()
    for frame in captured:
        net.inject(frame, a.local_addr, b.local_addr)
    net.run(1.0)
    assert not consume_all(net, b)


# ----------------------------------------------------------------------------------------
# Path MTU


def test_path_mtu_grows_to_what_the_path_carries_and_falls_back_on_a_black_hole():
    net = VirtualNet(14, delay=0.002)
    path_limit = [1472]
    net.drop_rules.append(lambda d, s, t: len(d) > path_limit[0])
    a, b = pair(net)
    payloads = [payload_of_size(300_000, i) for i in range(3)]
    assert digest(send_all(net, a, b, payloads)) == digest(payloads)
    conn = a.peers_by_id[b.node_id].bulk
    assert conn is not None
    assert net.run(10.0, lambda: conn.path.state == "search_complete")
    assert conn.datagram_size == 1472
    # The path shrinks to the base size: large datagrams vanish; the node falls back.
    path_limit[0] = 1200
    more = [payload_of_size(300_000, 10 + i) for i in range(3)]
    assert digest(send_all(net, a, b, more, seconds=600)) == digest(more)
    assert conn.datagram_size == 1200
    assert conn.path.black_holes >= 1


def test_without_probing_datagrams_never_exceed_max_datagram_size():
    net = VirtualNet(15, delay=0.002)
    sizes: list[int] = []
    net.drop_rules.append(lambda d, s, t: sizes.append(len(d)) and False)  # type: ignore[func-returns-value]
    a, b = pair(net, pmtu_discovery=False)
    sizes.clear()
    payloads = [payload_of_size(200_000, 1)]
    send_all(net, a, b, payloads)
    frames = [n for n in sizes]
    assert max(frames) <= 1200


# ----------------------------------------------------------------------------------------
# Hostile frames: nothing escapes, work stays bounded


def _frames():
    u32 = st.integers(0, 2**32 - 1)
    small = st.integers(0, 5000)
    data = st.binary(min_size=0, max_size=64)
    fragment_frames = st.builds(
        lambda p, m, t, o, d: fragment.encode_fragment(p, m, t, o, d, 0, len(d)),
        st.integers(0, 2**64 - 1),
        st.one_of(small, u32),
        st.one_of(small, u32),
        st.one_of(small, u32),
        data,
    )
    ack_frames = st.builds(
        lambda c, d, r: fragment.encode_ack(c, d, r),
        st.integers(0, 2**64 - 1),
        u32,
        st.lists(
            st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)).map(lambda t: (min(t), max(t))),
            max_size=fragment.MAX_ACK_FRAME_RANGES,
        ),
    )
    raw = st.binary(max_size=40).map(lambda b: b"\xf5" + b)
    others = st.sampled_from(
        [fragment.encode_credit_request(0), fragment.encode_probe(7, 1500), b"\xf5\x04" + bytes(8)]
    )
    return st.one_of(fragment_frames, ack_frames, raw, others)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_frames(), max_size=40))
def test_hostile_frames_never_raise_and_cost_bounded_work(frames):
    net = VirtualNet(16, delay=0.002)
    a, b = pair(net)
    a.send_data(b.node_id, payload_of_size(100_000), net.now)
    net.flush()
    work = b.work + a.work
    for frame in frames:
        net.inject(frame, a.local_addr, b.local_addr)
        net.inject(frame, b.local_addr, a.local_addr)
    net.run(1.0)
    for node in (a, b):
        assert "internal_error" not in node.counters.rejected
        assert node.bulk_memory.outstanding <= node.config.reassembly_node_limit
    assert b.work + a.work - work <= 2000 * (len(frames) + 1)


def test_message_numbers_far_ahead_are_refused():
    net = VirtualNet(17, delay=0.001)
    a, b = pair(net)
    net.inject(fragment.encode_credit_request(0), a.local_addr, b.local_addr)
    far = MAX_MESSAGES_AHEAD + 5
    net.inject(
        fragment.encode_fragment(1, far, 100, 0, b"x" * 100, 0, 100), a.local_addr, b.local_addr
    )
    assert b.counters.rejected.get("message_too_far_ahead") == 1


def test_a_large_routed_message_crosses_a_hub_as_fragments_and_is_confirmed_end_to_end():
    from .test_delivery import outcome, triangle

    net, hub, alice, bob = triangle()
    payload = payload_of_size(600_000, 21)
    handle = alice.send_data(bob.node_id, payload, net.now)
    net.flush()
    assert net.run(30.0, lambda: outcome(net, alice, handle) is not None)
    assert isinstance(outcome(net, alice, handle), SendCompleted)
    got = consume_all(net, bob)
    assert [e.payload for e in got] == [payload]
    assert got[0].source == alice.node_id
    assert hub.counters.messages_reassembled == 1 and hub.counters.fragments_sent > 0
    net.run(2.0)
    assert not consume_all(net, bob)


def test_a_defect_while_handling_a_frame_is_counted_and_the_node_keeps_serving(monkeypatch):
    net = VirtualNet(22, delay=0.001)
    a, b = pair(net)
    net.inject(fragment.encode_credit_request(0), a.local_addr, b.local_addr)

    def broken(self, peer, conn, data, now):
        raise RuntimeError("a defect")

    monkeypatch.setattr(Node, "_reassembled", broken)
    whole = fragment.encode_fragment(1, 1, 100, 0, b"x" * 100, 0, 100)
    net.inject(whole, a.local_addr, b.local_addr)
    assert b.counters.rejected.get("internal_error") == 1
    monkeypatch.undo()
    a.send_data(b.node_id, "still served", net.now)
    net.flush()
    net.run(1.0)
    assert [e.payload for e in consume_all(net, b)] == ["still served"]


def test_peer_lists_to_a_p2pfast_peer_fit_its_datagram_size_and_seeds_get_what_they_always_got():
    from p2pfast.node import SEED_LIST_DATAGRAM_SIZE

    net = VirtualNet(23, delay=0.001)
    hub = net.add(make_node(9300, max_connections=200))
    sizes: dict[tuple, list[int]] = {}
    net.drop_rules.append(lambda d, s, t: bool(sizes.setdefault(t, []).append(len(d))) and False)
    members = [net.add(make_node(9301 + i)) for i in range(40)]
    for member in members:
        net.connect(member, hub)
    seed_node = net.add(make_node(9400))
    seed_node.node_info["capabilities"] = ["handshake", "discovery", "data_transfer"]
    net.connect(seed_node, hub)
    net.run(2.0)
    p2p_max = max(n for m in members for n in sizes.get(m.local_addr, [0]))
    assert p2p_max <= hub.config.max_datagram_size
    assert max(sizes[seed_node.local_addr]) <= SEED_LIST_DATAGRAM_SIZE
    assert max(sizes[seed_node.local_addr]) > hub.config.max_datagram_size  # whole lists


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=3000))
def test_large_string_messages_are_encoded_exactly_as_the_codec_does(text):
    node = make_node(9500)
    msg_id = "6f1c1f0e-1111-4222-8333-444455556666"
    try:
        expected = codec.encode(int(T.Data), text, 1795634857, id=msg_id)
    except Exception as exc:
        with pytest.raises(SendError):
            node._encode_large(text, msg_id, 1795634857)
        assert exc is not None
        return
    assert node._encode_large(text, msg_id, 1795634857) == expected
