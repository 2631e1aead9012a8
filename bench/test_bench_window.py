"""Micro-benchmarks of the reliability windows, compiled ([c]) vs pure ([py]).

Run: ``python -m pytest bench/test_bench_window.py --benchmark-enable --benchmark-only -q``
(benchmarks are disabled by default in pyproject addopts). Each benchmark sets
``benchmark.group`` so the c and py rows of one operation sit side by side; most time a batch
per round (the batch size is in the group name), so per-operation cost = mean / batch.
"""

from __future__ import annotations

import importlib
import os
import random

import pytest

NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")

BATCH = 1000
IN_FLIGHT = 256


@pytest.fixture(params=["c", "py"])
def window(request):
    """The window module, compiled ([c]) and pure ([py]); local so bench/conftest.py stays the
    codec owner's file."""
    if request.param == "py":
        return importlib.import_module("p2pfast._window_py")
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    return importlib.import_module("p2pfast._window")


def _reordered(n: int, seed: int = 7) -> list[int]:
    """n arrivals of 0..~0.9n: adjacent swaps, 10% duplicates, a few losses and late ones."""
    rng = random.Random(seed)
    seqs = list(range(int(n * 0.9)))
    for i in range(0, len(seqs) - 1, 2):
        if rng.random() < 0.3:
            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
    out: list[int] = []
    for s in seqs:
        if rng.random() < 0.02:
            continue  # lost
        out.append(s)
        if rng.random() < 0.1:
            out.append(max(0, s - rng.randrange(0, 40)))  # duplicate / late retransmission
    while len(out) < n:
        out.append(rng.randrange(0, seqs[-1]))
    return out[:n]


def test_check_in_order(benchmark, window):
    benchmark.group = f"window: DuplicateFilter.check in order x{BATCH}"
    f = window.DuplicateFilter(1024)
    state = [0]

    def run():
        start = state[0]
        check = f.check
        for s in range(start, start + BATCH):
            check(s)
        state[0] = start + BATCH

    benchmark(run)
    assert f.check(state[0] - 1) == window.DUPLICATE


def test_check_reordered(benchmark, window):
    benchmark.group = f"window: DuplicateFilter.check reordered+dups x{BATCH}"
    pattern = _reordered(BATCH)
    DuplicateFilter = window.DuplicateFilter

    def run():
        check = DuplicateFilter(1024).check
        for s in pattern:
            check(s)

    benchmark(run)


def test_missing(benchmark, window):
    benchmark.group = "window: DuplicateFilter.missing(64) x100, 1024 wide, 10% lost"
    f = window.DuplicateFilter(1024)
    for s in range(5000):
        if s % 10 != 3:
            f.check(s)
    assert len(f.missing(64)) == 64

    def run():
        missing = f.missing
        for _ in range(100):
            missing(64)

    benchmark(run)


def test_send_add_ack_cycle(benchmark, window):
    benchmark.group = f"window: SendWindow add+on_ack x{IN_FLIGHT}"
    sw = window.SendWindow(capacity=IN_FLIGHT)
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(IN_FLIGHT)]
    data = b"x" * 200
    state = [0.0]

    def run():
        now = state[0]
        add, on_ack = sw.add, sw.on_ack
        for i in range(IN_FLIGHT):
            add(i, ids[i], data, now)
        now += 0.02
        for i in range(IN_FLIGHT):
            on_ack(ids[i], now)
        state[0] = now + 0.01

    benchmark(run)
    assert len(sw) == 0 and sw.srtt > 0.0


def test_send_add_ack_seq_due_cycle(benchmark, window):
    benchmark.group = f"window: SendWindow add+due+on_ack_seq x{IN_FLIGHT}"
    sw = window.SendWindow(capacity=IN_FLIGHT)
    ids = [f"m{i}" for i in range(IN_FLIGHT)]
    data = b"x" * 200
    state = [0.0]

    def run():
        now = state[0]
        add, on_ack_seq, due = sw.add, sw.on_ack_seq, sw.due
        for i in range(IN_FLIGHT):
            add(i, ids[i], data, now)
            due(now)
        now += 0.02
        for i in range(IN_FLIGHT):
            on_ack_seq(i, now)
            due(now)
        state[0] = now + 0.01

    benchmark(run)
    assert len(sw) == 0


def _full_window(window):
    sw = window.SendWindow(capacity=IN_FLIGHT, max_retries=10**6, rto_initial=1.0, rto_max=1e9)
    for i in range(IN_FLIGHT):
        sw.add(i, f"m{i}", b"x" * 100, i * 0.001)  # deadlines 1.000 .. 1.255
    return sw


def test_due_nothing_due(benchmark, window):
    benchmark.group = f"window: SendWindow.due, {IN_FLIGHT} in flight, nothing due x{BATCH}"
    sw = _full_window(window)

    def run():
        due = sw.due
        for _ in range(BATCH):
            due(0.5)

    benchmark(run)
    assert sw.due(0.5) == ([], [])


def test_due_some_due(benchmark, window):
    benchmark.group = f"window: SendWindow.due, {IN_FLIGHT} in flight, 32 due (one call)"

    def setup():
        return (_full_window(window),), {}

    def run(sw):
        resend, _failed = sw.due(1.0315)
        assert len(resend) == 32

    benchmark.pedantic(run, setup=setup, rounds=2000, warmup_rounds=10)


def test_streaming_cycle(benchmark, window):
    benchmark.group = f"window: SendWindow streaming add+on_ack+due per message x{BATCH}"
    # ~100 in flight at 1 ms spacing, each acked 100 ms after it was sent; due() every message
    # (the cached bound goes stale as acks arrive and is recomputed now and then).
    sw = window.SendWindow(capacity=IN_FLIGHT)
    data = b"x" * 200
    lag = 100
    state = [0.0, 0]

    def run():
        now, base = state
        add, on_ack, due = sw.add, sw.on_ack, sw.due
        for i in range(BATCH):
            seq = base + i
            add(seq, seq, data, now)
            if seq >= lag:
                on_ack(seq - lag, now)
            due(now)
            now += 0.001
        state[0], state[1] = now, base + BATCH

    benchmark(run)
    assert len(sw) == lag
    assert sw.due(state[0]) == ([], [])
