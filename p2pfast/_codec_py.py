"""Pure-Python codec: the seed wire format (one compact JSON envelope per datagram).

Twin of the compiled ``_codec`` module: same names, same behaviour, checked by the
parametrized tests. ``decode`` refuses anything over 1 MiB before parsing and turns every
malformed datagram into a :class:`~p2pfast.errors.ProtocolError` with a reason code.
``encode`` writes the envelope keys in the seed's order, and payload keys sorted, as the
Rust server does, so the output matches captured datagrams byte for byte.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import orjson

from ._wire import MAX_MESSAGE_SIZE, MAX_U32, MAX_U64, STUN_MAGIC, TYPE_NAMES
from .addr import parse_addr
from .errors import ProtocolError

_TYPE_CODES = {name: code for code, name in enumerate(TYPE_NAMES)}
_TYPE_BYTES = tuple(name.encode() for name in TYPE_NAMES)
_ACK = _TYPE_CODES["Ack"]
_N_TYPES = len(TYPE_NAMES)
_SORT = orjson.OPT_SORT_KEYS

_pytype = type  # the builtin: the ``type`` parameters below shadow it
_ADDR_CACHE_MAX = 256
#: sender_addr -> its JSON string, for addresses already validated (bounded).
_ADDR_JSON: dict[str, bytes] = {}


def _addr_json(sender_addr: object) -> bytes:
    """The JSON string for a valid sender_addr (the decoder's rule: ``parse_addr``), or bad_addr."""
    if _pytype(sender_addr) is not str:
        raise ProtocolError("bad_addr", "sender_addr must be a string")
    encoded = _ADDR_JSON.get(sender_addr)
    if encoded is not None:
        return encoded
    try:
        parse_addr(sender_addr)
    except ValueError:
        raise ProtocolError("bad_addr", f"invalid sender_addr {sender_addr[:64]!r}") from None
    try:
        encoded = orjson.dumps(sender_addr)
    except TypeError:  # lone surrogates (possible in an IPv6 scope id): not encodable
        raise ProtocolError("bad_addr", f"invalid sender_addr {sender_addr[:64]!r}") from None
    if len(_ADDR_JSON) >= _ADDR_CACHE_MAX:
        _ADDR_JSON.clear()
    _ADDR_JSON[sender_addr] = encoded
    return encoded


_UUID_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_SIMPLE = re.compile(r"[0-9a-f]{32}")


class Message:
    """One decoded envelope. ``type`` is the integer message-type code."""

    __slots__ = (
        "ack_for",
        "id",
        "payload",
        "requires_ack",
        "sender_addr",
        "sequence_number",
        "timestamp",
        "type",
    )

    def __init__(
        self,
        id: str,
        type: int,
        timestamp: int,
        payload: Any = None,
        sender_addr: str | None = None,
        sequence_number: int | None = None,
        requires_ack: bool = False,
        ack_for: str | None = None,
    ) -> None:
        self.id = id
        self.type = type
        self.timestamp = timestamp
        self.payload = payload
        self.sender_addr = sender_addr
        self.sequence_number = sequence_number
        self.requires_ack = requires_ack
        self.ack_for = ack_for

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type]

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.type,
            self.timestamp,
            self.payload,
            self.sender_addr,
            self.sequence_number,
            self.requires_ack,
            self.ack_for,
        )

    def __eq__(self, other: object) -> bool:
        as_tuple = getattr(other, "as_tuple", None)
        if as_tuple is None:
            return NotImplemented
        return bool(self.as_tuple() == as_tuple())

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, type={TYPE_NAMES[self.type]}, timestamp={self.timestamp}, "
            f"payload={self.payload!r}, sender_addr={self.sender_addr!r}, "
            f"sequence_number={self.sequence_number!r}, requires_ack={self.requires_ack!r}, "
            f"ack_for={self.ack_for!r})"
        )


def normalize_uuid(value: object) -> str:
    """Return ``value`` as a lowercase hyphenated UUID, accepting hyphenated, simple (32 hex),
    braced and ``urn:uuid:`` forms in any case, as the Rust ``uuid`` crate does."""
    if type(value) is not str:
        raise ProtocolError("bad_uuid", "uuid must be a string")
    if len(value) == 36 and _UUID_CANONICAL.fullmatch(value):
        return value
    text = value.lower()
    n = len(text)
    if n == 38 and text[0] == "{" and text[37] == "}":
        text = text[1:37]
    elif n == 45 and text.startswith("urn:uuid:"):
        text = text[9:]
    if len(text) == 36 and _UUID_CANONICAL.fullmatch(text):
        return text
    if len(text) == 32 and _UUID_SIMPLE.fullmatch(text):
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    raise ProtocolError("bad_uuid", f"invalid uuid {value[:64]!r}")


def decode(data: bytes) -> Message:
    """Decode one datagram; raise :class:`ProtocolError` for anything that is not a valid
    message."""
    size = len(data)
    if size > MAX_MESSAGE_SIZE:
        raise ProtocolError("too_large", f"{size} bytes > {MAX_MESSAGE_SIZE}")
    if size >= 20 and data[4:8] == STUN_MAGIC:
        raise ProtocolError("stun", "STUN message on the main port")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("not_json", str(exc)[:80]) from None
    if type(obj) is not dict:
        raise ProtocolError("not_object", "envelope must be a JSON object")
    try:
        mid = obj["id"]
        type_name = obj["message_type"]
        timestamp = obj["timestamp"]
        payload = obj["payload"]
        requires_ack = obj["requires_ack"]
    except KeyError as exc:
        raise ProtocolError("missing_field", str(exc.args[0])) from None
    mid = normalize_uuid(mid)
    if type(type_name) is not str:
        raise ProtocolError("bad_type", "message_type must be a string")
    code = _TYPE_CODES.get(type_name)
    if code is None:
        raise ProtocolError("unknown_type", type_name[:64])
    if type(timestamp) is not int:
        raise ProtocolError("bad_type", "timestamp must be an integer")
    if timestamp < 0 or timestamp > MAX_U64:
        raise ProtocolError("out_of_range", "timestamp")
    if type(requires_ack) is not bool:
        raise ProtocolError("bad_type", "requires_ack must be a boolean")
    sender_addr = obj.get("sender_addr")
    if sender_addr is not None and (type(sender_addr) is not str or sender_addr not in _ADDR_JSON):
        _addr_json(sender_addr)  # bad_addr unless parse_addr accepts it (then cached)
    seq = obj.get("sequence_number")
    if seq is not None:
        if type(seq) is not int:
            raise ProtocolError("bad_type", "sequence_number must be an integer")
        if seq < 0 or seq > MAX_U32:
            raise ProtocolError("out_of_range", "sequence_number")
    ack_for = obj.get("ack_for")
    if ack_for is not None:
        ack_for = normalize_uuid(ack_for)
    return Message(mid, code, timestamp, payload, sender_addr, seq, requires_ack, ack_for)


# -- ids ---------------------------------------------------------------------------------

_ID_BATCH = 256
_VARIANT = "89ab89ab89ab89ab"
#: Ids formatted in advance from one ``os.urandom`` call. ``list.pop`` is atomic, so two
#: threads never get the same id; the list is dropped in a forked child (see ``_reset_ids``).
_ids: list[str] = []


#: Where the random bytes of ids come from (see :func:`set_id_entropy`).
_entropy: Callable[[int], bytes] = os.urandom


def _refill_ids() -> str:
    global _ids
    raw = _entropy(16 * _ID_BATCH)
    if len(raw) != 16 * _ID_BATCH:
        raise ValueError("the id entropy source returned the wrong number of bytes")
    h = raw.hex()
    batch = [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{_VARIANT[int(h[i + 16], 16)]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * _ID_BATCH, 32)
    ]
    batch.reverse()  # handed out from the end: the first slot first, as the compiled twin
    _ids = batch
    return batch.pop()


def set_id_entropy(source: Callable[[int], bytes] | None) -> None:
    """Draw the random bytes of every id from ``source(n)`` (e.g. a seeded
    ``random.Random(seed).randbytes``, for a reproducible simulation), or from
    ``os.urandom`` again with None. Process-wide; buffered ids are dropped."""
    global _entropy
    _entropy = os.urandom if source is None else source
    _reset_ids()


def _reset_ids() -> None:
    """Drop the buffered ids (after fork, so parent and child never hand out the same ones)."""
    global _ids
    _ids = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_ids)


def new_id() -> str:
    """A random version-4 UUID string, from a batched ``os.urandom`` (much cheaper than uuid4)."""
    try:
        return _ids.pop()
    except IndexError:
        return _refill_ids()


# -- encoding ----------------------------------------------------------------------------


def _check_uint(value: object, name: str, limit: int) -> int:
    """An int (``int`` subclasses such as IntEnum accepted, bool refused) in ``0..limit``."""
    if _pytype(value) is not int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError("bad_type", f"{name} must be an integer")
        value = int(value)
    if value < 0 or value > limit:
        raise ProtocolError("out_of_range", name)
    return value


def encode_raw(
    type: int,
    payload_json: bytes,
    timestamp: int,
    id: str | None = None,
    sender_addr: str | None = None,
    sequence_number: int | None = None,
    requires_ack: bool = False,
    ack_for: str | None = None,
) -> bytes:
    """Encode an envelope around an already-serialized payload (compact JSON bytes).

    The envelope fields are checked with the decoder's rules and precedence, so whatever this
    returns decodes back to the same fields: ``id``/``ack_for`` any UUID form (written lowercase
    hyphenated; ``id=None`` draws a new one), ``type`` an int code (IntEnum fine, bool not),
    ``timestamp`` 0..MAX_U64, ``requires_ack`` a bool, ``sender_addr`` ``None`` or a valid
    ``ip:port``, ``sequence_number`` ``None`` or 0..MAX_U32. Raises :class:`ProtocolError`.
    ``payload_json`` is trusted as is.
    """
    id = new_id() if id is None else normalize_uuid(id)
    if _pytype(type) is not int and (not isinstance(type, int) or isinstance(type, bool)):
        raise ProtocolError("bad_type", "type must be an integer message-type code")
    if type < 0 or type >= _N_TYPES:
        raise ProtocolError("unknown_type", f"type code {int(type)}")
    timestamp = _check_uint(timestamp, "timestamp", MAX_U64)
    if requires_ack is True:
        ack_part = b',"requires_ack":true,"ack_for":'
    elif requires_ack is False:
        ack_part = b',"requires_ack":false,"ack_for":'
    else:
        raise ProtocolError("bad_type", "requires_ack must be a boolean")
    addr = b"null" if sender_addr is None else _addr_json(sender_addr)
    if sequence_number is not None:
        sequence_number = _check_uint(sequence_number, "sequence_number", MAX_U32)
    if ack_for is not None:
        ack_for = normalize_uuid(ack_for)
    data = b"".join(
        (
            b'{"id":"',
            id.encode(),
            b'","message_type":"',
            _TYPE_BYTES[type],
            b'","timestamp":',
            b"%d" % timestamp,
            b',"payload":',
            payload_json,
            b',"sender_addr":',
            addr,
            b',"sequence_number":',
            b"null" if sequence_number is None else b"%d" % sequence_number,
            ack_part,
            b"null" if ack_for is None else b'"' + ack_for.encode() + b'"',
            b"}",
        )
    )
    if len(data) > MAX_MESSAGE_SIZE:
        raise ProtocolError("too_large", f"{len(data)} bytes > {MAX_MESSAGE_SIZE}")
    return data


def encode(
    type: int,
    payload: Any,
    timestamp: int,
    id: str | None = None,
    sender_addr: str | None = None,
    sequence_number: int | None = None,
    requires_ack: bool = False,
    ack_for: str | None = None,
) -> bytes:
    """Encode one message as the Rust server would (envelope order fixed, payload keys sorted)."""
    return encode_raw(
        type,
        dump_payload(payload),
        timestamp,
        id,
        sender_addr,
        sequence_number,
        requires_ack,
        ack_for,
    )


def dump_payload(payload: Any) -> bytes:
    """Serialize a payload: compact JSON with object keys sorted (serde_json's Value order)."""
    try:
        return orjson.dumps(payload, option=_SORT)
    except TypeError as exc:
        raise ProtocolError("bad_type", f"payload is not JSON-serializable: {exc}") from None


def encode_ack(ack_for: str, timestamp: int, sender_addr: str | None = None) -> bytes:
    """Fast path: an ``Ack`` for message id ``ack_for`` (null payload)."""
    return encode_raw(_ACK, b"null", timestamp, None, sender_addr, None, False, ack_for)


def encode_bare(type: int, timestamp: int) -> bytes:
    """Fast path: a message with a null payload and no extras (Ping, Pong, requests)."""
    return encode_raw(type, b"null", timestamp)
