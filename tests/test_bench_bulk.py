"""Smoke tests of ``p2pfast-bench --workload bulk`` and of the relay it runs through.

No timing assertions on p2pfast: a bulk run only has to complete, check every message and
report sane fields. The relay's bandwidth limit is checked on the relay's own accounting
(bytes it forwarded over an interval it measured), not on anyone's speed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pfast import USE_EXTENSIONS
from p2pfast.bench.bulk import (
    HEADER_LEN,
    BulkSpec,
    Flow,
    Payloads,
    Tally,
    _verify,
    body_length,
    envelope_overhead,
    format_bulk,
    run_bulk,
)
from p2pfast.bench.common import BenchError
from p2pfast.relay import LossyRelay

from .netutil import on_uvloop

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the bulk bench meters its subprocesses through /proc"
)

ROOT = Path(__file__).resolve().parent.parent
#: This process's implementation: the bench's senders run it, and so does the receiver.
IMPL = "compiled" if USE_EXTENSIONS else "pure"


def _small(**kw: object) -> BulkSpec:
    base: dict[str, object] = {
        "size": 20_000,
        "count": 6,
        "warmup": 1,
        "latency_count": 3,
        "timeout": 60.0,
        "impl": IMPL,
    }
    base.update(kw)
    return BulkSpec(**base)  # type: ignore[arg-type]


# -- payloads and checks --------------------------------------------------------------------


def test_size_bounds_the_encoded_data_message() -> None:
    from p2pfast._speedups import codec
    from p2pfast.protocol import MessageType

    for size in (2_000, 60_000, 1_048_576):
        payload = Payloads(0, size, seed=3).make(4_294_967)
        data = codec.encode(
            MessageType.Data, payload, 1_700_000_000_000, id=codec.new_id(),
            sequence_number=4_294_967_295, requires_ack=True,
        )  # fmt: skip
        assert len(data) <= size
        assert len(data) >= size - 16  # "as long as fits": only digits of slack
    with pytest.raises(BenchError, match="too small"):
        body_length(envelope_overhead() + HEADER_LEN)


def test_tally_flags_corruption_duplicates_and_garbage() -> None:
    payloads = Payloads(2, 5_000, seed=1)
    tally = Tally()
    good = payloads.make(7)
    assert tally.check(good) == (2, 7, True, False)
    assert tally.check(good) == (2, 7, True, True)  # twice: a duplicate
    bad = good[:-1] + ("A" if good[-1] != "A" else "B")
    assert tally.check(payloads.make(8)[:-1] + bad[-1:])[2] is False  # one character changed
    assert tally.check({"not": "a bulk payload"})[:2] == (-1, -1)
    report = tally.report()
    assert report["duplicates"] == 1 and report["corrupt"] == 1 and report["unparseable"] == 1
    assert report["distinct"] == 2 and report["delivered"] == 4


def test_verify_fails_a_run_with_a_missing_or_bad_message() -> None:
    clean = {"tally": {"delivered": 3, "distinct": 3, "duplicates": 0, "corrupt": 0,
                       "unparseable": 0, "first_error": None}}  # fmt: skip
    result = {"label": "x", "failures": [], "sent": 3}
    _verify(result, clean)  # intact and exactly once: passes
    for change in ({"distinct": 2, "delivered": 2}, {"duplicates": 1, "delivered": 4},
                   {"corrupt": 1}):  # fmt: skip
        with pytest.raises(BenchError, match="the receiver got"):
            _verify(result, {"tally": {**clean["tally"], **change}})
    with pytest.raises(BenchError, match="no report"):
        _verify(result, None)
    with pytest.raises(BenchError, match="delivered twice"):
        _verify({**result, "failures": ["flow 0 message 1: delivered twice"]}, clean)


def test_flow_records_a_bad_ack() -> None:
    flow = Flow(0, _small())
    flow.on_ack([0, 1, False, False, 1.0])
    flow.on_ack([0, 2, True, True, 1.0])
    flow.on_ack("garbage")
    assert len(flow.failures) == 3


# -- the bench end to end ------------------------------------------------------------------


def test_bulk_run_end_to_end_reports_sane_fields() -> None:
    spec = _small()
    t0 = time.monotonic()
    doc = run_bulk(spec, [IMPL])
    assert time.monotonic() - t0 < 120
    p2p, tcp = doc["runs"]
    assert p2p["kind"] == "p2pfast" and p2p["impl"] == IMPL and tcp["kind"] == "tcp"
    for run in (p2p, tcp):
        sent = spec.warmup + spec.count + spec.latency_count
        assert run["sent"] == sent
        assert run["receiver"]["tally"]["distinct"] == sent
        assert run["receiver"]["tally"]["payload_bytes"] == sent * body_length(spec.size) + (
            sent * HEADER_LEN
        )
        assert run["goodput_mb_s"] > 0
        assert run["cpu_s_per_mib"]["sender"] > 0
        assert run["cpu_s_per_mib"]["receiver"] is not None
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
        assert run["loaded_latency_ms"]["p50"] > 0
    assert p2p["receiver"]["extensions"] == IMPL
    assert p2p["counters"]["retransmits"] is not None
    assert f"{IMPL}/tcp goodput" in doc["ratios"]
    text = format_bulk(doc, spec)
    assert "TCP (uvloop)" in text and f"p2pfast ({IMPL})" in text


def test_bulk_run_through_a_lossy_relay_with_two_flows() -> None:
    spec = _small(peers=2, loss=0.05, duplicate=0.05, reorder=0.05, baseline=False, seed=5)
    doc = run_bulk(spec, [IMPL])
    (run,) = doc["runs"]
    relay = run["relay"]
    assert relay is not None and relay["clients"] == 2
    assert relay["forwarded"] > 0
    assert relay["dropped"] + relay["duplicated"] + relay["reordered"] > 0
    tally = run["receiver"]["tally"]
    assert tally["per_flow"] == {"0": 10, "1": 7}  # flow 0 also sent the latency messages
    assert [f["flow"] for f in run["flows"]] == [0, 1]
    assert run["fairness"] is not None and run["fairness"] >= 1.0


def test_bulk_cli_writes_json_and_fails_cleanly_on_bad_options(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = tmp_path / "bulk.json"
    cmd = [sys.executable, "-m", "p2pfast.bench", "--workload", "bulk", "--size", "8000",
           "--count", "3", "--impl", IMPL, "--no-baseline", "--timeout", "60",
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["spec"]["count"] == 3 and doc["runs"][0]["goodput_mb_s"] > 0
    assert "p2pfast" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "p2pfast.bench", "--workload", "data", "--loss", "0.1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0 and "bulk only" in bad.stderr


# -- the relay -----------------------------------------------------------------------------


class _Sink(asyncio.DatagramProtocol):
    """Collects datagrams (and who sent them); echoes them back when ``echo``."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.got: list[bytes] = []
        self.sources: set[tuple[object, ...]] = set()
        self.last = time.monotonic()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.got.append(data)
        self.sources.add(addr)
        self.last = time.monotonic()
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)


async def _endpoint(
    echo: bool = False,
) -> tuple[asyncio.DatagramTransport, _Sink, tuple[object, ...]]:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(
        lambda: _Sink(echo), local_addr=("127.0.0.1", 0)
    )
    return transport, sink, transport.get_extra_info("sockname")


async def _quiet(sink: _Sink, expect: int | None = None, limit: float = 5.0) -> None:
    """Wait until ``expect`` datagrams arrived, or nothing arrived for 0.2 s (bounded)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        await asyncio.sleep(0.02)
        if expect is not None and len(sink.got) >= expect:
            return
        if expect is None and time.monotonic() - sink.last > 0.2:
            return


@on_uvloop
async def test_relay_token_bucket_holds_the_rate() -> None:
    rate, queue, size, burst = 1_000_000.0, 40_000, 1_000, 1_500
    target_t, sink, target = await _endpoint()
    relay = LossyRelay(target, loss=0, duplicate=0, reorder=0, seed=1, rate=rate, queue=queue,
                       burst=burst)  # fmt: skip
    addr = await relay.start()
    client_t, _, _ = await _endpoint()
    try:
        t0 = time.monotonic()
        b0 = relay.forwarded_bytes
        sent = 0
        for _ in range(60):  # ~6 MB/s offered for 0.3 s: 6x the rate
            for _ in range(20):
                client_t.sendto(bytes(size), addr)
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        t1 = time.monotonic()
        b1 = relay.forwarded_bytes
        assert b1 - b0 <= rate * (t1 - t0) + queue + size
        assert b1 - b0 >= 0.3 * rate * (t1 - t0)  # it does forward (loosely: a shared CPU)
        assert relay.queue_dropped > 0
        stats = relay.shaper_stats()["out"]
        assert stats["queued_bytes"] <= queue
        await _quiet(sink, limit=5.0)
        # Everything not tail-dropped arrives, nothing else: the accounting is exact.
        assert len(sink.got) == sent - relay.queue_dropped == relay.forwarded
        assert (
            relay.forwarded_bytes
            == stats["sent_bytes"] + relay.shaper_stats()["back"]["sent_bytes"]
        )
    finally:
        relay.close()
        client_t.close()
        target_t.close()


@on_uvloop
async def test_relay_max_size_drops_counts_and_changes_at_run_time() -> None:
    target_t, sink, target = await _endpoint()
    relay = LossyRelay(target, loss=0, duplicate=0, reorder=0, seed=1, max_size=1_000)
    addr = await relay.start()
    client_t, _, _ = await _endpoint()
    try:
        for n in (999, 1_000, 1_001, 5_000, 10):
            client_t.sendto(bytes(n), addr)
        await _quiet(sink, expect=3)
        await asyncio.sleep(0.05)
        assert sorted(len(d) for d in sink.got) == [10, 999, 1_000]
        assert relay.oversize_dropped == 2
        relay.max_size = None  # the black hole goes away
        client_t.sendto(bytes(5_000), addr)
        await _quiet(sink, expect=4)
        assert len(sink.got) == 4 and relay.oversize_dropped == 2
        relay.max_size = 100  # and comes back, smaller
        client_t.sendto(bytes(101), addr)
        client_t.sendto(bytes(100), addr)
        await _quiet(sink, expect=5)
        await asyncio.sleep(0.05)
        assert len(sink.got) == 5 and relay.oversize_dropped == 3
    finally:
        relay.close()
        client_t.close()
        target_t.close()


async def _lossy_pass(seed: int) -> tuple[collections.Counter[int], tuple[int, int, int]]:
    target_t, sink, target = await _endpoint()
    relay = LossyRelay(target, loss=0.3, duplicate=0.1, reorder=0.1, seed=seed)
    addr = await relay.start()
    client_t, _, _ = await _endpoint()
    try:
        for i in range(300):
            client_t.sendto(i.to_bytes(4, "big"), addr)
            if i % 20 == 19:
                await asyncio.sleep(0.002)
        await _quiet(sink, limit=5.0)
        got = collections.Counter(int.from_bytes(d, "big") for d in sink.got)
        return got, (relay.dropped, relay.duplicated, relay.reordered)
    finally:
        relay.close()
        client_t.close()
        target_t.close()


@on_uvloop
async def test_relay_loss_is_reproducible_from_the_seed() -> None:
    first, counts = await _lossy_pass(7)
    again, counts_again = await _lossy_pass(7)
    other, _ = await _lossy_pass(8)
    assert first == again and counts == counts_again
    assert first != other
    dropped, duplicated, reordered = counts
    assert dropped > 0 and duplicated > 0 and reordered > 0
    assert sum(first.values()) == 300 - dropped + duplicated
    assert max(first.values()) == 2


@on_uvloop
async def test_relay_keeps_two_clients_apart() -> None:
    target_t, sink, target = await _endpoint(echo=True)
    relay = LossyRelay(target, loss=0, duplicate=0, reorder=0, seed=1)
    addr = await relay.start()
    a_t, a, _ = await _endpoint()
    b_t, b, _ = await _endpoint()
    try:
        for i in range(5):
            a_t.sendto(b"a%d" % i, addr)
            b_t.sendto(b"b%d" % i, addr)
            await asyncio.sleep(0.01)
        await _quiet(a, expect=5)
        await _quiet(b, expect=5)
        assert sorted(a.got) == [b"a%d" % i for i in range(5)]
        assert sorted(b.got) == [b"b%d" % i for i in range(5)]
        assert len(sink.sources) == 2  # the target sees one relay address per client
        assert len(relay.clients) == 2 and relay.client == relay.clients[0]
    finally:
        relay.close()
        for t in (a_t, b_t, target_t):
            t.close()


def test_a_corrupt_message_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    make = Payloads.make

    def corrupt(self: Payloads, k: int) -> str:
        text = make(self, k)
        return text[:-1] + ("x" if text[-1] != "x" else "y") if k == 3 else text

    monkeypatch.setattr(Payloads, "make", corrupt)
    with pytest.raises(BenchError, match="message 3: corrupt"):
        run_bulk(_small(baseline=False), [IMPL])


def test_a_message_delivered_twice_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pfast.bench.bulk import P2PFlow

    send_one = P2PFlow.send_one

    async def twice(self: P2PFlow, k: int) -> None:
        await send_one(self, k)
        if k == 2:  # the application sends it again: the receiver must notice
            await send_one(self, k)

    monkeypatch.setattr(P2PFlow, "send_one", twice)
    with pytest.raises(BenchError, match="delivered twice"):
        run_bulk(_small(baseline=False), [IMPL])


def test_bulk_run_in_fragments_through_loss() -> None:
    import dataclasses

    from p2pfast.config import Config

    if "pmtu_discovery" not in {f.name for f in dataclasses.fields(Config)}:
        pytest.skip("this p2pfast sends no message over one datagram (no fragmentation)")
    spec = _small(size=200_000, count=4, datagram_size=1200, pmtu=False, loss=0.03,
                  reorder=0.03, duplicate=0.03, baseline=False, seed=11)  # fmt: skip
    (run,) = run_bulk(spec, [IMPL])["runs"]
    sent = spec.warmup + spec.count + spec.latency_count
    assert run["receiver"]["tally"]["distinct"] == sent
    counters = run["counters"]
    assert counters["fragments_sent"] >= spec.count * (200_000 // 1200)  # ~170 per message
    assert counters["fragments_retransmitted"] is not None
    assert run["loss_rate"] is not None and 0 <= run["loss_rate"] < 1
    assert run["receiver"]["counters"]["messages_reassembled"] >= sent
