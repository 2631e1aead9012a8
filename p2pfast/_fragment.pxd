# cython: language_level=3
"""C-level declarations of the compiled fragment bookkeeping (see ``_fragment.pyx``).

Other Cython modules can ``from p2pfast._fragment cimport RangeSet, Reassembly, SentLog`` and
read the C attributes or call the ``cdef`` paths without Python call overhead (the compiled
``_bulk`` sender and receiver do, per fragment).
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef bytes fragment_frame(uint64_t packet, uint32_t message, uint32_t total, uint32_t offset,
                          bytes data, Py_ssize_t start, Py_ssize_t end)
cdef int fragment_header(const unsigned char* frame, Py_ssize_t size, uint64_t* packet,
                         uint32_t* message, uint32_t* total, uint32_t* offset) except -1


cdef class RangeSet:
    cdef int64_t* _starts       # sorted; ranges are disjoint and never touch
    cdef int64_t* _ends
    cdef Py_ssize_t _n          # ranges held
    cdef Py_ssize_t _cap        # slots allocated
    cdef public int64_t covered

    cdef int _grow(self) except -1
    cdef Py_ssize_t _lower_end(self, int64_t x) noexcept   # first k with ends[k] >= x
    cdef Py_ssize_t _upper_end(self, int64_t x) noexcept   # first k with ends[k] > x
    cdef Py_ssize_t _upper_start(self, int64_t x) noexcept # first k with starts[k] > x
    cdef int64_t _add(self, int64_t start, int64_t end) except -1
    cdef bint _opens_range(self, int64_t start, int64_t end) noexcept
    cdef int64_t _pop_front(self, int64_t limit, int64_t* end) except? -1


cdef class Reassembly:
    cdef readonly Py_ssize_t total
    cdef public Py_ssize_t max_ranges
    cdef object _buffer         # the bytes object being filled (private until take), or None
    cdef unsigned char* _data   # its storage
    cdef RangeSet _received

    cdef int _insert(self, Py_ssize_t offset, const unsigned char* src,
                     Py_ssize_t length) except -1


cdef class SentLog:
    cdef list _entries          # ring: slot (packet & _mask) -> entry tuple, or None
    cdef double* _times         # slot -> send time
    cdef int64_t* _next         # slot -> next packet in flight (ascending), -1 at the end
    cdef int64_t* _prev         # slot -> previous packet in flight, -1 at the start
    cdef int64_t _mask          # ring capacity - 1 (a power of two)
    cdef int64_t _head          # oldest packet in flight, -1 if none
    cdef int64_t _tail          # newest packet in flight, -1 if none
    cdef Py_ssize_t _count      # packets in flight
    cdef int64_t _front         # the pure twin's send-order cursor (== next_packet when empty)
    cdef int64_t _next_packet
    cdef public int64_t largest_acked
    cdef public unsigned long long work

    cdef int _grow(self, int64_t packet) except -1
    cdef bint _present(self, int64_t packet) noexcept
    cdef object _pop(self, int64_t packet)
    cdef int64_t _sent(self, object message, int64_t start, int64_t end, int64_t size,
                       double now) except -1
    cdef int64_t _record(self, tuple entry, double now) except -1
