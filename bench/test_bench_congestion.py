"""Micro-benchmarks of the congestion controller's per-datagram accounting, compiled ([c]) vs
pure ([py]).

Run: ``python -m pytest bench/test_bench_congestion.py --benchmark-enable --benchmark-only -q``
(benchmarks are disabled by default in pyproject addopts). Each benchmark sets
``benchmark.group`` so the c and py rows of one operation sit side by side; each round is a batch
of BATCH datagrams, so per-datagram cost = mean / BATCH.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")

BATCH = 1000
MDS = 1200


@pytest.fixture(params=["c", "py"])
def cc(request: pytest.FixtureRequest) -> Any:
    """The congestion module, compiled ([c]) and pure ([py])."""
    if request.param == "py":
        return importlib.import_module("p2pfast.congestion")
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    return importlib.import_module("p2pfast._congestion")


def test_window_sent_acked(benchmark, cc):
    """NewReno alone: on_packet_sent + on_packet_acked per datagram (congestion avoidance)."""
    benchmark.group = f"congestion: NewReno sent+acked x{BATCH}"
    reno = cc.NewReno(MDS)
    reno.on_packet_sent(MDS)
    reno.on_packets_lost(MDS, 0.0, 0.0)  # leave slow start: the stash path runs
    state = [1.0]

    def run() -> None:
        now = state[0]
        sent, acked = reno.on_packet_sent, reno.on_packet_acked
        for _ in range(BATCH):
            sent(MDS)
            acked(MDS, now)
        state[0] = now + 0.001

    benchmark(run)
    assert reno.bytes_in_flight == 0 and reno.in_flight_underflows == 0


def test_per_datagram_accounting(benchmark, cc):
    """What the fragment sender does per datagram: ask the window and the pacer, account the
    send in both; per acknowledgement: account it, take an RTT sample, refresh the pacer."""
    benchmark.group = f"congestion: per-datagram send+ack accounting (window, pacer, rtt) x{BATCH}"
    reno, pacer, rtt = cc.NewReno(MDS), cc.Pacer(MDS), cc.RttEstimator()
    # A fast path: 100 MB/s windows over 1 ms, so the pacer lets every datagram go.
    reno.congestion_window = 10**9
    pacer.update_rate(10**9, 0.001)
    state = [0.0]
    sent_times: list[float] = []

    def run() -> None:
        now = state[0]
        available, next_send = reno.available, pacer.next_send_time
        cc_sent, pacer_sent = reno.on_packet_sent, pacer.on_packet_sent
        acked, update, update_rate = reno.on_packet_acked, rtt.update, pacer.update_rate
        record = sent_times.append
        for _ in range(BATCH):
            if available() >= MDS and next_send(now) <= now:
                cc_sent(MDS)
                pacer_sent(MDS, now)
                record(now)
            now += 0.000002  # 2 us apart: the pacer (1.2 GB/s at most) never holds one back
        for sent_time in sent_times:
            acked(MDS, sent_time)
            update(now - sent_time, 0.0)
            update_rate(reno.congestion_window, rtt.smoothed_rtt)
        assert len(sent_times) == BATCH
        sent_times.clear()
        state[0] = now

    benchmark(run)
    assert reno.bytes_in_flight == 0 and reno.in_flight_underflows == 0
    assert rtt.has_sample


def test_pacer_only(benchmark, cc):
    """The pacer on a paced path: next_send_time every poll, on_packet_sent when allowed."""
    benchmark.group = f"congestion: Pacer next_send_time+on_packet_sent x{BATCH}"
    pacer = cc.Pacer(MDS)
    pacer.update_rate(120_000, 0.01)  # 15 MB/s: one datagram per 80 us
    state = [0.0, 0]

    def run() -> None:
        now, sends = state
        next_send, on_sent = pacer.next_send_time, pacer.on_packet_sent
        for _ in range(BATCH):
            if next_send(now) <= now:
                on_sent(MDS, now)
                sends += 1
            now += 0.00002
        state[0], state[1] = now, sends

    benchmark(run)
    assert state[1] > 0
