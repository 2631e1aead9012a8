# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled reliability windows: receive-side duplicate filter and send-side retransmit window.

Twin of :mod:`p2pfast._window_py` (same names, same behaviour, same return values, same
exceptions, bit-identical RTO arithmetic; checked by the parametrized tests). Neither class reads
a clock: every time-dependent call takes ``now`` (seconds, any monotonic origin).

Differences from the pure twin, all outside what the protocol uses (u32 sequence numbers,
float clocks):

* ``DuplicateFilter`` keeps sequence numbers as unsigned 64-bit C integers: ``check`` raises
  ``OverflowError`` for a number >= 2**64 (the pure twin accepts any size); a negative number
  raises ``ValueError`` in both; ``contains`` answers ``False`` for anything outside
  0..2**64-1 in both. Non-integers raise ``TypeError`` (the pure twin happens to accept floats).
* ``SendWindow`` stores times and RTO values as C doubles: ``now``, ``rto_*`` and
  ``granularity`` may be ints but are read back as floats; ``capacity`` and ``max_retries`` must
  be ints. Sequence numbers, message ids and datagrams are kept as the objects given.
* Both classes pickle (explicit ``__reduce__``); ``copy.copy`` of a compiled window is an
  independent copy, where the pure twin's shallow copy would share its dicts.
"""

cimport cython
from cpython.dict cimport PyDict_Size
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memset

cdef extern from "Python.h":
    PyObject* PyDict_SetDefault(object, object, object) except NULL
    Py_ssize_t PyList_GET_SIZE(object)
    bint PyLong_Check(object)
    object PyNumber_Index(object)

from libc.math cimport ldexp

from bisect import bisect_right
from heapq import heappop, heappush

from p2pfast.errors import WindowFull

cdef extern from *:
    """
    #if defined(_MSC_VER) && !defined(__clang__)
    #include <intrin.h>
    #endif

    /* Index of the lowest set bit of a non-zero word. */
    static inline int p2p_ctz64(uint64_t x) {
    #if defined(__GNUC__) || defined(__clang__)
        return __builtin_ctzll(x);
    #elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_ARM64))
        unsigned long i;
        _BitScanForward64(&i, x);
        return (int)i;
    #else
        int n = 0;
        while (!(x & 1)) { x >>= 1; n++; }
        return n;
    #endif
    }

    /* wa*a + wb*b with each product rounded to double on its own, exactly as Python evaluates
       it: the volatile stores stop the compiler from fusing a product and the sum into one FMA
       (GCC/Clang do that by default on arm64), which would change the last bit of the RTO. */
    static double p2p_wsum(double wa, double a, double wb, double b) {
        volatile double x = wa * a;
        volatile double y = wb * b;
        return x + y;
    }
    """
    int p2p_ctz64(uint64_t x) noexcept nogil
    double p2p_wsum(double wa, double a, double wb, double b) noexcept nogil


#: ``DuplicateFilter.check`` results.
NEW = 0
DUPLICATE = 1
TOO_OLD = 2

cdef enum:
    _NEW = 0
    _DUPLICATE = 1
    _TOO_OLD = 2

cdef double _INF = float("inf")
cdef uint64_t _ONE = 1


cdef class DuplicateFilter:
    """Sliding-window duplicate detection over sequence numbers (RFC 4303 §3.4.3 style).

    Remembers the last ``width`` numbers up to the highest seen, in fixed memory. A number
    above the highest slides the window (a jump of ``width`` or more clears it); one that has
    fallen out of the window is ``TOO_OLD`` (it may or may not be a duplicate, so it must not be
    delivered).

    The window is a ring bitmap of ``width`` bits in ``width // 64`` machine words, bit
    ``seq & (width - 1)`` for ``seq``; sliding clears the bits of the numbers that left it.
    """

    def __cinit__(self, *args, **kwargs):
        self._words = NULL
        self._alloc(1024)  # so the C paths never see NULL, even before/without __init__

    def __init__(self, width=1024):
        if width < 64 or width > 1 << 20 or width & (width - 1):
            raise ValueError("width must be a power of two between 64 and 1048576")
        self._alloc(width)

    def __dealloc__(self):
        PyMem_Free(self._words)
        self._words = NULL

    cdef int _alloc(self, Py_ssize_t width) except -1:
        cdef Py_ssize_t nwords = width >> 6
        cdef uint64_t* words
        if self._words == NULL or self._nwords != nwords:
            words = <uint64_t*>PyMem_Calloc(<size_t>nwords, sizeof(uint64_t))
            if words == NULL:
                raise MemoryError()
            PyMem_Free(self._words)
            self._words = words
        else:
            memset(self._words, 0, <size_t>nwords * sizeof(uint64_t))
        self.width = width
        self._nwords = nwords
        self._mask = <uint64_t>width - 1
        self._highest = 0
        self._lowest = 0
        self._empty = True
        return 0

    def __reduce__(self):
        # Picklable/copyable like the pure twin (the bitmap is a C array, so not automatic);
        # the words travel as Python ints, so a pickle is portable across byte orders.
        cdef Py_ssize_t i
        words = tuple([self._words[i] for i in range(self._nwords)])
        return _restore_filter, (self.width, self.highest, self._lowest, words)

    @property
    def highest(self):
        """Highest sequence number accepted so far, -1 before the first."""
        if self._empty:
            return -1
        return self._highest

    cdef int check_seq(self, uint64_t seq) noexcept:
        """C-level :meth:`check` for a number already known to be in 0..2**64-1."""
        cdef uint64_t h = self._highest
        cdef uint64_t mask = self._mask
        cdef uint64_t* words = self._words
        cdef uint64_t pos, n, k, bit, shift
        if self._empty:
            self._empty = False
            self._highest = seq
            self._lowest = seq
            pos = seq & mask
            words[pos >> 6] |= _ONE << (pos & 63)
            return _NEW
        if seq > h:
            shift = seq - h
            if shift >= <uint64_t>self.width:
                memset(words, 0, <size_t>self._nwords * sizeof(uint64_t))
            elif shift > 1:
                # Forget the numbers h+1-width .. seq-1-width: clear ring slots h+1 .. seq-1
                # (slot seq is overwritten below).
                pos = (h + 1) & mask
                n = shift - 1
                while n:
                    bit = pos & 63
                    k = 64 - bit
                    if k > n:
                        k = n
                    if k == 64:
                        words[pos >> 6] = 0
                    else:
                        words[pos >> 6] &= ~(((_ONE << k) - 1) << bit)
                    pos = (pos + k) & mask
                    n -= k
            # Slot seq held seq-width, which just left the window: setting it is all it needs.
            pos = seq & mask
            words[pos >> 6] |= _ONE << (pos & 63)
            self._highest = seq
            return _NEW
        if h - seq >= <uint64_t>self.width:
            return _TOO_OLD
        pos = seq & mask
        bit = _ONE << (pos & 63)
        if words[pos >> 6] & bit:
            return _DUPLICATE
        words[pos >> 6] |= bit
        if seq < self._lowest:
            self._lowest = seq
        return _NEW

    cdef bint contains_seq(self, uint64_t seq) noexcept:
        """C-level :meth:`contains`."""
        cdef uint64_t pos
        if self._empty or seq > self._highest or self._highest - seq >= <uint64_t>self.width:
            return False
        pos = seq & self._mask
        return (self._words[pos >> 6] >> (pos & 63)) & 1

    def check(self, seq):
        """Classify ``seq`` and record it: ``NEW`` (deliver), ``DUPLICATE`` or ``TOO_OLD`` (drop).

        Raises ``ValueError`` for a negative number, ``OverflowError`` for one >= 2**64.
        """
        cdef uint64_t s
        if not PyLong_Check(seq):
            seq = PyNumber_Index(seq)  # TypeError for floats, strings, None
        try:
            s = seq
        except OverflowError:
            if seq < 0:
                raise ValueError("sequence numbers are non-negative") from None
            raise
        return self.check_seq(s)

    def contains(self, seq):
        """True when ``seq`` is inside the window and was seen (does not record anything)."""
        cdef uint64_t s
        if not PyLong_Check(seq):
            seq = PyNumber_Index(seq)
        try:
            s = seq
        except OverflowError:  # negative or >= 2**64: never inside the window
            return False
        return self.contains_seq(s)

    def discard(self, seq):
        """Forget that ``seq`` was seen (a message taken back before it was acknowledged, so
        that its retransmission counts as new). Numbers outside the window are ignored."""
        cdef uint64_t s, pos
        if not PyLong_Check(seq):
            seq = PyNumber_Index(seq)
        try:
            s = seq
        except OverflowError:
            return
        if self._empty or s > self._highest or self._highest - s >= <uint64_t>self.width:
            return
        pos = s & self._mask
        self._words[pos >> 6] &= ~(_ONE << (pos & 63))

    def ranges(self, Py_ssize_t limit=64):
        """The numbers seen inside the window as ``[lo, hi]`` runs, newest first, at most
        ``limit`` of them: what a coalesced Ack repeats so that one lost Ack costs nothing."""
        cdef list out = []
        cdef uint64_t h, seq, floor, pos
        cdef uint64_t hi = 0
        cdef uint64_t mask = self._mask
        cdef uint64_t* words = self._words
        cdef bint inside = False
        if self._empty or limit <= 0:
            return out
        h = self._highest
        floor = self._lowest
        if h >= <uint64_t>self.width - 1 and h - (<uint64_t>self.width - 1) > floor:
            floor = h - (<uint64_t>self.width - 1)
        seq = h
        while True:
            pos = seq & mask
            if words[pos >> 6] & (_ONE << (pos & 63)):
                if not inside:
                    inside = True
                    hi = seq
            elif inside:
                inside = False
                out.append([seq + 1, hi])
                if PyList_GET_SIZE(out) >= limit:
                    return out
            if seq == floor:
                break
            seq -= 1
        if inside:
            out.append([seq, hi])
        return out

    def missing(self, Py_ssize_t limit=64):
        """Numbers not yet seen between the lowest seen (or the window's floor) and the highest,
        oldest first, at most ``limit``: what a ``Retransmit`` request should ask for."""
        cdef list out = []
        cdef uint64_t h, seq, pos, inv, span
        cdef uint64_t mask = self._mask
        cdef uint64_t* words = self._words
        cdef Py_ssize_t count = 0
        if self._empty or limit <= 0:
            return out
        h = self._highest
        seq = self._lowest
        if h >= <uint64_t>self.width - 1 and h - (<uint64_t>self.width - 1) > seq:
            seq = h - (<uint64_t>self.width - 1)  # the window's floor
        while seq < h:
            pos = seq & mask
            span = 64 - (pos & 63)  # slots left in this word from pos
            inv = (~words[pos >> 6]) >> (pos & 63)  # unseen slots from pos on (zeros shifted in)
            if inv == 0:
                seq += span
                continue
            seq += <uint64_t>p2p_ctz64(inv)
            if seq >= h:
                break
            out.append(seq)
            count += 1
            if count >= limit:
                break
            seq += 1
        return out


def _restore_filter(width, highest, lowest, tuple words):
    """Unpickle a :class:`DuplicateFilter` (see ``DuplicateFilter.__reduce__``)."""
    cdef DuplicateFilter f = DuplicateFilter(width)
    cdef Py_ssize_t i
    if len(words) != f._nwords:
        raise ValueError("bitmap size does not match the width")
    for i in range(f._nwords):
        f._words[i] = words[i]
    if highest >= 0:
        f._empty = False
        f._highest = highest
        f._lowest = lowest
    return f


@cython.final
@cython.freelist(64)
cdef class _InFlight:
    pass


#: Backoff exponents are capped here (2**16 times the RTO is far beyond any ``rto_max``).
MAX_BACKOFF = 16
cdef long _MAX_BACKOFF = 16
#: A message this many numbers below an acknowledged one, sent before it, is taken as lost.
PACKET_THRESHOLD = 3


cdef class SendWindow:
    """Messages sent with ``requires_ack`` that are not yet acknowledged, for one peer.

    The retransmission timeout follows RFC 6298 for the estimate (SRTT/RTTVAR from RTT
    samples, Karn's rule: no sample from a message sent more than once, bounded by
    ``rto_min``/``rto_max``) and RFC 9002 for the backoff, which belongs to each message: a
    message that timed out ``k`` times waits ``rto * 2**k`` (at most ``rto_max``) before its
    next retransmission, while ``rto`` itself only ever moves with samples. Messages sent
    while the path is silent start at the window's ``backoff`` (the timeouts since the last
    acknowledgement, as RFC 9002's PTO count); any acknowledgement collapses it to 0, so the
    timer is back at the path's RTO as soon as the path answers again. A message that times out after ``max_retries``
    retransmissions fails.

    Two limits make :meth:`add` raise :class:`~p2pfast.errors.WindowFull` (backpressure):
    ``capacity`` messages in flight, and ``max_span``: the newest sequence number may not run
    ``max_span`` or more ahead of the oldest one still unacknowledged, so that a retransmission
    of the oldest always lands inside the receiver's duplicate filter (which must be at least
    ``max_span`` wide) and is never mistaken there for an old duplicate.
    """

    def __cinit__(self, *args, **kwargs):
        self._by_seq = {}
        self._by_id = {}
        self._order = []
        self._earliest = _INF

    def __init__(
        self,
        Py_ssize_t capacity=256,
        Py_ssize_t max_retries=8,
        double rto_initial=1.0,
        double rto_min=0.2,
        double rto_max=60.0,
        double granularity=0.001,
        Py_ssize_t max_span=1024,
    ):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must be non-negative")
        if not (0 < rto_min and rto_min <= rto_max):
            raise ValueError("need 0 < rto_min <= rto_max")
        if max_span < 1:
            raise ValueError("max_span must be at least 1")
        self.capacity = capacity
        self.max_retries = max_retries
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.granularity = granularity
        self.max_span = max_span
        self.srtt = 0.0  # 0.0 until the first sample
        self.rttvar = 0.0
        self._sampled = False
        # min(max(rto_initial, rto_min), rto_max), with Python's min/max tie rules
        if rto_min > rto_initial:
            rto_initial = rto_min
        if rto_max < rto_initial:
            rto_initial = rto_max
        self.rto = rto_initial
        self.backoff = 0
        self.work = 0
        self.largest_acked = -1
        self._largest_sent = 0.0
        self._by_seq = {}
        self._by_id = {}
        self._order = []
        self._earliest = _INF

    def __reduce__(self):
        # Picklable/copyable like the pure twin (a non-trivial __cinit__ rules out Cython's own).
        cdef _InFlight e
        entries = [
            (e.seq, e.msg_id, e.data, e.sent_at, e.last_sent, e.deadline, e.retries, e.ambiguous)
            for e in self._by_seq.values()
        ]
        params = (
            self.capacity, self.max_retries, self.rto, self.rto_min, self.rto_max,
            self.granularity, self.max_span,
        )
        state = (
            self.srtt, self.rttvar, self.rto, self._sampled, self._earliest, self.backoff,
            self.work, self.largest_acked, self._largest_sent, entries,
        )
        return _restore_send, (params, state)

    def __len__(self):
        return PyDict_Size(self._by_seq)

    def __contains__(self, seq):
        return seq in self._by_seq

    @property
    def available(self):
        """How many more messages fit before the window is full."""
        return self.capacity - PyDict_Size(self._by_seq)

    @property
    def full(self):
        return PyDict_Size(self._by_seq) >= self.capacity

    cdef double _timeout(self, long retries) noexcept:
        cdef double t
        if retries > _MAX_BACKOFF:
            retries = _MAX_BACKOFF
        t = ldexp(self.rto, <int>retries)  # rto * 2**retries, exact
        return self.rto_max if self.rto_max < t else t

    def timeout(self, long retries):
        """How long a message that timed out ``retries`` times waits: ``rto * 2**retries``,
        at most ``rto_max``."""
        return self._timeout(retries)

    def oldest(self):
        """The lowest sequence number in flight, -1 when nothing is."""
        cdef list order = self._order
        cdef dict by_seq = self._by_seq
        while order and order[0] not in by_seq:
            heappop(order)
        return order[0] if order else -1

    def blocked(self, seq):
        """True when :meth:`add` of ``seq`` would raise WindowFull (capacity or span)."""
        if PyDict_Size(self._by_seq) >= self.capacity:
            return True
        oldest = self.oldest()
        return oldest >= 0 and seq - oldest >= self.max_span

    def add(self, seq, msg_id, data, double now):
        """Track a message just sent; raise WindowFull at capacity or when ``seq`` would be
        ``max_span`` or more ahead of the oldest in flight, ValueError if ``seq`` or ``msg_id``
        is already in flight."""
        cdef dict by_seq = self._by_seq
        cdef dict by_id = self._by_id
        cdef _InFlight entry
        cdef double deadline
        if PyDict_Size(by_seq) >= self.capacity:
            raise WindowFull(f"{self.capacity} messages awaiting acknowledgement")
        if seq in by_seq or msg_id in by_id:
            raise ValueError(f"sequence number {seq} / id {msg_id} already in flight")
        oldest = self.oldest()
        if oldest >= 0 and seq - oldest >= self.max_span:
            raise WindowFull(
                f"sequence number {seq} is {self.max_span} or more ahead of {oldest}, "
                "the oldest awaiting acknowledgement"
            )
        deadline = now + self._timeout(self.backoff)
        entry = _InFlight.__new__(_InFlight)
        entry.seq = seq
        entry.msg_id = msg_id
        entry.data = data
        entry.sent_at = now
        entry.last_sent = now
        entry.deadline = deadline
        entry.retries = 0
        entry.ambiguous = False
        by_seq[seq] = entry
        by_id[msg_id] = entry
        heappush(self._order, seq)
        if deadline < self._earliest:
            self._earliest = deadline

    def on_ack(self, msg_id, double now):
        """Acknowledge by message id; return its sequence number, or -1 if it is not in flight."""
        cdef object found = self._by_id.pop(msg_id, None)
        cdef _InFlight entry
        if found is None:
            return -1
        entry = <_InFlight>found
        del self._by_seq[entry.seq]
        self._acked(entry, now)
        return entry.seq

    def on_ack_seq(self, seq, double now):
        """Acknowledge by sequence number; return the message id, or None if it is not in flight."""
        cdef object found = self._by_seq.pop(seq, None)
        cdef _InFlight entry
        if found is None:
            return None
        entry = <_InFlight>found
        del self._by_id[entry.msg_id]
        self._acked(entry, now)
        return entry.msg_id

    def on_ack_ranges(self, list ranges, double now):
        """Acknowledge every sequence number in the inclusive ``(lo, hi)`` ranges; return the
        ids acknowledged, in the order found.

        The cost is bounded by what is in flight, not by the ranges: when the ranges cover
        more numbers than the window holds, the window is walked once instead."""
        cdef dict by_seq = self._by_seq
        cdef list acked = []
        cdef list merged, los
        cdef object found
        cdef _InFlight entry
        cdef Py_ssize_t i
        total = 0
        for lo, hi in ranges:
            if hi >= lo:
                total += hi - lo + 1
        if total <= PyDict_Size(by_seq):
            for lo, hi in ranges:
                for seq in range(lo, hi + 1):
                    self.work += 1
                    found = by_seq.pop(seq, None)
                    if found is not None:
                        entry = <_InFlight>found
                        del self._by_id[entry.msg_id]
                        self._acked(entry, now)
                        acked.append(entry.msg_id)
            return acked
        merged = _merge(ranges)
        los = [r[0] for r in merged]
        for seq in list(by_seq):
            self.work += 1
            i = bisect_right(los, seq) - 1
            if i >= 0 and seq <= merged[i][1]:
                entry = <_InFlight>by_seq.pop(seq)
                del self._by_id[entry.msg_id]
                self._acked(entry, now)
                acked.append(entry.msg_id)
        return acked

    cdef void _acked(self, _InFlight entry, double now) noexcept:
        self.backoff = 0  # the path answers: new messages start at the plain RTO again
        if entry.seq > self.largest_acked:
            self.largest_acked = entry.seq
            self._largest_sent = entry.last_sent
        if not entry.ambiguous:  # Karn's rule: only unambiguous samples
            self._sample(now - entry.sent_at)

    cdef void _sample(self, double rtt) noexcept:
        cdef double rto, var4
        if rtt < 0.0:
            rtt = 0.0
        if not self._sampled:  # RFC 6298 (2.2): first measurement
            self._sampled = True
            self.srtt = rtt
            self.rttvar = rtt / 2.0
        else:  # (2.3), each product rounded separately as in Python
            self.rttvar = p2p_wsum(0.75, self.rttvar, 0.25, abs(self.srtt - rtt))
            self.srtt = p2p_wsum(0.875, self.srtt, 0.125, rtt)
        var4 = 4.0 * self.rttvar
        # srtt + max(granularity, 4 * rttvar), then min(max(rto, rto_min), rto_max)
        rto = self.srtt + (var4 if var4 > self.granularity else self.granularity)
        if self.rto_min > rto:
            rto = self.rto_min
        if self.rto_max < rto:
            rto = self.rto_max
        self.rto = rto

    def holds(self, msg_id):
        """Whether the message ``msg_id`` is still in flight (not yet acknowledged)."""
        return msg_id in self._by_id

    def get(self, seq):
        """The datagram in flight under ``seq``, or None."""
        cdef object found = self._by_seq.get(seq)
        if found is None:
            return None
        return (<_InFlight>found).data

    def resend(self, seq, double now):
        """Take the datagram under ``seq`` for an explicit retransmission (a peer's Retransmit
        request), or None when it is not in flight or was sent less than one smoothed RTT ago
        (the peer cannot know yet whether that copy arrived). A resent message counts as
        retransmitted for Karn's rule and its timer restarts; it does not use up a retry."""
        cdef object found = self._by_seq.get(seq)
        cdef _InFlight entry
        cdef double pace = self.srtt if self.srtt > self.granularity else self.granularity
        self.work += 1
        if found is None:
            return None
        entry = <_InFlight>found
        if now - entry.last_sent < pace:
            return None
        entry.ambiguous = True
        entry.last_sent = now
        entry.deadline = now + self._timeout(entry.retries)
        if entry.deadline < self._earliest:
            self._earliest = entry.deadline
        return entry.data

    def lost(self, double now):
        """Messages to retransmit now because later ones were acknowledged (RFC 9002's packet
        threshold): at least ``PACKET_THRESHOLD`` numbers below the largest acknowledged and
        last sent before it. Each is resent once per such evidence, without backoff; the
        retransmission timer remains for the tail, where no later message can be acked."""
        cdef list out = []
        cdef _InFlight entry
        cdef double sent_before = self._largest_sent
        limit = self.largest_acked - PACKET_THRESHOLD
        if limit < 0:
            return out
        for value in self._by_seq.values():
            entry = <_InFlight>value
            self.work += 1
            if entry.seq > limit:
                break
            if entry.last_sent < sent_before:
                entry.ambiguous = True
                entry.last_sent = now
                entry.deadline = now + self._timeout(entry.retries)
                out.append((entry.seq, entry.data))
        return out

    def next_deadline(self):
        """When :meth:`due` next has work (a lower bound; ``inf`` when nothing is in flight)."""
        return self._earliest if PyDict_Size(self._by_seq) else _INF

    def due(self, double now):
        """Timeouts at ``now``: ``(resend, failed)``.

        ``resend`` lists ``(seq, datagram)`` to send again, each message backing off on its
        own; ``failed`` lists ``(seq, msg_id)`` of messages that used up their retries and
        left the window.
        """
        cdef list resend, failed
        cdef _InFlight entry
        cdef double earliest
        cdef long backoff
        cdef dict by_seq = self._by_seq
        if now < self._earliest or PyDict_Size(by_seq) == 0:
            return [], []
        resend = []
        failed = []
        earliest = _INF
        backoff = self.backoff
        for value in list(by_seq.values()):
            entry = <_InFlight>value
            self.work += 1
            if entry.deadline > now:
                if entry.deadline < earliest:
                    earliest = entry.deadline
                continue
            if entry.retries >= self.max_retries:
                del by_seq[entry.seq]
                del self._by_id[entry.msg_id]
                failed.append((entry.seq, entry.msg_id))
                continue
            entry.retries += 1
            entry.ambiguous = True
            entry.last_sent = now
            entry.deadline = now + self._timeout(entry.retries)
            if entry.deadline < earliest:
                earliest = entry.deadline
            resend.append((entry.seq, entry.data))
        if resend and backoff < _MAX_BACKOFF:
            backoff += 1  # one more timeout with no acknowledgement in between
        self.backoff = backoff
        self._earliest = earliest
        return resend, failed

    def clear(self):
        """Drop everything in flight (peer gone); return ``(seq, msg_id)`` of what was dropped."""
        cdef list dropped = [((<_InFlight>e).seq, (<_InFlight>e).msg_id) for e in self._by_seq.values()]
        self._by_seq.clear()
        self._by_id.clear()
        del self._order[:]
        self.largest_acked = -1
        self._earliest = _INF
        return dropped


@cython.wraparound(True)
cdef list _merge(list ranges):
    """Sorted, non-overlapping union of the inclusive ``(lo, hi)`` ranges (empty ones dropped)."""
    cdef list merged = []
    for lo, hi in sorted([r for r in ranges if r[1] >= r[0]]):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _restore_send(params, state):
    """Unpickle a :class:`SendWindow` (see ``SendWindow.__reduce__``)."""
    cdef SendWindow sw = SendWindow(*params)
    cdef _InFlight entry
    (sw.srtt, sw.rttvar, sw.rto, sw._sampled, sw._earliest, sw.backoff, sw.work,
     sw.largest_acked, sw._largest_sent, entries) = state
    for seq, msg_id, data, sent_at, last_sent, deadline, retries, ambiguous in entries:
        entry = _InFlight.__new__(_InFlight)
        entry.seq = seq
        entry.msg_id = msg_id
        entry.data = data
        entry.sent_at = sent_at
        entry.last_sent = last_sent
        entry.deadline = deadline
        entry.retries = retries
        entry.ambiguous = ambiguous
        sw._by_seq[seq] = entry
        sw._by_id[msg_id] = entry
        heappush(sw._order, seq)
    return sw
