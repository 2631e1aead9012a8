"""Congestion control for fragment streams: RTT estimator, NewReno window and pacer (pure Python).

Sans-I/O and clock-free, modeled on aioquic's recovery code and RFC 9002: every call takes
sizes in bytes and times in seconds (any monotonic origin) and returns numbers; nothing here
sends, sleeps or reads a clock. The fragment sender feeds it:

* :class:`RttEstimator` -- one RTT sample per ACK that newly acknowledges its largest packet
  number (RFC 9002 §5); gives the probe timeout (§6.2.1), the time-threshold loss delay
  (§6.1.2) and the persistent-congestion duration (§7.6.1).
* :class:`NewReno` -- the congestion window in bytes (§7, Appendix B): slow start, one
  reduction per recovery episode, congestion avoidance, persistent congestion.
* :class:`Pacer` -- spreads a window over a round trip (§7.7) so it does not leave as one burst.

The compiled twin ``p2pfast._congestion`` has the same names and behaviour (bit-identical
floating point; the parity tests compare every field after every call);
``p2pfast._speedups.congestion`` is whichever of the two is in use.

``bytes_in_flight`` never goes below zero: a call that would take it there (acknowledging,
losing or discarding more bytes than are in flight, e.g. a packet reported twice by a buggy
caller) sets it to zero and counts the event in :attr:`NewReno.in_flight_underflows`, so the
window keeps working and the caller's bookkeeping error stays visible.
"""

from __future__ import annotations

from typing import final

#: Initial window, in datagrams (RFC 9002 §7.2), capped by :data:`K_INITIAL_WINDOW_BYTES`.
K_INITIAL_WINDOW_PACKETS = 10
#: The initial window's byte cap (RFC 9002 §7.2: min(10 * mds, max(14720, 2 * mds))).
K_INITIAL_WINDOW_BYTES = 14720
#: The window never goes below this many datagrams (RFC 9002 §7.2).
K_MINIMUM_WINDOW_PACKETS = 2
#: Factor applied to the window once per recovery episode (RFC 9002 §7.3.2).
K_LOSS_REDUCTION_FACTOR = 0.5
#: Persistent congestion: this many PTOs without an acknowledgement (RFC 9002 §7.6.1).
K_PERSISTENT_CONGESTION_THRESHOLD = 3
#: Timer granularity, seconds (RFC 9002 §6.1.2).
K_GRANULARITY = 0.001
#: RTT assumed before the first sample, seconds. RFC 9002 §6.2.2 suggests 333 ms for the open
#: Internet; p2pfast uses 0.1 s, its ``rto_min`` default (``Config.rto_initial`` defaults to
#: 1.0 s, the conservative figure for single-datagram messages toward any peer): fragment
#: streams run between p2pfast peers that have just completed a handshake (whose round trip
#: the caller may pass as ``initial_rtt``), and the first probe timeout, 3 * initial_rtt +
#: max_ack_delay, stays well under a second. Pass ``initial_rtt`` to override.
INITIAL_RTT = 0.1
#: Pacing gain N of RFC 9002 §7.7: the pacer sends at N * cwnd / srtt.
K_PACING_GAIN = 1.25
#: Largest UDP payload a datagram can have (its 16-bit length field); the upper bound of any
#: ``max_datagram_size`` given here.
K_MAX_UDP_PAYLOAD = 65535
#: ``NewReno.ssthresh`` before the first loss: larger than any window.
INFINITE_SSTHRESH = (1 << 63) - 1

_K_MICRO_SECOND = 0.000001
_K_SECOND = 1.0
_INF = float("inf")


def _check_datagram_size(size: int) -> int:
    if not 1 <= size <= K_MAX_UDP_PAYLOAD:
        raise ValueError(f"max_datagram_size must be between 1 and {K_MAX_UDP_PAYLOAD}, got {size}")
    return size


def _negative_size(size: int) -> ValueError:
    return ValueError(f"size must be >= 0, got {size}")


@final
class RttEstimator:
    """Round-trip time estimate of one path (RFC 9002 §5).

    Before the first sample ``smoothed_rtt`` is ``initial_rtt``, ``rttvar`` half of it,
    ``latest_rtt`` and ``min_rtt`` are 0.0 and ``has_sample`` is False.
    """

    __slots__ = ("has_sample", "latest_rtt", "min_rtt", "rttvar", "smoothed_rtt")

    def __init__(self, initial_rtt: float = INITIAL_RTT) -> None:
        if not 0.0 < initial_rtt < _INF:
            raise ValueError(f"initial_rtt must be a positive number of seconds, got {initial_rtt}")
        #: The last raw sample (ack delay not subtracted), seconds.
        self.latest_rtt = 0.0
        #: The smallest raw sample seen (no ack delay subtracted), seconds.
        self.min_rtt = 0.0
        self.smoothed_rtt = initial_rtt + 0.0
        self.rttvar = initial_rtt / 2
        self.has_sample = False

    def update(self, latest_rtt: float, ack_delay: float) -> None:
        """Take one sample: ``latest_rtt`` = now - send time of the newly acked largest packet,
        ``ack_delay`` = the delay the peer reports having held its ACK (the caller caps it at the
        peer's ``max_ack_delay``). The ack delay is subtracted only when that does not take the
        sample below ``min_rtt`` (RFC 9002 §5.3)."""
        if not 0.0 <= latest_rtt < _INF:
            raise ValueError(f"latest_rtt must be a finite number >= 0, got {latest_rtt}")
        if not 0.0 <= ack_delay < _INF:
            raise ValueError(f"ack_delay must be a finite number >= 0, got {ack_delay}")
        latest_rtt += 0.0  # an int sample is stored as a float, as the compiled twin does
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
        self.rttvar = 3 / 4 * self.rttvar + 1 / 4 * abs(self.smoothed_rtt - adjusted_rtt)
        self.smoothed_rtt = 7 / 8 * self.smoothed_rtt + 1 / 8 * adjusted_rtt

    def pto(self, max_ack_delay: float) -> float:
        """Probe timeout (RFC 9002 §6.2.1): srtt + max(4 * rttvar, granularity) + max_ack_delay.
        The caller doubles it per consecutive PTO (exponential backoff)."""
        variance = 4 * self.rttvar
        if variance < K_GRANULARITY:
            variance = K_GRANULARITY
        return self.smoothed_rtt + variance + max_ack_delay

    def loss_delay(self) -> float:
        """Time threshold of loss detection (RFC 9002 §6.1.2): a packet sent this long before a
        later one that was acknowledged is lost. max(9/8 * max(srtt, latest_rtt), granularity)."""
        rtt = self.smoothed_rtt
        if self.latest_rtt > rtt:
            rtt = self.latest_rtt
        delay = 9 / 8 * rtt
        if delay < K_GRANULARITY:
            delay = K_GRANULARITY
        return delay

    def persistent_congestion_duration(self, max_ack_delay: float) -> float:
        """How long a run of lost packets must span to be persistent congestion (RFC 9002
        §7.6.1): pto * K_PERSISTENT_CONGESTION_THRESHOLD. Only meaningful once ``has_sample``
        (§7.6.2: no persistent congestion before the first RTT sample)."""
        return self.pto(max_ack_delay) * K_PERSISTENT_CONGESTION_THRESHOLD


@final
class NewReno:
    """NewReno congestion window in bytes (RFC 9002 §7 and Appendix B; aioquic's ``reno``).

    Call :meth:`on_packet_sent` for every datagram that counts toward bytes in flight (fragments,
    probes; not pure ACKs), then exactly one of :meth:`on_packet_acked`,
    :meth:`on_packets_lost` or :meth:`on_packet_discarded` for its bytes. A retransmission is a
    new packet (new packet number): sent again, acked or lost on its own.
    """

    __slots__ = (
        "_acked_stash",
        "bytes_in_flight",
        "congestion_events",
        "congestion_window",
        "in_flight_underflows",
        "max_datagram_size",
        "recovery_start",
        "ssthresh",
    )

    def __init__(self, max_datagram_size: int) -> None:
        self.max_datagram_size = _check_datagram_size(max_datagram_size)
        #: Bytes the sender may have in flight.
        self.congestion_window = min(
            K_INITIAL_WINDOW_PACKETS * max_datagram_size,
            max(K_INITIAL_WINDOW_BYTES, K_MINIMUM_WINDOW_PACKETS * max_datagram_size),
        )
        #: Slow start while congestion_window < ssthresh.
        self.ssthresh = INFINITE_SSTHRESH
        self.bytes_in_flight = 0
        #: Send time at which the current recovery episode began (-inf: none yet, or reset by
        #: persistent congestion). Packets sent at or before it do not grow the window, and
        #: their loss does not start another episode.
        self.recovery_start = -_INF
        #: Recovery episodes entered (window reductions), persistent congestion not included.
        self.congestion_events = 0
        #: Calls that would have taken bytes_in_flight below zero (clamped to 0 instead).
        self.in_flight_underflows = 0
        self._acked_stash = 0  # bytes acked in congestion avoidance, not yet worth one datagram

    @property
    def minimum_window(self) -> int:
        """The smallest window: K_MINIMUM_WINDOW_PACKETS datagrams."""
        return K_MINIMUM_WINDOW_PACKETS * self.max_datagram_size

    def set_max_datagram_size(self, size: int) -> None:
        """The path's datagram size changed (path-MTU discovery grew or shrank it). Growth in
        congestion avoidance uses the new size; the window is raised to the new minimum window
        if it is below it (RFC 9002 §7.2), otherwise kept: bytes, not packets, are what the path
        was shown to carry."""
        self.max_datagram_size = _check_datagram_size(size)
        minimum = K_MINIMUM_WINDOW_PACKETS * size
        if self.congestion_window < minimum:
            self.congestion_window = minimum

    def available(self) -> int:
        """Bytes that may be sent now: max(0, congestion_window - bytes_in_flight)."""
        room = self.congestion_window - self.bytes_in_flight
        return room if room > 0 else 0

    def on_packet_sent(self, size: int) -> None:
        """A datagram of ``size`` bytes left (counted in flight until acked, lost or discarded)."""
        if size < 0:
            raise _negative_size(size)
        self.bytes_in_flight += size

    def _remove_in_flight(self, size: int) -> None:
        if size < 0:
            raise _negative_size(size)
        if size > self.bytes_in_flight:
            self.in_flight_underflows += 1
            self.bytes_in_flight = 0
        else:
            self.bytes_in_flight -= size

    def on_packet_acked(self, size: int, sent_time: float, app_limited: bool = False) -> None:
        """A datagram of ``size`` bytes sent at ``sent_time`` was acknowledged (RFC 9002 §7.3).

        Packets sent at or before ``recovery_start`` do not grow the window. Otherwise slow start
        adds ``size``; congestion avoidance adds one max_datagram_size per congestion_window of
        acknowledged bytes, counted exactly (aioquic's byte stash).

        ``app_limited``: the packet was sent while the sender had less to send than the window
        allowed (an empty queue, no flow-control credit): its acknowledgement proves nothing
        about a larger window, so it does not grow it (RFC 9002 §7.8). Without this a sender
        held back by a slow receiver would grow its window without limit on every ack and then
        release it all at once when the credit comes."""
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

    def on_packets_lost(self, lost_bytes: int, largest_lost_sent_time: float, now: float) -> None:
        """Datagrams totalling ``lost_bytes`` were declared lost, the latest of them sent at
        ``largest_lost_sent_time`` (RFC 9002 §7.3.2, Appendix B.5-B.8).

        A loss of packets sent after the current episode began starts a new episode: ssthresh =
        congestion_window * K_LOSS_REDUCTION_FACTOR, the window drops to it (not below the minimum
        window) and ``recovery_start`` becomes ``now``. Further losses of packets sent before
        that change nothing but bytes in flight: one reduction per episode."""
        self._remove_in_flight(lost_bytes)
        if largest_lost_sent_time > self.recovery_start:
            self.recovery_start = now
            self.congestion_events += 1
            self.ssthresh = int(self.congestion_window * K_LOSS_REDUCTION_FACTOR)
            minimum = K_MINIMUM_WINDOW_PACKETS * self.max_datagram_size
            self.congestion_window = self.ssthresh if self.ssthresh > minimum else minimum
            self._acked_stash = 0

    def on_persistent_congestion(self) -> None:
        """The lost packets span more than the persistent-congestion duration (RFC 9002 §7.6.2):
        the window collapses to the minimum window and the recovery episode ends, so the next
        loss of a packet sent from now on reduces again. Call it after :meth:`on_packets_lost`
        for the same losses (which set ssthresh). Called without any loss episode before (a
        sender that declares it after consecutive probe timeouts), it also sets ssthresh as a
        loss would, so slow start stops at half the window that overflowed the path instead of
        growing without limit again."""
        if self.ssthresh == INFINITE_SSTHRESH:
            self.ssthresh = int(self.congestion_window * K_LOSS_REDUCTION_FACTOR)
        self.congestion_window = K_MINIMUM_WINDOW_PACKETS * self.max_datagram_size
        self.recovery_start = -_INF
        self._acked_stash = 0

    def on_packet_discarded(self, size: int) -> None:
        """A datagram of ``size`` bytes stops counting in flight without an ACK or a loss signal
        (its peer went away, its message was abandoned): no change to the window."""
        self._remove_in_flight(size)


@final
class Pacer:
    """Token bucket that spreads sends at K_PACING_GAIN * cwnd / srtt (RFC 9002 §7.7).

    Like aioquic's ``QuicPacketPacer``, with the credit kept in bytes (each send pays its own
    size) and debt carried over: whatever the caller does, bytes sent over any run of calls never
    exceed ``burst + pacing_rate * elapsed`` as long as it only sends when
    :meth:`next_send_time` says so and datagrams are at most ``max_datagram_size``. Before the
    first :meth:`update_rate` it does not pace (``pacing_rate`` 0.0).

    The burst is max(2, min(cwnd / 4 / mds, 16)) datagrams (aioquic's figure); the rate is
    clamped to one datagram per microsecond .. one per second.
    """

    __slots__ = (
        "_congestion_window",
        "_last_time",
        "_smoothed_rtt",
        "burst_size",
        "max_datagram_size",
        "pacing_rate",
        "tokens",
    )

    def __init__(self, max_datagram_size: int) -> None:
        self.max_datagram_size = _check_datagram_size(max_datagram_size)
        #: Bytes per second (0.0: not pacing yet).
        self.pacing_rate = 0.0
        #: Bucket depth, bytes.
        self.burst_size = 0.0
        #: Credit, bytes (negative: debt from a send the bucket could not cover).
        self.tokens = 0.0
        self._last_time = -_INF  # time the credit was last brought up to date
        self._congestion_window = 0
        self._smoothed_rtt = 0.0

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        """Set the rate from the current window and smoothed RTT (call after each ack or loss
        that changed them). The first call starts with a full bucket."""
        if congestion_window < 0:
            raise ValueError(f"congestion_window must be >= 0, got {congestion_window}")
        if not 0.0 <= smoothed_rtt < _INF:
            raise ValueError(f"smoothed_rtt must be a finite number >= 0, got {smoothed_rtt}")
        first = self.pacing_rate == 0.0
        self._congestion_window = congestion_window
        self._smoothed_rtt = smoothed_rtt + 0.0
        mds = self.max_datagram_size
        rtt = smoothed_rtt if smoothed_rtt > _K_MICRO_SECOND else _K_MICRO_SECOND
        rate = K_PACING_GAIN * congestion_window / rtt
        if rate < mds / _K_SECOND:
            rate = mds / _K_SECOND
        if rate > mds / _K_MICRO_SECOND:
            rate = mds / _K_MICRO_SECOND
        self.pacing_rate = rate
        quarter = congestion_window // 4
        burst = quarter if quarter < 16 * mds else 16 * mds
        if burst < 2 * mds:
            burst = 2 * mds
        self.burst_size = float(burst)
        if first or self.tokens > self.burst_size:
            self.tokens = self.burst_size

    def _refill(self, now: float) -> None:
        if now > self._last_time:
            if self.pacing_rate > 0.0:
                tokens = self.tokens + (now - self._last_time) * self.pacing_rate
                self.tokens = tokens if tokens < self.burst_size else self.burst_size
            self._last_time = now

    def next_send_time(self, now: float) -> float:
        """When the next datagram (of up to max_datagram_size bytes) may go: ``now`` or earlier
        means now, otherwise the time to ask again."""
        if self.pacing_rate == 0.0:
            return now
        self._refill(now)
        deficit = self.max_datagram_size - self.tokens
        if deficit <= 0.0:
            return now
        return now + deficit / self.pacing_rate

    def on_packet_sent(self, size: int, now: float) -> None:
        """A datagram of ``size`` bytes left at ``now``: its size is taken from the credit."""
        if size < 0:
            raise _negative_size(size)
        if self.pacing_rate == 0.0:
            return
        self._refill(now)
        self.tokens -= size

    def set_max_datagram_size(self, size: int) -> None:
        """The path's datagram size changed: burst and rate clamps follow it."""
        self.max_datagram_size = _check_datagram_size(size)
        if self.pacing_rate != 0.0:
            self.update_rate(self._congestion_window, self._smoothed_rtt)
