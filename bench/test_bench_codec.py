"""Micro-benchmarks of the wire codec, compiled ([c]) vs pure ([py]).

Run: ``python -m pytest bench/test_bench_codec.py --benchmark-enable --benchmark-only -q``
(benchmarks are disabled by default in pyproject addopts). Each benchmark sets
``benchmark.group`` so the c and py rows of one operation sit side by side; a round is 100
calls and the reported times are per call. On a busy machine add ``--benchmark-disable-gc``
(pytest's own heap makes the collector's passes costly and noisy).
"""

from __future__ import annotations

import pytest

from p2pfast import _codec_py as pure
from p2pfast.protocol import MessageType

MSG_ID = "709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2"
SERVER_ADDR = "127.0.0.1:18080"
TS = 1795634895

#: A ~250-byte Data datagram as a peer sends it: requires_ack, a sequence number, a small
#: dict payload (built by the pure encoder so both decoders get the very same bytes).
DATA_DATAGRAM = pure.encode(
    MessageType.Data,
    {"kind": "chat", "text": "hello from alice, how are you?", "n": 42, "tags": ["a", "b"]},
    TS,
    id=MSG_ID,
    sequence_number=1234,
    requires_ack=True,
)
#: The captured seed Ack: the commonest null-payload datagram.
ACK_DATAGRAM = pure.encode(
    MessageType.Ack, None, TS, id=MSG_ID, sender_addr=SERVER_ADDR, ack_for=MSG_ID
)
SMALL_PAYLOAD = {"text": "hi b", "n": 7}
ROUNDS = 1000


def test_data_datagram_shape():
    assert 230 <= len(DATA_DATAGRAM) <= 270, len(DATA_DATAGRAM)


def _run(benchmark, fn, *args):
    """100 calls per round (the timer's own cost and resolution are then negligible)."""
    return benchmark.pedantic(fn, args=args, rounds=ROUNDS, iterations=100, warmup_rounds=20)


def test_decode_data(benchmark, codec):
    benchmark.group = f"decode Data ({len(DATA_DATAGRAM)} B, requires_ack, seq)"
    m = _run(benchmark, codec.decode, DATA_DATAGRAM)
    assert (m.type, m.sequence_number, m.requires_ack) == (MessageType.Data, 1234, True)


def test_decode_ack(benchmark, codec):
    benchmark.group = f"decode Ack ({len(ACK_DATAGRAM)} B, null payload)"
    m = _run(benchmark, codec.decode, ACK_DATAGRAM)
    assert (m.type, m.ack_for) == (MessageType.Ack, MSG_ID)


def test_encode_ack(benchmark, codec):
    benchmark.group = "encode_ack (with sender_addr)"
    out = _run(benchmark, codec.encode_ack, MSG_ID, TS, SERVER_ADDR)
    assert len(out) == 229  # the size of the captured seed Ack


def test_new_id(benchmark, codec):
    benchmark.group = "new_id"
    assert len(_run(benchmark, codec.new_id)) == 36


def test_encode_data(benchmark, codec):
    benchmark.group = "encode Data (small dict payload)"
    out = _run(benchmark, codec.encode, MessageType.Data, SMALL_PAYLOAD, TS)
    assert b'"payload":{"n":7,"text":"hi b"}' in out


def test_encode_bare(benchmark, codec):
    benchmark.group = "encode_bare (Ping)"
    assert len(_run(benchmark, codec.encode_bare, MessageType.Ping, TS)) == 183


@pytest.mark.parametrize("form", ["canonical", "upper"])
def test_normalize_uuid(benchmark, codec, form):
    benchmark.group = f"normalize_uuid ({form})"
    value = MSG_ID if form == "canonical" else MSG_ID.upper()
    assert _run(benchmark, codec.normalize_uuid, value) == MSG_ID
