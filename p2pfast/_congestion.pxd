# cython: language_level=3
"""C-level declarations of the compiled congestion control (see ``_congestion.pyx``).

The classes are final and their methods ``cpdef``: a Cython fragment sender that does
``from p2pfast._congestion cimport NewReno, Pacer, RttEstimator`` calls them as C functions,
without Python call overhead; Python callers see ordinary methods.
"""

cimport cython
from libc.stdint cimport int64_t


@cython.final
cdef class RttEstimator:
    cdef public double latest_rtt
    cdef public double min_rtt
    cdef public double smoothed_rtt
    cdef public double rttvar
    cdef public bint has_sample

    cpdef void update(self, double latest_rtt, double ack_delay) except *
    cpdef double pto(self, double max_ack_delay) noexcept
    cpdef double loss_delay(self) noexcept
    cpdef double persistent_congestion_duration(self, double max_ack_delay) noexcept


@cython.final
cdef class NewReno:
    cdef public int64_t max_datagram_size
    cdef public int64_t congestion_window
    cdef public int64_t ssthresh
    cdef public int64_t bytes_in_flight
    cdef public double recovery_start
    cdef public int64_t congestion_events
    cdef public int64_t in_flight_underflows
    cdef int64_t _acked_stash      # bytes acked in congestion avoidance, not yet one datagram

    cpdef void set_max_datagram_size(self, int64_t size) except *
    cpdef int64_t available(self) noexcept
    cpdef void on_packet_sent(self, int64_t size) except *
    cpdef void on_packet_acked(
        self, int64_t size, double sent_time, bint app_limited=*
    ) except *
    cpdef void on_packets_lost(
        self, int64_t lost_bytes, double largest_lost_sent_time, double now
    ) except *
    cpdef void on_persistent_congestion(self) noexcept
    cpdef void on_packet_discarded(self, int64_t size) except *
    cdef int _remove_in_flight(self, int64_t size) except -1


@cython.final
cdef class Pacer:
    cdef public int64_t max_datagram_size
    cdef public double pacing_rate
    cdef public double burst_size
    cdef public double tokens
    cdef double _last_time           # when the credit was last brought up to date
    cdef int64_t _congestion_window  # the last update_rate's arguments (for a new datagram size)
    cdef double _smoothed_rtt

    cpdef void update_rate(self, int64_t congestion_window, double smoothed_rtt) except *
    cpdef double next_send_time(self, double now) noexcept
    cpdef void on_packet_sent(self, int64_t size, double now) except *
    cpdef void set_max_datagram_size(self, int64_t size) except *
    cdef void _set_rate(self, int64_t congestion_window, double smoothed_rtt) noexcept
    cdef void _refill(self, double now) noexcept
