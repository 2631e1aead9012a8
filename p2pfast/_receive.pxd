# cython: language_level=3
"""C-level declarations of the compiled receive path (see ``_receive.pyx``)."""

from p2pfast._window cimport DuplicateFilter


cdef class Counters:
    cdef public list rx_by_type
    cdef public list tx_by_type
    cdef public unsigned long long malformed
    cdef public unsigned long long bytes_in
    cdef public unsigned long long bytes_out
    cdef public unsigned long long acks_sent
    cdef public unsigned long long acks_received
    cdef public unsigned long long retransmits
    cdef public unsigned long long retransmit_requests
    cdef public unsigned long long duplicates
    cdef public unsigned long long delivered
    cdef public unsigned long long echoed
    cdef public unsigned long long forwarded
    cdef public unsigned long long send_failures
    cdef public unsigned long long handshakes
    cdef public unsigned long long evictions
    cdef public unsigned long long fragments_sent
    cdef public unsigned long long fragments_retransmitted
    cdef public unsigned long long fragments_received
    cdef public unsigned long long messages_reassembled
    cdef public unsigned long long frames_in
    cdef public unsigned long long frames_out
    cdef public dict rejected


cdef class Session:
    cdef public object addr
    cdef public object node_id
    cdef public bint p2pfast
    cdef public double last_seen
    cdef public DuplicateFilter dup
    cdef public double gap_at
    cdef public list pending_acks
    cdef public object pending_ack_id
    cdef public bint proven          # return path proven (token echoed, or we called it)
    cdef public long long budget     # bytes we may still send while it is not


cdef class Receiver:
    cdef public dict peers
    cdef public Counters counters
    cdef public list out
    cdef public object events
    cdef public list ack_peers
    cdef public object local_addr
    cdef public double wall_offset
    cdef public int deliver
    cdef public double ack_now
    cdef public Py_ssize_t app_limit
    cdef public Py_ssize_t app_pending

    cpdef object receive(self, object data, object addr, double now)
    cdef void _ack(self, Session peer, object msg_id, int mtype, object seq, double now) except *
    cdef bint _send(self, Session peer, bytes data, int mtype) except -1
