"""Property tests: the compiled codec agrees with the pure twin on anything, and encode/decode
round-trip. Each test takes the ``codec`` fixture and compares it with the pure module (for the
[py] parameter that is the pure twin against itself, which still checks the round trips).
"""

from __future__ import annotations

import json
import random
import uuid

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from p2pfast import _codec_py as pure
from p2pfast.errors import ProtocolError
from p2pfast.protocol import MessageType

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: For the tests with big composite strategies (generation dominates their run time).
HEAVY = settings(SETTINGS, max_examples=100)

MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1


def outcome(fn, *args, **kwargs):
    """What a call did: ("ok", value) or ("err", exception type, reason, detail)."""
    try:
        value = fn(*args, **kwargs)
    except ProtocolError as exc:
        return ("err", ProtocolError, exc.reason, exc.detail)
    except (TypeError, ValueError) as exc:  # only from encode_raw's payload_json
        return ("err", type(exc))
    if hasattr(value, "as_tuple"):
        return ("ok", value.as_tuple())
    return ("ok", value)


# -- strategies ----------------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), MAX_U64)
    | text
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)

uuids = st.uuids()


@st.composite
def uuid_text(draw):
    """A UUID in one of the accepted forms (random case), and its canonical form."""
    u = draw(uuids)
    canonical = str(u)
    form = draw(st.sampled_from(["hyphenated", "simple", "braced", "urn"]))
    body = u.hex if form == "simple" else canonical
    case = draw(st.sampled_from(["lower", "upper", "mixed"]))
    if case == "upper":
        body = body.upper()
    elif case == "mixed":
        mask = draw(st.integers(0, 2**36 - 1))
        body = "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(body))
    if form == "braced":
        body = "{" + body + "}"
    elif form == "urn":
        body = draw(st.sampled_from(["urn:uuid:", "URN:UUID:", "Urn:Uuid:"])) + body
    return body, canonical


@st.composite
def mangled_uuid(draw):
    """Near-misses: a valid form with one character replaced, inserted or deleted."""
    body, _ = draw(uuid_text())
    i = draw(st.integers(0, len(body)))
    op = draw(st.sampled_from(["replace", "insert", "delete"]))
    c = draw(st.sampled_from(list("-{}:0aAfFgG \u0667\u212a\u0130xz")) | st.characters())
    if op == "replace" and i < len(body):
        return body[:i] + c + body[i + 1 :]
    if op == "insert":
        return body[:i] + c + body[i:]
    return body[:i] + body[i + 1 :]


ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
addrs = st.one_of(
    st.builds(lambda h, p: f"{h}:{p}", ipv4, st.integers(0, 65535)),
    st.builds(lambda h, p: f"[{h}]:{p}", st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)
bad_addrs = st.one_of(
    text,
    st.builds(lambda h, p: f"{h}:{p}", ipv4, st.integers(65536, 10**6)),
    st.sampled_from(["", "1.2.3.4", ":80", "[::1]", "a:b", "1.2.3.04:5"]),
)

type_names = st.sampled_from([t.name for t in MessageType])

#: Valid values for each envelope key.
VALID_VALUES = {
    "id": uuid_text().map(lambda t: t[0]),
    "message_type": type_names,
    "timestamp": st.integers(0, MAX_U64),
    "payload": json_values,
    "sender_addr": st.none() | addrs,
    "sequence_number": st.none() | st.integers(0, MAX_U32),
    "requires_ack": st.booleans(),
    "ack_for": st.none() | uuid_text().map(lambda t: t[0]),
}
OPTIONAL = ("sender_addr", "sequence_number", "ack_for")

#: Faulty (or merely odd) values for each key.
ODD_VALUES = {
    "id": st.one_of(mangled_uuid(), json_scalars),
    "message_type": st.one_of(type_names.map(str.lower), json_scalars),
    "timestamp": st.one_of(st.integers(-(2**63), MAX_U64), json_scalars),
    "payload": json_values,
    "sender_addr": st.one_of(bad_addrs, json_scalars),
    "sequence_number": st.one_of(st.integers(-(2**63), MAX_U64), json_scalars),
    "requires_ack": json_scalars,
    "ack_for": st.one_of(mangled_uuid(), json_scalars),
}


@st.composite
def envelopes(draw):
    """A valid envelope dict (optional keys sometimes absent) with 0-3 faults injected: a key
    dropped or given an odd value; sometimes extra keys; keys in random order."""
    obj = {key: draw(values) for key, values in VALID_VALUES.items()}
    for key in OPTIONAL:
        if draw(st.integers(0, 3)) == 0:
            del obj[key]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        key = draw(st.sampled_from(list(VALID_VALUES)))
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(ODD_VALUES[key])
    if draw(st.integers(0, 4)) == 0:
        for key, value in draw(st.dictionaries(text, json_scalars, max_size=2)).items():
            obj.setdefault(key, value)
    items = list(obj.items())
    order = draw(st.permutations(range(len(items))))
    return {items[i][0]: items[i][1] for i in order}


def to_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


WHITESPACE = ["", "", "", " ", "\n", "\t", "\r\n ", "  "]


def _json_str(rng: random.Random, text: str) -> str:
    mode = rng.choice(["plain", "plain", "ascii", "escape_some"])
    if mode != "escape_some":
        return json.dumps(text, ensure_ascii=mode == "ascii")
    out = []
    for ch in text:
        if ch in '"\\' or ord(ch) < 32 or (ord(ch) < 0x10000 and rng.random() < 0.25):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else json.dumps(ch)[1:-1])
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _format(rng: random.Random, value) -> str:
    """JSON text for ``value`` with random whitespace and random (valid) string escapes."""

    def ws() -> str:
        return rng.choice(WHITESPACE)

    if isinstance(value, dict):
        members = [
            ws() + _json_str(rng, k) + ws() + ":" + ws() + _format(rng, v) + ws()
            for k, v in value.items()
        ]
        return "{" + (",".join(members) if members else ws()) + "}"
    if isinstance(value, list):
        items = [ws() + _format(rng, v) + ws() for v in value]
        return "[" + (",".join(items) if items else ws()) + "]"
    if isinstance(value, str):
        return _json_str(rng, value)
    return json.dumps(value)


@st.composite
def formatted_envelopes(draw):
    """An envelope as JSON text with random whitespace and escapes (from one drawn seed: a
    draw per token would make generation the bulk of the run time)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    text = rng.choice(WHITESPACE) + _format(rng, draw(envelopes())) + rng.choice(WHITESPACE)
    return text.encode("utf-8", "surrogatepass")


VALID = pure.encode(
    8,
    {"hello": "world", "n": [1, 2]},
    1795634895,
    str(uuid.UUID(int=7)),
    "127.0.0.1:5000",
    42,
    True,
    str(uuid.UUID(int=9)),
)


# -- (1) the decoders agree ----------------------------------------------------------------


@SETTINGS
@given(data=st.binary(max_size=300))
@example(data=b"")
@example(data=b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12)
@example(data=b"{}")
@example(data=VALID)
def test_decoders_agree_on_arbitrary_bytes(codec, data):
    got = outcome(codec.decode, data)
    assert got == outcome(pure.decode, data)
    assert got[0] == "ok" or got[1] is ProtocolError  # never anything else


@HEAVY
@given(obj=envelopes())
def test_decoders_agree_on_envelopes(codec, obj):
    data = to_bytes(obj)
    got = outcome(codec.decode, data)
    assert got == outcome(pure.decode, data)
    assert got[0] == "ok" or got[1] is ProtocolError


@HEAVY
@given(data=formatted_envelopes())
def test_decoders_agree_on_formatted_envelopes(codec, data):
    """Whitespace and escapes anywhere (the compiled decoder's in-place parser must hand those
    to orjson or read them exactly as orjson does)."""
    json.loads(data)  # valid JSON by construction
    got = outcome(codec.decode, data)
    assert got == outcome(pure.decode, data)
    assert got[0] == "ok" or got[1] is ProtocolError


@SETTINGS
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]),
            st.integers(0, len(VALID)),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_decoders_agree_on_mutated_datagrams(codec, edits):
    data = bytearray(VALID)
    for op, pos, byte in edits:
        pos = min(pos, len(data) - 1)
        if op == "flip":
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        else:
            del data[pos]
    data = bytes(data)
    got = outcome(codec.decode, data)
    assert got == outcome(pure.decode, data)
    assert got[0] == "ok" or got[1] is ProtocolError


@SETTINGS
@given(
    value=st.one_of(
        uuid_text().map(lambda t: t[0]), mangled_uuid(), st.text(max_size=50), json_scalars
    )
)
def test_normalize_uuid_agrees(codec, value):
    got = outcome(codec.normalize_uuid, value)
    assert got == outcome(pure.normalize_uuid, value)
    if got[0] == "ok":
        assert got[1] == str(uuid.UUID(got[1]))  # canonical lowercase hyphenated


@HEAVY
@given(form=uuid_text())
def test_normalize_uuid_accepts_every_form(codec, form):
    body, canonical = form
    assert codec.normalize_uuid(body) == canonical


# -- (2) encode -> decode round trips ------------------------------------------------------

round_trip_payloads = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), MAX_U64)
    | text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


@HEAVY
@given(
    type_=st.integers(0, 16) | st.sampled_from(list(MessageType)),
    payload=round_trip_payloads,
    timestamp=st.integers(0, MAX_U64),
    id_=uuid_text(),
    sender_addr=st.none() | addrs,
    seq=st.none() | st.integers(0, MAX_U32),
    requires_ack=st.booleans(),
    ack_for=st.none() | uuid_text(),
)
def test_encode_decode_round_trip(
    codec, type_, payload, timestamp, id_, sender_addr, seq, requires_ack, ack_for
):
    data = codec.encode(
        type_,
        payload,
        timestamp,
        id=id_[0],
        sender_addr=sender_addr,
        sequence_number=seq,
        requires_ack=requires_ack,
        ack_for=None if ack_for is None else ack_for[0],
    )
    m = codec.decode(data)
    assert m.as_tuple() == (
        id_[1],
        int(type_),
        timestamp,
        payload,
        sender_addr,
        seq,
        requires_ack,
        None if ack_for is None else ack_for[1],
    )
    # and re-encoding the decoded message gives the same bytes
    assert (
        codec.encode(
            m.type,
            m.payload,
            m.timestamp,
            m.id,
            m.sender_addr,
            m.sequence_number,
            m.requires_ack,
            m.ack_for,
        )
        == data
    )


@HEAVY
@given(
    type_=st.integers(0, 16),
    timestamp=st.integers(0, MAX_U64),
    ack_for=uuid_text(),
    sender_addr=st.none() | addrs,
)
def test_fast_paths_round_trip(codec, type_, timestamp, ack_for, sender_addr):
    m = codec.decode(codec.encode_ack(ack_for[0], timestamp, sender_addr))
    assert m.as_tuple() == (m.id, 11, timestamp, None, sender_addr, None, False, ack_for[1])
    m = codec.decode(codec.encode_bare(type_, timestamp))
    assert m.as_tuple() == (m.id, type_, timestamp, None, None, None, False, None)


# -- (3) both encoders give the same bytes (or the same error) -----------------------------

any_int = st.integers(-(2**70), 2**70)
odd_values = st.sampled_from([None, True, False, 1.0, "1", b"1", [], {}])
odd_ids = st.sampled_from([True, False, 0, 1.0, "1", b"1", [], {}])  # not None: None draws an id


@HEAVY
@given(
    type_=st.integers(0, 16) | st.sampled_from(list(MessageType)) | any_int | odd_values,
    payload=json_values | st.sampled_from([{1, 2}, {1: 2}, 2**64, float("nan")]),
    timestamp=st.integers(0, MAX_U64) | any_int | odd_values,
    id_=uuid_text().map(lambda t: t[0]) | mangled_uuid() | odd_ids,
    sender_addr=st.none() | addrs | bad_addrs | odd_values,
    seq=st.none() | st.integers(0, MAX_U32) | any_int | odd_values,
    requires_ack=st.booleans() | odd_values,
    ack_for=st.none() | uuid_text().map(lambda t: t[0]) | mangled_uuid() | odd_values,
)
def test_encoders_agree(
    codec, type_, payload, timestamp, id_, sender_addr, seq, requires_ack, ack_for
):
    args = (type_, payload, timestamp, id_, sender_addr, seq, requires_ack, ack_for)
    got = outcome(codec.encode, *args)
    assert got == outcome(pure.encode, *args)
    if got[0] == "ok":  # whatever encode accepts, decode accepts
        assert codec.decode(got[1]).id == pure.normalize_uuid(id_)
    raw_args = (type_, outcome(pure.dump_payload, payload)[-1], *args[2:])
    if isinstance(raw_args[1], bytes):
        assert outcome(codec.encode_raw, *raw_args) == outcome(pure.encode_raw, *raw_args)


@HEAVY
@given(
    ack_for=uuid_text().map(lambda t: t[0]) | mangled_uuid() | odd_values,
    timestamp=st.integers(0, MAX_U64) | any_int | odd_values,
    sender_addr=st.none() | addrs | bad_addrs,
)
def test_encode_ack_errors_agree(codec, ack_for, timestamp, sender_addr):
    got = outcome(codec.encode_ack, ack_for, timestamp, sender_addr)
    expected = outcome(pure.encode_ack, ack_for, timestamp, sender_addr)
    if got[0] == "ok":
        assume(expected[0] == "ok")
        # random ids differ; everything after the id is identical
        assert got[1][43:] == expected[1][43:]
    else:
        assert got == expected


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257])
def test_dump_payload_agrees_on_sizes(codec, n):
    payload = {f"k{i:03d}": i for i in reversed(range(n))}
    assert codec.dump_payload(payload) == pure.dump_payload(payload)
