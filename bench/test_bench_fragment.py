"""Micro-benchmarks of the fragment frames and bookkeeping, compiled ([c]) vs pure ([py]).

Run: ``python -m pytest bench/test_bench_fragment.py --benchmark-enable --benchmark-only -q``
(benchmarks are disabled by default in pyproject addopts). Each benchmark sets
``benchmark.group`` so the c and py rows of one operation sit side by side; the batch ones time
a batch per round (size in the group name), so per-operation cost = mean / batch.
"""

from __future__ import annotations

import importlib
import os
import random

import pytest

NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")

MESSAGE = random.Random(1).randbytes(1_048_576)
PIECE = 1178  # 1,200-byte datagrams less the 22-byte FRAGMENT header
BATCH = 1000


@pytest.fixture(params=["c", "py"])
def frag(request):
    """The fragment module, compiled ([c]) and pure ([py])."""
    if request.param == "py":
        return importlib.import_module("p2pfast._fragment_py")
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    return importlib.import_module("p2pfast._fragment")


@pytest.mark.parametrize("size", [1200, 65_000])
def test_encode_fragment(benchmark, frag, size):
    benchmark.group = f"fragment: encode_fragment of {size} bytes"
    encode = frag.encode_fragment
    start = 4096
    frame = benchmark(encode, 123456, 7, len(MESSAGE), start, MESSAGE, start, start + size)
    assert frame[frag.FRAGMENT_HEADER :] == MESSAGE[start : start + size]


def test_parse_fragment(benchmark, frag):
    benchmark.group = "fragment: parse_fragment (1,200-byte frame)"
    frame = frag.encode_fragment(123456, 7, len(MESSAGE), 0, MESSAGE, 0, PIECE)
    assert benchmark(frag.parse_fragment, frame) == (123456, 7, len(MESSAGE), 0)


def test_reassemble_one_mib(benchmark, frag):
    """A 1 MiB message from 891 frames of 1,178 data bytes (in order), then take()."""
    benchmark.group = "fragment: Reassembly of 1 MiB in 1,178-byte frames (891 inserts + take)"
    header = bytes(frag.FRAGMENT_HEADER)
    frames = [
        (offset, header + MESSAGE[offset : offset + PIECE])
        for offset in range(0, len(MESSAGE), PIECE)
    ]

    def run():
        r = frag.Reassembly(len(MESSAGE))
        insert = r.insert
        at = frag.FRAGMENT_HEADER
        for offset, frame in frames:
            insert(offset, frame, at)
        return r.take()

    assert benchmark(run) == MESSAGE


def test_reassemble_one_mib_reordered(benchmark, frag):
    benchmark.group = "fragment: Reassembly of 1 MiB, pairs swapped + 5% duplicates"
    header = bytes(frag.FRAGMENT_HEADER)
    rng = random.Random(2)
    frames = [
        (offset, header + MESSAGE[offset : offset + PIECE])
        for offset in range(0, len(MESSAGE), PIECE)
    ]
    for i in range(0, len(frames) - 1, 2):
        frames[i], frames[i + 1] = frames[i + 1], frames[i]
    frames += [frames[rng.randrange(len(frames))] for _ in range(len(frames) // 20)]

    def run():
        r = frag.Reassembly(len(MESSAGE), 1024)
        insert = r.insert
        at = frag.FRAGMENT_HEADER
        for offset, frame in frames:
            insert(offset, frame, at)
        return r.take()

    assert benchmark(run) == MESSAGE


def test_sentlog_sent_and_acked(benchmark, frag):
    """Per packet: sent(); every second packet an ACK of the newest two plus loss detection,
    as a sender at steady state does."""
    benchmark.group = f"fragment: SentLog sent + on_ack + detect_lost x{BATCH} packets"
    log = frag.SentLog()
    state = [0.0]

    def run():
        sent = log.sent
        on_ack = log.on_ack
        detect_lost = log.detect_lost
        now = state[0]
        for k in range(BATCH):
            now += 1e-5
            packet = sent(None, k, k + PIECE, 1200, now)
            if packet & 1:
                on_ack([(packet - 1, packet)])
                detect_lost(now, 0.01, 3)
        state[0] = now

    benchmark(run)
    assert len(log) == 0


def test_rangeset_sender_pop_front(benchmark, frag):
    benchmark.group = "fragment: RangeSet pop_front of 1 MiB in 1,178-byte pieces"

    def run():
        s = frag.RangeSet()
        s.add(0, len(MESSAGE))
        pop = s.pop_front
        n = 0
        while s.covered:
            pop(PIECE)
            n += 1
        return n

    assert benchmark(run) == 891
