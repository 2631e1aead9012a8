"""Datagram size discovery toward one peer: RFC 8899 DPLPMTUD as a sans-I/O state machine.

The caller (the node) sends the probes this asks for, padded datagrams of exactly the size
returned by :meth:`PathMtu.next_probe`, which the peer answers with a small acknowledgment
naming the probe; it reports those acknowledgments, the loss or acknowledgment of ordinary
datagrams, and the passage of time. This object only decides: which size to probe next, when
a probe counts as lost, and which datagram size (:attr:`PathMtu.current`, RFC 8899's PLPMTU)
is known to get through. It never touches a socket or a clock of its own.

The search, its numbers and the reasons for them are in ``docs/pmtu.md``.
"""

from __future__ import annotations

import math
from typing import Literal

from .errors import ConfigError

#: The size every path is assumed to carry: 1,280-byte IPv6 minimum MTU less the IPv6 and UDP
#: headers, rounded down as QUIC does (RFC 9000 §14), so it also fits IPv4 with options.
BASE_PLPMTU = 1200
#: The largest UDP payload IPv4 can carry (65,535 less the 20-byte IP and 8-byte UDP headers).
MAX_UDP_PAYLOAD = 65507

#: Path limits seen in practice, as UDP payload sizes (link MTU less 48 bytes of IPv6 + UDP
#: headers, or 28 of IPv4 + UDP): 1,280 (IPv6 minimum), 1,420 (WireGuard), 1,492 (PPPoE),
#: 1,500 (Ethernet), 9,000 (jumbo frames), 9,001 (EC2 jumbo frames) and 65,536 (Linux
#: loopback; 65,507 is the IPv4 payload limit itself). The search climbs through these before
#: it bisects.
COMMON_SIZES: tuple[int, ...] = (
    1232, 1252, 1372, 1392, 1444, 1452, 1464, 1472, 8952, 8953, 8972, 8973, 65488,
)  # fmt: skip
#: The largest UDP payload over IPv6 on any link whose MTU is at most 65,536 (loopback's):
#: the ``maximum`` to give an IPv6 path, so loopback is found by its first probe.
MAX_UDP_PAYLOAD_IPV6 = 65488
#: Bisection stops once the largest size acknowledged and the smallest that failed are this
#: close: each bisection step may cost ``max_probes`` probe timeouts, and 16 bytes is about
#: 1 % of the smallest datagram searched.
SEARCH_GRANULARITY = 16
#: Probe timeout from the smoothed RTT: ``max(MIN_PROBE_TIMEOUT, PROBE_RTT_FACTOR * srtt)``,
#: at most ``MAX_PROBE_TIMEOUT`` (RFC 8899's PROBE_TIMER for a path whose RTT is unknown).
PROBE_RTT_FACTOR = 3.0
MIN_PROBE_TIMEOUT = 0.1
MAX_PROBE_TIMEOUT = 15.0
#: A black hole is declared after this many losses of datagrams larger than the base, with no
#: datagram larger than the base acknowledged in between, spread over at least
#: ``BLACK_HOLE_SPAN`` probe timeouts (a single burst of congestion loss, reported at once,
#: does not span time; a path that stopped carrying large datagrams keeps losing them).
BLACK_HOLE_LOSSES = 6
BLACK_HOLE_SPAN = 2.0
#: After the base size itself could not be confirmed (state "error"), it is probed again this
#: long after (or after ``raise_interval`` when that is shorter).
ERROR_RETRY_INTERVAL = 60.0

PmtuState = Literal["disabled", "base", "searching", "search_complete", "error"]


class PathMtu:
    """RFC 8899 DPLPMTUD for one path: probes upward from ``base`` toward ``maximum`` and
    keeps :attr:`current`, the largest datagram size known to get through.

    States (RFC 8899 §5.2): ``disabled`` (never probes; ``current`` stays ``base``),
    ``base`` (confirming that ``base`` itself gets through), ``searching``,
    ``search_complete`` (until the raise timer searches again) and ``error`` (the base probe
    was lost ``max_probes`` times; ``current`` stays ``base``, the smallest size p2pfast
    sends, and the base is probed again later). One probe is outstanding at a time.
    """

    def __init__(
        self,
        base: int = BASE_PLPMTU,
        maximum: int = MAX_UDP_PAYLOAD,
        *,
        enabled: bool = True,
        probe_timeout: float = 0.5,
        max_probes: int = 3,
        raise_interval: float = 600.0,
        granularity: int = SEARCH_GRANULARITY,
        now: float = 0.0,
    ) -> None:
        if not 0 < base <= maximum <= MAX_UDP_PAYLOAD:
            raise ConfigError(
                f"path MTU sizes must satisfy 0 < base ({base}) <= maximum ({maximum})"
                f" <= {MAX_UDP_PAYLOAD}"
            )
        if not (probe_timeout > 0 and math.isfinite(probe_timeout)):
            raise ConfigError(
                f"probe_timeout must be a positive number of seconds, not {probe_timeout}"
            )
        if max_probes < 1:
            raise ConfigError(f"max_probes must be at least 1, not {max_probes}")
        if not raise_interval > 0:
            raise ConfigError(f"raise_interval must be positive, not {raise_interval}")
        if granularity < 1:
            raise ConfigError(f"granularity must be at least 1 byte, not {granularity}")
        self.base = base
        self.maximum = maximum
        self.max_probes = max_probes
        self.raise_interval = raise_interval
        self.granularity = granularity
        #: Seconds before an unanswered probe counts as lost (see :meth:`set_rtt`).
        self.probe_timeout = float(probe_timeout)
        #: The PLPMTU: the largest datagram size known to get through.
        self.current = base
        self.state: PmtuState = "base" if enabled else "disabled"
        self.probes_sent = 0
        self.probes_acked = 0
        #: Probe sizes given up on after ``max_probes`` losses each.
        self.probes_failed = 0
        self.black_holes = 0
        # The rungs the search climbs: each common size and the size one byte above it (a
        # rung that fails right above an acknowledged one pins the limit exactly), and the
        # base's own next byte, so a path of exactly ``base`` is settled by one failure.
        rungs = {self.base + 1}
        for size in COMMON_SIZES:
            rungs.update((size, size + 1))
        self._rungs = sorted(r for r in rungs if base < r < maximum)
        # Smallest size known to fail in this search (None: nothing has failed yet).
        self._failed_above: int | None = None
        # The size being probed, probes of it lost so far, and the outstanding probe's deadline.
        self._candidate: int | None = base if enabled else None
        self._lost = 0
        self._deadline: float | None = None
        # When the raise timer (search_complete) or the error retry fires.
        self._wake = math.inf
        # Black-hole detection: consecutive large-datagram losses and when the run started.
        self._large_losses = 0
        self._loss_run_start = now

    # -- what the caller asks ------------------------------------------------------------

    @property
    def probe_pending(self) -> bool:
        """Whether :meth:`next_probe` would return a size now (no probe is outstanding and
        the search wants one)."""
        return self._candidate is not None and self._deadline is None

    @property
    def in_flight(self) -> int | None:
        """The size of the outstanding probe, if any."""
        return self._candidate if self._deadline is not None else None

    def set_rtt(self, smoothed_rtt: float) -> None:
        """Adapt the probe timeout to the path: ``3 × srtt`` (the peer answers a probe at
        once, so only jitter and a large probe's extra serialization time need covering),
        never below 0.1 s (a scheduler stall on a loaded host must not fail a size that
        works) nor above RFC 8899's 15 s. Applies from the next probe sent."""
        if not (smoothed_rtt >= 0 and math.isfinite(smoothed_rtt)):
            return
        self.probe_timeout = min(
            MAX_PROBE_TIMEOUT, max(MIN_PROBE_TIMEOUT, PROBE_RTT_FACTOR * smoothed_rtt)
        )

    def next_probe(self, now: float) -> int | None:
        """The size of a probe to send now, recorded as outstanding until acknowledged or
        timed out; None when no probe is wanted (or one is already outstanding). Expired
        timers are handled first, so a caller that only polls this still makes progress."""
        self.handle_timer(now)
        if self._candidate is None or self._deadline is not None:
            return None
        self._deadline = now + self.probe_timeout
        self.probes_sent += 1
        return self._candidate

    def next_timer(self) -> float:
        """When :meth:`handle_timer` wants to run: the outstanding probe's timeout, the raise
        timer, or the error retry; ``inf`` when nothing is scheduled."""
        if self._deadline is not None:
            return self._deadline
        return self._wake

    def handle_timer(self, now: float) -> None:
        """Count an outstanding probe whose timeout has passed as lost (the size is given up
        after ``max_probes`` of them); start a new search when the raise timer fires, and
        retry the base after an error."""
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            self._lost += 1
            if self._lost >= self.max_probes:
                self._give_up(now)
        elif self._deadline is None and now >= self._wake:
            self._wake = math.inf
            if self.state == "search_complete":
                # RFC 8899 §5.3.2: the path may have grown; forget what failed and search.
                self._failed_above = None
                self.state = "searching"
                self._choose(now)
            elif self.state == "error":
                self.state = "base"
                self._probe(self.base)

    # -- what the caller reports ---------------------------------------------------------

    def on_probe_acked(self, size: int, now: float) -> None:
        """The peer acknowledged a probe of ``size`` bytes. Only the size being probed counts
        (its outstanding probe or an earlier one of the same size answered late): an
        acknowledgment naming any other size, never probed or already given up on, is
        ignored, so a peer cannot talk ``current`` above what was probed."""
        if self._candidate is None or size != self._candidate:
            return
        if self._deadline is None and self._lost == 0:
            return  # chosen but never sent
        self._deadline = None
        self.probes_acked += 1
        if self.state == "base":
            self.state = "searching"
        else:
            self.current = max(self.current, size)
        self._choose(now)

    def on_probe_refused(self, size: int, now: float) -> None:
        """The local stack refused to send the outstanding probe of ``size`` bytes (EMSGSIZE:
        larger than the interface MTU, with fragmentation forbidden) or a validated ICMP
        Packet Too Big named a smaller size: the size fails at once instead of costing
        ``max_probes`` timeouts. Any other size is ignored."""
        if self._candidate is None or size != self._candidate or self._deadline is None:
            return
        self._deadline = None
        self._lost = self.max_probes
        self._give_up(now)

    def on_packet_acked(self, size: int, now: float) -> None:
        """An ordinary datagram of ``size`` bytes was acknowledged: a datagram larger than
        the base got through, so the run of large losses behind black-hole detection ends."""
        if size > self.base:
            self._large_losses = 0

    def on_packet_lost(self, size: int, now: float) -> None:
        """An ordinary datagram of ``size`` bytes was declared lost. ``BLACK_HOLE_LOSSES``
        losses in a row of datagrams larger than the base, spread over ``BLACK_HOLE_SPAN``
        probe timeouts, mean the path stopped carrying ``current``: fall back to the base
        and confirm it, then search again (RFC 8899 §4.3, §5.2)."""
        if size <= self.base or self.current <= self.base:
            return
        if self._large_losses == 0:
            self._loss_run_start = now
        self._large_losses += 1
        if (
            self._large_losses >= BLACK_HOLE_LOSSES
            and now - self._loss_run_start >= BLACK_HOLE_SPAN * self.probe_timeout
        ):
            self.black_holes += 1
            self.current = self.base
            self._large_losses = 0
            self._failed_above = None
            self._wake = math.inf
            self.state = "base"
            self._probe(self.base)

    # -- the search ----------------------------------------------------------------------

    def _probe(self, size: int) -> None:
        """Make ``size`` the next probe (none outstanding, no losses counted yet)."""
        self._candidate = size
        self._lost = 0
        self._deadline = None

    def _give_up(self, now: float) -> None:
        """The candidate was lost ``max_probes`` times: the base failing is an error, any
        larger size bounds the search from above."""
        size = self._candidate
        self.probes_failed += 1
        if self.state == "base" or size is None:
            self.state = "error"
            self._candidate = None
            self._lost = 0
            self._wake = now + min(ERROR_RETRY_INTERVAL, self.raise_interval)
            return
        if self._failed_above is None or size < self._failed_above:
            self._failed_above = size
        self._choose(now)

    def _choose(self, now: float) -> None:
        """Pick the next size to probe above ``current``, or finish the search.

        First the maximum (a path that carries it, loopback above all, is done in one round
        trip); once something failed, the rungs between ``current`` and the smallest failure,
        lowest first (an acknowledged probe costs one round trip, a failed one
        ``max_probes`` timeouts, so climbing meets exactly one failure); past the last rung,
        bisection down to ``granularity`` bytes."""
        low = self.current
        high = self._failed_above
        size: int | None = None
        if high is None:
            if low < self.maximum:
                size = self.maximum
        else:
            size = next((r for r in self._rungs if low < r < high), None)
            if size is None and high - low > self.granularity:
                size = (low + high) // 2
        if size is None:
            self.state = "search_complete"
            self._candidate = None
            self._lost = 0
            self._deadline = None
            self._wake = now + self.raise_interval
        else:
            self.state = "searching"
            self._probe(size)
