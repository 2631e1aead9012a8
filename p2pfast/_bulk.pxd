# cython: language_level=3
"""C-level declarations of the compiled large-message connection (see ``_bulk.pyx``)."""

from libc.stdint cimport int64_t, uint64_t

from p2pfast._congestion cimport NewReno, Pacer, RttEstimator
from p2pfast._fragment cimport RangeSet, Reassembly, SentLog


cdef enum:
    RECEIVED_SLOTS = 33     # MAX_RECEIVED_RANGES + the one being added


cdef class OutgoingMessage:
    cdef readonly int64_t number
    cdef readonly bytes data
    cdef readonly int64_t total
    cdef readonly object handle
    cdef readonly RangeSet to_send
    cdef readonly RangeSet acked
    cdef public bint ready       # in the connection's ready queue
    cdef public bint started
    cdef public bint active      # in the connection's outgoing messages (not finished/failed)


cdef class Incoming:
    cdef readonly Reassembly reassembly
    cdef public double last_progress


cdef class BulkConnection:
    cdef readonly object memory
    cdef readonly int64_t peer_limit
    cdef readonly double reassembly_timeout
    cdef readonly object path
    cdef readonly RttEstimator rtt
    cdef readonly NewReno cc
    cdef readonly Pacer pacer
    cdef readonly SentLog log
    cdef int64_t _datagram_size

    # -- sending
    cdef dict _outgoing
    cdef object _ready           # deque of OutgoingMessage
    cdef int64_t _next_message
    cdef readonly int64_t queued_bytes
    cdef readonly int64_t started_total
    cdef public uint64_t credit
    cdef double _credit_retry_at
    cdef double _last_sent
    cdef readonly int64_t pto_count
    cdef double _loss_at
    cdef dict _probes
    cdef double _pace_at
    cdef bint _credit_blocked
    cdef public object owner
    cdef int64_t _next_probe
    cdef readonly list completed
    cdef readonly list failed
    cdef public bint dead

    # -- receiving
    cdef uint64_t _recv_first[RECEIVED_SLOTS]   # packet ranges [first, last], newest first
    cdef uint64_t _recv_last[RECEIVED_SLOTS]
    cdef Py_ssize_t _recv_count
    cdef public int64_t ack_owed
    cdef double _ack_since
    cdef dict _incoming
    cdef int64_t _done_below
    cdef set _done
    cdef public int64_t allocated
    cdef public int64_t released
    cdef public int64_t granted
    cdef int64_t _announced
    cdef double _grant_after
    cdef double _expiry_at
    cdef public bint timer_changed
    cdef public bint credit_update_owed

    # -- counters
    cdef public int64_t fragments_sent
    cdef public int64_t fragments_retransmitted
    cdef public int64_t fragments_received
    cdef public int64_t messages_reassembled
    cdef readonly dict refused
    cdef public int64_t work

    cdef int _request_credit(self, double now, list out) except -1
    cdef int _finish(self, OutgoingMessage message) except -1
    cdef int _detect_lost(self, double now) except -1
    cdef int _declare_lost(self, list lost, double now) except -1
    cdef int _resend(self, OutgoingMessage message, int64_t start, int64_t end) except -1
    cdef int _resize(self) except -1
    cdef int _fail_all(self, str reason) except -1
    cdef int _mark_done(self, int64_t number) except -1
    cdef int _received_packet(self, uint64_t packet, double now) except -1
