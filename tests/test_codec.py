"""The wire codec, compiled ([c]) and pure ([py]): every test runs against both twins.

Covers the captured seed datagrams (byte-exact round trips and the deliberately invalid ones),
every ProtocolError reason and their precedence, the 1 MiB limit, UUID forms, bool/int
confusion, ranges, STUN, ``new_id`` and the encoder's fast paths and validation.
Property tests (the twins agree on arbitrary input) live in ``test_codec_properties.py``.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import pickle
import re
import threading
import uuid

import orjson
import pytest

from p2pfast import _codec_py as pure
from p2pfast.errors import ProtocolError
from p2pfast.protocol import MessageType

try:
    from .conftest import WIRE_EXAMPLES
except ImportError:  # tests/ imported as rootdir modules, not as a package
    from conftest import WIRE_EXAMPLES

MIB = 1_048_576
UUID_A = "709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2"
UUID_B = "fde7cb59-5746-40a1-b012-4ec595012f6d"
V4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

EXAMPLES = [
    json.loads(line) for line in WIRE_EXAMPLES.read_text("utf-8").splitlines() if line.strip()
]
FROM_SERVER = [ex for ex in EXAMPLES if ex["direction"] == "from_server"]
TO_SERVER = [ex for ex in EXAMPLES if ex["direction"] == "to_server"]

#: The captured to_server datagrams that the server drops, keyed by a unique substring.
INVALID_CAPTURES = {
    '"message_type":"Bogus"': ("unknown_type", "Bogus"),
    "not json": ("not_json", None),
    "b746883e-ac3d-4419-9bf4-e3beb7f8dd95": ("missing_field", "payload"),
    "9df506d2-ba96-4f52-a92f-bd5e5b3c294c": ("missing_field", "requires_ack"),
    "0e5bca46-2288-4dbd-bb91-92adcd8609ed": ("bad_type", "timestamp must be an integer"),
    '"id": "7"': ("bad_uuid", "invalid uuid '7'"),
}


def envelope(**fields) -> dict:
    """A valid envelope as a dict; ``field=...`` overrides, ``field=DROP`` removes a key."""
    obj = {
        "id": UUID_A,
        "message_type": "Data",
        "timestamp": 1795634895,
        "payload": {"hello": "world"},
        "sender_addr": None,
        "sequence_number": None,
        "requires_ack": False,
        "ack_for": None,
    }
    for key, value in fields.items():
        if value is DROP:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


DROP = object()


def raw(**fields) -> bytes:
    return json.dumps(envelope(**fields)).encode()


def reason_of(fn, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    assert str(info.value).startswith(info.value.reason)
    return info.value.reason, info.value.detail


def encode_msg(codec, m, **overrides) -> bytes:
    fields = {
        "id": m.id,
        "sender_addr": m.sender_addr,
        "sequence_number": m.sequence_number,
        "requires_ack": m.requires_ack,
        "ack_for": m.ack_for,
    }
    fields.update(overrides)
    return codec.encode(m.type, m.payload, m.timestamp, **fields)


# -- API and constants ---------------------------------------------------------------------

API_FUNCTIONS = (
    "normalize_uuid",
    "decode",
    "new_id",
    "encode_raw",
    "encode",
    "dump_payload",
    "encode_ack",
    "encode_bare",
)


def test_constants(codec):
    assert codec.MAX_MESSAGE_SIZE == MIB
    assert codec.STUN_MAGIC == b"\x21\x12\xa4\x42"
    assert codec.MAX_U32 == 2**32 - 1
    assert codec.MAX_U64 == 2**64 - 1
    assert tuple(t.name for t in MessageType) == codec.TYPE_NAMES
    assert type(codec.TYPE_NAMES) is tuple and len(codec.TYPE_NAMES) == 17


@pytest.mark.parametrize("name", API_FUNCTIONS)
def test_same_signatures_as_pure(codec, name):
    """Keyword names and defaults match, so callers can use either module."""
    ours = inspect.signature(getattr(codec, name))
    theirs = inspect.signature(getattr(pure, name))
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in theirs.parameters.values()
    ]


def test_implementation_is_the_expected_one(codec, request):
    expected = (
        "p2pfast._codec" if request.node.callspec.params["codec"] == "c" else "p2pfast._codec_py"
    )
    assert codec.__name__ == expected
    if expected == "p2pfast._codec":
        assert codec.__file__.endswith((".so", ".pyd"))
        assert type(codec.decode).__name__ != "function"  # compiled, not a Python function


# -- captured datagrams --------------------------------------------------------------------


@pytest.mark.parametrize("ex", FROM_SERVER, ids=lambda ex: ex["datagram"][60:95].split('"')[0])
def test_from_server_round_trips_byte_for_byte(codec, ex):
    data = ex["datagram"].encode()
    assert len(data) == ex["bytes"]
    m = codec.decode(data)
    assert encode_msg(codec, m) == data
    assert (
        codec.encode_raw(
            m.type,
            codec.dump_payload(m.payload),
            m.timestamp,
            m.id,
            m.sender_addr,
            m.sequence_number,
            m.requires_ack,
            m.ack_for,
        )
        == data
    )


def _expected_fields(obj: dict) -> tuple:
    def norm(u):
        return None if u is None else str(uuid.UUID(u))

    return (
        norm(obj["id"]),
        MessageType[obj["message_type"]].value,
        obj["timestamp"],
        obj["payload"],
        obj.get("sender_addr"),
        obj.get("sequence_number"),
        obj["requires_ack"],
        norm(obj.get("ack_for")),
    )


@pytest.mark.parametrize("ex", TO_SERVER, ids=lambda ex: ex["datagram"][:60])
def test_to_server_decodes_or_is_refused(codec, ex):
    text = ex["datagram"]
    data = text.encode()
    assert len(data) == ex["bytes"]
    refused = [v for k, v in INVALID_CAPTURES.items() if k in text]
    if refused:
        ((reason, detail),) = refused
        got = reason_of(codec.decode, data)
        assert got[0] == reason
        if detail is not None:
            assert got[1] == detail
    else:
        m = codec.decode(data)
        assert m.as_tuple() == _expected_fields(json.loads(text))
        assert m.type_name == json.loads(text)["message_type"]


def test_captures_contain_each_invalid_case_once():
    for key in INVALID_CAPTURES:
        assert sum(key in ex["datagram"] for ex in TO_SERVER) == 1, key
    assert len(TO_SERVER) == 44 and len(FROM_SERVER) == 47


def test_captured_simple_uuid_and_extra_key(codec):
    by_id = {
        json.loads(ex["datagram"])["id"]: ex
        for ex in TO_SERVER
        if ex["datagram"].startswith("{") and "Bogus" not in ex["datagram"]
    }
    m = codec.decode(by_id["f5d9b4016d7b4b9fa9d628f31400a02a"]["datagram"].encode())
    assert m.id == "f5d9b401-6d7b-4b9f-a9d6-28f31400a02a"
    m = codec.decode(by_id["5dfa4b38-0f49-4128-a3d3-236d34bfa902"]["datagram"].encode())
    assert (m.type_name, m.payload, m.requires_ack) == ("Ping", None, False)


def test_captured_handshake_with_sender_addr(codec):
    m = codec.decode(EXAMPLES[0]["datagram"].encode())
    assert m.type == MessageType.HandshakeRequest
    assert m.sender_addr == "0.0.0.0:60582"
    assert m.sequence_number == 1 and m.requires_ack is True
    assert m.payload["name"] == "alice"


# -- reasons -------------------------------------------------------------------------------

REASON_CASES = [
    ("not_json_garbage", b"\x00\xff garbage", "not_json", None),
    ("not_json_empty", b"", "not_json", None),
    ("not_json_truncated", raw()[:-1], "not_json", None),
    ("not_json_bad_utf8", b'{"id":"\xff"}', "not_json", None),
    ("not_object_list", b"[1,2]", "not_object", "envelope must be a JSON object"),
    ("not_object_str", b'"x"', "not_object", None),
    ("not_object_int", b"1", "not_object", None),
    ("not_object_null", b"null", "not_object", None),
    ("not_object_true", b"true", "not_object", None),
    ("missing_id", raw(id=DROP), "missing_field", "id"),
    ("missing_type", raw(message_type=DROP), "missing_field", "message_type"),
    ("missing_timestamp", raw(timestamp=DROP), "missing_field", "timestamp"),
    ("missing_payload", raw(payload=DROP), "missing_field", "payload"),
    ("missing_requires_ack", raw(requires_ack=DROP), "missing_field", "requires_ack"),
    ("type_not_str", raw(message_type=8), "bad_type", "message_type must be a string"),
    ("type_null", raw(message_type=None), "bad_type", "message_type must be a string"),
    ("type_unknown", raw(message_type="Bogus"), "unknown_type", "Bogus"),
    ("type_wrong_case", raw(message_type="ping"), "unknown_type", "ping"),
    ("type_long", raw(message_type="X" * 100), "unknown_type", "X" * 64),
    ("type_padded", raw(message_type=" Ping"), "unknown_type", " Ping"),
    ("ts_str", raw(timestamp="1"), "bad_type", "timestamp must be an integer"),
    ("ts_float", raw(timestamp=1.0), "bad_type", "timestamp must be an integer"),
    ("ts_null", raw(timestamp=None), "bad_type", "timestamp must be an integer"),
    ("ts_bool", raw(timestamp=True), "bad_type", "timestamp must be an integer"),
    ("ts_negative", raw(timestamp=-1), "out_of_range", "timestamp"),
    ("ts_i64_min", raw(timestamp=-(2**63)), "out_of_range", "timestamp"),
    ("ts_above_u64", raw(timestamp=2**64), "bad_type", "timestamp must be an integer"),  # a float
    ("ack_int", raw(requires_ack=1), "bad_type", "requires_ack must be a boolean"),
    ("ack_zero", raw(requires_ack=0), "bad_type", "requires_ack must be a boolean"),
    ("ack_str", raw(requires_ack="true"), "bad_type", "requires_ack must be a boolean"),
    ("ack_null", raw(requires_ack=None), "bad_type", "requires_ack must be a boolean"),
    ("addr_int", raw(sender_addr=8080), "bad_addr", "sender_addr must be a string"),
    ("addr_list", raw(sender_addr=["1.2.3.4", 80]), "bad_addr", "sender_addr must be a string"),
    ("addr_garbage", raw(sender_addr="nonsense"), "bad_addr", "invalid sender_addr 'nonsense'"),
    ("addr_no_port", raw(sender_addr="1.2.3.4"), "bad_addr", None),
    ("addr_big_port", raw(sender_addr="1.2.3.4:65536"), "bad_addr", None),
    ("addr_bad_ip", raw(sender_addr="1.2.3.256:80"), "bad_addr", None),
    ("addr_hostname", raw(sender_addr="localhost:80"), "bad_addr", None),
    ("addr_v6_unbracketed", raw(sender_addr="::1:80"), "bad_addr", None),
    ("addr_empty", raw(sender_addr=""), "bad_addr", None),
    ("seq_str", raw(sequence_number="1"), "bad_type", "sequence_number must be an integer"),
    ("seq_float", raw(sequence_number=1.5), "bad_type", "sequence_number must be an integer"),
    ("seq_bool", raw(sequence_number=True), "bad_type", "sequence_number must be an integer"),
    ("seq_negative", raw(sequence_number=-1), "out_of_range", "sequence_number"),
    ("seq_2_32", raw(sequence_number=2**32), "out_of_range", "sequence_number"),
    ("seq_2_63", raw(sequence_number=2**63), "out_of_range", "sequence_number"),
    ("seq_u64", raw(sequence_number=2**64 - 1), "out_of_range", "sequence_number"),
    ("seq_i64_min", raw(sequence_number=-(2**63)), "out_of_range", "sequence_number"),
    ("id_short", raw(id="7"), "bad_uuid", "invalid uuid '7'"),
    ("id_int", raw(id=7), "bad_uuid", "uuid must be a string"),
    ("id_null", raw(id=None), "bad_uuid", "uuid must be a string"),
    ("id_non_hex", raw(id=UUID_A.replace("7", "g")), "bad_uuid", None),
    ("ack_for_bad", raw(ack_for="nope"), "bad_uuid", "invalid uuid 'nope'"),
    ("ack_for_int", raw(ack_for=5), "bad_uuid", "uuid must be a string"),
]


@pytest.mark.parametrize("name,data,reason,detail", REASON_CASES, ids=[c[0] for c in REASON_CASES])
def test_reasons(codec, name, data, reason, detail):
    got_reason, got_detail = reason_of(codec.decode, data)
    assert got_reason == reason
    if detail is not None:
        assert got_detail == detail
    # the pure twin is the reference: same reason and the same detail text
    assert (got_reason, got_detail) == reason_of(pure.decode, data)


def test_too_large_before_parsing(codec):
    assert reason_of(codec.decode, b"\xff" * (MIB + 1)) == ("too_large", f"{MIB + 1} bytes > {MIB}")
    assert reason_of(codec.decode, b"\xff" * MIB)[0] == "not_json"  # at the limit it is parsed


def test_exactly_one_mib_of_valid_json_is_accepted(codec):
    base = raw(payload="")
    data = raw(payload="x" * (MIB - len(base)))
    assert len(data) == MIB
    m = codec.decode(data)
    assert len(m.payload) == MIB - len(base)
    over = raw(payload="x" * (MIB - len(base) + 1))
    assert reason_of(codec.decode, over) == ("too_large", f"{MIB + 1} bytes > {MIB}")


def test_stun_magic_cookie(codec):
    stun = b"\x00\x01\x00\x00" + codec.STUN_MAGIC + b"\x00" * 12
    assert len(stun) == 20
    assert reason_of(codec.decode, stun) == ("stun", "STUN message on the main port")
    assert reason_of(codec.decode, stun + b"\x00" * 100)[0] == "stun"
    assert reason_of(codec.decode, bytearray(stun))[0] == "stun"
    assert reason_of(codec.decode, memoryview(stun))[0] == "stun"
    assert reason_of(codec.decode, stun[:19])[0] == "not_json"  # too short for STUN
    assert reason_of(codec.decode, b"\x00" * 5 + codec.STUN_MAGIC + b"\x00" * 11)[0] == "not_json"


def test_other_input_types_behave_like_bytes(codec):
    data = raw(sequence_number=3)
    expected = codec.decode(data).as_tuple()
    assert codec.decode(bytearray(data)).as_tuple() == expected
    assert codec.decode(memoryview(data)).as_tuple() == expected
    assert codec.decode(data.decode()).as_tuple() == expected
    with pytest.raises(TypeError):
        codec.decode(12345)


@pytest.mark.parametrize(
    "faults,expected",
    [
        ({"id": DROP, "message_type": DROP}, ("missing_field", "id")),
        ({"payload": DROP, "id": "bad"}, ("missing_field", "payload")),
        ({"requires_ack": DROP, "timestamp": "x"}, ("missing_field", "requires_ack")),
        ({"id": "bad", "message_type": "Bogus"}, ("bad_uuid", "invalid uuid 'bad'")),
        ({"message_type": 3, "timestamp": "x"}, ("bad_type", "message_type must be a string")),
        ({"message_type": "Bogus", "timestamp": "x"}, ("unknown_type", "Bogus")),
        ({"timestamp": "x", "requires_ack": 1}, ("bad_type", "timestamp must be an integer")),
        ({"timestamp": -5, "requires_ack": 1}, ("out_of_range", "timestamp")),
        ({"requires_ack": 1, "sender_addr": "bad"}, ("bad_type", "requires_ack must be a boolean")),
        ({"sender_addr": "bad", "sequence_number": "x"}, ("bad_addr", "invalid sender_addr 'bad'")),
        ({"sequence_number": -1, "ack_for": "bad"}, ("out_of_range", "sequence_number")),
        (
            {"sequence_number": "x", "ack_for": "bad"},
            ("bad_type", "sequence_number must be an integer"),
        ),
        ({"ack_for": "bad", "extra": "ignored"}, ("bad_uuid", "invalid uuid 'bad'")),
    ],
)
def test_precedence_of_several_faults(codec, faults, expected):
    data = raw(**faults)
    assert reason_of(codec.decode, data) == expected


REQUIRED = ("id", "message_type", "timestamp", "payload", "requires_ack")


@pytest.mark.parametrize("first", range(len(REQUIRED)))
def test_missing_fields_reported_in_order(codec, first):
    for later in REQUIRED[first + 1 :]:
        data = raw(**{REQUIRED[first]: DROP, later: DROP})
        assert reason_of(codec.decode, data) == ("missing_field", REQUIRED[first])
    data = raw(**{key: DROP for key in REQUIRED[first:]})
    assert reason_of(codec.decode, data) == ("missing_field", REQUIRED[first])


def test_precedence_size_stun_json(codec):
    stun_garbage = b"\x00\x01\x00\x00" + codec.STUN_MAGIC + b"\xff" * (MIB + 1)
    assert reason_of(codec.decode, stun_garbage)[0] == "too_large"
    assert reason_of(codec.decode, stun_garbage[:40])[0] == "stun"


# -- accepted forms ------------------------------------------------------------------------


def test_optional_keys_absent_and_extra_keys_ignored(codec):
    data = raw(sender_addr=DROP, sequence_number=DROP, ack_for=DROP, extra={"x": [1]}, zz=None)
    m = codec.decode(data)
    assert m.as_tuple() == (UUID_A, 8, 1795634895, {"hello": "world"}, None, None, False, None)
    assert m.type_name == "Data"


def test_all_fields_set(codec):
    data = raw(
        message_type="Ack",
        sender_addr="[::1]:8080",
        sequence_number=2**32 - 1,
        requires_ack=True,
        ack_for=UUID_B.upper(),
        timestamp=2**64 - 1,
        payload=[1, "a", None],
    )
    m = codec.decode(data)
    assert m.as_tuple() == (
        UUID_A,
        11,
        2**64 - 1,
        [1, "a", None],
        "[::1]:8080",
        2**32 - 1,
        True,
        UUID_B,
    )
    assert m.requires_ack is True


@pytest.mark.parametrize("ts", [0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1])
def test_timestamp_range(codec, ts):
    m = codec.decode(raw(timestamp=ts))
    assert m.timestamp == ts and type(m.timestamp) is int
    assert encode_msg(codec, m) == codec.encode(8, m.payload, ts, id=UUID_A)


@pytest.mark.parametrize("seq", [0, 1, 2**31, 2**32 - 1])
def test_sequence_number_range(codec, seq):
    assert codec.decode(raw(sequence_number=seq)).sequence_number == seq


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1:18080",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "[::1]:80",
        "[fe80::1%eth0]:5000",
        "[2001:db8::1]:1",
    ],
)
def test_valid_sender_addrs(codec, addr):
    assert codec.decode(raw(sender_addr=addr)).sender_addr == addr


def test_explicit_nulls(codec):
    m = codec.decode(raw(sender_addr=None, sequence_number=None, ack_for=None, payload=None))
    assert (m.payload, m.sender_addr, m.sequence_number, m.ack_for) == (None, None, None, None)


def test_every_type_name(codec):
    for code, name in enumerate(codec.TYPE_NAMES):
        m = codec.decode(raw(message_type=name))
        assert m.type == code and m.type_name == name


# -- UUIDs ---------------------------------------------------------------------------------

UUID_FORMS = [
    UUID_A,
    UUID_A.upper(),
    "709E8abf-7A1b-44fE-aE03-e7EA6dc15AD2",
    UUID_A.replace("-", ""),
    UUID_A.replace("-", "").upper(),
    "{" + UUID_A + "}",
    "{" + UUID_A.upper() + "}",
    "urn:uuid:" + UUID_A,
    "urn:uuid:" + UUID_A.upper(),
    "URN:UUID:" + UUID_A,
]

BAD_UUIDS = [
    "",
    "7",
    UUID_A[:-1],
    UUID_A + "0",
    UUID_A.replace("-", "")[:-1],
    UUID_A.replace("-", "") + "0",
    UUID_A.replace("-", "", 1) + "0",  # 36 chars, hyphen missing
    UUID_A.replace("-", "_"),
    UUID_A.replace("a", "g"),
    " " + UUID_A[1:],
    UUID_A[:-1] + " ",
    "{" + UUID_A + "]",
    "(" + UUID_A + ")",
    "{" + UUID_A.replace("-", "") + "}",
    "urn:uuid:" + UUID_A.replace("-", ""),
    "urn:uuid:{" + UUID_A + "}",
    "urn:uuix:" + UUID_A,
    "xrn:uuid:" + UUID_A,
    UUID_A[:8] + UUID_A[9:13] + "-" + UUID_A[8] + UUID_A[14:],  # hyphen shifted
    UUID_A.replace("7", "\u0667"),  # Arabic-indic digit seven
    UUID_A.replace("a", "\uff41"),  # full-width a
    UUID_A.replace("a", "\u212a"),  # Kelvin sign (lowers to ASCII k)
    "\u0130" * 36,  # lowers to two code points each
    UUID_A[:-1] + "\x00",
]


@pytest.mark.parametrize("form", UUID_FORMS)
def test_uuid_forms_normalized(codec, form):
    assert codec.normalize_uuid(form) == UUID_A
    assert type(codec.normalize_uuid(form)) is str
    m = codec.decode(raw(id=form, ack_for=form))
    assert (m.id, m.ack_for) == (UUID_A, UUID_A)


@pytest.mark.parametrize("bad", BAD_UUIDS, ids=range(len(BAD_UUIDS)))
def test_bad_uuids(codec, bad):
    assert reason_of(codec.normalize_uuid, bad) == ("bad_uuid", f"invalid uuid {bad[:64]!r}")
    assert reason_of(codec.decode, raw(id=bad))[0] == "bad_uuid"


@pytest.mark.parametrize(
    "value", [None, 7, b"709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2", uuid.UUID(UUID_A)]
)
def test_uuid_must_be_a_str(codec, value):
    assert reason_of(codec.normalize_uuid, value) == ("bad_uuid", "uuid must be a string")


def test_uuid_str_subclass_refused(codec):
    class S(str):
        pass

    assert reason_of(codec.normalize_uuid, S(UUID_A)) == ("bad_uuid", "uuid must be a string")


def test_uuid_long_detail_truncated(codec):
    bad = "z" * 200
    assert reason_of(codec.normalize_uuid, bad) == ("bad_uuid", f"invalid uuid {'z' * 64!r}")


# -- new_id --------------------------------------------------------------------------------


def test_new_id_format_and_bits(codec):
    for _ in range(2000):  # several batches
        x = codec.new_id()
        assert type(x) is str and V4_RE.fullmatch(x), x
        u = uuid.UUID(x)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == x
        assert codec.normalize_uuid(x) == x


def test_new_id_unique_over_100k(codec):
    ids = [codec.new_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    # all four variant characters and all hex digits in the random positions show up
    assert {x[19] for x in ids} == set("89ab")
    assert {x[0] for x in ids} == set("0123456789abcdef")
    assert {x[35] for x in ids} == set("0123456789abcdef")
    assert all(x[14] == "4" for x in ids)


def test_new_id_threads_never_share_ids(codec):
    results: list[list[str]] = [[] for _ in range(8)]

    def work(out):
        for _ in range(5000):
            out.append(codec.new_id())

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [x for r in results for x in r]
    assert len(ids) == 40_000 and len(set(ids)) == 40_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_new_id_not_shared_with_forked_child(codec):
    codec.new_id()  # make sure a batch is buffered before the fork
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(write_fd, json.dumps([codec.new_id() for _ in range(50)]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        child_ids = json.loads(f.read())
    os.waitpid(pid, 0)
    parent_ids = [codec.new_id() for _ in range(50)]
    assert len(child_ids) == 50
    assert not set(child_ids) & set(parent_ids)


# -- encoding ------------------------------------------------------------------------------


def test_encode_exact_bytes(codec):
    out = codec.encode(
        MessageType.Data,
        {"b": 1, "a": [True, None]},
        1795634895,
        id=UUID_A,
        sender_addr="127.0.0.1:18080",
        sequence_number=7,
        requires_ack=True,
        ack_for=UUID_B,
    )
    assert out == (
        b'{"id":"709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2","message_type":"Data","timestamp":1795634895,'
        b'"payload":{"a":[true,null],"b":1},"sender_addr":"127.0.0.1:18080","sequence_number":7,'
        b'"requires_ack":true,"ack_for":"fde7cb59-5746-40a1-b012-4ec595012f6d"}'
    )
    assert codec.encode(2, None, 0, UUID_A) == (
        b'{"id":"709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2","message_type":"Ping","timestamp":0,'
        b'"payload":null,"sender_addr":null,"sequence_number":null,"requires_ack":false,"ack_for":null}'
    )


def test_encode_ack_equals_encode(codec):
    out = codec.encode_ack(UUID_B, 1795634894, "127.0.0.1:18080")
    m = codec.decode(out)
    assert V4_RE.fullmatch(m.id)
    assert out == codec.encode(
        MessageType.Ack, None, 1795634894, id=m.id, sender_addr="127.0.0.1:18080", ack_for=UUID_B
    )
    assert m.as_tuple() == (m.id, 11, 1795634894, None, "127.0.0.1:18080", None, False, UUID_B)
    # the captured Ack, byte for byte apart from the random id
    captured = FROM_SERVER[0]["datagram"].encode()
    assert b'"message_type":"Ack"' in captured
    cm = codec.decode(captured)
    ours = codec.encode_ack(cm.ack_for, cm.timestamp, sender_addr=cm.sender_addr)
    assert ours[:7] == captured[:7] and ours[43:] == captured[43:]
    # without sender_addr, and ack_for in another form
    out = codec.encode_ack(UUID_B.upper(), 5)
    m = codec.decode(out)
    assert out == codec.encode(11, None, 5, id=m.id, ack_for=UUID_B)
    assert m.sender_addr is None and m.ack_for == UUID_B


@pytest.mark.parametrize("type_", [MessageType.Ping, MessageType.Pong, 4, 6, 16])
def test_encode_bare_equals_encode(codec, type_):
    out = codec.encode_bare(type_, 1795634860)
    m = codec.decode(out)
    assert out == codec.encode(type_, None, 1795634860, id=m.id)
    assert out == codec.encode_raw(type_, b"null", 1795634860, m.id)
    assert m.as_tuple() == (m.id, int(type_), 1795634860, None, None, None, False, None)


def test_encode_fresh_ids(codec):
    outs = [codec.decode(codec.encode(8, {"n": i}, 1)) for i in range(600)]
    assert len({m.id for m in outs}) == 600
    assert all(V4_RE.fullmatch(m.id) for m in outs)


def test_encode_normalizes_ids(codec):
    out = codec.encode(8, 1, 2, id="{" + UUID_A.upper() + "}", ack_for=UUID_B.replace("-", ""))
    m = codec.decode(out)
    assert (m.id, m.ack_for) == (UUID_A, UUID_B)
    assert UUID_A.encode() in out and UUID_B.encode() in out


def test_dump_payload_sorts_keys_compactly(codec):
    assert codec.dump_payload({"b": {"d": 1, "c": 2}, "a": [1.5, "é"]}) == (
        '{"a":[1.5,"é"],"b":{"c":2,"d":1}}'.encode()
    )
    assert codec.dump_payload(None) == b"null"
    assert codec.dump_payload([]) == b"[]"
    assert codec.dump_payload("网络") == '"网络"'.encode()


@pytest.mark.parametrize(
    "payload",
    [object, {1, 2}, {1: "x"}, 2**64, b"bytes"],
    ids=["class", "set", "int_key", "big_int", "bytes"],
)
def test_dump_payload_refuses_non_json(codec, payload):
    reason, detail = reason_of(codec.dump_payload, payload)
    assert reason == "bad_type" and detail.startswith("payload is not JSON-serializable: ")
    assert reason_of(codec.encode, 8, payload, 1) == (reason, detail)
    assert (reason, detail) == reason_of(pure.dump_payload, payload)


def test_encode_raw_payload_json_bytes_like(codec):
    expected = codec.encode_raw(8, b'{"a":1}', 1, UUID_A)
    assert codec.encode_raw(8, bytearray(b'{"a":1}'), 1, UUID_A) == expected
    assert codec.encode_raw(8, memoryview(b'{"a":1}'), 1, UUID_A) == expected
    with pytest.raises(TypeError):
        codec.encode_raw(8, '{"a":1}', 1, UUID_A)
    with pytest.raises(TypeError):
        codec.encode_raw(8, None, 1, UUID_A)


def test_encode_size_limit(codec):
    base = len(codec.encode(8, "", 1, UUID_A))
    fits = codec.encode(8, "x" * (MIB - base), 1, UUID_A)
    assert len(fits) == MIB
    assert codec.decode(fits).payload == "x" * (MIB - base)
    assert reason_of(codec.encode, 8, "x" * (MIB - base + 1), 1, UUID_A) == (
        "too_large",
        f"{MIB + 1} bytes > {MIB}",
    )
    assert reason_of(codec.encode_raw, 8, b"1" * (2 * MIB), 1, UUID_A)[0] == "too_large"


def test_encode_large_numbers(codec):
    out = codec.encode(8, None, 2**64 - 1, UUID_A, sequence_number=2**32 - 1)
    assert b'"timestamp":18446744073709551615,' in out
    assert b'"sequence_number":4294967295,' in out
    m = codec.decode(out)
    assert (m.timestamp, m.sequence_number) == (2**64 - 1, 2**32 - 1)
    for ts in (0, 9, 10, 2**63 - 1, 2**63, 10**19):
        assert codec.decode(codec.encode_bare(2, ts)).timestamp == ts


ENCODE_BAD = [
    ("type_bool", {"type": True}, ("bad_type", "type must be an integer message-type code")),
    ("type_str", {"type": "Data"}, ("bad_type", "type must be an integer message-type code")),
    ("type_float", {"type": 8.0}, ("bad_type", "type must be an integer message-type code")),
    ("type_none", {"type": None}, ("bad_type", "type must be an integer message-type code")),
    ("type_negative", {"type": -1}, ("unknown_type", "type code -1")),
    ("type_17", {"type": 17}, ("unknown_type", "type code 17")),
    ("type_huge", {"type": 2**70}, ("unknown_type", f"type code {2**70}")),
    ("ts_bool", {"timestamp": True}, ("bad_type", "timestamp must be an integer")),
    ("ts_float", {"timestamp": 1795634895.5}, ("bad_type", "timestamp must be an integer")),
    ("ts_str", {"timestamp": "1"}, ("bad_type", "timestamp must be an integer")),
    ("ts_none", {"timestamp": None}, ("bad_type", "timestamp must be an integer")),
    ("ts_negative", {"timestamp": -1}, ("out_of_range", "timestamp")),
    ("ts_2_64", {"timestamp": 2**64}, ("out_of_range", "timestamp")),
    ("ts_very_negative", {"timestamp": -(2**80)}, ("out_of_range", "timestamp")),
    ("ack_int", {"requires_ack": 1}, ("bad_type", "requires_ack must be a boolean")),
    ("ack_none", {"requires_ack": None}, ("bad_type", "requires_ack must be a boolean")),
    ("addr_int", {"sender_addr": 80}, ("bad_addr", "sender_addr must be a string")),
    ("addr_tuple", {"sender_addr": ("1.2.3.4", 80)}, ("bad_addr", "sender_addr must be a string")),
    ("addr_garbage", {"sender_addr": "x"}, ("bad_addr", "invalid sender_addr 'x'")),
    ("addr_quote", {"sender_addr": '1.2.3.4:80"'}, ("bad_addr", None)),
    ("addr_surrogate", {"sender_addr": "[fe80::1%\ud800]:80"}, ("bad_addr", None)),
    ("seq_bool", {"sequence_number": False}, ("bad_type", "sequence_number must be an integer")),
    ("seq_float", {"sequence_number": 1.0}, ("bad_type", "sequence_number must be an integer")),
    ("seq_negative", {"sequence_number": -1}, ("out_of_range", "sequence_number")),
    ("seq_2_32", {"sequence_number": 2**32}, ("out_of_range", "sequence_number")),
    ("seq_2_64", {"sequence_number": 2**64}, ("out_of_range", "sequence_number")),
    ("id_bad", {"id": "nope"}, ("bad_uuid", "invalid uuid 'nope'")),
    ("id_int", {"id": 5}, ("bad_uuid", "uuid must be a string")),
    ("id_uuid_obj", {"id": uuid.UUID(UUID_A)}, ("bad_uuid", "uuid must be a string")),
    ("ack_for_bad", {"ack_for": "x"}, ("bad_uuid", "invalid uuid 'x'")),
    # several faults: the decoder's precedence
    ("id_and_type", {"id": "nope", "type": 99}, ("bad_uuid", "invalid uuid 'nope'")),
    ("type_and_ts", {"type": 99, "timestamp": -1}, ("unknown_type", "type code 99")),
    ("ts_and_ack", {"timestamp": -1, "requires_ack": None}, ("out_of_range", "timestamp")),
    (
        "ack_and_addr",
        {"requires_ack": None, "sender_addr": 1},
        ("bad_type", "requires_ack must be a boolean"),
    ),
    (
        "addr_and_seq",
        {"sender_addr": 1, "sequence_number": -1},
        ("bad_addr", "sender_addr must be a string"),
    ),
    (
        "seq_and_ack_for",
        {"sequence_number": -1, "ack_for": "x"},
        ("out_of_range", "sequence_number"),
    ),
]


@pytest.mark.parametrize("name,kwargs,expected", ENCODE_BAD, ids=[c[0] for c in ENCODE_BAD])
def test_encode_refuses_what_decode_would_refuse(codec, name, kwargs, expected):
    args = {"type": 8, "payload": {"a": 1}, "timestamp": 1795634895, "id": UUID_A}
    args.update(kwargs)
    got = reason_of(codec.encode, **args)
    assert got[0] == expected[0]
    if expected[1] is not None:
        assert got[1] == expected[1]
    assert got == reason_of(pure.encode, **args)
    raw_args = dict(args, payload_json=b"{}")
    del raw_args["payload"]
    assert reason_of(codec.encode_raw, **raw_args) == got


def test_encode_accepts_int_subclasses_but_not_bool(codec):
    class Big(int):
        pass

    out = codec.encode(MessageType.Retransmit, None, Big(12), UUID_A, sequence_number=Big(3))
    m = codec.decode(out)
    assert (m.type, m.timestamp, m.sequence_number) == (12, 12, 3)
    assert type(m.timestamp) is int
    assert reason_of(codec.encode_bare, False, 1)[0] == "bad_type"
    assert reason_of(codec.encode_ack, UUID_A, True)[0] == "bad_type"


def test_encode_ack_validates(codec):
    assert reason_of(codec.encode_ack, "nope", 1) == ("bad_uuid", "invalid uuid 'nope'")
    assert reason_of(codec.encode_ack, UUID_A, -1) == ("out_of_range", "timestamp")
    assert reason_of(codec.encode_ack, UUID_A, 1, "bad") == (
        "bad_addr",
        "invalid sender_addr 'bad'",
    )
    assert reason_of(codec.encode_bare, 17, 1) == ("unknown_type", "type code 17")


def test_encode_sender_addr_forms(codec):
    for addr in ("1.2.3.4:5", "[::1]:80", "[fe80::1%eth0]:5000", '[fe80::1%a"b\\c]:1'):
        out = codec.encode(8, None, 1, UUID_A, sender_addr=addr)
        assert codec.decode(out).sender_addr == addr
        assert orjson.loads(out)["sender_addr"] == addr
    # repeated use hits the cache and still gives the same bytes
    assert codec.encode(8, None, 1, UUID_A, sender_addr="1.2.3.4:5") == codec.encode(
        8, None, 1, UUID_A, sender_addr="1.2.3.4:5"
    )
    # many distinct addresses (bounded cache) stay correct
    for port in range(1000):
        addr = f"10.0.0.1:{port}"
        assert codec.decode(codec.encode_ack(UUID_A, 1, addr)).sender_addr == addr


# -- Message -------------------------------------------------------------------------------

FIELDS = (
    "id",
    "type",
    "timestamp",
    "payload",
    "sender_addr",
    "sequence_number",
    "requires_ack",
    "ack_for",
)


def test_message_attributes_read_write(codec):
    m = codec.Message(UUID_A, 8, 1)
    assert m.as_tuple() == (UUID_A, 8, 1, None, None, None, False, None)
    for i, name in enumerate(FIELDS):
        setattr(m, name, f"v{i}" if name != "type" else 3)
    assert m.as_tuple() == ("v0", 3, "v2", "v3", "v4", "v5", "v6", "v7")
    assert m.type_name == "Pong"
    m.type = 16
    assert m.type_name == "RelayData"
    with pytest.raises(AttributeError):
        m.other = 1


def test_message_keywords_and_equality(codec):
    kwargs = {
        "id": UUID_A,
        "type": 11,
        "timestamp": 5,
        "payload": {"x": [1]},
        "sender_addr": "1.2.3.4:5",
        "sequence_number": 9,
        "requires_ack": True,
        "ack_for": UUID_B,
    }
    a = codec.Message(**kwargs)
    b = codec.Message(*kwargs.values())
    assert a == b and not (a != b)  # noqa: SIM202 (__ne__ is under test)
    p = pure.Message(**kwargs)
    assert a == p and p == a and not (a != p)  # noqa: SIM202
    b.sequence_number = 10
    assert a != b and not (a == b)  # noqa: SIM201
    assert a != pure.Message(**dict(kwargs, requires_ack=False))
    assert (a == 5) is False and (a != 5) is True
    assert (a == None) is False  # noqa: E711 - the == operator itself is under test
    with pytest.raises(TypeError):
        hash(a)
    with pytest.raises(TypeError):
        codec.Message(UUID_A, 8)


def test_message_repr_matches_pure(codec):
    kwargs = {
        "id": UUID_A,
        "type": 8,
        "timestamp": 5,
        "payload": {"x": "y"},
        "sender_addr": None,
        "sequence_number": 3,
        "requires_ack": True,
        "ack_for": None,
    }
    r = repr(codec.Message(**kwargs))
    assert r == repr(pure.Message(**kwargs))
    assert r == (
        "Message(id='709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2', type=Data, timestamp=5, "
        "payload={'x': 'y'}, sender_addr=None, sequence_number=3, requires_ack=True, "
        "ack_for=None)"
    )


def test_decoded_message_is_module_message(codec):
    m = codec.decode(raw())
    assert type(m) is codec.Message
    assert m == pure.decode(raw())


def test_message_copy_and_pickle(codec):
    m = codec.decode(raw(sequence_number=4, ack_for=UUID_B))
    assert copy.copy(m) == m and copy.copy(m) is not m
    assert copy.deepcopy(m) == m
    assert pickle.loads(pickle.dumps(m)) == m


# -- odd but valid JSON, and near misses ------------------------------------------------------
# The compiled decoder parses plain envelopes in place and hands anything unusual to orjson;
# these datagrams sit on the edge between the two paths, and must give what the pure twin gives.

PLAIN = (
    b'{"id":"709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2","message_type":"Data","timestamp":1795634895,'
    b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"},"sender_addr":"127.0.0.1:5000",'
    b'"sequence_number":42,"requires_ack":true,"ack_for":"fde7cb59-5746-40a1-b012-4ec595012f6d"}'
)
PLAIN_FIELDS = (
    UUID_A,
    8,
    1795634895,
    {"a": [1, "x]}", {"b": None}], "c": 'q"}'},
    "127.0.0.1:5000",
    42,
    True,
    UUID_B,
)


def _outcome(fn, data):
    try:
        return ("ok", fn(data).as_tuple())
    except ProtocolError as exc:
        return ("err", exc.reason, exc.detail)


def _sub(old: bytes, new: bytes, data: bytes = PLAIN) -> bytes:
    assert old in data, old
    return data.replace(old, new, 1)


SAME_MESSAGE = {
    "spaced": PLAIN.replace(b'":', b'": ').replace(b',"', b', "'),
    "all_whitespace": b" \t\r\n"
    + PLAIN.replace(b'":', b'"\n:\t').replace(b',"', b'\r, "')
    + b"\n ",
    "key_order": json.dumps(dict(reversed(list(json.loads(PLAIN).items())))).encode(),
    "escaped_key": _sub(b'"id"', b'"\\u0069d"'),
    "escaped_id": _sub(b'"709e8abf', b'"\\u0037\\u00309e8abf'),
    "escaped_type": _sub(b'"Data"', b'"D\\u0061ta"'),
    "escaped_addr": _sub(b'"127.0.0.1:5000"', b'"127.0.0.1\\u003a5000"'),
    "upper_ack_for": _sub(
        b"fde7cb59-5746-40a1-b012-4ec595012f6d", b"FDE7CB59574640A1B0124EC595012F6D"
    ),
    "duplicate_key_last_wins": _sub(b'{"id":', b'{"id":"bad","id":'),
    "extra_keys": _sub(b'"requires_ack"', b'"extra":{"x":[1,2,"}"]},"requires_ack"'),
}


@pytest.mark.parametrize("name", SAME_MESSAGE)
def test_odd_valid_json_same_message(codec, name):
    data = SAME_MESSAGE[name]
    assert _outcome(codec.decode, data) == ("ok", PLAIN_FIELDS)
    assert _outcome(pure.decode, data) == ("ok", PLAIN_FIELDS)


def test_plain_envelope(codec):
    assert codec.decode(PLAIN).as_tuple() == PLAIN_FIELDS
    assert codec.decode(PLAIN + b" \n").as_tuple() == PLAIN_FIELDS


NEAR_MISSES = {
    "ts_float": _sub(b"1795634895", b"1795634895.0"),
    "ts_exponent": _sub(b"1795634895", b"1e9"),
    "ts_EXPONENT": _sub(b"1795634895", b"1E9"),
    "ts_negative_zero": _sub(b"1795634895", b"-0"),
    "ts_negative": _sub(b"1795634895", b"-1795634895"),
    "ts_leading_zero": _sub(b"1795634895", b"01795634895"),
    "ts_zero": _sub(b"1795634895", b"0"),
    "ts_double_zero": _sub(b"1795634895", b"00"),
    "ts_max_u64": _sub(b"1795634895", b"18446744073709551615"),
    "ts_over_u64": _sub(b"1795634895", b"18446744073709551616"),
    "ts_plus": _sub(b"1795634895", b"+1"),
    "ts_hex": _sub(b"1795634895", b"0x10"),
    "ts_string": _sub(b"1795634895", b'"1795634895"'),
    "ts_trailing_garbage": _sub(b"1795634895", b"1795634895x"),
    "seq_max": _sub(b":42,", b":4294967295,"),
    "seq_over": _sub(b":42,", b":4294967296,"),
    "seq_huge": _sub(b":42,", b":99999999999999999999999,"),
    "seq_negative": _sub(b":42,", b":-42,"),
    "seq_float": _sub(b":42,", b":42.0,"),
    "seq_null": _sub(b":42,", b":null,"),
    "seq_nul": _sub(b":42,", b":nul,"),
    "ack_True": _sub(b"true", b"True"),
    "ack_tru": _sub(b"true", b"tru"),
    "ack_truex": _sub(b"true", b"truex"),
    "ack_false": _sub(b"true", b"false"),
    "ack_1": _sub(b"true", b"1"),
    "addr_null": _sub(b'"127.0.0.1:5000"', b"null"),
    "addr_nulll": _sub(b'"127.0.0.1:5000"', b"nulll"),
    "addr_bad": _sub(b'"127.0.0.1:5000"', b'"127.0.0.1:99999"'),
    "addr_number": _sub(b'"127.0.0.1:5000"', b"5000"),
    "addr_non_ascii": _sub(b'"127.0.0.1:5000"', '"127.0.0.١:5000"'.encode()),
    "addr_control": _sub(b'"127.0.0.1:5000"', b'"127.0.0.1\t:5000"'),
    "ack_for_null": _sub(b'"fde7cb59-5746-40a1-b012-4ec595012f6d"', b"null"),
    "ack_for_bad": _sub(b"fde7cb59-5746-40a1-b012-4ec595012f6d", b"nope"),
    "id_bad": _sub(b"709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2", b"7"),
    "id_non_ascii": _sub(b"709e8abf", "70９e8abf".encode()),
    "id_null": _sub(b'"709e8abf-7a1b-44fe-ae03-e7ea6dc15ad2"', b"null"),
    "type_unknown": _sub(b'"Data"', b'"Dat"'),
    "type_long": _sub(b'"Data"', b'"' + b"D" * 90 + b'"'),
    "type_non_ascii": _sub(b'"Data"', '"Dätä"'.encode()),
    "type_escaped_unknown": _sub(b'"Data"', b'"D\\"ata"'),
    "type_number": _sub(b'"Data"', b"8"),
    "payload_null": _sub(b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":null'),
    "payload_nulll": _sub(b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":nulll'),
    "payload_empty": _sub(b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":'),
    "payload_scalar": _sub(
        b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":-1.5e3'
    ),
    "payload_string": _sub(
        b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":"}\\\\"'
    ),
    "payload_big_int": _sub(
        b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}',
        b'"payload":123456789012345678901234567890',
    ),
    "payload_trailing_comma": _sub(b'"c":"q\\"}"}', b'"c":"q\\"}",}'),
    "payload_unbalanced": _sub(b'{"b":null}]', b'{"b":null]]'),
    "payload_unclosed": _sub(b'"c":"q\\"}"}', b'"c":"q\\"}"'),
    "payload_unterminated_string": _sub(b'"c":"q\\"}"}', b'"c":"q\\"}}'),
    "payload_nul_in_string": _sub(b'"x]}"', b'"x\x00]}"'),
    "payload_nul_outside": _sub(b"[1,", b"[1,\x00"),
    "payload_bad_utf8": _sub(b'"x]}"', b'"x\xff"'),
    "payload_non_ascii": _sub(b'"x]}"', '"网络 é"'.encode()),
    "payload_control_char": _sub(b'"x]}"', b'"x\n"'),
    "payload_single_quotes": _sub(b'"x]}"', b"'x'"),
    "payload_nan": _sub(b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":NaN'),
    "payload_deep_100": _sub(
        b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":' + b"[" * 100 + b"]" * 100
    ),
    "payload_deep_200": _sub(
        b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":' + b"[" * 200 + b"]" * 200
    ),
    "payload_deep_600": _sub(
        b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"}', b'"payload":' + b"[" * 600 + b"]" * 600
    ),
    "missing_colon": _sub(b'"timestamp":', b'"timestamp"'),
    "double_comma": _sub(b',"sender_addr"', b',,"sender_addr"'),
    "trailing_comma": PLAIN[:-1] + b",}",
    "garbage_after": PLAIN + b"x",
    "second_object": PLAIN + b"{}",
    "extra_brace": PLAIN + b"}",
    "nul_after": PLAIN + b"\x00",
    "bom": b"\xef\xbb\xbf" + PLAIN,
    "unquoted_key": _sub(b'"timestamp"', b"timestamp"),
    "single_quoted_key": _sub(b'"timestamp"', b"'timestamp'"),
    "key_with_space": _sub(b'"timestamp"', b'"timestamp "'),
    "empty_object": b"{}",
    "empty_object_spaced": b" { } ",
    "array": b"[" + PLAIN + b"]",
    "duplicate_key_first_bad": _sub(b'"requires_ack":true', b'"requires_ack":true,"id":"bad"'),
    "duplicate_ts": _sub(b'"requires_ack":true', b'"requires_ack":true,"timestamp":-1'),
    "missing_payload_and_requires_ack": _sub(b',"requires_ack":true', b"").replace(
        b'"payload":{"a":[1,"x]}",{"b":null}],"c":"q\\"}"},', b""
    ),
}


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_near_misses_match_pure(codec, name):
    data = NEAR_MISSES[name]
    assert _outcome(codec.decode, data) == _outcome(pure.decode, data)


def test_near_misses_expected_outcomes(codec):
    """A few of the above, with the outcome spelled out (the pure twin could be wrong too)."""

    def out(name):
        return _outcome(codec.decode, NEAR_MISSES[name])

    assert out("ts_float")[1] == "bad_type"
    assert out("ts_leading_zero")[1] == "not_json"
    assert out("ts_negative") == ("err", "out_of_range", "timestamp")
    assert out("ts_max_u64")[1][2] == 2**64 - 1
    assert out("ts_over_u64")[:2] == ("err", "bad_type")  # orjson: a float
    assert out("ts_zero")[1][2] == 0
    assert out("seq_max")[1][5] == 2**32 - 1
    assert out("seq_over") == ("err", "out_of_range", "sequence_number")
    assert out("seq_huge")[:2] == ("err", "bad_type")
    assert out("addr_bad") == ("err", "bad_addr", "invalid sender_addr '127.0.0.1:99999'")
    assert out("addr_non_ascii")[:2] == ("err", "bad_addr")
    assert out("type_long") == ("err", "unknown_type", "D" * 64)
    assert out("type_non_ascii") == ("err", "unknown_type", "Dätä")
    assert out("payload_null")[1][3] is None
    assert out("payload_string")[1][3] == "}\\"
    assert out("payload_big_int")[1][3] == 123456789012345678901234567890.0
    assert out("payload_non_ascii")[1][3]["a"][1] == "网络 é"
    assert out("payload_deep_200")[0] == "ok" and out("payload_deep_600")[0] == "ok"
    for name in (
        "payload_trailing_comma",
        "payload_unbalanced",
        "payload_unclosed",
        "payload_unterminated_string",
        "payload_nul_in_string",
        "payload_bad_utf8",
        "payload_control_char",
        "payload_nan",
        "garbage_after",
        "second_object",
        "extra_brace",
        "nul_after",
        "bom",
        "trailing_comma",
        "double_comma",
        "missing_colon",
        "unquoted_key",
        "payload_empty",
        "ack_tru",
        "addr_nulll",
    ):
        assert out(name)[:2] == ("err", "not_json"), name
    assert out("empty_object") == ("err", "missing_field", "id")
    assert out("array") == ("err", "not_object", "envelope must be a JSON object")
    assert out("duplicate_key_first_bad") == ("err", "bad_uuid", "invalid uuid 'bad'")
    assert out("duplicate_ts") == ("err", "out_of_range", "timestamp")
    assert out("missing_payload_and_requires_ack") == ("err", "missing_field", "payload")


def test_every_prefix_and_every_deletion_match_pure(codec):
    data = NEAR_MISSES["payload_string"] + b" "
    for cut in range(len(PLAIN) + 1):
        assert _outcome(codec.decode, PLAIN[:cut]) == _outcome(pure.decode, PLAIN[:cut]), cut
    for i in range(len(PLAIN)):
        mutated = PLAIN[:i] + PLAIN[i + 1 :]
        assert _outcome(codec.decode, mutated) == _outcome(pure.decode, mutated), i
    for i in range(len(data)):
        for byte in (b"\\", b'"', b"\x00", b" ", b"}"):
            mutated = data[:i] + byte + data[i + 1 :]
            assert _outcome(codec.decode, mutated) == _outcome(pure.decode, mutated), (i, byte)


def test_seeded_id_entropy_gives_the_same_ids_on_both_twins(codec):
    import random

    from p2pfast import _codec_py

    try:
        codec.set_id_entropy(random.Random(42).randbytes)
        ids = [codec.new_id() for _ in range(700)]  # more than one batch
        _codec_py.set_id_entropy(random.Random(42).randbytes)
        assert ids == [_codec_py.new_id() for _ in range(700)]
        assert len(set(ids)) == 700 and all(i[14] == "4" and i[19] in "89ab" for i in ids)
        codec.set_id_entropy(lambda n: b"\x00" * (n - 1))  # a broken source is refused
        with pytest.raises(ValueError):
            codec.new_id()
    finally:
        codec.set_id_entropy(None)
        _codec_py.set_id_entropy(None)
    assert codec.new_id() != ids[0]
