# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled codec: the seed wire format (one compact JSON envelope per datagram).

Twin of :mod:`p2pfast._codec_py`: same names, same keyword names, same behaviour, same output
bytes and the same :class:`~p2pfast.errors.ProtocolError` reasons and details in the same
precedence order (checked by the parametrized and property tests against the pure twin).

What is compiled:

* ``decode``: a plain envelope (the usual case) is parsed in place, without building the
  envelope dict; orjson only parses the payload (and not at all when it is ``null``). Anything
  unusual goes through orjson as a whole, like the pure twin, *before* any field is checked, so
  both paths give the same result. See ``_fast_decode``.
* UUID validation/normalization over the str's ASCII buffer (no regex), message-type lookup
  by length + memcmp, ``new_id`` formatting 36 chars from a batched ``os.urandom`` buffer.
* ``encode*``: one bytes object of the exact size, filled with memcpy (the new id is written
  straight into it); payloads are still serialized by orjson.
"""

cimport cython
from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError, PyDict_Next
from libc.string cimport memcpy, memcmp

import os

import orjson

from p2pfast._wire import MAX_MESSAGE_SIZE, MAX_U32, MAX_U64, STUN_MAGIC, TYPE_NAMES
from p2pfast.addr import parse_addr
from p2pfast.errors import ProtocolError

cdef extern from "Python.h":
    bint PyBytes_CheckExact(object)
    bint PyUnicode_CheckExact(object)
    bint PyDict_CheckExact(object)
    bint PyLong_CheckExact(object)
    bint PyLong_Check(object)
    bint PyBool_Check(object)
    bint PyUnicode_IS_ASCII(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    unsigned char* PyUnicode_1BYTE_DATA(object)
    object PyUnicode_New(Py_ssize_t size, unsigned int maxchar)
    PyObject* _Py_True "Py_True"
    PyObject* _Py_False "Py_False"
    PyObject* _Py_None "Py_None"
    PyObject* PyErr_Occurred()
    void PyErr_Clear()
    # No automatic error checks: overflow is handled by hand below.
    unsigned long long _as_u64 "PyLong_AsUnsignedLongLong"(object) noexcept
    long long _as_i64_ovf "PyLong_AsLongLongAndOverflow"(object, int*) noexcept
    PyObject* PyTuple_GET_ITEM(object, Py_ssize_t)


cdef enum:
    _MAX_SIZE = 1048576
    # The direct scan pays off for ordinary envelopes; past this size it walks the payload byte
    # by byte before orjson parses it anyway, so a large message (a reassembled fragment
    # stream) goes straight to orjson, as the pure twin does: the two cost the same near 2 KB,
    # and at 1 MiB the general path is 7x faster.
    _FAST_DECODE_MAX = 2048
    _N_TYPES = 17
    _ACK = 11
    _ID_BATCH = 256
    _ADDR_CACHE_MAX = 256

cdef unsigned long long _U32 = 0xFFFFFFFFULL

cdef tuple _TYPE_BYTES = tuple(name.encode() for name in TYPE_NAMES)

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _SORT = orjson.OPT_SORT_KEYS
cdef object _parse_addr = parse_addr
cdef object _ProtocolError = ProtocolError
cdef object _urandom = os.urandom
cdef dict _addr_cache = {}  # sender_addr -> its JSON string, for validated addresses

# -- lookup tables -------------------------------------------------------------------------

cdef signed char _HEXVAL[256]      # hex digit value, -1 if not a hex digit
cdef char _LOWER_HEX[256]          # lowercase form of a hex digit
cdef char _HEX_DIGITS[16]
cdef char _VARIANT[4]


cdef void _init_tables() noexcept:
    cdef int i
    for i in range(256):
        _HEXVAL[i] = -1
        _LOWER_HEX[i] = 0
    for i in range(10):
        _HEXVAL[48 + i] = i
        _LOWER_HEX[48 + i] = <char>(48 + i)
    for i in range(6):
        _HEXVAL[97 + i] = 10 + i
        _HEXVAL[65 + i] = 10 + i
        _LOWER_HEX[97 + i] = <char>(97 + i)
        _LOWER_HEX[65 + i] = <char>(97 + i)
    for i in range(16):
        _HEX_DIGITS[i] = b"0123456789abcdef"[i]
    for i in range(4):
        _VARIANT[i] = b"89ab"[i]


_init_tables()


cdef inline object _perr(str reason, str detail):
    return _ProtocolError(reason, detail)


# -- Message -------------------------------------------------------------------------------


@cython.freelist(64)
@cython.no_gc  # a decoded message holds JSON data, which cannot form a cycle back to it:
# keeping it out of the cyclic GC saves a gen-0 allocation per datagram on the hot path
cdef class Message:
    """One decoded envelope. ``type`` is the integer message-type code."""

    # Fields are declared in _codec.pxd (cimported by the compiled receive path).

    def __init__(
        self,
        id,
        type,
        timestamp,
        payload=None,
        sender_addr=None,
        sequence_number=None,
        requires_ack=False,
        ack_for=None,
    ):
        self.id = id
        self.type = type
        self.timestamp = timestamp
        self.payload = payload
        self.sender_addr = sender_addr
        self.sequence_number = sequence_number
        self.requires_ack = requires_ack
        self.ack_for = ack_for

    @property
    def type_name(self):
        return TYPE_NAMES[self.type]

    def as_tuple(self):
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

    def __eq__(self, other):
        if not hasattr(other, "as_tuple"):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    def __ne__(self, other):
        if not hasattr(other, "as_tuple"):
            return NotImplemented
        return not (self.as_tuple() == other.as_tuple())

    # Like the pure twin (which defines __eq__ only): instances are unhashable.
    __hash__ = None

    def __repr__(self):
        return (
            f"Message(id={self.id!r}, type={TYPE_NAMES[self.type]}, timestamp={self.timestamp}, "
            f"payload={self.payload!r}, sender_addr={self.sender_addr!r}, "
            f"sequence_number={self.sequence_number!r}, requires_ack={self.requires_ack!r}, "
            f"ack_for={self.ack_for!r})"
        )


# -- UUIDs ---------------------------------------------------------------------------------


cdef inline int _check_hyphenated(const unsigned char* p) noexcept:
    """36 chars at p: 0 = invalid, 1 = valid lowercase canonical, 2 = valid with upper case."""
    cdef int i
    cdef int upper = 0
    cdef unsigned char c
    for i in range(36):
        c = p[i]
        if i == 8 or i == 13 or i == 18 or i == 23:
            if c != 45:  # '-'
                return 0
        elif _HEXVAL[c] < 0:
            return 0
        elif c < 97 and c > 57:  # 'A'..'F'
            upper = 1
    return 2 if upper else 1


cdef inline bint _check_simple(const unsigned char* p) noexcept:
    cdef int i
    for i in range(32):
        if _HEXVAL[p[i]] < 0:
            return False
    return True


cdef inline bint _is_urn_prefix(const unsigned char* p) noexcept:
    """Case-insensitive ``urn:uuid:`` (the pure twin lowers the whole text before comparing)."""
    cdef const char* want = b"urn:uuid:"
    cdef int i
    cdef unsigned char c
    for i in range(9):
        c = p[i]
        if c >= 65 and c <= 90:
            c += 32
        if c != <unsigned char>want[i]:
            return False
    return True


cdef inline void _write_lower36(const unsigned char* src, unsigned char* dst) noexcept:
    cdef int i
    for i in range(36):
        if i == 8 or i == 13 or i == 18 or i == 23:
            dst[i] = 45
        else:
            dst[i] = <unsigned char>_LOWER_HEX[src[i]]


cdef inline void _write_simple(const unsigned char* src, unsigned char* dst) noexcept:
    cdef int i, j = 0
    for i in range(32):
        if i == 8 or i == 12 or i == 16 or i == 20:
            dst[j] = 45
            j += 1
        dst[j] = <unsigned char>_LOWER_HEX[src[i]]
        j += 1


cdef object _normalize(object value):
    """Core of ``normalize_uuid``: returns a lowercase hyphenated str or raises bad_uuid."""
    cdef Py_ssize_t n
    cdef const unsigned char* p
    cdef int r
    cdef object out
    if not PyUnicode_CheckExact(value):
        raise _perr("bad_uuid", "uuid must be a string")
    # Non-ASCII text can never be a UUID (no non-ASCII character lowers to a hex digit).
    if PyUnicode_IS_ASCII(value):
        n = PyUnicode_GET_LENGTH(value)
        p = PyUnicode_1BYTE_DATA(value)
        if n == 36:
            r = _check_hyphenated(p)
            if r == 1:
                return value
        elif n == 38:
            if p[0] == 123 and p[37] == 125:  # '{' '}'
                p += 1
                r = _check_hyphenated(p)
            else:
                r = 0
        elif n == 45:
            if _is_urn_prefix(p):
                p += 9
                r = _check_hyphenated(p)
            else:
                r = 0
        elif n == 32:
            if _check_simple(p):
                out = PyUnicode_New(36, 127)
                _write_simple(p, PyUnicode_1BYTE_DATA(out))
                return out
            r = 0
        else:
            r = 0
        if r:
            out = PyUnicode_New(36, 127)
            _write_lower36(p, PyUnicode_1BYTE_DATA(out))
            return out
    raise _perr("bad_uuid", f"invalid uuid {value[:64]!r}")


def normalize_uuid(value):
    """Return ``value`` as a lowercase hyphenated UUID, accepting hyphenated, simple (32 hex),
    braced and ``urn:uuid:`` forms in any case, as the Rust ``uuid`` crate does."""
    return _normalize(value)


# -- decoding ------------------------------------------------------------------------------


cdef object _missing(str key):
    return _perr("missing_field", key)


cdef const char* _TYPE_CSTR[_N_TYPES]
cdef Py_ssize_t _TYPE_LEN[_N_TYPES]
cdef tuple _CODE_OBJS = tuple(range(_N_TYPES))


cdef void _init_type_table() noexcept:
    cdef int i
    for i in range(_N_TYPES):
        _TYPE_CSTR[i] = PyBytes_AS_STRING(_TYPE_BYTES[i])
        _TYPE_LEN[i] = PyBytes_GET_SIZE(_TYPE_BYTES[i])


_init_type_table()


cdef inline int _lookup_type(const char* p, Py_ssize_t n) noexcept:
    """Code of the message_type name p[:n] (ASCII), -1 if unknown (case-sensitive)."""
    cdef int i
    for i in range(_N_TYPES):
        if _TYPE_LEN[i] == n and memcmp(_TYPE_CSTR[i], p, n) == 0:
            return i
    return -1


# Envelope keys, as bit flags / slots of the one-pass scan below.
cdef enum:
    K_ID = 0
    K_TYPE = 1
    K_TS = 2
    K_PAYLOAD = 3
    K_ACK = 4
    K_ADDR = 5
    K_SEQ = 6
    K_ACK_FOR = 7
    K_COUNT = 8


cdef inline int _key_slot_chars(const char* p, Py_ssize_t n) noexcept:
    """Which envelope key the ASCII text p[:n] is (-1: not one of them)."""
    if n == 2:
        return K_ID if p[0] == 105 and p[1] == 100 else -1  # "id"
    if n == 12:
        if memcmp(p, b"message_type", 12) == 0:
            return K_TYPE
        if memcmp(p, b"requires_ack", 12) == 0:
            return K_ACK
        return -1
    if n == 9:
        return K_TS if memcmp(p, b"timestamp", 9) == 0 else -1
    if n == 7:
        if memcmp(p, b"payload", 7) == 0:
            return K_PAYLOAD
        if memcmp(p, b"ack_for", 7) == 0:
            return K_ACK_FOR
        return -1
    if n == 11:
        return K_ADDR if memcmp(p, b"sender_addr", 11) == 0 else -1
    if n == 15:
        return K_SEQ if memcmp(p, b"sequence_number", 15) == 0 else -1
    return -1


cdef inline int _key_slot(PyObject* key) noexcept:
    """Which envelope key ``key`` is (-1: not one of them). Keys of orjson dicts are exact str."""
    cdef object k = <object>key
    if not PyUnicode_CheckExact(k) or not PyUnicode_IS_ASCII(k):
        return -1
    return _key_slot_chars(<const char*>PyUnicode_1BYTE_DATA(k), PyUnicode_GET_LENGTH(k))


cdef inline bint _check_addr(object sender_addr) except -1:
    """Validate a non-null decoded sender_addr (cached: parse_addr is slow)."""
    if not PyUnicode_CheckExact(sender_addr):
        raise _perr("bad_addr", "sender_addr must be a string")
    if PyDict_GetItemWithError(_addr_cache, sender_addr) is NULL:
        _addr_json(sender_addr)
    return True


# -- fast path: a plain envelope parsed in place ---------------------------------------
#
# Most datagrams are a plain envelope: the eight known keys, ASCII strings without escapes,
# non-negative integer literals. For those, the envelope is parsed here without building the
# dict (orjson only parses the payload, and not at all for a null payload). Anything else
# (escapes, non-ASCII outside the payload, extra or duplicate keys, floats, negative numbers,
# deep nesting, any syntax error...) returns None *before* any check, and the datagram goes
# through the general path below, so results and errors are exactly the same either way.
# The payload's extent is found by structure only (brackets outside strings), then orjson
# parses that slice: JSON values are self-delimiting, so if the slice is one valid value and
# the envelope around it is valid, orjson would have read the whole datagram the same way.

cdef enum:
    _REQUIRED = (1 << K_ID) | (1 << K_TYPE) | (1 << K_TS) | (1 << K_PAYLOAD) | (1 << K_ACK)
    _MAX_FAST_DEPTH = 128


cdef inline Py_ssize_t _skip_ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and (s[i] == 32 or s[i] == 10 or s[i] == 13 or s[i] == 9):
        i += 1
    return i


# Scanning tables. The fast path only runs on bytes objects, whose buffer always ends with a
# NUL at s[n]: every table maps 0 to "stop", so the inner loops need no bounds test.
cdef unsigned char _PLAIN[256]   # 1: may appear as is in a plain string (printable ASCII, no " \\)
cdef unsigned char _IN_STR[256]  # 1: ordinary byte inside any JSON string (not " \\ or NUL)
cdef unsigned char _OUTSIDE[256] # 1: byte with no structural meaning outside strings


cdef void _init_scan_tables() noexcept:
    cdef int c
    for c in range(256):
        _PLAIN[c] = 1 if 32 <= c < 128 and c != 34 and c != 92 else 0
        _IN_STR[c] = 0 if c == 34 or c == 92 or c == 0 else 1
        _OUTSIDE[c] = 0 if c in (34, 123, 91, 125, 93, 0) else 1


_init_scan_tables()


cdef inline Py_ssize_t _plain_string_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Index of the closing quote of a string whose first char is s[i]; -1 if it has an escape,
    a control or non-ASCII byte, or no end (s[n] must be NUL)."""
    while _PLAIN[s[i]]:
        i += 1
    return i if s[i] == 34 and i < n else -1


cdef inline Py_ssize_t _uint_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                                 unsigned long long* out) noexcept:
    """End of a JSON integer literal 0..MAX_U64 at s[i], value in out; -1 otherwise."""
    cdef unsigned long long v = 0, d
    if i >= n or s[i] < 48 or s[i] > 57:
        return -1
    if s[i] == 48:
        i += 1
    else:
        while i < n and s[i] >= 48 and s[i] <= 57:
            d = s[i] - 48
            if v > (0xFFFFFFFFFFFFFFFFULL - d) // 10:
                return -1
            v = v * 10 + d
            i += 1
    if i < n and (s[i] == 46 or s[i] == 101 or s[i] == 69 or (s[i] >= 48 and s[i] <= 57)):
        return -1  # fraction, exponent or leading zero
    out[0] = v
    return i


cdef inline bint _is_lit(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                         const char* lit, Py_ssize_t k) noexcept:
    return i + k <= n and memcmp(s + i, lit, k) == 0


cdef Py_ssize_t _value_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """End of the JSON value starting at s[i], by structure only (orjson validates it later);
    -1 if unterminated or nested deeper than _MAX_FAST_DEPTH (s[n] must be NUL)."""
    cdef int depth = 0
    cdef unsigned char c = s[i]
    cdef Py_ssize_t start = i
    if c == 123 or c == 91 or c == 34:  # { [ "
        while True:
            while _OUTSIDE[s[i]]:
                i += 1
            c = s[i]
            if i >= n:
                return -1
            if c == 34:
                i += 1
                while True:
                    while _IN_STR[s[i]]:
                        i += 1
                    if i >= n:
                        return -1
                    c = s[i]
                    if c == 34:
                        break
                    if c == 92:  # an escape: skip the next byte too
                        if i + 1 >= n:
                            return -1
                        i += 2
                    else:  # an embedded NUL (orjson will refuse it)
                        i += 1
                if depth == 0:
                    return i + 1
            elif c == 123 or c == 91:
                depth += 1
                if depth > _MAX_FAST_DEPTH:
                    return -1
            elif c == 125 or c == 93:
                depth -= 1
                if depth <= 0:
                    return i + 1 if depth == 0 else -1
            i += 1  # past a quote, bracket or an embedded NUL
    while i < n:  # a scalar: up to the next delimiter
        c = s[i]
        if c == 44 or c == 125 or c == 93 or c == 32 or c == 10 or c == 13 or c == 9:
            break
        i += 1
    return i if i > start else -1


cdef inline object _ascii_str(const unsigned char* p, Py_ssize_t n):
    cdef object out = PyUnicode_New(n, 127)
    memcpy(PyUnicode_1BYTE_DATA(out), p, n)
    return out


cdef object _fast_decode(const unsigned char* s, Py_ssize_t n):
    """Decode a plain envelope; None means "not plain": use the general path. Raises only once
    the whole datagram is known to be valid JSON, with the general path's checks and order."""
    cdef Py_ssize_t i, j, key_end
    cdef int slot, code
    cdef unsigned int seen = 0
    cdef unsigned char c
    cdef Py_ssize_t id_a = 0, id_b = 0, ty_a = 0, ty_b = 0, pl_a = 0, pl_b = 0
    cdef Py_ssize_t ad_a = -1, ad_b = 0, af_a = -1, af_b = 0
    cdef unsigned long long ts = 0, seqv = 0
    cdef bint has_seq = False, ack = False
    cdef object payload, mid, sender_addr = None, seq = None, ack_for = None
    cdef Message m

    i = _skip_ws(s, 0, n)
    if i >= n or s[i] != 123:
        return None
    i += 1
    while True:
        i = _skip_ws(s, i, n)
        if i >= n or s[i] != 34:
            return None
        key_end = _plain_string_end(s, i + 1, n)
        if key_end < 0:
            return None
        slot = _key_slot_chars(<const char*>s + i + 1, key_end - i - 1)
        if slot < 0 or (seen >> slot) & 1:
            return None  # an unknown or repeated key
        seen |= 1u << slot
        i = _skip_ws(s, key_end + 1, n)
        if i >= n or s[i] != 58:  # ':'
            return None
        i = _skip_ws(s, i + 1, n)
        if i >= n:
            return None
        c = s[i]
        if slot == K_PAYLOAD:
            j = _value_end(s, i, n)
            if j < 0:
                return None
            pl_a = i
            pl_b = j
            i = j
        elif slot == K_TS:
            i = _uint_end(s, i, n, &ts)
            if i < 0:
                return None
        elif slot == K_ACK:
            if _is_lit(s, i, n, b"true", 4):
                ack = True
                i += 4
            elif _is_lit(s, i, n, b"false", 5):
                ack = False
                i += 5
            else:
                return None
        elif slot == K_SEQ:
            if _is_lit(s, i, n, b"null", 4):
                has_seq = False
                i += 4
            else:
                i = _uint_end(s, i, n, &seqv)
                if i < 0:
                    return None
                has_seq = True
        else:  # a string: id, message_type, sender_addr or ack_for (the last two may be null)
            if c == 34:
                j = _plain_string_end(s, i + 1, n)
                if j < 0:
                    return None
                if slot == K_ID:
                    id_a = i + 1
                    id_b = j
                elif slot == K_TYPE:
                    ty_a = i + 1
                    ty_b = j
                elif slot == K_ADDR:
                    ad_a = i + 1
                    ad_b = j
                else:
                    af_a = i + 1
                    af_b = j
                i = j + 1
            elif (slot == K_ADDR or slot == K_ACK_FOR) and _is_lit(s, i, n, b"null", 4):
                if slot == K_ADDR:
                    ad_a = -1
                else:
                    af_a = -1
                i += 4
            else:
                return None
        i = _skip_ws(s, i, n)
        if i >= n:
            return None
        if s[i] == 44:  # ','
            i += 1
            continue
        if s[i] == 125:  # '}'
            i += 1
            break
        return None
    if _skip_ws(s, i, n) != n or (seen & _REQUIRED) != _REQUIRED:
        return None

    # The payload is the only part not validated yet.
    if pl_b - pl_a == 4 and memcmp(s + pl_a, b"null", 4) == 0:
        payload = None
    else:
        try:
            payload = _loads(PyBytes_FromStringAndSize(<const char*>s + pl_a, pl_b - pl_a))
        except _JSONDecodeError:
            return None

    # Valid JSON: now the general path's checks, in its order (id, message_type, timestamp
    # and requires_ack have the right JSON types here; only their values can be wrong).
    mid = _normalize(_ascii_str(s + id_a, id_b - id_a))
    code = _lookup_type(<const char*>s + ty_a, ty_b - ty_a)
    if code < 0:
        raise _perr("unknown_type", _ascii_str(s + ty_a, ty_b - ty_a)[:64])
    if ad_a >= 0:
        sender_addr = _ascii_str(s + ad_a, ad_b - ad_a)
        _check_addr(sender_addr)
    if has_seq:
        if seqv > _U32:
            raise _perr("out_of_range", "sequence_number")
        seq = seqv
    if af_a >= 0:
        ack_for = _normalize(_ascii_str(s + af_a, af_b - af_a))

    m = Message.__new__(Message)
    m.id = mid
    m.type = <object>PyTuple_GET_ITEM(_CODE_OBJS, code)
    m.timestamp = ts
    m.payload = payload
    m.sender_addr = sender_addr
    m.sequence_number = seq
    m.requires_ack = ack
    m.ack_for = ack_for
    return m


cpdef object decode(object data):
    """Decode one datagram; raise :class:`ProtocolError` for anything that is not a valid message."""
    cdef Py_ssize_t size, pos = 0
    cdef const char* buf
    cdef PyObject* key
    cdef PyObject* value
    cdef PyObject* slots[K_COUNT]
    cdef int i, code, overflow = 0
    cdef long long v
    cdef object obj, mid, type_name, timestamp, sender_addr, seq, ack_for, fast
    cdef Message m

    if PyBytes_CheckExact(data):
        size = PyBytes_GET_SIZE(data)
        if size > _MAX_SIZE:
            raise _perr("too_large", f"{size} bytes > {MAX_MESSAGE_SIZE}")
        buf = PyBytes_AS_STRING(data)
        if size >= 20 and memcmp(buf + 4, b"\x21\x12\xa4\x42", 4) == 0:
            raise _perr("stun", "STUN message on the main port")
        if size <= _FAST_DECODE_MAX:
            fast = _fast_decode(<const unsigned char*>buf, size)
            if fast is not None:
                return fast
    else:
        # Rare path (bytearray, memoryview, str, ...): exactly the pure twin's Python semantics.
        size = len(data)
        if size > _MAX_SIZE:
            raise _perr("too_large", f"{size} bytes > {MAX_MESSAGE_SIZE}")
        if size >= 20 and data[4:8] == STUN_MAGIC:
            raise _perr("stun", "STUN message on the main port")
    try:
        obj = _loads(data)
    except _JSONDecodeError as exc:
        raise _perr("not_json", str(exc)[:80]) from None
    if not PyDict_CheckExact(obj):
        raise _perr("not_object", "envelope must be a JSON object")

    # One pass over the (small) dict instead of eight hashed lookups: orjson's dicts use the
    # generic key table, where a lookup by a non-identical str falls back to rich compare.
    for i in range(K_COUNT):
        slots[i] = NULL
    while PyDict_Next(obj, &pos, &key, &value):
        i = _key_slot(key)
        if i >= 0:
            slots[i] = value  # borrowed: obj stays alive until the end

    if slots[K_ID] is NULL:
        raise _missing("id")
    if slots[K_TYPE] is NULL:
        raise _missing("message_type")
    if slots[K_TS] is NULL:
        raise _missing("timestamp")
    if slots[K_PAYLOAD] is NULL:
        raise _missing("payload")
    if slots[K_ACK] is NULL:
        raise _missing("requires_ack")

    mid = _normalize(<object>slots[K_ID])
    type_name = <object>slots[K_TYPE]
    if not PyUnicode_CheckExact(type_name):
        raise _perr("bad_type", "message_type must be a string")
    code = (
        _lookup_type(<const char*>PyUnicode_1BYTE_DATA(type_name), PyUnicode_GET_LENGTH(type_name))
        if PyUnicode_IS_ASCII(type_name) else -1
    )
    if code < 0:
        raise _perr("unknown_type", type_name[:64])
    timestamp = <object>slots[K_TS]
    if not PyLong_CheckExact(timestamp):
        raise _perr("bad_type", "timestamp must be an integer")
    v = _as_i64_ovf(timestamp, &overflow)
    if overflow < 0 or (overflow == 0 and v < 0):
        raise _perr("out_of_range", "timestamp")
    if overflow > 0:  # above i64: still valid up to MAX_U64
        _as_u64(timestamp)
        if PyErr_Occurred() is not NULL:
            PyErr_Clear()
            raise _perr("out_of_range", "timestamp")
    if slots[K_ACK] != _Py_True and slots[K_ACK] != _Py_False:
        raise _perr("bad_type", "requires_ack must be a boolean")

    if slots[K_ADDR] is NULL or slots[K_ADDR] == _Py_None:
        sender_addr = None
    else:
        sender_addr = <object>slots[K_ADDR]
        _check_addr(sender_addr)

    if slots[K_SEQ] is NULL or slots[K_SEQ] == _Py_None:
        seq = None
    else:
        seq = <object>slots[K_SEQ]
        if not PyLong_CheckExact(seq):
            raise _perr("bad_type", "sequence_number must be an integer")
        v = _as_i64_ovf(seq, &overflow)
        if overflow != 0 or v < 0 or <unsigned long long>v > _U32:
            raise _perr("out_of_range", "sequence_number")

    if slots[K_ACK_FOR] is NULL or slots[K_ACK_FOR] == _Py_None:
        ack_for = None
    else:
        ack_for = _normalize(<object>slots[K_ACK_FOR])

    m = Message.__new__(Message)
    m.id = mid
    m.type = <object>PyTuple_GET_ITEM(_CODE_OBJS, code)
    m.timestamp = timestamp
    m.payload = <object>slots[K_PAYLOAD]
    m.sender_addr = sender_addr
    m.sequence_number = seq
    m.requires_ack = <object>slots[K_ACK]
    m.ack_for = ack_for
    return m


# -- ids -----------------------------------------------------------------------------------

cdef unsigned char _id_buf[16 * _ID_BATCH]
cdef int _id_pos = _ID_BATCH


cdef int _id_refill() except -1:
    global _id_pos
    cdef bytes fresh = _urandom(16 * _ID_BATCH)  # may release the GIL
    if len(fresh) != 16 * _ID_BATCH:
        raise ValueError("the id entropy source returned the wrong number of bytes")
    # From here on no Python code runs until the caller has taken its slot.
    memcpy(_id_buf, PyBytes_AS_STRING(fresh), 16 * _ID_BATCH)
    _id_pos = 0
    return 0


cdef inline int _id_take() except -1:
    """Reserve one 16-byte slot of the random batch; returns its index. Call with no Python
    code between this and the formatting of the slot."""
    global _id_pos
    cdef int pos
    if _id_pos >= _ID_BATCH:
        _id_refill()
    pos = _id_pos
    _id_pos = pos + 1
    return pos


cdef inline void _id_format(int pos, unsigned char* out) noexcept:
    """Write the 36-char version-4 UUID of slot ``pos`` at ``out``."""
    cdef const unsigned char* b = &_id_buf[pos * 16]
    cdef int i, j = 0
    cdef unsigned char c
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            out[j] = 45
            j += 1
        c = b[i]
        out[j] = <unsigned char>_HEX_DIGITS[c >> 4]
        out[j + 1] = <unsigned char>_HEX_DIGITS[c & 15]
        j += 2
    out[14] = 52  # '4': version 4
    out[19] = <unsigned char>_VARIANT[(b[8] >> 4) & 3]  # 10xx: RFC 4122 variant


def _reset_ids():
    """Drop the buffered random bytes (after fork, so parent and child never share ids)."""
    global _id_pos
    _id_pos = _ID_BATCH


def set_id_entropy(source):
    """Draw the random bytes of every id from ``source(n)`` (e.g. a seeded
    ``random.Random(seed).randbytes``, for a reproducible simulation), or from
    ``os.urandom`` again with None. Process-wide; buffered ids are dropped."""
    global _urandom
    _urandom = os.urandom if source is None else source
    _reset_ids()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_ids)


def new_id():
    """A random version-4 UUID string, from a batched ``os.urandom`` (much cheaper than uuid4)."""
    cdef object s = PyUnicode_New(36, 127)
    cdef int pos = _id_take()
    _id_format(pos, PyUnicode_1BYTE_DATA(s))
    return s


# -- encoding ------------------------------------------------------------------------------

cdef object _addr_json(object sender_addr):
    """The JSON string for a valid sender_addr (cached), or raise bad_addr."""
    cdef PyObject* item
    if PyUnicode_CheckExact(sender_addr):
        item = PyDict_GetItemWithError(_addr_cache, sender_addr)
        if item is not NULL:
            return <object>item
    else:
        raise _perr("bad_addr", "sender_addr must be a string")
    try:
        _parse_addr(sender_addr)
    except ValueError:
        raise _perr("bad_addr", f"invalid sender_addr {sender_addr[:64]!r}") from None
    try:
        encoded = _dumps(sender_addr)
    except TypeError:  # lone surrogates (possible in an IPv6 scope id): not encodable
        raise _perr("bad_addr", f"invalid sender_addr {sender_addr[:64]!r}") from None
    if len(_addr_cache) >= _ADDR_CACHE_MAX:
        _addr_cache.clear()
    _addr_cache[sender_addr] = encoded
    return encoded


cdef int _type_code(object type) except -1:
    cdef int overflow = 0
    cdef long long v
    if not PyLong_Check(type) or PyBool_Check(type):
        raise _perr("bad_type", "type must be an integer message-type code")
    v = _as_i64_ovf(type, &overflow)
    if overflow != 0 or v < 0 or v >= _N_TYPES:
        raise _perr("unknown_type", f"type code {int(type)}")
    return <int>v


cdef unsigned long long _check_u64(object value, str name) except? 0xFFFFFFFFFFFFFFFF:
    cdef unsigned long long v
    if not PyLong_CheckExact(value):
        if not PyLong_Check(value) or PyBool_Check(value):
            raise _perr("bad_type", f"{name} must be an integer")
        value = int(value)
    v = _as_u64(value)
    if PyErr_Occurred() is not NULL:
        PyErr_Clear()
        raise _perr("out_of_range", name)
    return v


cdef inline int _write_u64(unsigned long long v, char* buf) noexcept:
    """Decimal digits of v right-aligned in buf[0:20]; returns the start index."""
    cdef int i = 20
    if v == 0:
        buf[19] = 48
        return 19
    while v:
        i -= 1
        buf[i] = <char>(48 + v % 10)
        v //= 10
    return i


cdef inline char* _put(char* w, const char* src, Py_ssize_t n) noexcept:
    memcpy(w, src, n)
    return w + n


cdef bytes _encode(
    object type,
    object payload_json,
    object timestamp,
    object id,
    object sender_addr,
    object sequence_number,
    object requires_ack,
    object ack_for,
):
    cdef int code
    cdef unsigned long long ts, seqv = 0
    cdef bint has_seq, ack
    cdef object id_s = None, addr, ack_s = None, name
    cdef char ts_buf[20]
    cdef char seq_buf[20]
    cdef int ts_i, seq_i = 20
    cdef Py_ssize_t total, pj_len, name_len, addr_len
    cdef bytes out
    cdef char* w
    cdef int pos

    # Validation, in the decoder's precedence order.
    if id is not None:
        id_s = _normalize(id)
    code = _type_code(type)
    ts = _check_u64(timestamp, "timestamp")
    if requires_ack is True:
        ack = True
    elif requires_ack is False:
        ack = False
    else:
        raise _perr("bad_type", "requires_ack must be a boolean")
    if sender_addr is None:
        addr = None
    else:
        addr = _addr_json(sender_addr)
    has_seq = sequence_number is not None
    if has_seq:
        seqv = _check_u64(sequence_number, "sequence_number")
        if seqv > _U32:
            raise _perr("out_of_range", "sequence_number")
        seq_i = _write_u64(seqv, seq_buf)
    if ack_for is not None:
        ack_s = _normalize(ack_for)
    if not PyBytes_CheckExact(payload_json):
        payload_json = b"".join((payload_json,))  # any bytes-like object, like the pure twin

    # Size of the envelope, then one allocation and straight copies.
    ts_i = _write_u64(ts, ts_buf)
    name = <object>PyTuple_GET_ITEM(_TYPE_BYTES, code)
    name_len = PyBytes_GET_SIZE(name)
    pj_len = PyBytes_GET_SIZE(payload_json)
    addr_len = 4 if addr is None else PyBytes_GET_SIZE(addr)
    total = (
        7 + 36 + 18 + name_len + 14 + (20 - ts_i) + 11 + pj_len + 15 + addr_len + 19
        + ((20 - seq_i) if has_seq else 4)
        + (31 if ack else 32)
        + (38 if ack_s is not None else 4)
        + 1
    )
    if total > _MAX_SIZE:
        raise _perr("too_large", f"{total} bytes > {MAX_MESSAGE_SIZE}")
    out = PyBytes_FromStringAndSize(NULL, total)
    w = PyBytes_AS_STRING(out)
    w = _put(w, b'{"id":"', 7)
    if id_s is None:
        pos = _id_take()  # no Python code runs between this and the formatting
        _id_format(pos, <unsigned char*>w)
    else:
        memcpy(w, PyUnicode_1BYTE_DATA(id_s), 36)
    w += 36
    w = _put(w, b'","message_type":"', 18)
    w = _put(w, PyBytes_AS_STRING(name), name_len)
    w = _put(w, b'","timestamp":', 14)
    w = _put(w, ts_buf + ts_i, 20 - ts_i)
    w = _put(w, b',"payload":', 11)
    w = _put(w, PyBytes_AS_STRING(payload_json), pj_len)
    w = _put(w, b',"sender_addr":', 15)
    if addr is None:
        w = _put(w, b"null", 4)
    else:
        w = _put(w, PyBytes_AS_STRING(addr), addr_len)
    w = _put(w, b',"sequence_number":', 19)
    if has_seq:
        w = _put(w, seq_buf + seq_i, 20 - seq_i)
    else:
        w = _put(w, b"null", 4)
    if ack:
        w = _put(w, b',"requires_ack":true,"ack_for":', 31)
    else:
        w = _put(w, b',"requires_ack":false,"ack_for":', 32)
    if ack_s is None:
        w = _put(w, b"null", 4)
    else:
        w[0] = 34  # '"'
        memcpy(w + 1, PyUnicode_1BYTE_DATA(ack_s), 36)
        w[37] = 34
        w += 38
    w[0] = 125  # '}'
    return out


cdef object _dump(object payload):
    if payload is None:
        return b"null"
    try:
        return _dumps(payload, None, _SORT)
    except TypeError as exc:
        raise _perr("bad_type", f"payload is not JSON-serializable: {exc}") from None


def encode_raw(
    type,
    payload_json,
    timestamp,
    id=None,
    sender_addr=None,
    sequence_number=None,
    requires_ack=False,
    ack_for=None,
):
    """Encode an envelope around an already-serialized payload (compact JSON bytes).

    The envelope fields are validated like the decoder does (see the pure twin); ``id`` and
    ``ack_for`` are written in lowercase hyphenated form, ``id=None`` draws a new one."""
    return _encode(
        type, payload_json, timestamp, id, sender_addr, sequence_number, requires_ack, ack_for
    )


def encode(
    type,
    payload,
    timestamp,
    id=None,
    sender_addr=None,
    sequence_number=None,
    requires_ack=False,
    ack_for=None,
):
    """Encode one message as the Rust server would (envelope order fixed, payload keys sorted)."""
    return _encode(
        type, _dump(payload), timestamp, id, sender_addr, sequence_number, requires_ack, ack_for
    )


def dump_payload(payload):
    """Serialize a payload: compact JSON with object keys sorted (serde_json's Value order)."""
    return _dump(payload)


def encode_ack(ack_for, timestamp, sender_addr=None):
    """Fast path: an ``Ack`` for message id ``ack_for`` (null payload)."""
    return _encode(_ACK, b"null", timestamp, None, sender_addr, None, False, ack_for)


cdef bytes encode_ack_c(object ack_for, object timestamp, object sender_addr):
    """``encode_ack`` for other Cython modules (no Python call)."""
    return _encode(_ACK, b"null", timestamp, None, sender_addr, None, False, ack_for)


cdef bytes encode_bare_c(object type, object timestamp):
    """``encode_bare`` for other Cython modules (no Python call)."""
    return _encode(type, b"null", timestamp, None, None, None, False, None)


cdef bytes encode_reply_c(object type, object timestamp, object ack_for):
    """A null-payload message answering ``ack_for`` (a Pong naming its Ping), for Cython."""
    return _encode(type, b"null", timestamp, None, None, None, False, ack_for)


def encode_bare(type, timestamp):
    """Fast path: a message with a null payload and no extras (Ping, Pong, requests)."""
    return _encode(type, b"null", timestamp, None, None, None, False, None)
