# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled fragment frames and their bookkeeping: byte ranges, reassembly, sent packets.

Twin of :mod:`p2pfast._fragment_py` (same names, same behaviour, same return values, same
ProtocolError reasons; checked by the parametrized, property and parity tests in
tests/test_fragment.py). The frame layouts are described there and in docs/protocol.md.

How it is fast: frames are packed and unpacked byte by byte (big-endian) straight into and out
of ``bytes`` objects; ``RangeSet`` keeps its ranges in two C arrays searched by binary search;
``Reassembly`` compares overlaps with ``memcmp`` and copies with ``memcpy`` into the ``bytes``
object that ``take`` finally returns (no copy at the end: the object is private until then);
``SentLog`` keeps packets in a ring indexed by ``packet & mask`` (packet numbers are
consecutive) threaded by a doubly linked list of the packets still in flight, so a wide ACK
range walks only what is outstanding.

Differences from the pure twin, all outside what the protocol uses:

* Integers are C integers: ``RangeSet`` bounds must lie within +-(2**62 - 1) (OverflowError
  otherwise; the pure twin takes any int); ``SentLog`` packet numbers are below 2**62 in both
  twins; ACK range bounds may be any int in both (they are clipped). Encoders raise
  OverflowError for a field out of its wire range where the pure twin raises ``struct.error``;
  non-integers raise TypeError.
* ``SentLog`` stores send times as C doubles: an entry's ``sent_time`` is a float even if an
  int was given.
* Frames may be ``bytes`` (the fast path) or any object with a contiguous byte buffer.
* The classes do not pickle (the pure ones do); nothing in p2pfast pickles them.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove, memset

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1

from p2pfast._wire import MAX_MESSAGE_SIZE
from p2pfast.errors import ProtocolError

FRAME_MAGIC = 0xF5
KIND_FRAGMENT = 1
KIND_ACK = 2
KIND_PROBE = 3
KIND_PROBE_ACK = 4
KIND_CREDIT_REQUEST = 5

#: Bytes of a FRAGMENT frame before its data.
FRAGMENT_HEADER = 22
#: Packet-number ranges one ACK frame carries at most.
MAX_ACK_FRAME_RANGES = 32
#: Smallest PROBE frame (a probe smaller than this tests nothing).
PROBE_HEADER = 6
#: Largest message number (u32) on the wire.
MAX_U32 = 0xFFFFFFFF

#: ``Reassembly.insert`` results.
ADDED = 0
DUPLICATE = 1
MISMATCH = 2
TOO_FRAGMENTED = 3

cdef enum:
    _MAGIC = 0xF5
    _FRAGMENT_HEADER = 22
    _ACK_HEAD = 15
    _RANGE = 16
    _MAX_RANGES = 32
    _PROBE_HEADER = 6
    _PROBE_ACK = 10
    _CREDIT_REQUEST = 10
    _ADDED = 0
    _DUPLICATE = 1
    _MISMATCH = 2
    _TOO_FRAGMENTED = 3

cdef Py_ssize_t _MAX_MESSAGE = MAX_MESSAGE_SIZE
cdef int64_t _BOUND = (<int64_t>1 << 62) - 1   # RangeSet bounds: differences never overflow
cdef int64_t _PACKET_LIMIT = <int64_t>1 << 62
cdef int64_t _I64_MAX = 0x7FFFFFFFFFFFFFFF
cdef double _INF = float("inf")


# --------------------------------------------------------------------------- byte packing

cdef inline uint64_t _get64(const unsigned char* p) noexcept nogil:
    return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40)
            | (<uint64_t>p[3] << 32) | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16)
            | (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef inline uint32_t _get32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


cdef inline void _put64(unsigned char* p, uint64_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 56)
    p[1] = <unsigned char>(v >> 48)
    p[2] = <unsigned char>(v >> 40)
    p[3] = <unsigned char>(v >> 32)
    p[4] = <unsigned char>(v >> 24)
    p[5] = <unsigned char>(v >> 16)
    p[6] = <unsigned char>(v >> 8)
    p[7] = <unsigned char>v


cdef inline void _put32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v


cdef struct _Bytes:
    const unsigned char* data
    Py_ssize_t size
    bint held       # a Py_buffer was acquired and must be released


cdef inline int _open(object obj, _Bytes* view, Py_buffer* buf) except -1:
    """Point ``view`` at the bytes of ``obj`` (bytes directly, anything else by the buffer
    protocol: release with ``_close``)."""
    if type(obj) is bytes:
        view.data = <const unsigned char*>PyBytes_AS_STRING(obj)
        view.size = PyBytes_GET_SIZE(obj)
        view.held = False
        return 0
    PyObject_GetBuffer(obj, buf, PyBUF_SIMPLE)
    view.data = <const unsigned char*>buf.buf
    view.size = buf.len
    view.held = True
    return 0


cdef inline void _close(_Bytes* view, Py_buffer* buf) noexcept:
    if view.held:
        view.held = False
        PyBuffer_Release(buf)


cdef inline unsigned char* _bytes_data(object b) noexcept:
    return <unsigned char*>PyBytes_AS_STRING(b)


cdef inline int64_t _clamp64(object value) except? -1:
    """An int as int64, saturated at the int64 limits (ACK bounds are clipped anyway)."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow > 0:
        return _I64_MAX
    if overflow < 0:
        return -_I64_MAX - 1
    return v


cdef inline int64_t _bound(int64_t x) except? -1:
    if x > _BOUND or x < -_BOUND:
        raise OverflowError("RangeSet bounds must lie within +-(2**62 - 1)")
    return x


# --------------------------------------------------------------------------- frames

def encode_fragment(uint64_t packet, uint32_t message, uint32_t total, uint32_t offset,
                    data, Py_ssize_t start, Py_ssize_t end):
    """A FRAGMENT frame carrying ``data[start:end]`` (the message's bytes ``offset`` onwards)."""
    cdef _Bytes view
    cdef Py_buffer buf
    cdef Py_ssize_t n
    cdef unsigned char* out
    _open(data, &view, &buf)
    try:
        n = view.size
        # data[start:end], with Python's slice rules
        if start < 0:
            start += n
            if start < 0:
                start = 0
        elif start > n:
            start = n
        if end < 0:
            end += n
            if end < 0:
                end = 0
        elif end > n:
            end = n
        if end < start:
            end = start
        frame = PyBytes_FromStringAndSize(NULL, _FRAGMENT_HEADER + end - start)
        out = _bytes_data(frame)
        out[0] = _MAGIC
        out[1] = 1
        _put64(out + 2, packet)
        _put32(out + 10, message)
        _put32(out + 14, total)
        _put32(out + 18, offset)
        memcpy(out + _FRAGMENT_HEADER, view.data + start, <size_t>(end - start))
        return frame
    finally:
        _close(&view, &buf)


cdef bytes fragment_frame(uint64_t packet, uint32_t message, uint32_t total, uint32_t offset,
                          bytes data, Py_ssize_t start, Py_ssize_t end):
    """``encode_fragment`` for C callers: ``0 <= start <= end <= len(data)`` is theirs to
    ensure."""
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, _FRAGMENT_HEADER + end - start)
    cdef unsigned char* out = _bytes_data(frame)
    out[0] = _MAGIC
    out[1] = 1
    _put64(out + 2, packet)
    _put32(out + 10, message)
    _put32(out + 14, total)
    _put32(out + 18, offset)
    memcpy(out + _FRAGMENT_HEADER, PyBytes_AS_STRING(data) + start, <size_t>(end - start))
    return frame


cdef int fragment_header(const unsigned char* frame, Py_ssize_t size, uint64_t* packet,
                         uint32_t* message, uint32_t* total, uint32_t* offset) except -1:
    """``parse_fragment`` for C callers: the fields of the ``size``-byte FRAGMENT frame at
    ``frame``, checked as ``parse_fragment`` checks them (same errors)."""
    if size <= _FRAGMENT_HEADER:
        raise ProtocolError("bad_fragment", "fragment without data")
    packet[0] = _get64(frame + 2)
    message[0] = _get32(frame + 10)
    total[0] = _get32(frame + 14)
    offset[0] = _get32(frame + 18)
    if total[0] > <uint64_t>_MAX_MESSAGE:
        raise ProtocolError(
            "too_large", f"fragment of a {total[0]}-byte message > {MAX_MESSAGE_SIZE}"
        )
    if <uint64_t>offset[0] + <uint64_t>(size - _FRAGMENT_HEADER) > total[0]:
        raise ProtocolError("bad_fragment", "fragment beyond its message's total")
    if message[0] == 0:
        raise ProtocolError("bad_fragment", "message number 0")
    return 0


def parse_fragment(frame):
    """``(packet, message, total, offset)`` of a FRAGMENT frame whose data is
    ``frame[FRAGMENT_HEADER:]``; ProtocolError ``bad_fragment`` if the fields are inconsistent
    (no data, a total over 1 MiB or an end beyond the total)."""
    cdef _Bytes view
    cdef Py_buffer buf
    cdef uint64_t packet
    cdef uint32_t message, total, offset
    cdef Py_ssize_t n
    _open(frame, &view, &buf)
    try:
        n = view.size
        if n <= _FRAGMENT_HEADER:
            raise ProtocolError("bad_fragment", "fragment without data")
        packet = _get64(view.data + 2)
        message = _get32(view.data + 10)
        total = _get32(view.data + 14)
        offset = _get32(view.data + 18)
    finally:
        _close(&view, &buf)
    if total > <uint64_t>_MAX_MESSAGE:
        raise ProtocolError(
            "too_large", f"fragment of a {total}-byte message > {MAX_MESSAGE_SIZE}"
        )
    if <uint64_t>offset + <uint64_t>(n - _FRAGMENT_HEADER) > total:
        raise ProtocolError("bad_fragment", "fragment beyond its message's total")
    if message == 0:
        raise ProtocolError("bad_fragment", "message number 0")
    return packet, message, total, offset


def encode_ack(uint64_t credit, delay_us, ranges):
    """An ACK frame: ``ranges`` of received packet numbers (inclusive, newest first, at most
    ``MAX_ACK_FRAME_RANGES`` are sent) and the receiver's cumulative flow-control ``credit``."""
    cdef uint32_t delay
    cdef Py_ssize_t count, i
    cdef uint64_t first, last
    cdef unsigned char* out
    if delay_us > MAX_U32:
        delay = 0xFFFFFFFF
    else:
        delay = delay_us
    # a private copy (as the pure twin slices): nothing run while unpacking can resize it
    ranges = list(ranges[:_MAX_RANGES])
    count = PyList_GET_SIZE(ranges)
    frame = PyBytes_FromStringAndSize(NULL, _ACK_HEAD + count * _RANGE)
    out = _bytes_data(frame)
    out[0] = _MAGIC
    out[1] = 2
    _put64(out + 2, credit)
    _put32(out + 10, delay)
    out[14] = <unsigned char>count
    for i in range(count):
        first, last = (<list>ranges)[i]
        _put64(out + _ACK_HEAD + i * _RANGE, first)
        _put64(out + _ACK_HEAD + i * _RANGE + 8, last)
    return frame


def parse_ack(frame):
    """``(credit, delay_us, ranges)`` of an ACK frame; ProtocolError ``bad_ack`` if its length
    does not match its range count or a range is reversed."""
    cdef _Bytes view
    cdef Py_buffer buf
    cdef Py_ssize_t count, i
    cdef uint64_t first, last
    cdef const unsigned char* at
    cdef list ranges = []
    _open(frame, &view, &buf)
    try:
        if view.size < _ACK_HEAD:
            raise ProtocolError("bad_ack", "short ACK frame")
        count = view.data[14]
        if view.size != _ACK_HEAD + count * _RANGE or count > _MAX_RANGES:
            raise ProtocolError("bad_ack", "ACK frame length does not match its range count")
        credit = _get64(view.data + 2)
        delay_us = _get32(view.data + 10)
        at = view.data + _ACK_HEAD
        for i in range(count):
            first = _get64(at)
            last = _get64(at + 8)
            if first > last:
                raise ProtocolError("bad_ack", "reversed ACK range")
            ranges.append((first, last))
            at += _RANGE
    finally:
        _close(&view, &buf)
    return credit, delay_us, ranges


def encode_probe(uint32_t probe, Py_ssize_t size):
    """A PROBE frame padded to ``size`` bytes (zeros: they compress on nothing and mean nothing)."""
    cdef Py_ssize_t n = size if size > _PROBE_HEADER else _PROBE_HEADER
    frame = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char* out = _bytes_data(frame)
    out[0] = _MAGIC
    out[1] = 3
    _put32(out + 2, probe)
    memset(out + _PROBE_HEADER, 0, <size_t>(n - _PROBE_HEADER))
    return frame


def parse_probe(frame):
    cdef _Bytes view
    cdef Py_buffer buf
    cdef uint32_t probe
    _open(frame, &view, &buf)
    try:
        if view.size < _PROBE_HEADER:
            raise ProtocolError("bad_probe", "short PROBE frame")
        probe = _get32(view.data + 2)
    finally:
        _close(&view, &buf)
    return probe


def encode_probe_ack(uint32_t probe, uint32_t size):
    frame = PyBytes_FromStringAndSize(NULL, _PROBE_ACK)
    cdef unsigned char* out = _bytes_data(frame)
    out[0] = _MAGIC
    out[1] = 4
    _put32(out + 2, probe)
    _put32(out + 6, size)
    return frame


def parse_probe_ack(frame):
    cdef _Bytes view
    cdef Py_buffer buf
    cdef uint32_t probe, size
    _open(frame, &view, &buf)
    try:
        if view.size != _PROBE_ACK:
            raise ProtocolError("bad_probe", "PROBE_ACK frame of the wrong length")
        probe = _get32(view.data + 2)
        size = _get32(view.data + 6)
    finally:
        _close(&view, &buf)
    return probe, size


def encode_credit_request(uint64_t credit):
    frame = PyBytes_FromStringAndSize(NULL, _CREDIT_REQUEST)
    cdef unsigned char* out = _bytes_data(frame)
    out[0] = _MAGIC
    out[1] = 5
    _put64(out + 2, credit)
    return frame


def parse_credit_request(frame):
    cdef _Bytes view
    cdef Py_buffer buf
    cdef uint64_t credit
    _open(frame, &view, &buf)
    try:
        if view.size != _CREDIT_REQUEST:
            raise ProtocolError("bad_credit", "CREDIT_REQUEST frame of the wrong length")
        credit = _get64(view.data + 2)
    finally:
        _close(&view, &buf)
    return credit


# --------------------------------------------------------------------------- RangeSet

cdef class RangeSet:
    """Disjoint, non-touching half-open byte ranges ``[start, end)``, kept merged.

    Used for the bytes a receiver holds, the bytes a sender has had acknowledged and the bytes
    it still has to (re)send. In-order use keeps a single range, so each operation is O(1)
    then; ``count`` lets callers bound the fragmentation a peer can cause."""

    def __cinit__(self):
        self._cap = 4
        self._n = 0
        self.covered = 0
        self._starts = <int64_t*>PyMem_Malloc(<size_t>self._cap * sizeof(int64_t))
        self._ends = <int64_t*>PyMem_Malloc(<size_t>self._cap * sizeof(int64_t))
        if self._starts == NULL or self._ends == NULL:
            raise MemoryError()

    def __init__(self):
        self._n = 0
        self.covered = 0

    def __dealloc__(self):
        PyMem_Free(self._starts)
        PyMem_Free(self._ends)

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self._cap * 2
        cdef int64_t* starts = <int64_t*>PyMem_Realloc(self._starts, <size_t>cap * sizeof(int64_t))
        if starts == NULL:
            raise MemoryError()
        self._starts = starts
        cdef int64_t* ends = <int64_t*>PyMem_Realloc(self._ends, <size_t>cap * sizeof(int64_t))
        if ends == NULL:
            raise MemoryError()
        self._ends = ends
        self._cap = cap
        return 0

    cdef Py_ssize_t _lower_end(self, int64_t x) noexcept:
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._ends[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef Py_ssize_t _upper_end(self, int64_t x) noexcept:
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._ends[mid] <= x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef Py_ssize_t _upper_start(self, int64_t x) noexcept:
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._starts[mid] <= x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef int64_t _add(self, int64_t start, int64_t end) except -1:
        cdef Py_ssize_t n = self._n, lo, hi, k
        cdef int64_t had, new_start, new_end, added
        cdef int64_t* starts = self._starts
        cdef int64_t* ends = self._ends
        if end <= start:
            return 0
        if n == 0 or start > ends[n - 1]:  # the common case: beyond everything
            if n == self._cap:
                self._grow()
            self._starts[n] = start
            self._ends[n] = end
            self._n = n + 1
            self.covered += end - start
            return end - start
        if start == ends[n - 1]:  # in order: extends the last range
            ends[n - 1] = end
            self.covered += end - start
            return end - start
        lo = self._lower_end(start)
        hi = self._upper_start(end)
        if lo == hi:
            if n == self._cap:
                self._grow()
                starts = self._starts
                ends = self._ends
            memmove(starts + lo + 1, starts + lo, <size_t>(n - lo) * sizeof(int64_t))
            memmove(ends + lo + 1, ends + lo, <size_t>(n - lo) * sizeof(int64_t))
            starts[lo] = start
            ends[lo] = end
            self._n = n + 1
            self.covered += end - start
            return end - start
        had = 0
        for k in range(lo, hi):
            had += ends[k] - starts[k]
        new_start = start if start < starts[lo] else starts[lo]
        new_end = end if end > ends[hi - 1] else ends[hi - 1]
        starts[lo] = new_start
        ends[lo] = new_end
        if hi - lo > 1:
            memmove(starts + lo + 1, starts + hi, <size_t>(n - hi) * sizeof(int64_t))
            memmove(ends + lo + 1, ends + hi, <size_t>(n - hi) * sizeof(int64_t))
            self._n = n - (hi - lo - 1)
        added = (new_end - new_start) - had
        self.covered += added
        return added

    cdef bint _opens_range(self, int64_t start, int64_t end) noexcept:
        cdef Py_ssize_t lo = self._lower_end(start)
        return lo == self._n or self._starts[lo] > end

    @property
    def count(self):
        """Number of separate ranges."""
        return self._n

    def ranges(self):
        cdef Py_ssize_t k
        return [(self._starts[k], self._ends[k]) for k in range(self._n)]

    def add(self, int64_t start, int64_t end):
        """Cover ``[start, end)``; return how many bytes were not covered before."""
        return self._add(_bound(start), _bound(end))

    def overlaps(self, int64_t start, int64_t end):
        """The parts of ``[start, end)`` already covered (none for an empty ``[start, end)``)."""
        cdef list out = []
        cdef Py_ssize_t k
        if end <= start:
            return out
        k = self._upper_end(start)
        while k < self._n and self._starts[k] < end:
            out.append((start if start > self._starts[k] else self._starts[k],
                        end if end < self._ends[k] else self._ends[k]))
            k += 1
        return out

    def pop_front(self, int64_t limit):
        """Remove and return up to ``limit`` bytes from the start of the first range
        (``(0, 0)`` when empty); ``limit`` must not be negative."""
        cdef int64_t start, end
        start = self._pop_front(limit, &end)
        return start, end

    cdef int64_t _pop_front(self, int64_t limit, int64_t* end) except? -1:
        """``pop_front`` for C callers: returns the start, stores the end."""
        cdef int64_t start
        if limit < 0:
            raise ValueError("limit must not be negative")
        if self._n == 0:
            end[0] = 0
            return 0
        start = self._starts[0]
        if limit >= self._ends[0] - start:
            end[0] = self._ends[0]
            self._n -= 1
            memmove(self._starts, self._starts + 1, <size_t>self._n * sizeof(int64_t))
            memmove(self._ends, self._ends + 1, <size_t>self._n * sizeof(int64_t))
        else:
            end[0] = start + limit
            self._starts[0] = end[0]
        self.covered -= end[0] - start
        return start

    def clear(self):
        self._n = 0
        self.covered = 0


# --------------------------------------------------------------------------- Reassembly

cdef class Reassembly:
    """One incoming message: a buffer of its declared ``total`` bytes (committed when the first
    fragment is accepted, after the total was checked) and the ranges received so far."""

    def __cinit__(self, *args, **kwargs):
        self._received = RangeSet()  # never None, even without __init__
        self._data = NULL

    def __init__(self, total, max_ranges=256):
        if not 0 < total <= MAX_MESSAGE_SIZE:
            raise ValueError(f"total must be 1..{MAX_MESSAGE_SIZE}")
        self.total = total
        #: Separate received ranges allowed at once (a peer sending scattered pieces cannot
        #: make bookkeeping grow without bound).
        self.max_ranges = max_ranges
        # Filled in place and handed out by take(): nobody else sees it before then. Bytes
        # not received are zeroed at take().
        self._buffer = PyBytes_FromStringAndSize(NULL, self.total)
        self._data = _bytes_data(self._buffer)
        self._received = RangeSet()

    @property
    def received(self):
        return self._received.covered

    @property
    def complete(self):
        return self._received.covered == self.total

    def insert(self, Py_ssize_t offset, frame, Py_ssize_t at):
        """Copy ``frame[at:]`` to ``offset``: ``ADDED`` (something new), ``DUPLICATE`` (all seen
        before, identical), ``MISMATCH`` (it differs from bytes already received: refused) or
        ``TOO_FRAGMENTED`` (it would open one range too many: refused, to be resent later).
        Nothing new (empty data) is ``DUPLICATE``; ValueError if ``frame[at:]`` does not fit
        in the message at ``offset`` (parse_fragment has checked that for wire input)."""
        cdef _Bytes view
        cdef Py_buffer buf
        if self._data == NULL:
            raise ValueError("message already taken")
        _open(frame, &view, &buf)
        try:
            if offset < 0 or not 0 <= at <= view.size or view.size - at > self.total - offset:
                raise ValueError("fragment outside its message")
            return self._insert(offset, view.data + at, view.size - at)
        finally:
            _close(&view, &buf)

    cdef int _insert(self, Py_ssize_t offset, const unsigned char* src,
                     Py_ssize_t length) except -1:
        """``insert`` for C callers, of the ``length`` bytes at ``src``: the buffer is not
        taken and they fit at ``offset`` (the caller checked, as ``fragment_header`` does)."""
        cdef Py_ssize_t end, k, j
        cdef int64_t first, last, covered
        cdef RangeSet received = self._received
        if length == 0:
            return _DUPLICATE
        end = offset + length
        k = received._upper_end(offset)
        j = k
        covered = 0
        while j < received._n and received._starts[j] < end:
            first = received._starts[j]
            if first < offset:
                first = offset
            last = received._ends[j]
            if last > end:
                last = end
            if memcmp(self._data + first, src + (first - offset), <size_t>(last - first)):
                return _MISMATCH
            covered += last - first
            j += 1
        if j > k:
            if covered == length:
                return _DUPLICATE
        elif received._n >= self.max_ranges and received._opens_range(offset, end):
            return _TOO_FRAGMENTED
        memcpy(self._data + offset, src, <size_t>length)
        received._add(offset, end)
        return _ADDED

    def take(self):
        """The whole message (once complete; bytes not received are zeros); the buffer is
        released, so this is the reassembly's last use (ValueError after)."""
        cdef RangeSet received = self._received
        cdef Py_ssize_t k
        cdef int64_t at = 0
        if self._data == NULL:
            raise ValueError("message already taken")
        for k in range(received._n):
            memset(self._data + at, 0, <size_t>(received._starts[k] - at))
            at = received._ends[k]
        memset(self._data + at, 0, <size_t>(self.total - at))
        data = self._buffer
        self._buffer = None
        self._data = NULL
        return data


# --------------------------------------------------------------------------- SentLog

cdef class SentLog:
    """Fragments in flight, by packet number (each transmission gets a new number, as in QUIC,
    so an acknowledgement is never ambiguous).

    ``on_ack`` and ``detect_lost`` do work proportional to the packets they settle, not to a
    peer's claims: ranges are clipped to the numbers actually outstanding."""

    def __cinit__(self, *args, **kwargs):
        cdef Py_ssize_t cap = 64
        self._times = <double*>PyMem_Malloc(<size_t>cap * sizeof(double))
        self._next = <int64_t*>PyMem_Malloc(<size_t>cap * sizeof(int64_t))
        self._prev = <int64_t*>PyMem_Malloc(<size_t>cap * sizeof(int64_t))
        if self._times == NULL or self._next == NULL or self._prev == NULL:
            raise MemoryError()
        self._entries = [None] * cap
        self._mask = cap - 1
        self._head = -1
        self._tail = -1
        self._count = 0
        self._front = 0
        self._next_packet = 0
        self.largest_acked = -1
        self.work = 0

    def __init__(self, first_packet=0):
        if not 0 <= first_packet < _PACKET_LIMIT:
            raise ValueError("first_packet must be 0..2**62-1")
        self.clear()  # (a second __init__ starts afresh, as the pure twin's does)
        self._next_packet = first_packet
        self._front = first_packet
        #: Largest packet number acknowledged so far (-1 before the first).
        self.largest_acked = -1
        #: Loop iterations spent (tests bound it per datagram).
        self.work = 0

    def __dealloc__(self):
        PyMem_Free(self._times)
        PyMem_Free(self._next)
        PyMem_Free(self._prev)

    def __len__(self):
        return self._count

    @property
    def next_packet(self):
        """The number the next fragment sent gets (read-only: numbers are never reused)."""
        return self._next_packet

    cdef int _grow(self, int64_t packet) except -1:
        """Make room for ``packet``: the ring must span the oldest packet in flight to it."""
        cdef int64_t cap = self._mask + 1
        cdef int64_t need = packet - self._head + 1
        cdef int64_t q, slot, new_mask
        while cap < need:
            cap *= 2
        new_mask = cap - 1
        cdef double* times = <double*>PyMem_Malloc(<size_t>cap * sizeof(double))
        cdef int64_t* nxt = <int64_t*>PyMem_Malloc(<size_t>cap * sizeof(int64_t))
        cdef int64_t* prv = <int64_t*>PyMem_Malloc(<size_t>cap * sizeof(int64_t))
        if times == NULL or nxt == NULL or prv == NULL:
            PyMem_Free(times)
            PyMem_Free(nxt)
            PyMem_Free(prv)
            raise MemoryError()
        cdef list entries = [None] * cap
        q = self._head
        while q >= 0:
            slot = q & self._mask
            entries[q & new_mask] = self._entries[slot]
            times[q & new_mask] = self._times[slot]
            nxt[q & new_mask] = self._next[slot]
            prv[q & new_mask] = self._prev[slot]
            q = self._next[slot]
        PyMem_Free(self._times)
        PyMem_Free(self._next)
        PyMem_Free(self._prev)
        self._times = times
        self._next = nxt
        self._prev = prv
        self._entries = entries
        self._mask = new_mask
        return 0

    cdef bint _present(self, int64_t packet) noexcept:
        return (self._count != 0 and self._head <= packet < self._next_packet
                and self._entries[packet & self._mask] is not None)

    cdef object _pop(self, int64_t packet):
        """Remove ``packet`` (known to be in flight) and return its entry."""
        cdef int64_t slot = packet & self._mask
        cdef int64_t p = self._prev[slot]
        cdef int64_t n = self._next[slot]
        entry = self._entries[slot]
        self._entries[slot] = None
        if p >= 0:
            self._next[p & self._mask] = n
        else:
            self._head = n
        if n >= 0:
            self._prev[n & self._mask] = p
        else:
            self._tail = p
        self._count -= 1
        return entry

    def sent(self, message, start, end, size, double now):
        """Record a fragment sent now; return its packet number."""
        return self._record((message, start, end, size, now), now)

    cdef int64_t _sent(self, object message, int64_t start, int64_t end, int64_t size,
                       double now) except -1:
        """``sent`` for C callers."""
        return self._record((message, start, end, size, now), now)

    cdef int64_t _record(self, tuple entry, double now) except -1:
        cdef int64_t packet = self._next_packet
        cdef int64_t slot
        if packet >= _PACKET_LIMIT:
            raise OverflowError("packet numbers exhausted")
        if self._count and packet - self._head > self._mask:
            self._grow(packet)
        slot = packet & self._mask
        self._entries[slot] = entry
        self._times[slot] = now
        self._prev[slot] = self._tail
        self._next[slot] = -1
        if self._tail >= 0:
            self._next[self._tail & self._mask] = packet
        else:
            self._head = packet
        self._tail = packet
        self._count += 1
        self._next_packet = packet + 1
        return packet

    def on_ack(self, ranges):
        """Settle the packets ``ranges`` acknowledges; return them (``(message, start, end,
        size, sent_time)``) and the send time of the largest newly acknowledged packet if it is
        the largest ever acknowledged (-1.0 otherwise: no RTT sample)."""
        cdef list acked = []
        cdef int64_t oldest, newest, lo, hi, q, nq
        sample = -1.0
        if self._front == self._next_packet:  # nothing sent since the log last emptied
            return acked, sample
        oldest = self._front
        newest = self._next_packet - 1
        for item in ranges:
            first, last = item
            lo = _clamp64(first)
            hi = _clamp64(last)
            if lo < oldest:
                lo = oldest
            if hi > newest:
                hi = newest
            if lo > hi:
                continue
            if hi - lo + 1 > self._count:  # a wide claim: walk what is outstanding instead
                self.work += <unsigned long long>self._count
                q = self._head
                while 0 <= q <= hi:
                    nq = self._next[q & self._mask]
                    if q >= lo:
                        entry = self._pop(q)
                        acked.append(entry)
                        if q > self.largest_acked:
                            self.largest_acked = q
                            sample = (<tuple>entry)[4]
                    q = nq
            else:
                self.work += <unsigned long long>(hi - lo + 1)
                q = lo
                while q <= hi:
                    if self._present(q):
                        entry = self._pop(q)
                        acked.append(entry)
                        if q > self.largest_acked:
                            self.largest_acked = q
                            sample = (<tuple>entry)[4]
                    q += 1
        self._front = self._head if self._count else self._next_packet
        return acked, sample

    def detect_lost(self, double now, double loss_delay, int64_t threshold):
        """RFC 9002 §6.1: packets below the largest acknowledged that are ``threshold`` numbers
        older or were sent ``loss_delay`` ago are lost; return them and the time at which the
        oldest remaining candidate will be (inf if none)."""
        cdef list lost = []
        cdef int64_t largest = self.largest_acked
        cdef int64_t packet
        cdef double sent_time
        while self._front < self._next_packet:
            packet = self._front
            if not self._present(packet):
                self._front = self._head if self._count else self._next_packet
                continue
            if packet >= largest:
                return lost, _INF
            sent_time = self._times[packet & self._mask]
            # (sent + delay <= now, exactly the deadline returned below: no timer can fire
            # at a time this test still finds early)
            if threshold <= largest - packet or sent_time + loss_delay <= now:
                self._front = packet + 1
                lost.append(self._pop(packet))
                self.work += 1
                continue
            return lost, sent_time + loss_delay
        return lost, _INF

    def oldest(self):
        """The oldest packet in flight."""
        if self._count == 0:
            self._front = self._next_packet
            return None
        self._front = self._head
        return self._entries[self._head & self._mask]

    def pop_oldest(self):
        entry = self.oldest()
        if entry is not None:
            self._pop(self._front)
            self._front += 1
        return entry

    def clear(self):
        """Forget everything in flight; return it."""
        cdef list entries = []
        cdef int64_t q = self._head, slot
        while q >= 0:
            slot = q & self._mask
            entries.append(self._entries[slot])
            self._entries[slot] = None
            q = self._next[slot]
        self._head = -1
        self._tail = -1
        self._count = 0
        self._front = self._next_packet
        return entries
