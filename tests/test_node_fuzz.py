"""Hostile input against the engine: whatever arrives, it never raises, never answers an
unauthenticated address with more than 3x what it sent, and keeps serving its peers."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast.protocol import TYPE_NAMES

from .helpers import decoded, envelope, handshake, types
from .test_node import ALICE, T0, make_node

STRANGER = ("127.0.0.9", 4444)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
uuids = st.uuids().map(str) | st.text(max_size=40)
fields = st.fixed_dictionaries(
    {
        "id": uuids,
        "message_type": st.sampled_from(TYPE_NAMES) | st.text(max_size=12),
        "timestamp": st.integers(-5, 2**65) | st.text(max_size=3),
        "payload": json_values
        | st.fixed_dictionaries(
            {
                "destination_node": uuids,
                "source_node": uuids,
                "route_id": uuids,
                "hop_count": st.integers(-2, 10),
                "max_hops": st.integers(-2, 10),
                "original_message": json_values,
            }
        )
        | st.fixed_dictionaries(
            {"seq": json_values, "sequence_numbers": json_values, "peer_id": uuids}
        ),
        "requires_ack": st.booleans() | st.none(),
    },
    optional={
        "sender_addr": st.none() | st.text(max_size=25) | st.just("1.2.3.4:5"),
        "sequence_number": st.none() | st.integers(-1, 2**33),
        "ack_for": st.none() | uuids,
    },
)
datagrams = st.binary(max_size=300) | fields.map(
    lambda f: json.dumps(f, separators=(",", ":")).encode()
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(datagrams, min_size=1, max_size=8))
def test_hostile_datagrams_never_raise_nor_amplify(batch):
    node = make_node()
    join = handshake("alice")[0]
    node.receive_datagram(join, ALICE, T0)
    node.datagrams_to_send()
    for i, data in enumerate(batch):
        now = T0 + i * 0.01
        node.receive_datagram(data, STRANGER, now)  # unauthenticated
        sent = sum(len(d) for d, a in node.datagrams_to_send() if a == STRANGER)
        assert sent <= 3 * len(data)
        node.receive_datagram(data, ALICE, now)  # from a handshaken peer
        node.datagrams_to_send()
        node.handle_timer(node.get_timer() if node.get_timer() < now + 100 else now)
        node.datagrams_to_send()
    assert (
        STRANGER not in node.peers_by_addr or len(node.peers_by_id) <= node.config.max_connections
    )
    # The node still serves a peer afterwards.
    if ALICE in node.peers_by_addr:
        node.receive_datagram(envelope("Ping"), ALICE, T0 + 1)
        assert "Pong" in types(decoded(node.datagrams_to_send(), ALICE))
