"""The receive path (first stage of ``Node.receive_datagram``), compiled ([c]) and pure ([py]).

Each twin is driven with real encoded datagrams and sessions built from its own window module
(the compiled receiver takes compiled sessions and filters). A property test checks that both
twins give the same answers, queue the same datagrams and count the same things for any
sequence of datagrams.
"""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfast._codec_py import decode as py_decode
from p2pfast._codec_py import encode
from p2pfast.errors import ProtocolError
from p2pfast.events import DataReceived
from p2pfast.protocol import MessageType as T

from .conftest import NO_EXTENSIONS, _load

LOCAL = "127.0.0.1:18080"
WALL = 1_795_600_000.0
NOW = 100.25
PLAIN = ("127.0.0.1", 5001)
FAST = ("127.0.0.1", 5002)
STRANGER = ("127.0.0.1", 5003)
PLAIN_ID = "4b1bfa44-87cb-44de-a11e-b0d648397b65"
FAST_ID = "57e1dc3c-2bd6-4b3e-9d36-a3f2b1bd6c1e"
MSG_ID = "847332c3-d122-433c-99db-%012x"
ROUTED = {
    "destination_node": PLAIN_ID,
    "source_node": FAST_ID,
    "route_id": "0c3fd2f8-9d8b-4d1e-8c53-6a1c1e9b4f3a",
    "hop_count": 0,
    "max_hops": 8,
    "original_message": {},
}


def _twin(impl: str) -> SimpleNamespace:
    return SimpleNamespace(receive=_load("_receive", impl), window=_load("_window", impl))


@pytest.fixture(params=["c", "py"])
def twin(request) -> SimpleNamespace:
    return _twin(request.param)


class Harness:
    """One receiver with a plain peer and a p2pfast peer, and the node-side queues it fills."""

    def __init__(self, twin: SimpleNamespace, deliver: int | None = None) -> None:
        mod = twin.receive
        self.counters = mod.Counters()
        self.out: list = []
        self.events: deque = deque()
        self.ack_peers: list = []
        self.peers: dict = {}

        class Session(mod.Session):
            __slots__ = ()

        for addr, node_id, fast in ((PLAIN, PLAIN_ID, False), (FAST, FAST_ID, True)):
            s = Session()
            s.addr, s.node_id, s.p2pfast, s.last_seen = addr, node_id, fast, 0.0
            s.dup, s.gap_at = twin.window.DuplicateFilter(1024), float("inf")
            s.pending_acks, s.pending_ack_id = [], ""
            s.proven, s.budget = True, 0  # tests of the budget clear ``proven``
            self.peers[addr] = s
        self.rx = mod.Receiver(
            self.peers, self.counters, self.out, self.events, self.ack_peers, LOCAL, WALL
        )
        if deliver is not None:
            self.rx.deliver = deliver

    def feed(self, data: bytes, addr: tuple, now: float = NOW):
        return self.rx.receive(data, addr, now)

    def sent(self) -> list:
        return [(py_decode(d), a) for d, a in self.out]


def data(seq: int | None, payload=None, requires_ack: bool = True, mtype: int = T.Data) -> bytes:
    return encode(
        mtype,
        {"n": seq} if payload is None else payload,
        1795634857,
        id=MSG_ID % (seq or 0),
        sequence_number=seq,
        requires_ack=requires_ack,
    )


def test_an_address_without_a_session_is_handed_back_untouched(twin):
    h = Harness(twin)
    d = data(1)
    msg, peer, gap = h.feed(d, STRANGER)
    assert (msg.type, msg.sequence_number, peer, gap) == (T.Data, 1, None, False)
    assert h.out == [] and h.counters.bytes_in == len(d) and h.counters.rx_by_type[T.Data] == 1
    assert h.counters.acks_sent == 0


def test_in_order_data_is_acked_and_counted(twin):
    h = Harness(twin, twin.receive.DELIVER_COUNT)
    assert h.feed(data(1), PLAIN) is None
    ((ack, addr),) = h.sent()
    assert addr == PLAIN
    assert (ack.type, ack.ack_for, ack.timestamp, ack.sender_addr) == (
        T.Ack,
        MSG_ID % 1,
        int(NOW + WALL),
        LOCAL,
    )
    assert ack.payload is None and ack.sequence_number is None and ack.requires_ack is False
    c = h.counters
    assert (c.acks_sent, c.tx_by_type[T.Ack], c.bytes_out, c.delivered) == (
        1,
        1,
        len(h.out[0][0]),
        1,
    )
    assert not h.events and h.peers[PLAIN].last_seen == NOW


def test_data_for_the_application_becomes_an_event(twin):
    h = Harness(twin, twin.receive.DELIVER_APP)
    assert h.feed(data(1, {"x": [1, 2]}), PLAIN) is None
    assert list(h.events) == [DataReceived(PLAIN_ID, {"x": [1, 2]}, MSG_ID % 1, None, 0)]


def test_a_duplicate_is_acked_again_but_not_delivered(twin):
    h = Harness(twin, twin.receive.DELIVER_APP)
    h.feed(data(1), PLAIN)
    assert h.feed(data(1), PLAIN) is None
    assert [m.ack_for for m, _ in h.sent()] == [MSG_ID % 1, MSG_ID % 1]
    assert (h.counters.duplicates, h.counters.delivered, len(h.events)) == (1, 1, 1)


def test_a_gap_is_handed_to_the_engine_once(twin):
    h = Harness(twin)
    h.feed(data(1), PLAIN)
    msg, peer, gap = h.feed(data(5), PLAIN)
    assert (msg.sequence_number, peer, gap) == (5, h.peers[PLAIN], True)
    assert len(h.out) == 2  # acked before the hand-over
    h.peers[PLAIN].gap_at = NOW + 0.05  # the engine scheduled the request
    assert h.feed(data(9), PLAIN) is None


def test_p2pfast_peers_are_owed_one_coalesced_ack(twin):
    h = Harness(twin)
    for seq in (1, 2, 3):
        h.feed(data(seq), FAST, NOW + seq)
    peer = h.peers[FAST]
    assert h.out == [] and h.ack_peers == [peer]
    assert (peer.pending_acks, peer.pending_ack_id, h.rx.ack_now) == (
        [1, 2, 3],
        MSG_ID % 3,
        NOW + 3,
    )
    h.feed(data(2), FAST)  # a duplicate is owed again (the first Ack may have been lost)
    assert peer.pending_acks == [1, 2, 3, 2] and h.ack_peers == [peer]


def test_ping_is_answered_with_an_ack_then_a_pong(twin):
    h = Harness(twin)
    ping = encode(T.Ping, None, 1795634857, requires_ack=True)
    assert h.feed(ping, PLAIN) is None
    assert [(m.type, a) for m, a in h.sent()] == [(T.Ack, PLAIN), (T.Pong, PLAIN)]
    pong = h.sent()[1][0]
    assert pong.timestamp == int(NOW + WALL) and pong.payload is None


def test_get_routes_is_handed_over_after_the_ack(twin):
    h = Harness(twin, twin.receive.DELIVER_APP)
    payload = {"cmd": "get_routes"}
    msg, peer, gap = h.feed(data(1, payload), PLAIN)
    assert (msg.payload, peer, gap) == (payload, h.peers[PLAIN], False)
    assert len(h.out) == 1 and not h.events and h.counters.delivered == 0


def test_routed_data_is_handed_over_unacknowledged(twin):
    """The engine acknowledges routed Data once it has decided (it may have to refuse it for
    now: a full application queue, a busy next hop); a duplicate is acknowledged again."""
    h = Harness(twin, twin.receive.DELIVER_APP)
    msg, peer, gap = h.feed(data(1, ROUTED), PLAIN)
    assert (msg.payload, peer, gap) == (ROUTED, h.peers[PLAIN], False)
    assert h.out == [] and not h.events and h.counters.delivered == 0
    h.rx.ack(peer, msg, NOW)
    assert [m.type for m, _ in h.sent()] == [T.Ack]
    assert h.feed(data(1, ROUTED), PLAIN) is None  # a duplicate: acked again, not handed over
    assert [m.type for m, _ in h.sent()] == [T.Ack, T.Ack] and h.counters.duplicates == 1


def test_too_old_is_never_acknowledged(twin):
    """A number behind the filter may never have been delivered: an Ack would make the
    sender forget it, so it gets none (the sender's span limit keeps it from happening)."""
    h = Harness(twin, twin.receive.DELIVER_APP)
    assert h.feed(data(5000), PLAIN) is None
    h.out.clear()
    assert h.feed(data(5000 - 1024), PLAIN) is None
    assert h.out == [] and len(h.events) == 1 and h.counters.rejected == {"too_old": 1}
    assert h.counters.duplicates == 0
    assert h.feed(data(5000 - 1023), PLAIN) is None  # still inside: delivered and acked
    assert len(h.out) == 1 and len(h.events) == 2


def test_a_full_application_queue_takes_nothing(twin):
    h = Harness(twin, twin.receive.DELIVER_APP)
    h.rx.app_limit = 2
    for seq in (1, 2, 3, 4):
        h.feed(data(seq), PLAIN)
    assert [e.payload for e in h.events] == [{"n": 1}, {"n": 2}]
    assert len(h.out) == 2 and h.rx.app_pending == 2  # 3 and 4: not acked, not recorded
    assert h.counters.rejected == {"app_busy": 2}
    assert h.feed(data(2), PLAIN) is None  # a duplicate of a delivered one is acked again
    assert len(h.out) == 3 and h.counters.duplicates == 1
    h.feed(data(5, requires_ack=False), PLAIN)  # unreliable: dropped, counted
    assert h.counters.rejected == {"app_busy": 3}
    h.rx.app_pending = 1  # the consumer took one
    assert h.feed(data(3), PLAIN) is None  # the retransmission is new, delivered and acked
    assert [e.payload for e in h.events][-1] == {"n": 3} and len(h.out) == 4
    assert h.feed(data(4), PLAIN) is None
    assert len(h.events) == 3 and h.counters.rejected["app_busy"] == 4


def test_an_unproven_session_gets_at_most_three_times_its_bytes(twin):
    h = Harness(twin, twin.receive.DELIVER_COUNT)
    peer = h.peers[PLAIN]
    peer.proven = False
    tiny = (
        b'{"id":"847332c3-d122-433c-99db-457381ef6092","message_type":"Ping","timestamp":1,'
        b'"payload":null,"requires_ack":true}'
    )
    sent_bytes = 0
    for i in range(20):
        h.feed(tiny, PLAIN)
        assert sum(len(d) for d, _ in h.out) <= 3 * len(tiny) * (i + 1)
    sent_bytes = sum(len(d) for d, _ in h.out)
    assert sent_bytes + peer.budget == 3 * len(tiny) * 20
    assert h.counters.rejected.get("amplification_limit", 0) > 0  # Ack + Pong > 3x a tiny Ping
    peer.proven = True
    h.out.clear()
    h.feed(tiny, PLAIN)
    assert len(h.out) == 2


def test_pongs_to_p2pfast_peers_name_the_ping(twin):
    h = Harness(twin)
    ping = encode(T.Ping, None, 1795634857, id=MSG_ID % 7)
    h.feed(ping, FAST)
    h.feed(ping, PLAIN)
    (fast, _), (plain, _) = h.sent()
    assert (fast.type, fast.ack_for) == (T.Pong, MSG_ID % 7)
    assert (plain.type, plain.ack_for) == (T.Pong, None)


def test_a_ping_with_a_payload_goes_to_the_engine(twin):
    h = Harness(twin)
    ping = encode(T.Ping, {"token": "ab"}, 1795634857)
    msg, _peer, _gap = h.feed(ping, FAST)
    assert msg.payload == {"token": "ab"} and h.out == []


def test_echo_mode_hands_data_over(twin):
    h = Harness(twin, twin.receive.DELIVER_ENGINE)
    msg, _, _ = h.feed(data(1), PLAIN)
    assert msg.type == T.Data and h.counters.delivered == 0


def test_other_types_and_rehandshakes_are_handed_over(twin):
    h = Harness(twin)
    info = {"id": FAST_ID}
    msg, peer, gap = h.feed(data(7, info, mtype=T.HandshakeRequest), FAST)
    assert (msg.type, peer, gap) == (T.HandshakeRequest, h.peers[FAST], False)
    # A HandshakeRequest is never sequence-filtered and always gets a plain Ack.
    assert [m.type for m, _ in h.sent()] == [T.Ack] and h.ack_peers == []
    assert h.peers[FAST].dup.highest == -1
    msg, _, _ = h.feed(encode(T.Pong, None, 1795634857), PLAIN)
    assert msg.type == T.Pong


def test_a_malformed_datagram_raises_after_counting_its_bytes(twin):
    h = Harness(twin)
    with pytest.raises(ProtocolError) as err:
        h.feed(b"{nope", PLAIN)
    assert err.value.reason == "not_json" and h.counters.bytes_in == 5
    assert sum(h.counters.rx_by_type) == 0


def test_counters_are_twins(twin):
    c = twin.receive.Counters()
    c.reject("x")
    c.reject("x")
    c.rx_by_type[T.Ping] += 2
    c.malformed += 1
    c.tx_by_type[T.Pong] += 3
    assert (c.rejected, c.datagrams_in, c.datagrams_out) == ({"x": 2}, 3, 3)
    assert twin.receive.COUNTER_FIELDS[:3] == ("malformed", "bytes_in", "bytes_out")
    assert all(getattr(c, name) >= 0 for name in twin.receive.COUNTER_FIELDS)


def test_counter_fields_are_every_scalar_counter_in_the_same_order_in_both_twins():
    """COUNTER_FIELDS orders the stats snapshot: the pure twin lists every scalar counter of its
    Counters (nothing derived from the order of ``__slots__``, which the formatter sorts), in
    the compiled twin's order."""
    py = _load("_receive", "py")
    scalars = set(py.Counters.__slots__) - {"rx_by_type", "tx_by_type", "rejected"}
    assert len(py.COUNTER_FIELDS) == len(scalars) and set(py.COUNTER_FIELDS) == scalars
    assert py.COUNTER_FIELDS[:3] == ("malformed", "bytes_in", "bytes_out")
    if not NO_EXTENSIONS:
        assert py.COUNTER_FIELDS == _load("_receive", "c").COUNTER_FIELDS


# -- Both twins, same answers -------------------------------------------------------------

SENDERS = [PLAIN, FAST, STRANGER]
datagrams = st.lists(
    st.tuples(
        st.sampled_from(SENDERS),
        st.sampled_from([T.Data, T.Data, T.Ping, T.Pong, T.Ack, T.HandshakeRequest, T.Error]),
        st.none() | st.integers(0, 40) | st.integers(1000, 3000),
        st.booleans(),
        st.sampled_from([None, {"n": 1}, ROUTED, {"cmd": "get_routes"}, [1, "x"], "text"]),
        st.floats(0, 1e6, allow_nan=False),
    ),
    max_size=60,
)


def _observe(h: Harness, items, deliver: int) -> list:
    h.rx.deliver = deliver
    seen = []
    for sender, mtype, seq, ack, payload, now in items:
        d = encode(
            mtype,
            payload,
            1795634857,
            id=MSG_ID % (seq or 0),
            sequence_number=seq,
            requires_ack=ack,
        )
        got = h.feed(d, sender, now)
        if got is not None:
            msg, peer, gap = got
            got = (msg.as_tuple(), None if peer is None else peer.node_id, gap)
        seen.append(got)
    # Outgoing datagrams carry fresh random ids: compare everything else.
    sent = [(py_decode(d).as_tuple()[1:], a) for d, a in h.out]
    c = h.counters
    counts = [
        c.rx_by_type,
        c.tx_by_type,
        c.bytes_in,
        c.bytes_out,
        c.acks_sent,
        c.duplicates,
        c.delivered,
    ]
    sessions = [
        (p.last_seen, p.pending_acks, p.pending_ack_id, p.dup.highest) for p in h.peers.values()
    ]
    return [
        seen,
        sent,
        counts,
        list(h.events),
        [p.node_id for p in h.ack_peers],
        h.rx.ack_now,
        sessions,
    ]


@pytest.mark.skipif(NO_EXTENSIONS, reason="compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
@settings(max_examples=300, deadline=None)
@given(items=datagrams, deliver=st.sampled_from([0, 1, 2]))
def test_both_twins_agree_on_any_sequence(items, deliver):
    c, py = Harness(_twin("c")), Harness(_twin("py"))
    assert _observe(c, items, deliver) == _observe(py, items, deliver)
