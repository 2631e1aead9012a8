# cython: language_level=3
"""C-level declarations of the compiled reliability windows (see ``_window.pyx``).

Other Cython modules can ``from p2pfast._window cimport DuplicateFilter, SendWindow`` and call
the ``cdef`` fast paths (``check_seq``, ``contains_seq``) without Python call overhead.
"""

from libc.stdint cimport uint64_t


cdef class DuplicateFilter:
    cdef readonly Py_ssize_t width
    cdef uint64_t _mask        # width - 1
    cdef uint64_t _highest     # valid only when not _empty
    cdef uint64_t _lowest      # lowest number ever accepted; valid only when not _empty
    cdef bint _empty           # no number seen yet (highest == -1 in Python terms)
    cdef Py_ssize_t _nwords    # width // 64
    cdef uint64_t* _words      # ring bitmap: bit (seq & _mask) set <=> seq seen (inside the window)

    cdef int check_seq(self, uint64_t seq) noexcept
    cdef bint contains_seq(self, uint64_t seq) noexcept
    cdef int _alloc(self, Py_ssize_t width) except -1


cdef class _InFlight:
    cdef readonly object seq
    cdef readonly object msg_id
    cdef readonly object data
    cdef readonly double sent_at      # first transmission (RTT samples)
    cdef readonly double last_sent    # latest transmission (explicit resends are paced from it)
    cdef readonly double deadline
    cdef readonly long retries        # timeouts so far: this message's backoff exponent
    cdef readonly bint ambiguous      # sent more than once: no RTT sample (Karn)


cdef class SendWindow:
    cdef public Py_ssize_t capacity
    cdef public Py_ssize_t max_retries
    cdef public double rto_min
    cdef public double rto_max
    cdef public double granularity
    cdef public double srtt
    cdef public double rttvar
    cdef public double rto
    cdef public Py_ssize_t max_span
    cdef public long backoff    # backoff exponent for messages sent now (0 after any ack)
    cdef public unsigned long long work  # entries examined (bounded-work tests)
    cdef public object largest_acked     # highest sequence number acknowledged, -1 before
    cdef double _largest_sent            # when the acknowledged copy of it left
    cdef bint _sampled          # an RTT sample has been taken (RFC 6298 2.2 vs 2.3)
    cdef dict _by_seq           # seq -> _InFlight, in send order
    cdef dict _by_id            # msg_id -> _InFlight
    cdef list _order            # min-heap of sequence numbers in flight, lazily pruned
    cdef double _earliest       # lower bound of every deadline in the window

    cdef void _sample(self, double rtt) noexcept
    cdef double _timeout(self, long retries) noexcept
    cdef void _acked(self, _InFlight entry, double now) noexcept
