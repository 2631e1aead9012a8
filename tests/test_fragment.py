"""Fragment frames and bookkeeping (RangeSet, Reassembly, SentLog), compiled ([c]) and pure ([py]).

Every test that takes the ``frag`` fixture runs once per implementation. Besides the example
tests there are hypothesis tests against small reference models, a fuzz test of every parser
(only ProtocolError may come out), and c-vs-py agreement tests on random operation sequences
(skipped without the compiled build, where they would compare the pure twin with itself).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import random
import struct
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast._speedups import codec as active_codec
from p2pfast._wire import MAX_MESSAGE_SIZE
from p2pfast.errors import ProtocolError

PURE = importlib.import_module("p2pfast._fragment_py")
NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")

HYPO = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _compiled():
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    try:
        return importlib.import_module("p2pfast._fragment")
    except ImportError as exc:  # a missing build is a failure, not a skip
        pytest.fail(f"compiled module p2pfast._fragment not importable: {exc}")


@pytest.fixture(params=["c", "py"])
def frag(request):
    """The fragment module, compiled ([c]) and pure ([py])."""
    return _compiled() if request.param == "c" else PURE


# --------------------------------------------------------------------------- module surface

CONSTANTS = {
    "FRAME_MAGIC": 0xF5,
    "KIND_FRAGMENT": 1,
    "KIND_ACK": 2,
    "KIND_PROBE": 3,
    "KIND_PROBE_ACK": 4,
    "KIND_CREDIT_REQUEST": 5,
    "FRAGMENT_HEADER": 22,
    "MAX_ACK_FRAME_RANGES": 32,
    "PROBE_HEADER": 6,
    "MAX_U32": 0xFFFFFFFF,
    "ADDED": 0,
    "DUPLICATE": 1,
    "MISMATCH": 2,
    "TOO_FRAGMENTED": 3,
}


def test_constants(frag):
    for name, value in CONSTANTS.items():
        assert getattr(frag, name) == value, name
    assert frag.ProtocolError is ProtocolError


def test_same_public_names(frag):
    def public(obj):
        return {n for n in dir(obj) if not n.startswith("_")}

    for name in ("RangeSet", "Reassembly", "SentLog"):
        assert public(getattr(frag, name)) == public(getattr(PURE, name)), name
    functions = {n for n in public(PURE) if n.startswith(("encode_", "parse_"))}
    assert len(functions) == 10
    assert functions <= public(frag)


def test_read_only_and_writable_attributes(frag):
    r = frag.Reassembly(10)
    with pytest.raises(AttributeError):
        r.total = 20
    r.max_ranges = 3
    assert r.max_ranges == 3
    log = frag.SentLog(5)
    with pytest.raises(AttributeError):
        log.next_packet = 9
    log.largest_acked = 2
    log.work = 7
    assert (log.largest_acked, log.work, log.next_packet) == (2, 7, 5)
    s = frag.RangeSet()
    s.covered = 4
    assert s.covered == 4
    with pytest.raises(AttributeError):
        s.count = 1


def test_selected_by_speedups():
    from p2pfast import _speedups

    expected = "p2pfast._fragment" if _speedups.USE_EXTENSIONS else "p2pfast._fragment_py"
    assert _speedups.fragment.__name__ == expected


# --------------------------------------------------------------------------- frames

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)


def test_fragment_layout(frag):
    frame = frag.encode_fragment(0x0102030405060708, 9, 100, 40, b"..hello..", 2, 7)
    assert frame == (
        b"\xf5\x01"
        + bytes([1, 2, 3, 4, 5, 6, 7, 8])
        + b"\x00\x00\x00\x09\x00\x00\x00\x64\x00\x00\x00\x28hello"
    )
    assert frag.parse_fragment(frame) == (0x0102030405060708, 9, 100, 40)
    assert frame[frag.FRAGMENT_HEADER :] == b"hello"


@HYPO
@given(
    packet=U64,
    message=st.integers(1, 2**32 - 1),
    data=st.binary(min_size=1, max_size=300),
    cut=st.data(),
)
def test_fragment_round_trip(frag, packet, message, data, cut):
    start = cut.draw(st.integers(0, len(data) - 1))
    end = cut.draw(st.integers(start + 1, len(data)))
    offset = cut.draw(st.integers(0, MAX_MESSAGE_SIZE - (end - start)))
    total = cut.draw(st.integers(offset + end - start, MAX_MESSAGE_SIZE))
    frame = frag.encode_fragment(packet, message, total, offset, data, start, end)
    assert type(frame) is bytes
    assert frame[0] == 0xF5 and frame[1] == frag.KIND_FRAGMENT
    assert frag.parse_fragment(frame) == (packet, message, total, offset)
    assert frame[frag.FRAGMENT_HEADER :] == data[start:end]
    assert frag.parse_fragment(bytearray(frame)) == (packet, message, total, offset)
    assert frag.parse_fragment(memoryview(frame)) == (packet, message, total, offset)


def test_fragment_of_a_large_piece_and_other_buffers(frag):
    data = bytes(range(256)) * 300
    for source in (data, bytearray(data), memoryview(data)):
        frame = frag.encode_fragment(1, 1, len(data), 0, source, 0, len(data))
        assert frame[frag.FRAGMENT_HEADER :] == data
    # Python slice rules for start/end, as data[start:end]
    for start, end in ((-10, -2), (5, 2), (0, 10**6), (-(10**6), 3)):
        frame = frag.encode_fragment(1, 1, len(data), 0, data, start, end)
        assert frame[frag.FRAGMENT_HEADER :] == data[start:end]


@HYPO
@given(
    credit=U64,
    delay=st.integers(0, 2**40),
    ranges=st.lists(st.tuples(U64, U64).map(lambda r: (min(r), max(r))), max_size=40),
)
def test_ack_round_trip(frag, credit, delay, ranges):
    frame = frag.encode_ack(credit, delay, ranges)
    assert frame[:2] == b"\xf5\x02"
    assert len(frame) == 15 + 16 * min(len(ranges), 32)
    assert frag.parse_ack(frame) == (credit, min(delay, 2**32 - 1), ranges[:32])


@HYPO
@given(probe=U32, size=st.integers(-5, 3000), ack_size=U32, credit=U64)
def test_probe_and_credit_round_trips(frag, probe, size, ack_size, credit):
    frame = frag.encode_probe(probe, size)
    assert len(frame) == max(size, frag.PROBE_HEADER)
    assert frame[:2] == b"\xf5\x03" and not any(frame[frag.PROBE_HEADER :])
    assert frag.parse_probe(frame) == probe
    frame = frag.encode_probe_ack(probe, ack_size)
    assert frame[:2] == b"\xf5\x04" and len(frame) == 10
    assert frag.parse_probe_ack(frame) == (probe, ack_size)
    frame = frag.encode_credit_request(credit)
    assert frame[:2] == b"\xf5\x05" and len(frame) == 10
    assert frag.parse_credit_request(frame) == credit


def _fragment_frame(packet=1, message=1, total=10, offset=0, data=b"abc"):
    return struct.pack(">BBQIII", 0xF5, 1, packet, message, total, offset) + data


BAD_FRAMES = [
    # (parser, frame, reason, detail fragment)
    ("parse_fragment", b"", "bad_fragment", "without data"),
    ("parse_fragment", b"\xf5\x01", "bad_fragment", "without data"),
    ("parse_fragment", _fragment_frame(data=b""), "bad_fragment", "without data"),
    ("parse_fragment", _fragment_frame(total=MAX_MESSAGE_SIZE + 1), "too_large", "1048577"),
    ("parse_fragment", _fragment_frame(total=2**32 - 1), "too_large", "message >"),
    ("parse_fragment", _fragment_frame(total=10, offset=8), "bad_fragment", "beyond"),
    ("parse_fragment", _fragment_frame(total=0, offset=0), "bad_fragment", "beyond"),
    ("parse_fragment", _fragment_frame(total=5, offset=2**32 - 1), "bad_fragment", "beyond"),
    ("parse_fragment", _fragment_frame(message=0), "bad_fragment", "message number 0"),
    ("parse_ack", b"\xf5\x02", "bad_ack", "short"),
    ("parse_ack", b"\xf5\x02" + bytes(12), "bad_ack", "short"),
    ("parse_ack", b"\xf5\x02" + bytes(12) + b"\x01", "bad_ack", "range count"),
    ("parse_ack", b"\xf5\x02" + bytes(12) + b"\x00" + bytes(16), "bad_ack", "range count"),
    ("parse_ack", b"\xf5\x02" + bytes(12) + b"\x01" + bytes(17), "bad_ack", "range count"),
    ("parse_ack", b"\xf5\x02" + bytes(12) + b"\x21" + bytes(16 * 33), "bad_ack", "range count"),
    (
        "parse_ack",
        b"\xf5\x02" + bytes(12) + b"\x01" + struct.pack(">QQ", 5, 4),
        "bad_ack",
        "reversed",
    ),
    (
        "parse_ack",
        b"\xf5\x02" + bytes(12) + b"\x02" + struct.pack(">QQQQ", 9, 9, 2**64 - 1, 0),
        "bad_ack",
        "reversed",
    ),
    ("parse_probe", b"\xf5\x03\x00\x00\x00", "bad_probe", "short"),
    ("parse_probe_ack", b"\xf5\x04" + bytes(7), "bad_probe", "wrong length"),
    ("parse_probe_ack", b"\xf5\x04" + bytes(9), "bad_probe", "wrong length"),
    ("parse_credit_request", b"\xf5\x05" + bytes(7), "bad_credit", "wrong length"),
    ("parse_credit_request", b"\xf5\x05" + bytes(9), "bad_credit", "wrong length"),
]


@pytest.mark.parametrize(("parser", "frame", "reason", "detail"), BAD_FRAMES)
def test_parse_errors(frag, parser, frame, reason, detail):
    with pytest.raises(ProtocolError) as info:
        getattr(frag, parser)(frame)
    assert info.value.reason == reason
    assert info.value.code == reason
    assert detail in str(info.value)


def test_parse_limits_that_are_accepted(frag):
    # the largest message, its last byte; 32 ACK ranges; ranges touching u64 max
    frame = _fragment_frame(total=MAX_MESSAGE_SIZE, offset=MAX_MESSAGE_SIZE - 1, data=b"z")
    assert frag.parse_fragment(frame)[2:] == (MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE - 1)
    ranges = [(2**64 - 1, 2**64 - 1)] + [(i, i) for i in range(31)]
    assert frag.parse_ack(frag.encode_ack(0, 0, ranges))[2] == ranges


def test_encoders_refuse_fields_out_of_range(frag):
    for call in (
        lambda: frag.encode_fragment(2**64, 1, 1, 0, b"x", 0, 1),
        lambda: frag.encode_fragment(-1, 1, 1, 0, b"x", 0, 1),
        lambda: frag.encode_fragment(1, 2**32, 1, 0, b"x", 0, 1),
        lambda: frag.encode_ack(-1, 0, []),
        lambda: frag.encode_ack(0, -1, []),
        lambda: frag.encode_ack(0, 0, [(0, 2**64)]),
        lambda: frag.encode_probe_ack(2**32, 0),
        lambda: frag.encode_credit_request(2**64),
    ):
        with pytest.raises((struct.error, OverflowError)):
            call()


def _all_frames(frag, rng: random.Random) -> list[bytes]:
    data = rng.randbytes(rng.randrange(1, 200))
    return [
        frag.encode_fragment(rng.getrandbits(64), rng.randrange(1, 2**32), 10**6, 0, data, 0, 9),
        frag.encode_ack(rng.getrandbits(64), rng.getrandbits(32), [(1, 5), (9, 9)]),
        frag.encode_ack(0, 0, []),
        frag.encode_probe(rng.getrandbits(32), rng.randrange(0, 1500)),
        frag.encode_probe_ack(rng.getrandbits(32), rng.getrandbits(32)),
        frag.encode_credit_request(rng.getrandbits(64)),
    ]


def test_frames_are_never_json_or_stun(frag):
    """0xF5 is not valid UTF-8 anywhere in a text, and its top two bits are set, while every
    STUN message starts with two zero bits (RFC 5389 §6): the codec refuses every frame and a
    STUN parser would too."""
    rng = random.Random(5)
    for _ in range(200):
        for frame in _all_frames(frag, rng):
            assert frame[0] == 0xF5 and frame[0] >> 6 == 0b11
            with pytest.raises(ProtocolError) as info:
                active_codec.decode(frame)
            assert info.value.reason in ("not_json", "stun")


@HYPO
@given(rest=st.binary(max_size=120))
def test_anything_starting_with_f5_is_refused_by_the_codec(rest):
    frame = b"\xf5" + rest
    with pytest.raises(ProtocolError) as info:
        active_codec.decode(frame)
    # "stun" only when bytes 4..8 happen to equal the STUN cookie (the codec's cheap check)
    assert info.value.reason == (
        "stun" if len(frame) >= 20 and frame[4:8] == b"\x21\x12\xa4\x42" else "not_json"
    )


PARSERS = (
    "parse_fragment",
    "parse_ack",
    "parse_probe",
    "parse_probe_ack",
    "parse_credit_request",
)


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            b += rng.randbytes(rng.randrange(1, 40))
        elif b:
            i = rng.randrange(len(b))
            b[i : i + 1] = b""
    return bytes(b)


def test_fuzz_parsers_raise_only_protocol_error(frag):
    rng = random.Random(1234)
    frames = []
    for _ in range(300):
        frames.append(rng.randbytes(rng.randrange(0, 80)))
        frames.extend(_mutate(rng, f) for f in _all_frames(frag, rng))
    for frame in frames:
        for parser in PARSERS:
            with contextlib.suppress(ProtocolError):
                getattr(frag, parser)(frame)


@HYPO
@given(frame=st.binary(max_size=600))
def test_fuzz_parsers_hypothesis(frag, frame):
    for parser in PARSERS:
        with contextlib.suppress(ProtocolError):
            getattr(frag, parser)(frame)


# --------------------------------------------------------------------------- RangeSet


def _runs(covered: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for x in sorted(covered):
        if out and out[-1][1] == x:
            out[-1] = (out[-1][0], x + 1)
        else:
            out.append((x, x + 1))
    return out


RANGE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-3, 70), st.integers(-3, 70)),
        st.tuples(st.just("pop"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("overlaps"), st.integers(-3, 70), st.integers(-3, 70)),
        st.tuples(st.just("clear"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@HYPO
@given(ops=RANGE_OPS)
def test_rangeset_against_a_set_of_bytes(frag, ops):
    s = frag.RangeSet()
    model: set[int] = set()
    for op, a, b in ops:
        if op == "add":
            new = set(range(a, b)) - model
            assert s.add(a, b) == len(new)
            model |= new
        elif op == "pop":
            runs = _runs(model)
            got = s.pop_front(a)
            if not runs:
                assert got == (0, 0)
            else:
                start, end = runs[0]
                assert got == (start, min(end, start + a))
                model -= set(range(*got))
        elif op == "overlaps":
            assert s.overlaps(a, b) == _runs(model & set(range(a, b)))
        else:
            s.clear()
            model.clear()
        assert s.ranges() == _runs(model)
        assert s.covered == len(model)
        assert s.count == len(_runs(model))


def test_rangeset_edges(frag):
    s = frag.RangeSet()
    assert s.pop_front(10) == (0, 0)
    assert s.add(5, 5) == 0 and s.add(7, 3) == 0 and s.count == 0
    assert s.add(0, 10) == 10 and s.add(10, 20) == 10  # touching ranges merge
    assert s.ranges() == [(0, 20)]
    assert s.overlaps(5, 5) == [] and s.overlaps(8, 3) == []
    assert s.pop_front(0) == (0, 0)
    assert s.ranges() == [(0, 20)]
    with pytest.raises(ValueError, match="negative"):
        s.pop_front(-1)
    assert s.ranges() == [(0, 20)] and s.covered == 20
    for k in range(100):  # many ranges (the compiled arrays grow), then one merge of all
        s.add(100 + 3 * k, 101 + 3 * k)
    assert s.count == 101
    assert s.add(0, 1000) == 1000 - 20 - 100
    assert s.ranges() == [(0, 1000)]


def test_rangeset_in_order_sender_use(frag):
    s = frag.RangeSet()
    s.add(0, 1_048_576)
    pieces = []
    while s.covered:
        pieces.append(s.pop_front(1178))
    assert pieces[0] == (0, 1178) and pieces[-1][1] == 1_048_576
    assert sum(e - b for b, e in pieces) == 1_048_576
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))


# --------------------------------------------------------------------------- Reassembly


def _pieces(rng: random.Random, size: int, max_piece: int) -> list[tuple[int, int]]:
    cuts = [0]
    while cuts[-1] < size:
        cuts.append(min(size, cuts[-1] + rng.randrange(1, max_piece + 1)))
    return list(itertools.pairwise(cuts))


@HYPO
@given(
    size=st.integers(1, 5000),
    max_piece=st.integers(1, 1500),
    seed=st.integers(0, 2**32),
    dup=st.floats(0, 0.5),
)
def test_reassembly_any_fragmentation_and_order(frag, size, max_piece, seed, dup):
    rng = random.Random(seed)
    message = rng.randbytes(size)
    pieces = _pieces(rng, size, max_piece)
    # extra pieces that straddle others (retransmissions with different boundaries)
    pieces += [
        (a, min(size, a + rng.randrange(1, max_piece + 1))) for a, _ in pieces if rng.random() < dup
    ]
    rng.shuffle(pieces)
    r = frag.Reassembly(size, max_ranges=10_000)
    received = 0
    for start, end in pieces:
        at = rng.randrange(0, 30)
        frame = rng.randbytes(at) + message[start:end]
        result = r.insert(start, frame, at)
        assert result in (frag.ADDED, frag.DUPLICATE)
        received = r.received
    assert received == size and r.complete and r.total == size
    assert r.take() == message


@HYPO
@given(size=st.integers(2, 3000), max_ranges=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_reassembly_completes_at_the_range_cap(frag, size, max_ranges, seed):
    """Pieces refused as TOO_FRAGMENTED are resent later; pieces that extend or join a range
    are accepted even at the cap, so a capped message always completes."""
    rng = random.Random(seed)
    message = rng.randbytes(size)
    pending = _pieces(rng, size, max(1, size // 20))
    rng.shuffle(pending)
    r = frag.Reassembly(size, max_ranges)
    for _ in range(len(pending) + 1):  # each round makes progress
        refused = []
        for start, end in pending:
            result = r.insert(start, message[start:end], 0)
            if result == frag.TOO_FRAGMENTED:
                refused.append((start, end))
            else:
                assert result == frag.ADDED
        pending = refused
        if not pending:
            break
    assert not pending and r.complete
    assert r.take() == message


def test_reassembly_duplicate_mismatch_and_cap(frag):
    r = frag.Reassembly(100, max_ranges=2)
    assert r.insert(10, b"HDR" + b"0123456789", 3) == frag.ADDED
    assert r.insert(10, b"0123456789", 0) == frag.DUPLICATE
    assert r.insert(12, b"234", 0) == frag.DUPLICATE
    assert r.insert(15, b"", 0) == frag.DUPLICATE  # nothing new
    assert r.received == 10
    # a differing overlap is refused and changes nothing (not even the new part)
    assert r.insert(15, b"5X789abc", 0) == frag.MISMATCH
    assert r.insert(5, b"abcde01x3", 0) == frag.MISMATCH
    assert r.received == 10
    assert r.insert(50, b"z", 0) == frag.ADDED  # second range
    assert r.insert(70, b"q", 0) == frag.TOO_FRAGMENTED  # would be a third
    assert r.insert(51, b"y", 0) == frag.ADDED  # extends one: fine at the cap
    assert r.insert(20, b"abc", 0) == frag.ADDED  # touches one: fine at the cap
    assert r.insert(18, b"89abcd", 0) == frag.ADDED  # overlaps and extends
    assert r.received == 10 + 2 + 3 + 1
    r.max_ranges = 3
    assert r.insert(70, b"q", 0) == frag.ADDED
    data = r.take()
    assert data[10:24] == b"0123456789abcd" and data[50:52] == b"zy" and data[70:71] == b"q"
    assert data[:10] == bytes(10) and data[24:50] == bytes(26)  # not received: zeros
    assert len(data) == 100


def test_reassembly_mismatch_leaves_the_buffer_unchanged(frag):
    message = bytes(range(200))
    r = frag.Reassembly(200)
    assert r.insert(0, message[:100], 0) == frag.ADDED
    hostile = bytearray(message[50:150])
    hostile[10] ^= 1  # differs inside the received part; the rest is new
    assert r.insert(50, bytes(hostile), 0) == frag.MISMATCH
    assert not r.complete and r.received == 100
    assert r.insert(100, message[100:], 0) == frag.ADDED
    assert r.take() == message


@HYPO
@given(
    size=st.integers(2, 400),
    first=st.data(),
)
def test_reassembly_any_differing_byte_is_a_mismatch(frag, size, first):
    """A second piece overlapping the first: one byte changed anywhere in the overlap is a
    MISMATCH that changes nothing; changed anywhere outside it, the piece is ADDED."""
    message = bytes(random.Random(size).randbytes(size))
    a0 = first.draw(st.integers(0, size - 1))
    a1 = first.draw(st.integers(a0 + 1, size))
    b0 = first.draw(st.integers(0, a1 - 1))
    b1 = first.draw(st.integers(max(b0, a0) + 1, size))
    flip = first.draw(st.integers(b0, b1 - 1))
    r = frag.Reassembly(size)
    assert r.insert(a0, message[a0:a1], 0) == frag.ADDED
    piece = bytearray(message[b0:b1])
    piece[flip - b0] ^= 0x5A
    result = r.insert(b0, b"hd" + bytes(piece), 2)
    if a0 <= flip < a1:
        assert result == frag.MISMATCH
        assert r.received == a1 - a0
        assert r.take()[a0:a1] == message[a0:a1]
    else:
        assert result == frag.ADDED
        assert r.received == max(a1, b1) - min(a0, b0)


def test_reassembly_refuses_what_does_not_fit(frag):
    with pytest.raises(ValueError, match="total"):
        frag.Reassembly(0)
    with pytest.raises(ValueError, match="total"):
        frag.Reassembly(MAX_MESSAGE_SIZE + 1)
    r = frag.Reassembly(10)
    for offset, frame, at in (
        (8, b"abc", 0),
        (-1, b"abc", 0),
        (0, b"abc", 4),
        (0, b"abc", -1),
        (11, b"", 0),
        (0, bytes(11), 0),
    ):
        with pytest.raises(ValueError, match="outside"):
            r.insert(offset, frame, at)
    assert r.received == 0
    assert r.insert(7, b"abc", 0) == frag.ADDED and r.received == 3
    assert r.insert(0, bytearray(b"xy"), 0) == frag.ADDED
    assert r.insert(2, memoryview(b"..zz"), 2) == frag.ADDED
    data = r.take()
    assert data == b"xyzz\x00\x00\x00abc"
    with pytest.raises(ValueError, match="taken"):
        r.take()
    with pytest.raises(ValueError, match="taken"):
        r.insert(4, b"q", 0)


def test_reassembly_of_the_largest_message(frag):
    message = random.Random(3).randbytes(MAX_MESSAGE_SIZE)
    r = frag.Reassembly(MAX_MESSAGE_SIZE)
    pieces = _pieces(random.Random(4), MAX_MESSAGE_SIZE, 1178)
    for start, end in reversed(pieces):
        assert r.insert(start, message[start:end], 0) == frag.ADDED
    assert r.complete
    assert r.take() == message


# --------------------------------------------------------------------------- SentLog


def _log_with(frag, n: int, first: int = 0):
    log = frag.SentLog(first)
    for k in range(n):
        assert log.sent(f"m{k}", k * 10, k * 10 + 10, 32, float(k)) == first + k
    return log


def test_sentlog_basics(frag):
    log = _log_with(frag, 5, first=100)
    assert len(log) == 5 and log.next_packet == 105 and log.largest_acked == -1
    acked, sample = log.on_ack([(102, 103)])
    assert acked == [("m2", 20, 30, 32, 2.0), ("m3", 30, 40, 32, 3.0)]
    assert sample == 3.0 and log.largest_acked == 103 and len(log) == 3
    acked, sample = log.on_ack([(101, 101), (102, 103)])
    assert acked == [("m1", 10, 20, 32, 1.0)] and sample == -1.0  # not the largest: no sample
    assert log.oldest() == ("m0", 0, 10, 32, 0.0)
    assert log.pop_oldest() == ("m0", 0, 10, 32, 0.0)
    assert log.oldest() == ("m4", 40, 50, 32, 4.0)
    assert log.clear() == [("m4", 40, 50, 32, 4.0)]
    assert len(log) == 0 and log.oldest() is None and log.pop_oldest() is None
    assert log.on_ack([(0, 2**64 - 1)]) == ([], -1.0)
    assert log.sent("n", 0, 1, 23, 9.0) == 105
    with pytest.raises(ValueError):
        frag.SentLog(-1)
    with pytest.raises(ValueError):
        frag.SentLog(2**62)


def test_sentlog_ack_ranges_are_clipped(frag):
    log = _log_with(frag, 5)
    acked, sample = log.on_ack([(3, 2**64 - 1)])
    assert [e[0] for e in acked] == ["m3", "m4"] and sample == 4.0
    assert log.work == 2
    acked, _ = log.on_ack([(-(2**70), 0), (2**70, 2**71), (9, 9)])
    assert [e[0] for e in acked] == ["m0"]
    assert log.largest_acked == 4


def test_sentlog_hostile_ranges_cost_what_is_outstanding(frag):
    n = 20_000
    log = _log_with(frag, n)
    # settle everything but the first and the last, in narrow ranges
    log.on_ack([(k, k + 99) for k in range(1, n - 1, 100)][:32])
    rest = [(k, min(k + 99, n - 2)) for k in range(1 + 32 * 100, n - 1, 100)]
    for i in range(0, len(rest), 32):
        log.on_ack(rest[i : i + 32])
    assert len(log) == 2
    log.work = 0
    for _ in range(100):  # nothing there, claimed wide, 32 times per ACK
        assert log.on_ack([(1, n - 2)] * 32) == ([], -1.0)
    # each ACK of 32 ranges costs at most 32 x (packets outstanding), not 32 x 20,000
    assert 0 < log.work <= 100 * 32 * 2
    log.work = 0
    acked, _ = log.on_ack([(0, 2**64 - 1)] * 32)
    assert [e[0] for e in acked] == ["m0", f"m{n - 1}"]
    assert log.work == 2


def test_sentlog_wide_claims_walk_only_what_is_in_flight(frag):
    log = _log_with(frag, 1000)
    log.on_ack([(1, 998)])
    assert len(log) == 2
    log.work = 0
    acked, sample = log.on_ack([(0, 2**64 - 1)])
    assert [e[0] for e in acked] == ["m0", "m999"] and sample == 999.0
    assert log.work == 2


def test_sentlog_detect_lost_packet_and_time_thresholds(frag):
    log = _log_with(frag, 10)  # packet k sent at time k
    assert log.detect_lost(100.0, 1.0, 3) == ([], float("inf"))  # nothing acknowledged yet
    log.on_ack([(9, 9)])
    lost, at = log.detect_lost(9.5, 100.0, 3)
    assert [e[0] for e in lost] == [f"m{k}" for k in range(7)]  # 9 - 3 = 6 and below
    assert at == 7.0 + 100.0
    lost, at = log.detect_lost(107.0, 100.0, 3)  # 7 was sent loss_delay ago
    assert [e[0] for e in lost] == ["m7"] and at == 108.0
    lost, at = log.detect_lost(107.5, 100.0, 3)
    assert lost == [] and at == 108.0
    log.on_ack([(8, 8)])
    assert log.detect_lost(200.0, 1.0, 3) == ([], float("inf"))
    assert len(log) == 0
    assert log.work >= 8


def test_sentlog_detect_lost_skips_acknowledged_gaps(frag):
    log = _log_with(frag, 10)
    log.on_ack([(9, 9), (4, 6), (1, 1)])
    lost, at = log.detect_lost(5.0, 100.0, 3)
    assert [e[0] for e in lost] == ["m0", "m2", "m3"]
    assert at == 107.0  # packet 7 is neither 3 below 9 nor old: lost at 7 + loss_delay


def test_sentlog_ring_grows_past_a_stuck_oldest_packet(frag):
    log = frag.SentLog()
    log.sent("stuck", 0, 1, 1, 0.0)
    for k in range(1, 5000):
        log.sent(k, 0, 1, 1, float(k))
        log.on_ack([(k, k)])
    assert len(log) == 1 and log.oldest() == ("stuck", 0, 1, 1, 0.0)
    lost, _ = log.detect_lost(5000.0, 1e9, 3)
    assert [e[0] for e in lost] == ["stuck"]


# --------------------------------------------------------------------------- parity c vs py


def _outcome(call):
    try:
        return ("ok", call())
    except ProtocolError as exc:
        return ("ProtocolError", exc.reason, str(exc))
    except (ValueError, OverflowError, struct.error) as exc:
        return ("error", type(exc).__name__ if not isinstance(exc, struct.error) else "struct")


@HYPO
@given(ops=RANGE_OPS)
def test_parity_rangeset(ops):
    c = _compiled().RangeSet()
    p = PURE.RangeSet()
    for op, a, b in ops:
        if op == "add":
            assert c.add(a, b) == p.add(a, b)
        elif op == "pop":
            assert c.pop_front(a) == p.pop_front(a)
        elif op == "overlaps":
            assert c.overlaps(a, b) == p.overlaps(a, b)
        else:
            c.clear()
            p.clear()
        assert (c.ranges(), c.covered, c.count) == (p.ranges(), p.covered, p.count)


REASSEMBLY_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("insert"),
            st.integers(-2, 70),
            st.binary(max_size=30),
            st.integers(-1, 8),
            st.booleans(),
        ),
        st.tuples(st.just("max_ranges"), st.integers(-1, 5), st.just(b""), st.just(0), st.just(0)),
        st.tuples(st.just("take"), st.just(0), st.just(b""), st.just(0), st.just(0)),
    ),
    max_size=50,
)


@HYPO
@given(total=st.integers(1, 64), ops=REASSEMBLY_OPS, seed=st.integers(0, 2**16))
def test_parity_reassembly(total, ops, seed):
    message = random.Random(seed).randbytes(total)
    c = _compiled().Reassembly(total, 3)
    p = PURE.Reassembly(total, 3)
    for op, offset, junk, at, truthful in ops:
        if op == "insert":
            # mostly the message's own bytes (so overlaps agree), sometimes junk
            data = message[max(0, offset) : max(0, offset) + len(junk)] if truthful else junk
            frame = bytes(range(max(0, at))) + data
            assert _outcome(partial(c.insert, offset, frame, at)) == _outcome(
                partial(p.insert, offset, frame, at)
            )
        elif op == "max_ranges":
            c.max_ranges = p.max_ranges = offset
        else:
            assert _outcome(c.take) == _outcome(p.take)
        assert (c.total, c.received, c.complete, c.max_ranges) == (
            p.total,
            p.received,
            p.complete,
            p.max_ranges,
        )


SENTLOG_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("sent"), st.integers(1, 5), st.floats(0, 3)),
        st.tuples(
            st.just("ack"),
            st.lists(
                st.tuples(
                    st.one_of(st.integers(-3, 60), st.just(2**64 - 1)),
                    st.one_of(st.integers(-3, 60), st.just(2**64 - 1), st.just(2**70)),
                ),
                max_size=5,
            ),
            st.just(0.0),
        ),
        st.tuples(st.just("lost"), st.integers(1, 4), st.one_of(st.floats(0, 5), st.just(1e9))),
        st.tuples(st.just("oldest"), st.just(0), st.just(0.0)),
        st.tuples(st.just("pop_oldest"), st.just(0), st.just(0.0)),
        st.tuples(st.just("clear"), st.just(0), st.just(0.0)),
    ),
    max_size=60,
)


@HYPO
@given(first=st.sampled_from([0, 1, 100, 2**40]), ops=SENTLOG_OPS)
def test_parity_sentlog(first, ops):
    c = _compiled().SentLog(first)
    p = PURE.SentLog(first)
    now = 0.0
    k = 0
    for op, a, b in ops:
        if op == "sent":
            for _ in range(a):
                now += b
                k += 1
                assert c.sent(k, k, k + 1, 30 + k, now) == p.sent(k, k, k + 1, 30 + k, now)
        elif op == "ack":  # ranges near the packets sent (plus huge and negative bounds)
            ranges = [(lo + first, hi + first) for lo, hi in a]
            assert c.on_ack(ranges) == p.on_ack(ranges)
        elif op == "lost":
            assert c.detect_lost(now, b, a) == p.detect_lost(now, b, a)
        elif op == "oldest":
            assert c.oldest() == p.oldest()
        elif op == "pop_oldest":
            assert c.pop_oldest() == p.pop_oldest()
        else:
            assert c.clear() == p.clear()
        assert (len(c), c.next_packet, c.largest_acked, c.work) == (
            len(p),
            p.next_packet,
            p.largest_acked,
            p.work,
        )


@HYPO
@given(frame=st.binary(max_size=80), prefix=st.sampled_from([b"", b"\xf5\x01", b"\xf5\x02"]))
def test_parity_parsers(frame, prefix):
    c = _compiled()
    data = prefix + frame
    for parser in PARSERS:
        assert _outcome(lambda n=parser: getattr(c, n)(data)) == _outcome(
            lambda n=parser: getattr(PURE, n)(data)
        ), parser


@HYPO
@given(
    packet=U64,
    message=U32,
    total=U32,
    offset=U32,
    data=st.binary(max_size=50),
    start=st.integers(-60, 60),
    end=st.integers(-60, 60),
    credit=U64,
    delay=st.integers(0, 2**33),
    ranges=st.lists(st.tuples(U64, U64), max_size=35),
    probe=U32,
    size=st.integers(-10, 2000),
)
def test_parity_encoders(
    packet, message, total, offset, data, start, end, credit, delay, ranges, probe, size
):
    c = _compiled()
    assert c.encode_fragment(packet, message, total, offset, data, start, end) == (
        PURE.encode_fragment(packet, message, total, offset, data, start, end)
    )
    assert c.encode_ack(credit, delay, ranges) == PURE.encode_ack(credit, delay, ranges)
    assert c.encode_ack(credit, delay, tuple(ranges)) == PURE.encode_ack(
        credit, delay, tuple(ranges)
    )
    assert c.encode_probe(probe, size) == PURE.encode_probe(probe, size)
    assert c.encode_probe_ack(probe, total) == PURE.encode_probe_ack(probe, total)
    assert c.encode_credit_request(credit) == PURE.encode_credit_request(credit)


@pytest.mark.parametrize("seed", range(4))
def test_parity_sentlog_random_walk(seed):
    """A long transfer-like run (bursts sent, ACKs of recent ranges with gaps, loss detection
    by packet and by time, the occasional hostile range): both twins agree at every step."""
    rng = random.Random(seed)
    c = _compiled().SentLog(seed * 1000)
    p = PURE.SentLog(seed * 1000)
    now = 0.0
    for step in range(3000):
        op = rng.random()
        if op < 0.35:
            for _ in range(rng.randrange(1, 12)):
                now += rng.choice((0.0, 0.001, 0.01))
                args = (step, rng.randrange(1000), rng.randrange(1000), 1200, now)
                assert c.sent(*args) == p.sent(*args)
        elif op < 0.75:
            top = p.next_packet - 1 - rng.randrange(0, 6)
            ranges = []
            for _ in range(rng.randrange(1, 5)):
                lo = top - rng.randrange(0, 8)
                ranges.append((lo, top))
                top = lo - rng.randrange(2, 6)
            if rng.random() < 0.05:
                ranges.append((0, 2**64 - 1) if rng.random() < 0.5 else (-(2**70), 2**70))
            assert c.on_ack(ranges) == p.on_ack(ranges)
        elif op < 0.93:
            delay = rng.choice((1e9, 0.02, 0.005))
            threshold = rng.randrange(1, 5)
            assert c.detect_lost(now, delay, threshold) == p.detect_lost(now, delay, threshold)
        elif op < 0.96:
            assert c.pop_oldest() == p.pop_oldest()
        elif op < 0.99:
            assert c.oldest() == p.oldest()
        else:
            assert c.clear() == p.clear()
        state = (len(c), c.next_packet, c.largest_acked, c.work)
        assert state == (len(p), p.next_packet, p.largest_acked, p.work), step


def test_reinitialising_starts_afresh(frag):
    log = _log_with(frag, 100)
    log.on_ack([(50, 50)])
    log.__init__(7)
    assert (len(log), log.next_packet, log.largest_acked, log.work) == (0, 7, -1, 0)
    assert log.oldest() is None and log.on_ack([(0, 200)]) == ([], -1.0)
    assert log.sent("a", 0, 1, 1, 0.0) == 7 and log.oldest() == ("a", 0, 1, 1, 0.0)
    s = frag.RangeSet()
    s.add(0, 10)
    s.__init__()
    assert (s.ranges(), s.covered, s.count) == ([], 0, 0)
    r = frag.Reassembly(10)
    r.insert(0, b"abcdefghij", 0)
    r.__init__(5)
    assert (r.total, r.received, r.complete) == (5, 0, False)
    assert r.insert(0, b"vwxyz", 0) == frag.ADDED and r.take() == b"vwxyz"


def test_encode_ack_survives_ranges_that_change_while_read(frag):
    ranges: list = []

    class Sneaky:
        def __iter__(self):
            ranges.clear()  # the caller's list shrinks while it is being encoded
            return iter((3, 4))

    ranges.extend([(1, 2), Sneaky(), (5, 6), (7, 8)])
    frame = frag.encode_ack(0, 0, ranges)
    assert frag.parse_ack(frame)[2] == [(1, 2), (3, 4), (5, 6), (7, 8)]
