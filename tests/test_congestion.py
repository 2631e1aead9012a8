"""Congestion control: RttEstimator, NewReno and Pacer, compiled ([c]) and pure ([py]).

Every example test takes the ``cc`` fixture, so it runs once per implementation: the RFC 9002
rules (slow start, one reduction per recovery episode, persistent congestion, congestion
avoidance, PTO and loss-delay formulas), the pacer's rate and burst bound, bad input, and
hypothesis tests of the invariants over random call sequences. ``test_parity_*`` drive the
compiled and pure twins with the same random calls and compare every field after every step
(skipped when the extensions are disabled). A small sans-I/O simulation of a bottleneck link
checks that the three together adapt to it instead of flooding it.
"""

from __future__ import annotations

import importlib
import math
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PURE = importlib.import_module("p2pfast.congestion")
NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")

HYPO = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

MDS = 1200
INF = math.inf


def _compiled() -> Any:
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    try:
        return importlib.import_module("p2pfast._congestion")
    except ImportError as exc:  # a missing build is a failure, not a skip
        pytest.fail(f"compiled module p2pfast._congestion not importable: {exc}")


@pytest.fixture(params=["c", "py"])
def cc(request: pytest.FixtureRequest) -> Any:
    """The congestion module, compiled ([c]) and pure ([py]); local to this file so
    tests/conftest.py stays its owner's."""
    return PURE if request.param == "py" else _compiled()


# --------------------------------------------------------------------------- module surface


def test_constants(cc):
    assert cc.K_INITIAL_WINDOW_PACKETS == 10
    assert cc.K_INITIAL_WINDOW_BYTES == 14720
    assert cc.K_MINIMUM_WINDOW_PACKETS == 2
    assert cc.K_LOSS_REDUCTION_FACTOR == 0.5
    assert cc.K_PERSISTENT_CONGESTION_THRESHOLD == 3
    assert cc.K_GRANULARITY == 0.001
    assert cc.INITIAL_RTT == 0.1
    assert cc.K_PACING_GAIN == 1.25
    assert cc.K_MAX_UDP_PAYLOAD == 65535
    assert cc.INFINITE_SSTHRESH == 2**63 - 1


def test_same_public_names(cc):
    def public(obj: object) -> set[str]:
        return {n for n in dir(obj) if not n.startswith("_")}

    for name in ("RttEstimator", "NewReno", "Pacer"):
        assert public(getattr(cc, name)) == public(getattr(PURE, name)), name
    module_names = {n for n in public(PURE) if n.isupper()}
    assert module_names <= public(cc)


def test_speedups_selects_the_active_twin():
    from p2pfast import _speedups

    assert "congestion" in _speedups.__all__
    expected = "p2pfast._congestion" if _speedups.USE_EXTENSIONS else "p2pfast.congestion"
    assert _speedups.congestion.__name__ == expected
    if os.environ.get("P2PFAST_REQUIRE_EXTENSIONS") == "1":
        assert _speedups.congestion.__name__ == "p2pfast._congestion"


# --------------------------------------------------------------------------- RttEstimator


def test_rtt_before_any_sample(cc):
    r = cc.RttEstimator()
    assert (r.latest_rtt, r.min_rtt, r.smoothed_rtt, r.rttvar) == (0.0, 0.0, 0.1, 0.05)
    assert r.has_sample is False
    # RFC 9002 §6.2.2: before a sample, PTO = initial + 4 * initial/2 (+ max_ack_delay).
    assert r.pto(0.0) == pytest.approx(0.3)
    assert r.pto(0.025) == pytest.approx(0.325)
    assert r.loss_delay() == pytest.approx(9 / 8 * 0.1)
    assert r.persistent_congestion_duration(0.025) == pytest.approx(3 * 0.325)


def test_rtt_rfc_initial_rtt_gives_one_second_pto(cc):
    # RFC 9002 §6.2.2: "kInitialRtt of 333 milliseconds ... results in a PTO of 1 second".
    assert cc.RttEstimator(0.333).pto(0.0) == pytest.approx(0.999)


def test_rtt_first_sample(cc):
    r = cc.RttEstimator(0.5)
    r.update(0.08, 0.02)  # the first sample ignores ack_delay (RFC 9002 §5.3)
    assert r.has_sample is True
    assert (r.latest_rtt, r.min_rtt, r.smoothed_rtt, r.rttvar) == (0.08, 0.08, 0.08, 0.04)
    assert type(r.smoothed_rtt) is float


def test_rtt_subsequent_samples_follow_rfc_9002(cc):
    r = cc.RttEstimator()
    r.update(0.1, 0.0)
    r.update(0.14, 0.02)  # 0.14 >= min 0.1 + 0.02: ack delay subtracted -> 0.12
    assert r.latest_rtt == 0.14
    assert r.min_rtt == 0.1
    adjusted = 0.14 - 0.02
    assert r.rttvar == 3 / 4 * 0.05 + 1 / 4 * abs(0.1 - adjusted)
    assert r.smoothed_rtt == 7 / 8 * 0.1 + 1 / 8 * adjusted


def test_rtt_ack_delay_never_takes_sample_below_min_rtt(cc):
    r = cc.RttEstimator()
    r.update(0.1, 0.0)
    r.update(0.11, 0.05)  # 0.11 - 0.05 < min_rtt: the raw sample is used
    assert r.smoothed_rtt == 7 / 8 * 0.1 + 1 / 8 * 0.11
    assert r.rttvar == 3 / 4 * 0.05 + 1 / 4 * abs(0.1 - 0.11)


def test_rtt_min_rtt_is_raw_minimum(cc):
    r = cc.RttEstimator()
    for sample, delay in [(0.2, 0.0), (0.15, 0.1), (0.3, 0.2), (0.16, 0.0)]:
        r.update(sample, delay)
    assert r.min_rtt == 0.15  # ack delay never lowers min_rtt
    assert r.latest_rtt == 0.16


def test_rtt_pto_granularity_floor(cc):
    r = cc.RttEstimator()
    for _ in range(200):  # a steady path: rttvar decays toward 0
        r.update(0.01, 0.0)
    assert 4 * r.rttvar < cc.K_GRANULARITY
    assert r.pto(0.025) == r.smoothed_rtt + cc.K_GRANULARITY + 0.025
    assert r.persistent_congestion_duration(0.025) == r.pto(0.025) * 3


def test_rtt_loss_delay_uses_larger_of_srtt_and_latest(cc):
    r = cc.RttEstimator()
    r.update(0.1, 0.0)
    r.update(0.5, 0.0)  # latest above srtt
    assert r.latest_rtt > r.smoothed_rtt
    assert r.loss_delay() == 9 / 8 * 0.5
    r.update(0.0001, 0.0)  # latest below srtt
    assert r.loss_delay() == 9 / 8 * r.smoothed_rtt


def test_rtt_loss_delay_granularity_floor(cc):
    r = cc.RttEstimator()
    r.update(0.0, 0.0)  # loopback with a coarse clock: a zero sample is valid
    assert r.smoothed_rtt == 0.0
    assert r.loss_delay() == cc.K_GRANULARITY
    assert r.pto(0.0) == cc.K_GRANULARITY


@pytest.mark.parametrize("bad", [-0.001, -1.0, math.nan, math.inf, -math.inf])
def test_rtt_bad_samples_refused_state_unchanged(cc, bad):
    r = cc.RttEstimator()
    r.update(0.1, 0.0)
    before = _rtt_state(r)
    with pytest.raises(ValueError, match="latest_rtt must be a finite number >= 0"):
        r.update(bad, 0.0)
    with pytest.raises(ValueError, match="ack_delay must be a finite number >= 0"):
        r.update(0.1, bad)
    assert _rtt_state(r) == before


@pytest.mark.parametrize("bad", [0.0, -0.1, math.nan, math.inf])
def test_rtt_bad_initial_rtt(cc, bad):
    with pytest.raises(ValueError, match="initial_rtt must be a positive number of seconds"):
        cc.RttEstimator(bad)


# --------------------------------------------------------------------------- NewReno


@pytest.mark.parametrize(
    ("mds", "window"),
    [(1200, 12000), (1280, 12800), (1472, 14720), (1500, 14720), (9000, 18000),
     (65507, 131014), (100, 1000), (1, 10)],
)  # fmt: skip
def test_reno_initial_window(cc, mds, window):
    r = cc.NewReno(mds)
    assert r.congestion_window == window
    assert r.minimum_window == 2 * mds
    assert r.ssthresh == cc.INFINITE_SSTHRESH
    assert r.bytes_in_flight == 0
    assert r.recovery_start == -INF
    assert (r.congestion_events, r.in_flight_underflows) == (0, 0)
    assert r.available() == window


@pytest.mark.parametrize("mds", [0, -1, 65536, 1 << 40])
def test_reno_bad_datagram_size(cc, mds):
    with pytest.raises(ValueError, match="max_datagram_size must be between 1 and 65535"):
        cc.NewReno(mds)
    r = cc.NewReno(MDS)
    with pytest.raises(ValueError, match="max_datagram_size must be between 1 and 65535"):
        r.set_max_datagram_size(mds)
    assert r.max_datagram_size == MDS


def _round_trip(r: Any, n_packets: int, sent_at: float, size: int = MDS) -> None:
    """Send n packets at ``sent_at`` and acknowledge them all."""
    for _ in range(n_packets):
        r.on_packet_sent(size)
    for _ in range(n_packets):
        r.on_packet_acked(size, sent_at)


def test_reno_slow_start_doubles_per_round_trip(cc):
    r = cc.NewReno(MDS)
    t = 0.0
    for expected in (24000, 48000, 96000, 192000):
        window = r.congestion_window
        assert r.available() == window
        _round_trip(r, window // MDS, t)
        t += 0.1
        assert r.congestion_window == expected
        assert r.bytes_in_flight == 0


def test_reno_one_reduction_per_episode(cc):
    r = cc.NewReno(MDS)
    for _ in range(40):
        r.on_packet_sent(MDS)
    # Losses of packets sent at t=1.0, declared at 1.2, then more of the same flight later.
    r.on_packets_lost(MDS, 1.0, 1.2)
    assert r.ssthresh == 6000 and r.congestion_window == 6000
    assert r.recovery_start == 1.2
    assert r.congestion_events == 1
    for now in (1.3, 1.4, 1.5):
        r.on_packets_lost(3 * MDS, 1.0, now)  # sent before the episode began
        r.on_packets_lost(MDS, 1.2, now)  # sent exactly when it began: still in it
    assert r.congestion_window == 6000 and r.ssthresh == 6000
    assert r.recovery_start == 1.2 and r.congestion_events == 1
    assert r.bytes_in_flight == 40 * MDS - 13 * MDS
    # A packet sent after the episode began and lost: a new episode, halving again.
    r.on_packets_lost(MDS, 1.25, 1.6)
    assert r.congestion_window == 3000 and r.ssthresh == 3000
    assert r.recovery_start == 1.6 and r.congestion_events == 2


def test_reno_no_growth_during_recovery(cc):
    r = cc.NewReno(MDS)
    for _ in range(10):
        r.on_packet_sent(MDS)
    r.on_packets_lost(MDS, 0.5, 1.0)
    window = r.congestion_window
    for sent_time in (0.1, 0.5, 0.999, 1.0):  # sent at or before recovery_start
        r.on_packet_acked(MDS, sent_time)
        assert r.congestion_window == window
    assert r.bytes_in_flight == 10 * MDS - 5 * MDS
    r.on_packet_sent(window)
    r.on_packet_acked(window, 1.001)  # sent after: congestion avoidance grows it
    assert r.congestion_window == window + MDS


def test_reno_congestion_avoidance_grows_one_datagram_per_window(cc):
    r = cc.NewReno(MDS)
    r.on_packet_sent(MDS)
    r.on_packets_lost(MDS, 0.0, 0.0)
    window = r.congestion_window
    assert window == 6000 and r.ssthresh == 6000
    r.on_packet_sent(10**6)
    r.on_packet_acked(window - 1, 1.0)
    assert r.congestion_window == window  # one byte short of a window
    r.on_packet_acked(1, 1.0)
    assert r.congestion_window == window + MDS
    # Odd sizes: the byte stash makes growth exact over many acks.
    acked = 0
    start = r.congestion_window
    rng = random.Random(5)
    while r.congestion_window < start + 10 * MDS:
        size = rng.randrange(1, MDS + 1)
        r.on_packet_acked(size, 2.0)
        acked += size
    # Growing from W to W + 10 mds needs W + (W + mds) + ... + (W + 9 mds) bytes acked, and
    # the last ack crossed the threshold.
    needed = sum(start + k * MDS for k in range(10))
    assert needed <= acked < needed + MDS


def test_reno_one_datagram_per_window_of_acks(cc):
    # ~1 mds per RTT in congestion avoidance: a full window acked each round trip.
    r = cc.NewReno(MDS)
    r.on_packet_sent(MDS)
    r.on_packets_lost(MDS, 0.0, 0.0)
    t = 1.0
    for _ in range(20):
        window = r.congestion_window
        n = window // MDS
        for _ in range(n):
            r.on_packet_sent(MDS)
        for _ in range(n):
            r.on_packet_acked(MDS, t)
        t += 0.1
        assert r.congestion_window in (window, window + MDS)
    assert 6000 + 15 * MDS <= r.congestion_window <= 6000 + 20 * MDS


def test_reno_app_limited_acks_do_not_grow_the_window(cc):
    r = cc.NewReno(MDS)
    for _ in range(4):  # a sender with little to send (or no credit): the window is not used
        r.on_packet_sent(MDS)
    for _ in range(4):
        r.on_packet_acked(MDS, 1.0, True)
    assert (r.congestion_window, r.bytes_in_flight) == (12000, 0)
    r.on_packet_sent(MDS)
    r.on_packet_acked(MDS, 1.0, app_limited=False)
    assert r.congestion_window == 13200
    r.on_packet_sent(MDS)
    r.on_packets_lost(MDS, 1.0, 2.0)
    r.on_packet_sent(r.congestion_window)
    r.on_packet_acked(r.congestion_window, 3.0, app_limited=True)  # avoidance: no stash either
    r.on_packet_sent(r.congestion_window - 1)
    r.on_packet_acked(r.congestion_window - 1, 3.0)
    assert r.congestion_window == 6600
    assert r.bytes_in_flight == 0


def test_reno_persistent_congestion(cc):
    r = cc.NewReno(MDS)
    _round_trip(r, 10, 0.0)
    for _ in range(10):
        r.on_packet_sent(MDS)
    r.on_packets_lost(10 * MDS, 0.9, 2.0)
    assert r.ssthresh == 12000
    r.on_persistent_congestion()
    assert r.congestion_window == 2 * MDS == r.minimum_window
    assert r.ssthresh == 12000  # set by the loss, kept: slow start back to it
    assert r.recovery_start == -INF
    assert r.bytes_in_flight == 0
    # Slow start again (below ssthresh), and the next loss is a new episode.
    _round_trip(r, 2, 2.1)
    assert r.congestion_window == 4 * MDS
    r.on_packet_sent(MDS)
    r.on_packets_lost(MDS, 2.2, 2.5)
    assert r.congestion_events == 2
    assert r.congestion_window == 2 * MDS  # max(4 mds / 2, minimum)


def test_reno_persistent_congestion_without_a_loss_episode(cc):
    # A sender that declares it after consecutive probe timeouts, no loss reported before:
    # slow start must stop at half the window that overflowed, not grow without limit again.
    r = cc.NewReno(MDS)
    _round_trip(r, 10, 0.0)
    assert r.congestion_window == 24000 and r.ssthresh == cc.INFINITE_SSTHRESH
    r.on_persistent_congestion()
    assert (r.congestion_window, r.ssthresh) == (2 * MDS, 12000)
    t = 1.0
    while r.congestion_window < 12000:
        _round_trip(r, r.congestion_window // MDS, t)
        t += 0.1
    assert r.congestion_window == 12000  # 2400, 4800, 9600, then avoidance from 12000 on
    r.on_persistent_congestion()  # a second time: ssthresh already set, kept
    assert (r.congestion_window, r.ssthresh) == (2 * MDS, 12000)


def test_reno_minimum_window_floor(cc):
    r = cc.NewReno(MDS)
    for i in range(30):
        r.on_packet_sent(MDS)
        r.on_packets_lost(MDS, float(i) + 0.5, float(i + 1))
        assert r.congestion_window >= 2 * MDS
    assert r.congestion_window == 2 * MDS
    assert r.congestion_events == 30
    assert r.ssthresh == MDS  # half the minimum window: below it, as RFC 9002 allows


def test_reno_available_never_negative(cc):
    r = cc.NewReno(MDS)
    for _ in range(10):
        r.on_packet_sent(MDS)
    r.on_packets_lost(MDS, 0.0, 0.1)
    assert r.bytes_in_flight == 9 * MDS > r.congestion_window
    assert r.available() == 0


def test_reno_discard_changes_flight_only(cc):
    r = cc.NewReno(MDS)
    for _ in range(5):
        r.on_packet_sent(MDS)
    r.on_packet_discarded(2 * MDS)
    assert r.bytes_in_flight == 3 * MDS
    assert r.congestion_window == 12000 and r.ssthresh == cc.INFINITE_SSTHRESH
    assert r.congestion_events == 0 and r.recovery_start == -INF


@pytest.mark.parametrize("call", ["ack", "lost", "discard"])
def test_reno_in_flight_clamped_and_counted(cc, call):
    r = cc.NewReno(MDS)
    r.on_packet_sent(MDS)
    removes = {
        "ack": lambda n: r.on_packet_acked(n, 0.0),
        "lost": lambda n: r.on_packets_lost(n, 0.0, 0.0),
        "discard": lambda n: r.on_packet_discarded(n),
    }[call]
    removes(MDS)  # the same packet reported twice (a caller's bug)
    assert (r.bytes_in_flight, r.in_flight_underflows) == (0, 0)
    removes(MDS)
    assert (r.bytes_in_flight, r.in_flight_underflows) == (0, 1)
    r.on_packet_sent(100)
    removes(101)
    assert (r.bytes_in_flight, r.in_flight_underflows) == (0, 2)
    removes(0)
    assert r.in_flight_underflows == 2


@pytest.mark.parametrize("call", ["sent", "ack", "lost", "discard"])
def test_reno_negative_sizes_refused(cc, call):
    r = cc.NewReno(MDS)
    r.on_packet_sent(5000)
    before = _reno_state(r)
    with pytest.raises(ValueError, match="size must be >= 0, got -1"):
        {
            "sent": lambda: r.on_packet_sent(-1),
            "ack": lambda: r.on_packet_acked(-1, 0.0),
            "lost": lambda: r.on_packets_lost(-1, 0.0, 0.0),
            "discard": lambda: r.on_packet_discarded(-1),
        }[call]()
    assert _reno_state(r) == before


def test_reno_set_max_datagram_size(cc):
    r = cc.NewReno(1200)
    r.set_max_datagram_size(9000)  # path-MTU discovery found more room
    assert r.max_datagram_size == 9000
    assert r.congestion_window == 18000  # raised to the new minimum window
    r.set_max_datagram_size(1200)  # and back down (probes stopped arriving)
    assert r.congestion_window == 18000  # bytes the path carried: kept
    r.on_packet_sent(1200)
    r.on_packets_lost(1200, 0.0, 0.0)
    assert r.congestion_window == 9000
    r.set_max_datagram_size(1500)
    r.on_packet_sent(9000)
    r.on_packet_acked(9000, 1.0)
    assert r.congestion_window == 9000 + 1500  # growth in the new datagram size


# --------------------------------------------------------------------------- Pacer


def test_pacer_does_not_pace_before_a_rate(cc):
    p = cc.Pacer(MDS)
    assert p.pacing_rate == 0.0
    for i in range(100):
        now = i * 1e-9
        assert p.next_send_time(now) == now
        p.on_packet_sent(MDS, now)


def test_pacer_rate_and_burst(cc):
    p = cc.Pacer(MDS)
    p.update_rate(60000, 0.1)
    assert p.pacing_rate == 1.25 * 60000 / 0.1
    assert p.burst_size == 60000 // 4  # a quarter window, between 2 and 16 datagrams
    assert p.tokens == p.burst_size  # the first rate starts with a full bucket
    p.update_rate(6000, 0.1)
    assert p.burst_size == 2 * MDS  # at least two datagrams
    assert p.tokens == 2 * MDS  # credit clamped to the new burst
    p.update_rate(10**7, 0.1)
    assert p.burst_size == 16 * MDS  # at most sixteen


def test_pacer_rate_clamps(cc):
    p = cc.Pacer(MDS)
    p.update_rate(12000, 0.0)  # zero RTT (loopback): one datagram per microsecond at most
    assert p.pacing_rate == MDS / 0.000001
    p.update_rate(1000, 100.0)  # one datagram per second at least
    assert p.pacing_rate == MDS / 1.0
    p.update_rate(0, 0.1)
    assert p.pacing_rate == MDS / 1.0


def test_pacer_spaces_sends_after_the_burst(cc):
    p = cc.Pacer(MDS)
    p.update_rate(9600, 0.1)  # 120,000 B/s: one datagram per 10 ms, burst of 2
    assert p.burst_size == 2 * MDS
    now = 10.0
    assert p.next_send_time(now) == now
    p.on_packet_sent(MDS, now)
    assert p.next_send_time(now) == now
    p.on_packet_sent(MDS, now)
    wait = p.next_send_time(now) - now
    assert wait == pytest.approx(MDS / 120000)
    assert p.next_send_time(now + wait / 2) > now + wait / 2
    later = now + wait
    assert p.next_send_time(later) <= later + 1e-12
    p.on_packet_sent(MDS, later)
    assert p.next_send_time(later) == pytest.approx(later + MDS / 120000)


def test_pacer_debt_is_carried(cc):
    p = cc.Pacer(MDS)
    p.update_rate(9600, 0.1)  # 120,000 B/s, burst of 2 datagrams
    for _ in range(10):  # a sender that ignores the pacer
        p.on_packet_sent(MDS, 0.0)
    assert p.tokens == 2 * MDS - 10 * MDS
    # It must wait until the debt and one datagram's credit have been earned.
    assert p.next_send_time(0.0) == pytest.approx(9 * MDS / 120000)


def test_pacer_set_max_datagram_size(cc):
    p = cc.Pacer(MDS)
    p.set_max_datagram_size(1500)  # before a rate: just stored
    assert (p.max_datagram_size, p.pacing_rate) == (1500, 0.0)
    p.update_rate(12000, 0.1)
    assert p.burst_size == 3000
    p.set_max_datagram_size(9000)
    assert p.burst_size == 18000
    assert p.pacing_rate == 1.25 * 12000 / 0.1
    with pytest.raises(ValueError, match="max_datagram_size must be between 1 and 65535"):
        p.set_max_datagram_size(0)


def test_pacer_bad_input(cc):
    p = cc.Pacer(MDS)
    with pytest.raises(ValueError, match="congestion_window must be >= 0"):
        p.update_rate(-1, 0.1)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="smoothed_rtt must be a finite number >= 0"):
            p.update_rate(12000, bad)
    with pytest.raises(ValueError, match="size must be >= 0"):
        p.on_packet_sent(-5, 0.0)
    assert p.pacing_rate == 0.0
    with pytest.raises(ValueError, match="max_datagram_size"):
        cc.Pacer(0)


@HYPO
@given(
    cwnd=st.integers(2 * MDS, 2_000_000),
    srtt=st.floats(0.0, 0.5),
    polls=st.lists(st.floats(0.0, 0.01), min_size=50, max_size=400),
    sizes=st.lists(st.integers(1, MDS), min_size=1, max_size=50),
)
def test_pacer_never_exceeds_rate_times_elapsed_plus_burst(cc, cwnd, srtt, polls, sizes):
    """An obedient sender polling at arbitrary times: bytes sent by any time t never exceed
    burst + rate * (t - t0), and it is held back only when out of credit."""
    p = cc.Pacer(MDS)
    p.update_rate(cwnd, srtt)
    rate, burst = p.pacing_rate, p.burst_size
    t0 = now = 1000.0
    sent = sends = 0
    for gap in polls:
        now += gap
        while p.next_send_time(now) <= now:
            size = sizes[sends % len(sizes)]
            p.on_packet_sent(size, now)
            sent += size
            sends += 1
            assert sent <= burst + rate * (now - t0) + 1e-6 * burst
        assert p.next_send_time(now) > now
        assert p.tokens < MDS  # held back only when less than a datagram of credit is left


# --------------------------------------------------------------------------- property tests

_reno_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 3 * MDS)),
        st.tuples(st.just("ack"), st.integers(0, 3 * MDS), st.floats(0, 100), st.booleans()),
        st.tuples(st.just("lost"), st.integers(0, 20 * MDS), st.floats(0, 100)),
        st.tuples(st.just("discard"), st.integers(0, 3 * MDS)),
        st.tuples(st.just("persistent")),
        st.tuples(st.just("mds"), st.integers(1, 9000)),
    ),
    max_size=80,
)


def _apply_reno(r: Any, op: tuple[Any, ...], now: float) -> None:
    kind = op[0]
    if kind == "send":
        r.on_packet_sent(op[1])
    elif kind == "ack":
        r.on_packet_acked(op[1], op[2], op[3])
    elif kind == "lost":
        r.on_packets_lost(op[1], op[2], now)
    elif kind == "discard":
        r.on_packet_discarded(op[1])
    elif kind == "persistent":
        r.on_persistent_congestion()
    else:
        r.set_max_datagram_size(op[1])


@HYPO
@given(mds=st.integers(1, 9000), ops=_reno_ops)
def test_reno_invariants_any_call_order(cc, mds, ops):
    r = cc.NewReno(mds)
    for i, op in enumerate(ops):
        before = r.bytes_in_flight
        _apply_reno(r, op, float(i))
        assert r.bytes_in_flight >= 0
        assert r.congestion_window >= r.minimum_window == 2 * r.max_datagram_size
        assert r.available() == max(0, r.congestion_window - r.bytes_in_flight)
        if op[0] in ("ack", "lost", "discard"):
            assert r.bytes_in_flight == max(0, before - op[1])


@HYPO
@given(
    mds=st.integers(1000, 1500),
    script=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.booleans()),
        min_size=1,
        max_size=60,
    ),
)
def test_reno_consistent_caller_never_underflows(cc, mds, script):
    """A caller that reports each sent packet exactly once: bytes_in_flight is exactly the
    outstanding bytes and no underflow is ever counted."""
    r = cc.NewReno(mds)
    outstanding: list[tuple[int, float]] = []
    now = 0.0
    for n_send, n_done, lose in script:
        now += 0.01
        for k in range(n_send):
            size = mds - k
            r.on_packet_sent(size)
            outstanding.append((size, now))
        for _ in range(min(n_done, len(outstanding))):
            size, sent = outstanding.pop(0)
            if lose:
                r.on_packets_lost(size, sent, now)
            else:
                r.on_packet_acked(size, sent)
        assert r.bytes_in_flight == sum(s for s, _ in outstanding)
        assert r.in_flight_underflows == 0
    for size, _ in outstanding:
        r.on_packet_discarded(size)
    assert r.bytes_in_flight == 0 and r.in_flight_underflows == 0


# --------------------------------------------------------------------------- c == py parity


def _rtt_state(r: Any) -> tuple[Any, ...]:
    return (r.latest_rtt, r.min_rtt, r.smoothed_rtt, r.rttvar, r.has_sample)


def _reno_state(r: Any) -> tuple[Any, ...]:
    return (
        r.max_datagram_size, r.congestion_window, r.ssthresh, r.bytes_in_flight,
        r.recovery_start, r.congestion_events, r.in_flight_underflows, r.minimum_window,
        r.available(),
    )  # fmt: skip


def _pacer_state(p: Any, now: float) -> tuple[Any, ...]:
    return (p.max_datagram_size, p.pacing_rate, p.burst_size, p.tokens, p.next_send_time(now))


def _both(c_obj: Any, py_obj: Any, method: str, *args: Any) -> Any:
    """Call ``method`` on both twins: same result, or the same exception and message."""
    outcomes = []
    for obj in (c_obj, py_obj):
        try:
            outcomes.append(("ok", getattr(obj, method)(*args)))
        except (ValueError, OverflowError) as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    assert outcomes[0] == outcomes[1], (method, args)
    return outcomes[0]


_times = st.floats(0.0, 10.0)


@HYPO
@given(
    initial=st.floats(0.001, 2.0),
    samples=st.lists(
        st.tuples(
            st.one_of(st.floats(0.0, 3.0), st.sampled_from([-1.0, math.nan, math.inf])),
            st.one_of(st.floats(0.0, 0.5), st.just(-0.5)),
            st.floats(0.0, 0.1),
        ),
        max_size=60,
    ),
)
def test_parity_rtt(initial, samples):
    c_mod = _compiled()
    c, py = c_mod.RttEstimator(initial), PURE.RttEstimator(initial)
    assert _rtt_state(c) == _rtt_state(py)
    for latest, delay, max_ack_delay in samples:
        _both(c, py, "update", latest, delay)
        assert _rtt_state(c) == _rtt_state(py)
        for method, args in (
            ("pto", (max_ack_delay,)),
            ("loss_delay", ()),
            ("persistent_congestion_duration", (max_ack_delay,)),
        ):
            _both(c, py, method, *args)


@HYPO
@given(mds=st.integers(1, 9000), ops=_reno_ops)
def test_parity_reno(mds, ops):
    c_mod = _compiled()
    c, py = c_mod.NewReno(mds), PURE.NewReno(mds)
    assert _reno_state(c) == _reno_state(py)
    for i, op in enumerate(ops):
        _apply_reno(c, op, float(i))
        _apply_reno(py, op, float(i))
        assert _reno_state(c) == _reno_state(py), op


@HYPO
@given(
    mds=st.integers(1, 9000),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("rate"), st.integers(0, 10**7), st.floats(0.0, 2.0)),
            st.tuples(st.just("send"), st.integers(-1, 9000), _times),
            st.tuples(st.just("next"), _times),
            st.tuples(st.just("mds"), st.integers(0, 9000)),
        ),
        max_size=80,
    ),
)
def test_parity_pacer(mds, ops):
    c_mod = _compiled()
    c, py = c_mod.Pacer(mds), PURE.Pacer(mds)
    now = 0.0
    for op in ops:
        if op[0] == "rate":
            _both(c, py, "update_rate", op[1], op[2])
        elif op[0] == "send":
            now = max(now, op[2])
            _both(c, py, "on_packet_sent", op[1], op[2])
        elif op[0] == "next":
            _both(c, py, "next_send_time", op[1])
        else:
            _both(c, py, "set_max_datagram_size", op[1])
        assert _pacer_state(c, now) == _pacer_state(py, now), op


# --------------------------------------------------------------------------- a bottleneck


def _bottleneck_run(cc: Any, seconds: float) -> dict[str, float]:
    """A sans-I/O simulation: one sender (NewReno + Pacer + RttEstimator, greedy) through a link
    of 2 MB/s with a 60 KB drop-tail queue and 20 ms base RTT; the receiver acks every packet,
    a packet is declared lost when one sent after it is acknowledged (a simplified packet
    threshold of 1). Returns loss and utilisation after the first second (slow start over)."""
    mds, rate, queue_limit, base_rtt = 1200, 2_000_000.0, 60_000, 0.02
    reno, pacer, rtt = cc.NewReno(mds), cc.Pacer(mds), cc.RttEstimator()
    now = 0.0
    link_free_at = 0.0  # when the link finishes what is queued
    acks: list[tuple[float, int, float, int]] = []  # (arrival, number, sent_time, size)
    outstanding: dict[int, tuple[float, int]] = {}
    number = 0
    stats = {"sent": 0, "lost": 0, "delivered": 0}
    tick = 0.0002
    while now < seconds:
        # Deliver acks that have arrived.
        acks.sort()
        while acks and acks[0][0] <= now:
            _, pn, sent_time, size = acks.pop(0)
            if pn not in outstanding:
                continue
            del outstanding[pn]
            reno.on_packet_acked(size, sent_time)
            rtt.update(now - sent_time, 0.0)
            if now > 1.0:
                stats["delivered"] += size
            lost = [(q, sent_size) for q, sent_size in outstanding.items() if q < pn]
            if lost:
                for q, _ in lost:
                    del outstanding[q]
                reno.on_packets_lost(
                    sum(size for _, (_, size) in lost), max(t for _, (t, _) in lost), now
                )
            pacer.update_rate(reno.congestion_window, rtt.smoothed_rtt)
        # Send while the window and the pacer allow.
        while reno.available() >= mds and pacer.next_send_time(now) <= now:
            reno.on_packet_sent(mds)
            pacer.on_packet_sent(mds, now)
            outstanding[number] = (now, mds)
            queued = max(0.0, link_free_at - now) * rate
            if now > 1.0:
                stats["sent"] += 1
            if queued + mds > queue_limit:
                if now > 1.0:
                    stats["lost"] += 1
            else:
                link_free_at = max(link_free_at, now) + mds / rate
                acks.append((link_free_at + base_rtt, number, now, mds))
            number += 1
        now += tick
    return {
        "loss": stats["lost"] / max(1, stats["sent"]),
        "utilisation": stats["delivered"] / (rate * (seconds - 1.0)),
        "cwnd": reno.congestion_window,
        "events": reno.congestion_events,
    }


@pytest.mark.slow
def test_bottleneck_adapts_instead_of_flooding(cc):
    result = _bottleneck_run(cc, 4.0)
    assert result["events"] >= 1  # it found the limit
    assert result["loss"] < 0.05, result  # and stayed near it instead of flooding
    assert result["utilisation"] > 0.6, result  # without leaving the link idle
