# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled congestion control: RTT estimator, NewReno window and pacer.

Twin of :mod:`p2pfast.congestion` (same names, constants, behaviour, exceptions and messages,
bit-identical floating point; the parity tests compare every field after every call). See the
pure module for the why of each rule.

Differences from the pure twin, outside what the fragment sender uses (int byte counts, float
clocks): byte counts are 64-bit C integers (a size >= 2**63 raises ``OverflowError``, a
non-integer size ``TypeError``, where the pure twin would accept a float); times are C doubles
(ints are accepted and read back as floats).
"""

cimport cython
from libc.stdint cimport int64_t

cdef extern from *:
    """
    /* a*b + c and wa*a + wb*b with each product rounded to double on its own, exactly as
       Python evaluates them: the volatile stores stop the compiler from fusing a product and
       the sum into one FMA (GCC/Clang do that by default on arm64). */
    static double p2p_cc_madd(double a, double b, double c) {
        volatile double p = a * b;
        return p + c;
    }
    static double p2p_cc_wsum(double wa, double a, double wb, double b) {
        volatile double x = wa * a;
        volatile double y = wb * b;
        return x + y;
    }
    """
    double p2p_cc_madd(double a, double b, double c) noexcept nogil
    double p2p_cc_wsum(double wa, double a, double wb, double b) noexcept nogil


K_INITIAL_WINDOW_PACKETS = 10
K_INITIAL_WINDOW_BYTES = 14720
K_MINIMUM_WINDOW_PACKETS = 2
K_LOSS_REDUCTION_FACTOR = 0.5
K_PERSISTENT_CONGESTION_THRESHOLD = 3
K_GRANULARITY = 0.001
INITIAL_RTT = 0.1
K_PACING_GAIN = 1.25
K_MAX_UDP_PAYLOAD = 65535
INFINITE_SSTHRESH = (1 << 63) - 1

cdef enum:
    _INITIAL_WINDOW_PACKETS = 10
    _INITIAL_WINDOW_BYTES = 14720
    _MINIMUM_WINDOW_PACKETS = 2
    _PERSISTENT_CONGESTION_THRESHOLD = 3
    _MAX_UDP_PAYLOAD = 65535

cdef double _LOSS_REDUCTION_FACTOR = 0.5
cdef double _GRANULARITY = 0.001
cdef double _PACING_GAIN = 1.25
cdef double _MICRO_SECOND = 0.000001
cdef double _SECOND = 1.0
cdef int64_t _INFINITE_SSTHRESH = 0x7FFFFFFFFFFFFFFF
cdef double _INF = float("inf")


cdef int64_t _check_datagram_size(int64_t size) except -1:
    if not 1 <= size <= _MAX_UDP_PAYLOAD:
        raise ValueError(f"max_datagram_size must be between 1 and {_MAX_UDP_PAYLOAD}, got {size}")
    return size


cdef object _negative_size(int64_t size):
    return ValueError(f"size must be >= 0, got {size}")


@cython.final
cdef class RttEstimator:
    """Round-trip time estimate of one path (RFC 9002 §5).

    Before the first sample ``smoothed_rtt`` is ``initial_rtt``, ``rttvar`` half of it,
    ``latest_rtt`` and ``min_rtt`` are 0.0 and ``has_sample`` is False.
    """


    def __init__(self, double initial_rtt=INITIAL_RTT):
        if not 0.0 < initial_rtt < _INF:
            raise ValueError(f"initial_rtt must be a positive number of seconds, got {initial_rtt}")
        self.latest_rtt = 0.0
        self.min_rtt = 0.0
        self.smoothed_rtt = initial_rtt
        self.rttvar = initial_rtt / 2
        self.has_sample = False

    cpdef void update(self, double latest_rtt, double ack_delay) except *:
        """Take one sample (RFC 9002 §5.3); see the pure twin."""
        cdef double adjusted_rtt, diff
        if not 0.0 <= latest_rtt < _INF:
            raise ValueError(f"latest_rtt must be a finite number >= 0, got {latest_rtt}")
        if not 0.0 <= ack_delay < _INF:
            raise ValueError(f"ack_delay must be a finite number >= 0, got {ack_delay}")
        self.latest_rtt = latest_rtt
        if not self.has_sample:
            self.has_sample = True
            self.min_rtt = latest_rtt
            self.smoothed_rtt = latest_rtt
            self.rttvar = latest_rtt / 2
            return
        if latest_rtt < self.min_rtt:
            self.min_rtt = latest_rtt
        adjusted_rtt = latest_rtt
        if latest_rtt >= self.min_rtt + ack_delay:
            adjusted_rtt = latest_rtt - ack_delay
        diff = self.smoothed_rtt - adjusted_rtt
        if diff < 0.0:
            diff = -diff
        self.rttvar = p2p_cc_wsum(0.75, self.rttvar, 0.25, diff)
        self.smoothed_rtt = p2p_cc_wsum(0.875, self.smoothed_rtt, 0.125, adjusted_rtt)

    cpdef double pto(self, double max_ack_delay) noexcept:
        """Probe timeout (RFC 9002 §6.2.1): srtt + max(4 * rttvar, granularity) + max_ack_delay."""
        cdef double variance = 4 * self.rttvar
        if variance < _GRANULARITY:
            variance = _GRANULARITY
        return (self.smoothed_rtt + variance) + max_ack_delay

    cpdef double loss_delay(self) noexcept:
        """Time threshold of loss detection (RFC 9002 §6.1.2)."""
        cdef double rtt = self.smoothed_rtt
        cdef double delay
        if self.latest_rtt > rtt:
            rtt = self.latest_rtt
        delay = 1.125 * rtt
        if delay < _GRANULARITY:
            delay = _GRANULARITY
        return delay

    cpdef double persistent_congestion_duration(self, double max_ack_delay) noexcept:
        """pto * K_PERSISTENT_CONGESTION_THRESHOLD (RFC 9002 §7.6.1)."""
        return self.pto(max_ack_delay) * _PERSISTENT_CONGESTION_THRESHOLD


@cython.final
cdef class NewReno:
    """NewReno congestion window in bytes (RFC 9002 §7 and Appendix B); see the pure twin."""


    def __init__(self, int64_t max_datagram_size):
        cdef int64_t initial
        self.max_datagram_size = _check_datagram_size(max_datagram_size)
        initial = _MINIMUM_WINDOW_PACKETS * max_datagram_size
        if initial < _INITIAL_WINDOW_BYTES:
            initial = _INITIAL_WINDOW_BYTES
        if initial > _INITIAL_WINDOW_PACKETS * max_datagram_size:
            initial = _INITIAL_WINDOW_PACKETS * max_datagram_size
        self.congestion_window = initial
        self.ssthresh = _INFINITE_SSTHRESH
        self.bytes_in_flight = 0
        self.recovery_start = -_INF
        self.congestion_events = 0
        self.in_flight_underflows = 0
        self._acked_stash = 0

    @property
    def minimum_window(self):
        """The smallest window: K_MINIMUM_WINDOW_PACKETS datagrams."""
        return _MINIMUM_WINDOW_PACKETS * self.max_datagram_size

    cpdef void set_max_datagram_size(self, int64_t size) except *:
        """The path's datagram size changed; the window is kept, raised to the new minimum."""
        cdef int64_t minimum
        self.max_datagram_size = _check_datagram_size(size)
        minimum = _MINIMUM_WINDOW_PACKETS * size
        if self.congestion_window < minimum:
            self.congestion_window = minimum

    cpdef int64_t available(self) noexcept:
        """Bytes that may be sent now: max(0, congestion_window - bytes_in_flight)."""
        cdef int64_t room = self.congestion_window - self.bytes_in_flight
        return room if room > 0 else 0

    cpdef void on_packet_sent(self, int64_t size) except *:
        """A datagram of ``size`` bytes left (counted in flight until acked, lost or discarded)."""
        if size < 0:
            raise _negative_size(size)
        self.bytes_in_flight += size

    cdef int _remove_in_flight(self, int64_t size) except -1:
        if size < 0:
            raise _negative_size(size)
        if size > self.bytes_in_flight:
            self.in_flight_underflows += 1
            self.bytes_in_flight = 0
        else:
            self.bytes_in_flight -= size
        return 0

    cpdef void on_packet_acked(
        self, int64_t size, double sent_time, bint app_limited=False
    ) except *:
        """A datagram of ``size`` bytes sent at ``sent_time`` was acknowledged (RFC 9002 §7.3);
        ``app_limited``: sent while the sender had less to send than the window allowed, so it
        does not grow the window (§7.8)."""
        cdef int64_t stash, count
        self._remove_in_flight(size)
        if app_limited or sent_time <= self.recovery_start:
            return
        if self.congestion_window < self.ssthresh:
            self.congestion_window += size
            return
        stash = self._acked_stash + size
        if stash >= self.congestion_window:
            count = stash // self.congestion_window
            stash -= count * self.congestion_window
            self.congestion_window += count * self.max_datagram_size
        self._acked_stash = stash

    cpdef void on_packets_lost(
        self, int64_t lost_bytes, double largest_lost_sent_time, double now
    ) except *:
        """Datagrams totalling ``lost_bytes`` were declared lost (RFC 9002 §7.3.2)."""
        cdef int64_t minimum
        self._remove_in_flight(lost_bytes)
        if largest_lost_sent_time > self.recovery_start:
            self.recovery_start = now
            self.congestion_events += 1
            self.ssthresh = <int64_t>(<double>self.congestion_window * _LOSS_REDUCTION_FACTOR)
            minimum = _MINIMUM_WINDOW_PACKETS * self.max_datagram_size
            self.congestion_window = self.ssthresh if self.ssthresh > minimum else minimum
            self._acked_stash = 0

    cpdef void on_persistent_congestion(self) noexcept:
        """Collapse to the minimum window and end the recovery episode (RFC 9002 §7.6.2); sets
        ssthresh as a loss would if no loss episode came before."""
        if self.ssthresh == _INFINITE_SSTHRESH:
            self.ssthresh = <int64_t>(<double>self.congestion_window * _LOSS_REDUCTION_FACTOR)
        self.congestion_window = _MINIMUM_WINDOW_PACKETS * self.max_datagram_size
        self.recovery_start = -_INF
        self._acked_stash = 0

    cpdef void on_packet_discarded(self, int64_t size) except *:
        """A datagram stops counting in flight without an ACK or loss signal."""
        self._remove_in_flight(size)


@cython.final
cdef class Pacer:
    """Token bucket that spreads sends at K_PACING_GAIN * cwnd / srtt (RFC 9002 §7.7); see the
    pure twin."""


    def __init__(self, int64_t max_datagram_size):
        self.max_datagram_size = _check_datagram_size(max_datagram_size)
        self.pacing_rate = 0.0
        self.burst_size = 0.0
        self.tokens = 0.0
        self._last_time = -_INF
        self._congestion_window = 0
        self._smoothed_rtt = 0.0

    cpdef void update_rate(self, int64_t congestion_window, double smoothed_rtt) except *:
        """Set the rate from the current window and smoothed RTT."""
        if congestion_window < 0:
            raise ValueError(f"congestion_window must be >= 0, got {congestion_window}")
        if not 0.0 <= smoothed_rtt < _INF:
            raise ValueError(f"smoothed_rtt must be a finite number >= 0, got {smoothed_rtt}")
        self._set_rate(congestion_window, smoothed_rtt)

    cdef void _set_rate(self, int64_t congestion_window, double smoothed_rtt) noexcept:
        cdef bint first = self.pacing_rate == 0.0
        cdef int64_t mds = self.max_datagram_size
        cdef double rtt, rate
        cdef int64_t quarter, burst
        self._congestion_window = congestion_window
        self._smoothed_rtt = smoothed_rtt
        rtt = smoothed_rtt if smoothed_rtt > _MICRO_SECOND else _MICRO_SECOND
        rate = _PACING_GAIN * <double>congestion_window / rtt
        if rate < <double>mds / _SECOND:
            rate = <double>mds / _SECOND
        if rate > <double>mds / _MICRO_SECOND:
            rate = <double>mds / _MICRO_SECOND
        self.pacing_rate = rate
        quarter = congestion_window // 4
        burst = quarter if quarter < 16 * mds else 16 * mds
        if burst < 2 * mds:
            burst = 2 * mds
        self.burst_size = <double>burst
        if first or self.tokens > self.burst_size:
            self.tokens = self.burst_size

    cdef void _refill(self, double now) noexcept:
        cdef double tokens
        if now > self._last_time:
            if self.pacing_rate > 0.0:
                tokens = p2p_cc_madd(now - self._last_time, self.pacing_rate, self.tokens)
                self.tokens = tokens if tokens < self.burst_size else self.burst_size
            self._last_time = now

    cpdef double next_send_time(self, double now) noexcept:
        """When the next datagram may go: ``now`` or earlier means now."""
        cdef double deficit
        if self.pacing_rate == 0.0:
            return now
        self._refill(now)
        deficit = <double>self.max_datagram_size - self.tokens
        if deficit <= 0.0:
            return now
        return now + deficit / self.pacing_rate

    cpdef void on_packet_sent(self, int64_t size, double now) except *:
        """A datagram of ``size`` bytes left at ``now``: its size is taken from the credit."""
        if size < 0:
            raise _negative_size(size)
        if self.pacing_rate == 0.0:
            return
        self._refill(now)
        self.tokens -= <double>size

    cpdef void set_max_datagram_size(self, int64_t size) except *:
        """The path's datagram size changed: burst and rate clamps follow it."""
        self.max_datagram_size = _check_datagram_size(size)
        if self.pacing_rate != 0.0:
            self._set_rate(self._congestion_window, self._smoothed_rtt)
