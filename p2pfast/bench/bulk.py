"""``p2pfast-bench --workload bulk``: large messages between two nodes, against TCP on uvloop.

One run, all on loopback:

- a **receiver** node (``python -m p2pfast.bench.bulk receive``, a :class:`~p2pfast.P2PServer`
  in a subprocess of its own, running the implementation asked for) reads every message with
  ``messages()``, checks it, and answers each one with a tiny reliable ack payload;
- ``--peers N`` **sender** nodes (P2PServers in the bench process, on uvloop) connect to it,
  directly or through the seeded :class:`~p2pfast.relay.LossyRelay` (its own subprocess,
  ``python -m p2pfast.bench.bulk relay``) when ``--loss``/``--duplicate``/``--reorder``/
  ``--rate`` ask for one, and each sends ``--count`` messages with ``await server.send()``
  (reliable), ``--window`` of them in flight at a time (the API's backpressure holds more);
- then the same transfer over **asyncio TCP on uvloop** (4-byte length prefix, the payload
  string's bytes (a byte stream needs no JSON to carry a string: the JSON codec is part of
  what p2pfast costs), the same checks and the same ack per message; receiver ``python -m
  p2pfast.bench.bulk tcp-receive``, a subprocess too), unless ``--no-baseline``.

**Sizes.** ``--size`` bounds the whole encoded Data message (JSON envelope and payload): the
payload is one string ``"FFFF:KKKKKKKKKK:<CRC-32 of body>:<body>"`` (flow, message number,
the body's checksum in 8 hex digits, a base64 body from a seeded generator) made as long as
fits. *Goodput* counts the characters of that string (1 byte each) delivered per second of
wall time, from the first send to the last ack, across all flows.

**Checks.** The receiver hashes every body, and records (flow, number) pairs: a corrupt,
unparseable, duplicated, or missing message (the receiver's report at exit is compared with
what was sent) fails the run (non-zero exit), as does a run over its ``--timeout``.

**Latency.** The receiver's ack carries its ``time.monotonic()`` at delivery; on Linux that
clock (CLOCK_MONOTONIC) is one clock for every process on the machine, so *latency* is one
way: from the ``send()`` call to the receiver's ``DataReceived``. ``latency_ms`` is measured
after the bulk phase with one message in flight at a time (``BulkSpec.latency_count``, 16),
what one message costs on an idle path; ``loaded_latency_ms`` is the same figure for the
messages of the bulk phase (it includes queueing behind the window).

**CPU.** Each process's own CPU time, all threads (``/proc/PID/task/*/schedstat``, to the
nanosecond; utime + stime or psutil where that is missing), over the bulk phase: the sender
is this process (all flows: it runs them all), then the receiver and the relay. Reported per
MiB of payload.

**Warm-up.** ``BulkSpec.warmup`` (2) messages per flow go before the measurement (slow start,
path-MTU probing); they are checked but not counted. Counter figures
(``fragments_retransmitted`` / ``fragments_sent``: the *loss rate after slow start*) cover
the bulk phase only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .common import NETWORK_ID, BenchError
from .metering import ServerProcess, proc_cpu_seconds

MIB = 1024 * 1024
#: "FFFF:KKKKKKKKKK:" + 8 hex digits + ":". The body's checksum is a CRC-32: it catches any
#: corruption a transport bug makes (a lost, swapped or repeated fragment) at ~2 GB/s, where
#: a SHA-256 (~0.5 GB/s here) would be the slowest part of the TCP baseline.
HEADER_LEN = 4 + 1 + 10 + 1 + 8 + 1
#: Sender-side counters read from each node, where this version of p2pfast has them.
SENDER_COUNTERS = ("retransmits", "fragments_sent", "fragments_retransmitted", "bytes_out")
RECEIVER_COUNTERS = (
    "fragments_received",
    "messages_reassembled",
    "duplicates",
    "delivered",
    "bytes_in",
)
#: Seconds the bench waits for a subprocess's report once it was asked to stop.
REPORT_TIMEOUT = 10.0
#: Distinct bodies generated per flow (messages reuse them; each message's header differs).
BODY_POOL = 4


@dataclass
class BulkSpec:
    """What one bulk run does (the CLI's options)."""

    size: int = MIB
    count: int = 64
    peers: int = 1
    window: int = 4
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    rate_mbps: float | None = None
    #: The relay drops datagrams larger than this (a path MTU, as a black hole: path-MTU
    #: discovery has to find it).
    path_mtu: int | None = None
    queue: int = 262_144
    datagram_size: int | None = None
    pmtu: bool = True
    impl: str = "compiled"
    baseline: bool = True
    warmup: int = 2
    latency_count: int = 16
    timeout: float = 300.0
    seed: int = 1
    network_id: str = NETWORK_ID

    @property
    def relayed(self) -> bool:
        return bool(self.loss or self.duplicate or self.reorder or self.rate_mbps or self.path_mtu)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BulkSpec:
        return cls(**json.loads(text))


# ---------------------------------------------------------------------------------------
# Payloads: what is sent, and the receiver's check


def envelope_overhead() -> int:
    """Bytes of a reliable Data envelope around an empty string payload, at its largest
    (longest sequence number and timestamp): ``--size`` minus this is the payload string."""
    from .._speedups import codec
    from .._wire import MAX_U32
    from ..protocol import MessageType

    data = codec.encode(
        MessageType.Data,
        "",
        10**15,
        id=codec.new_id(),
        sequence_number=MAX_U32,
        requires_ack=True,
    )
    return len(data) - 2  # the empty string's quotes are part of the payload's length


def body_length(size: int) -> int:
    """Characters of body in a message whose encoded Data message is at most ``size``."""
    n = size - envelope_overhead() - 2 - HEADER_LEN
    if n < 1:
        raise BenchError(
            f"--size {size} is too small for the bulk workload: at least "
            f"{size - n + 1} bytes (envelope + header)"
        )
    return n


class Payloads:
    """The messages of one flow: a few seeded base64 bodies, each message a header naming
    the flow, its number and its body's hash, then the body."""

    def __init__(self, flow: int, size: int, seed: int) -> None:
        n = body_length(size)
        rng = random.Random(seed * 7919 + flow)
        self.flow = flow
        self.bodies: list[tuple[str, str]] = []
        for _ in range(BODY_POOL):
            raw = base64.b64encode(rng.randbytes(n * 3 // 4 + 3)).decode("ascii")[:n]
            self.bodies.append((raw, f"{zlib.crc32(raw.encode('ascii')):08x}"))

    def make(self, k: int) -> str:
        body, digest = self.bodies[k % len(self.bodies)]
        return f"{self.flow:04d}:{k:010d}:{digest}:{body}"


def payload_bytes(size: int) -> int:
    """Characters (= bytes) of each message's payload string."""
    return body_length(size) + HEADER_LEN


@dataclass
class Tally:
    """The receiver's record: every (flow, number) seen, and what was wrong."""

    seen: set[tuple[int, int]] = field(default_factory=set)
    delivered: int = 0
    duplicates: int = 0
    corrupt: int = 0
    unparseable: int = 0
    payload_bytes: int = 0
    first_error: str = ""

    def check(self, payload: Any) -> tuple[int, int, bool, bool]:
        """(flow, number, intact, duplicate) of one delivered payload (a str)."""
        if isinstance(payload, str) and len(payload) >= HEADER_LEN:
            body = payload[HEADER_LEN:].encode("utf-8", "surrogatepass")
            return self._check(payload[:HEADER_LEN], body, len(payload))
        return self._check(repr(payload)[:40], b"", 0)

    def check_bytes(self, data: bytes | bytearray) -> tuple[int, int, bool, bool]:
        """The same check of a payload received as its UTF-8 bytes (the TCP baseline)."""
        header = data[:HEADER_LEN].decode("ascii", "replace")
        return self._check(header, memoryview(data)[HEADER_LEN:], len(data))

    def _check(self, header: str, body: Any, length: int) -> tuple[int, int, bool, bool]:
        self.delivered += 1
        try:
            if len(header) != HEADER_LEN or header[4] != ":" or header[15] != ":":
                raise ValueError("not a bulk payload")
            flow, k, digest = int(header[:4]), int(header[5:15]), int(header[16:24], 16)
        except (ValueError, IndexError):
            self.unparseable += 1
            self.first_error = self.first_error or f"unparseable payload {header!r}"
            return -1, -1, False, False
        ok = zlib.crc32(body) == digest
        if not ok:
            self.corrupt += 1
            self.first_error = self.first_error or f"flow {flow} message {k}: checksum mismatch"
        key = (flow, k)
        duplicate = key in self.seen
        if duplicate:
            self.duplicates += 1
            self.first_error = self.first_error or f"flow {flow} message {k} delivered twice"
        self.seen.add(key)
        self.payload_bytes += length
        return flow, k, ok, duplicate

    def report(self) -> dict[str, Any]:
        per_flow: dict[str, int] = {}
        for flow, _ in self.seen:
            per_flow[str(flow)] = per_flow.get(str(flow), 0) + 1
        return {
            "delivered": self.delivered,
            "distinct": len(self.seen),
            "duplicates": self.duplicates,
            "corrupt": self.corrupt,
            "unparseable": self.unparseable,
            "payload_bytes": self.payload_bytes,
            "per_flow": per_flow,
            "first_error": self.first_error or None,
        }


# ---------------------------------------------------------------------------------------
# Subprocess runners: receiver (p2pfast, TCP) and relay


def _node_config(
    listen: str, network_id: str, datagram_size: int | None, pmtu: bool, peers: int
) -> Any:
    from ..config import Config
    from ..errors import ConfigError

    names = {f.name for f in dataclasses.fields(Config)}
    extra: dict[str, Any] = {}
    if datagram_size is not None:
        extra["max_datagram_size"] = datagram_size
    if not pmtu:
        if "pmtu_discovery" not in names:
            raise BenchError("--no-pmtu: this p2pfast has no pmtu_discovery setting")
        extra["pmtu_discovery"] = False
    try:
        return _make_config(Config, listen, network_id, peers, extra)
    except ConfigError as exc:
        raise BenchError(str(exc)) from None


def _make_config(
    config: Any, listen: str, network_id: str, peers: int, extra: dict[str, Any]
) -> Any:
    return config(
        listen_address=listen,
        network_id=network_id,
        enable_discovery=False,
        max_connections=max(8, peers + 4),
        heartbeat_interval=3600.0,
        connection_timeout=7200.0,
        stats_interval=0.0,
        echo=False,
        **extra,
    )


def _counters(server: Any, names: Iterable[str]) -> dict[str, int | None]:
    node = server.node
    counters = node.counters if node is not None else None
    return {name: getattr(counters, name, None) for name in names}


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - Windows' loops
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


def _write_report(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)  # the bench never reads half a report


async def _receive(args: argparse.Namespace) -> None:
    from .. import USE_EXTENSIONS
    from ..server import P2PServer

    config = _node_config(args.address, args.network_id, args.datagram_size, args.pmtu, 64)
    tally = Tally()
    server = P2PServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _stop_on_signals(loop, stop)
    acks: set[asyncio.Task[None]] = set()
    ack_errors: list[str] = []

    def ack_done(task: asyncio.Task[None]) -> None:
        acks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            ack_errors.append(repr(task.exception()))

    async def read() -> None:
        async for message in server.messages():
            at = time.monotonic()
            flow, k, ok, dup = tally.check(message.payload)
            task = loop.create_task(server.send(message.source, [flow, k, ok, dup, at]))
            acks.add(task)
            task.add_done_callback(ack_done)

    reader = loop.create_task(read())
    host, port = server.local_address[:2]
    impl = "compiled" if USE_EXTENSIONS else "pure"
    print(
        f"p2pfast-bulk receiver listening on {host}:{port} node_id={server.node_id} "
        f"extensions={impl}",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    doc = {
        "tally": tally.report(),
        "counters": _counters(server, RECEIVER_COUNTERS),
        "ack_errors": ack_errors[:5],
        "extensions": impl,
    }
    _write_report(args.report, doc)
    reader.cancel()
    for task in list(acks):
        task.cancel()
    await server.stop()


class _TcpReceiver(asyncio.BufferedProtocol):
    """Length-prefixed payloads in (the payload string's UTF-8 bytes: a byte stream needs no
    JSON to carry a string), the same check and a length-prefixed ack out. The kernel copies
    each frame straight into a buffer of its size (``BufferedProtocol``): no joins, no slices.
    """

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.head = bytearray(4)
        self.frame: bytearray | None = None  # None: reading the length prefix
        self.pos = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.head if self.frame is None else self.frame)[self.pos :]

    def buffer_updated(self, nbytes: int) -> None:
        self.pos += nbytes
        if self.frame is None:
            if self.pos == 4:
                self.frame = bytearray(int.from_bytes(self.head, "big"))
                self.pos = 0
            if self.frame is None or self.frame:
                return
        elif self.pos < len(self.frame):
            return
        frame, self.frame, self.pos = self.frame, None, 0
        at = time.monotonic()
        flow, k, ok, dup = self.tally.check_bytes(frame)
        ack = orjson.dumps([flow, k, ok, dup, at])
        assert self.transport is not None
        self.transport.write(len(ack).to_bytes(4, "big") + ack)


async def _tcp_receive(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    host, _, port = args.address.rpartition(":")
    server = await loop.create_server(lambda: _TcpReceiver(tally), host or "127.0.0.1", int(port))
    stop = asyncio.Event()
    _stop_on_signals(loop, stop)
    bound = server.sockets[0].getsockname()
    print(f"p2pfast-bulk tcp receiver listening on {bound[0]}:{bound[1]}", file=sys.stderr)
    sys.stderr.flush()
    await stop.wait()
    _write_report(args.report, {"tally": tally.report()})
    server.close()


async def _relay(args: argparse.Namespace) -> None:
    from ..relay import LossyRelay

    host, _, port = args.target.rpartition(":")
    relay = LossyRelay(
        (host, int(port)),
        loss=args.loss,
        duplicate=args.duplicate,
        reorder=args.reorder,
        seed=args.seed,
        rate=args.rate,
        queue=args.queue,
        max_size=args.max_size,
    )
    addr = await relay.start()
    stop = asyncio.Event()
    _stop_on_signals(asyncio.get_running_loop(), stop)
    print(f"p2pfast-bulk relay listening on {addr[0]}:{addr[1]}", file=sys.stderr, flush=True)
    await stop.wait()
    _write_report(args.report, relay_report(relay))
    relay.close()


def relay_report(relay: Any) -> dict[str, Any]:
    """The relay's counters, as the bench reports them."""
    return {
        "forwarded": relay.forwarded,
        "forwarded_bytes": relay.forwarded_bytes,
        "dropped": relay.dropped,
        "duplicated": relay.duplicated,
        "reordered": relay.reordered,
        "queue_dropped": relay.queue_dropped,
        "oversize_dropped": relay.oversize_dropped,
        "clients": len(relay.clients),
        "shapers": relay.shaper_stats(),
    }


# ---------------------------------------------------------------------------------------
# The sending side


class Flow:
    """One sender: a P2PServer (or a TCP connection) with its payloads, the acks it waits for,
    and when each message was sent and delivered."""

    def __init__(self, index: int, spec: BulkSpec) -> None:
        self.index = index
        self.spec = spec
        self.payloads = Payloads(index, spec.size, spec.seed)
        self.sent_at: dict[int, float] = {}
        self.delivered_at: dict[int, float] = {}
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.failures: list[str] = []
        self.next_k = 0
        self.server: Any = None
        self.peer_id = ""
        self.reader_task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    def on_ack(self, ack: Any) -> None:
        try:
            flow, k, ok, dup, at = ack
        except (TypeError, ValueError):
            self.failures.append(f"flow {self.index}: unexpected ack {ack!r:.60}")
            return
        if flow != self.index:
            self.failures.append(f"flow {self.index}: ack for flow {flow} message {k}")
        if not ok or dup:
            self.failures.append(
                f"flow {self.index} message {k}: "
                + ("delivered twice" if dup else "corrupt at the receiver")
            )
        fut = self.waiting.pop(k, None)
        if fut is not None and not fut.done():
            fut.set_result(float(at))

    async def start(self, target: tuple[str, int]) -> None:
        """Connect to the receiver (or the relay in front of it)."""
        raise NotImplementedError

    async def send_one(self, k: int) -> None:
        """Send message ``k``; returns when the transport took it (backpressure)."""
        raise NotImplementedError

    def counters(self) -> dict[str, int | None]:
        """The sender's counters now (empty where there are none)."""
        return {}

    async def close(self) -> None:
        raise NotImplementedError

    async def transfer(self, count: int, window: int) -> tuple[float, float, list[int]]:
        """Send ``count`` messages, ``window`` at a time; (first send, last ack, numbers)."""
        ks = list(range(self.next_k, self.next_k + count))
        self.next_k += count
        it: Iterator[int] = iter(ks)
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()

        async def worker() -> None:
            for k in it:
                fut: asyncio.Future[float] = loop.create_future()
                self.waiting[k] = fut
                self.sent_at[k] = time.monotonic()
                await self.send_one(k)
                self.delivered_at[k] = await fut

        await asyncio.gather(*(worker() for _ in range(min(window, count))))
        return t0, time.monotonic(), ks


class P2PFlow(Flow):
    async def start(self, target: tuple[str, int]) -> None:
        from ..server import P2PServer

        spec = self.spec
        config = _node_config(
            "127.0.0.1:0", spec.network_id, spec.datagram_size, spec.pmtu, spec.peers
        )
        self.server = P2PServer(config)
        await self.server.start()
        stream = self.server.messages()
        self.peer_id = await self.server.connect_to_peer(target, timeout=10.0)

        async def read() -> None:
            async for message in stream:
                self.on_ack(message.payload)

        self.reader_task = asyncio.get_running_loop().create_task(read())

    async def send_one(self, k: int) -> None:
        await self.server.send(self.peer_id, self.payloads.make(k))

    def counters(self) -> dict[str, int | None]:
        return _counters(self.server, SENDER_COUNTERS)

    async def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
        if self.server is not None:
            await self.server.stop()


class TcpFlow(Flow):
    async def start(self, target: tuple[str, int]) -> None:
        reader, self.writer = await asyncio.open_connection(*target)

        async def read() -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    n = int.from_bytes(await reader.readexactly(4), "big")
                    self.on_ack(orjson.loads(await reader.readexactly(n)))

        self.reader_task = asyncio.get_running_loop().create_task(read())

    async def send_one(self, k: int) -> None:
        assert self.writer is not None
        data = self.payloads.make(k).encode()
        self.writer.writelines((len(data).to_bytes(4, "big"), data))
        await self.writer.drain()

    async def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


def _python_env(impl: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    if impl is not None:
        env.pop("P2PFAST_NO_EXTENSIONS", None)
        if impl == "pure":
            env["P2PFAST_NO_EXTENSIONS"] = "1"
    return env


def _runner(name: str, args: list[str], impl: str | None) -> ServerProcess:
    argv = [sys.executable, "-m", "p2pfast.bench.bulk", *args]
    return ServerProcess(name, argv, _python_env(impl))


def _stop_and_report(proc: ServerProcess | None, path: str) -> dict[str, Any] | None:
    if proc is None or proc.proc is None:
        return None
    proc.stop(REPORT_TIMEOUT)
    try:
        with open(path) as f:
            doc: dict[str, Any] = json.load(f)
        return doc
    except (OSError, ValueError):
        return None


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time of ``pid`` (all its threads), to the nanosecond where ``/proc/PID/task/*/
    schedstat`` exists (a short transfer is a few clock ticks), else utime + stime."""
    if pid is None:
        return None
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        return proc_cpu_seconds(pid)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    v = sorted(values)

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, int(q * len(v)))] * 1000.0, 3)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(v[-1] * 1000.0, 3)}


async def _transfer(
    kind: str, spec: BulkSpec, target: tuple[str, int], pids: dict[str, int | None]
) -> dict[str, Any]:
    """Start the flows, warm up, measure the bulk phase, then the idle latency."""
    flows: list[Flow] = [
        (P2PFlow if kind == "p2pfast" else TcpFlow)(i, spec) for i in range(spec.peers)
    ]
    try:
        for f in flows:
            await f.start(target)
        if spec.warmup:
            await asyncio.gather(*(f.transfer(spec.warmup, spec.window) for f in flows))
        before = [f.counters() for f in flows]
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        own0, t0 = cpu_seconds(os.getpid()) or time.process_time(), time.monotonic()
        phases = await asyncio.gather(*(f.transfer(spec.count, spec.window) for f in flows))
        own1, t1 = cpu_seconds(os.getpid()) or time.process_time(), time.monotonic()
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        after = [f.counters() for f in flows]
        idle: list[float] = []
        if spec.latency_count:
            _, _, ks = await flows[0].transfer(spec.latency_count, 1)
            idle = [flows[0].delivered_at[k] - flows[0].sent_at[k] for k in ks]
    finally:
        for f in flows:
            with contextlib.suppress(Exception):
                await f.close()
    per_message = payload_bytes(spec.size)
    loaded: list[float] = []
    per_flow: list[dict[str, Any]] = []
    for f, (f0, f1, ks), c0, c1 in zip(flows, phases, before, after, strict=True):
        loaded += [f.delivered_at[k] - f.sent_at[k] for k in ks]
        delta = {
            n: (c1[n] - c0[n]) if c1.get(n) is not None and c0.get(n) is not None else None  # type: ignore[operator]
            for n in c1
        }
        sent, retx = delta.get("fragments_sent"), delta.get("fragments_retransmitted")
        per_flow.append(
            {
                "flow": f.index,
                "goodput_mb_s": round(len(ks) * per_message / (f1 - f0) / 1e6, 2),
                "seconds": round(f1 - f0, 4),
                "counters": delta,
                "loss_rate": round(retx / sent, 4) if sent and retx is not None else None,
            }
        )
    wall = t1 - t0
    mib = spec.count * spec.peers * per_message / MIB
    cpu: dict[str, float | None] = {"sender": own1 - own0}
    for name in pids:
        a, b = cpu0.get(name), cpu1.get(name)
        cpu[name] = b - a if a is not None and b is not None else None
    totals: dict[str, int | None] = {}
    for name in SENDER_COUNTERS if kind == "p2pfast" else ():
        vals = [pf["counters"].get(name) for pf in per_flow]
        totals[name] = None if any(v is None for v in vals) else sum(vals)
    sent, retx = totals.get("fragments_sent"), totals.get("fragments_retransmitted")
    # Fairness: each flow's goodput while all of them were sending (from the last flow's
    # start to the first flow's end), from the receiver's delivery times.
    lo = max(p[0] for p in phases)
    hi = min(p[1] for p in phases)
    if len(flows) > 1 and hi - lo > 0:
        for f, pf, (_, _, ks) in zip(flows, per_flow, phases, strict=True):
            n = sum(1 for k in ks if lo <= f.delivered_at[k] <= hi)
            pf["overlap_goodput_mb_s"] = round(n * per_message / (hi - lo) / 1e6, 2)
        goodputs = [pf["overlap_goodput_mb_s"] for pf in per_flow]
    else:
        goodputs = [pf["goodput_mb_s"] for pf in per_flow]
    return {
        "kind": kind,
        "messages": spec.count * spec.peers,
        "payload_bytes_per_message": per_message,
        "seconds": round(wall, 4),
        "goodput_mb_s": round(mib * MIB / wall / 1e6, 2),
        "cpu_s_per_mib": {
            k: (round(v / mib, 5) if v is not None else None) for k, v in cpu.items()
        },
        "cpu_utilisation": {
            k: (round(v / wall, 3) if v is not None else None) for k, v in cpu.items()
        },
        "latency_ms": _percentiles(idle),
        "loaded_latency_ms": _percentiles(loaded),
        "counters": totals,
        "loss_rate": round(retx / sent, 4) if sent and retx is not None else None,
        "flows": per_flow,
        "fairness": round(max(goodputs) / min(goodputs), 3) if min(goodputs) > 0 else None,
        "failures": [msg for f in flows for msg in f.failures][:10],
        "sent": sum(f.next_k for f in flows),
    }


def _verify(result: dict[str, Any], receiver: dict[str, Any] | None) -> None:
    """Every message intact and exactly once on the receiver, or the run fails."""
    label = result["label"]
    if result["failures"]:
        raise BenchError(f"{label}: {result['failures'][0]}")
    if receiver is None:
        raise BenchError(f"{label}: the receiver wrote no report")
    tally = receiver["tally"]
    sent = result["sent"]
    bad = tally["duplicates"] or tally["corrupt"] or tally["unparseable"]
    if bad or tally["distinct"] != sent or tally["delivered"] != sent:
        raise BenchError(
            f"{label}: the receiver got {tally['delivered']} messages "
            f"({tally['distinct']} distinct, {tally['duplicates']} duplicated, "
            f"{tally['corrupt']} corrupt, {tally['unparseable']} unparseable) of {sent} sent"
            + (f": {tally['first_error']}" if tally.get("first_error") else "")
        )


def run_bulk_p2pfast(spec: BulkSpec, *, child: bool = False) -> dict[str, Any]:
    """The p2pfast transfer: receiver (and relay) subprocesses, senders here (or in a child
    bench process when this one runs the other implementation)."""
    from .. import USE_EXTENSIONS

    here = "compiled" if USE_EXTENSIONS else "pure"
    if spec.impl != here:
        if child:  # the child could not load what it was started for: never start another
            raise BenchError(
                f"--impl {spec.impl}: this p2pfast runs the {here} implementation "
                "(compiled extensions not built?)"
            )
        return _run_in_child(spec)
    with tempfile.TemporaryDirectory(prefix="p2pfast-bulk-") as tmp:
        recv_report = os.path.join(tmp, "receiver.json")
        relay_report_path = os.path.join(tmp, "relay.json")
        args = ["receive", "--report", recv_report, "--network-id", spec.network_id]
        if spec.datagram_size is not None:
            args += ["--datagram-size", str(spec.datagram_size)]
        if not spec.pmtu:
            args.append("--no-pmtu")
        receiver = _runner(f"bulk receiver ({spec.impl})", args, spec.impl)
        relay: ServerProcess | None = None
        result: dict[str, Any] = {}
        try:
            receiver.start()
            target = (receiver.host, receiver.port)
            pids: dict[str, int | None] = {"receiver": receiver.pid}
            if spec.relayed:
                relay = _runner("bulk relay", _relay_args(spec, target, relay_report_path), None)
                relay.start()
                target = (relay.host, relay.port)
                pids["relay"] = relay.pid
            result = _run_loop(_transfer("p2pfast", spec, target, pids), spec.timeout, "p2pfast")
        finally:
            recv_doc = _stop_and_report(receiver, recv_report)
            relay_doc = _stop_and_report(relay, relay_report_path)
        result.update(label=f"p2pfast ({here})", impl=here, receiver=recv_doc, relay=relay_doc)
        ext = recv_doc.get("extensions") if recv_doc else None
        if ext is not None and ext != spec.impl:
            result["warning"] = f"the receiver runs {ext}: compiled extensions not built?"
        _verify(result, recv_doc)
        return result


def _relay_args(spec: BulkSpec, target: tuple[str, int], report: str) -> list[str]:
    args = [
        "relay", "--target", f"{target[0]}:{target[1]}", "--report", report,
        "--loss", str(spec.loss), "--duplicate", str(spec.duplicate),
        "--reorder", str(spec.reorder), "--seed", str(spec.seed), "--queue", str(spec.queue),
    ]  # fmt: skip
    if spec.rate_mbps:
        args += ["--rate", str(spec.rate_mbps * 1e6)]
    if spec.path_mtu:
        args += ["--max-size", str(spec.path_mtu)]
    return args


def run_bulk_tcp(spec: BulkSpec) -> dict[str, Any]:
    """The same transfer over asyncio TCP on uvloop (receiver in a subprocess)."""
    with tempfile.TemporaryDirectory(prefix="p2pfast-bulk-") as tmp:
        report = os.path.join(tmp, "tcp.json")
        receiver = _runner("bulk TCP receiver", ["tcp-receive", "--report", report], None)
        result: dict[str, Any] = {}
        try:
            receiver.start()
            target = (receiver.host, receiver.port)
            pids: dict[str, int | None] = {"receiver": receiver.pid}
            result = _run_loop(_transfer("tcp", spec, target, pids), spec.timeout, "TCP")
        finally:
            doc = _stop_and_report(receiver, report)
        result.update(label="TCP (uvloop)", impl="tcp", receiver=doc, relay=None)
        _verify(result, doc)
        return result


def _run_loop(coro: Any, timeout: float, what: str) -> dict[str, Any]:
    from ..errors import P2PError
    from ..server import run

    async def bounded() -> dict[str, Any]:
        try:
            result: dict[str, Any] = await asyncio.wait_for(coro, timeout)
            return result
        except (P2PError, OSError) as exc:  # before TimeoutError: P2PTimeout is one
            raise BenchError(f"the {what} bulk transfer failed: {exc}") from None
        except asyncio.TimeoutError:
            raise BenchError(
                f"the {what} bulk transfer did not finish within {timeout:g} s"
            ) from None

    out: dict[str, Any] = run(bounded())
    return out


def _run_in_child(spec: BulkSpec) -> dict[str, Any]:
    """Run the p2pfast transfer in a child bench process of ``spec.impl``: the sender's
    implementation is chosen when p2pfast is imported."""
    with tempfile.TemporaryDirectory(prefix="p2pfast-bulk-") as tmp:
        out = os.path.join(tmp, "run.json")
        argv = [sys.executable, "-m", "p2pfast.bench.bulk", "run", "--spec", spec.to_json()]
        argv += ["--out", out]
        proc = subprocess.Popen(
            argv,
            env=_python_env(spec.impl),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=spec.timeout + 60)
        except BaseException as exc:
            # SIGTERM: the child unwinds and stops its receiver and relay, then exits.
            proc.terminate()
            try:
                proc.wait(REPORT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise BenchError(f"the {spec.impl} bulk run did not finish in time") from None
            raise
        if proc.returncode != 0:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            raise BenchError(lines[-1] if lines else f"the {spec.impl} run failed")
        with open(out) as f:
            doc: dict[str, Any] = json.load(f)
        return doc


def run_bulk(spec: BulkSpec, impls: list[str], rounds: int = 1) -> dict[str, Any]:
    """Every transfer asked for, side by side, ``rounds`` times interleaved; the ratios to
    TCP per round, and the medians over the rounds."""
    runs: list[dict[str, Any]] = []
    per_round: list[dict[str, float]] = []
    for round_no in range(1, rounds + 1):
        these = [run_bulk_p2pfast(dataclasses.replace(spec, impl=i)) for i in impls]
        if spec.baseline:
            these.append(run_bulk_tcp(spec))
        for r in these:
            r["round"] = round_no
        runs += these
        per_round.append(_ratios(these))
    doc: dict[str, Any] = {"runs": runs, "ratios": _median_dicts(per_round)}
    if rounds > 1:
        doc["ratios_per_round"] = per_round
        doc["medians"] = {
            label: _median_dicts([_figures(r) for r in runs if r["label"] == label])
            for label in dict.fromkeys(r["label"] for r in runs)
        }
    return doc


def _ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    tcp = next((r for r in runs if r["kind"] == "tcp"), None)
    for r in runs:
        if r["kind"] == "p2pfast" and tcp is not None and tcp["goodput_mb_s"]:
            ratios[f"{r['impl']}/tcp goodput"] = round(r["goodput_mb_s"] / tcp["goodput_mb_s"], 4)
    by_impl = {r["impl"]: r for r in runs if r["kind"] == "p2pfast"}
    if "compiled" in by_impl and "pure" in by_impl and by_impl["pure"]["goodput_mb_s"]:
        ratios["compiled/pure goodput"] = round(
            by_impl["compiled"]["goodput_mb_s"] / by_impl["pure"]["goodput_mb_s"], 3
        )
    return ratios


def _figures(run: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one run, flat (for medians over rounds)."""
    out: dict[str, float] = {"goodput_mb_s": run["goodput_mb_s"]}
    for side, v in run["cpu_s_per_mib"].items():
        if v is not None:
            out[f"cpu_s_per_mib.{side}"] = v
    for name in ("latency_ms", "loaded_latency_ms"):
        for q in ("p50", "p99"):
            if run[name][q] is not None:
                out[f"{name}.{q}"] = run[name][q]
    for name in ("loss_rate", "fairness"):
        if run.get(name) is not None:
            out[name] = run[name]
    retx = run["counters"].get("fragments_retransmitted")
    if retx is not None:
        out["fragments_retransmitted"] = retx
    return out


def _median_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for d in dicts for k in d)
    return {k: round(statistics.median(d[k] for d in dicts if k in d), 5) for k in keys}


def format_bulk(doc: dict[str, Any], spec: BulkSpec) -> str:
    """The human-readable table of a bulk run."""
    per_msg = payload_bytes(spec.size)
    lines = [
        f"bulk: {spec.peers} flow(s) x {spec.count} messages of {spec.size:,} bytes encoded "
        f"({per_msg:,} payload bytes), window {spec.window}"
        + (
            f", relay loss {spec.loss} duplicate {spec.duplicate} reorder {spec.reorder}"
            if spec.loss or spec.duplicate or spec.reorder
            else ""
        )
        + (f", rate {spec.rate_mbps} MB/s queue {spec.queue}" if spec.rate_mbps else "")
        + (f", path MTU {spec.path_mtu}" if spec.path_mtu else ""),
        f"{'':<20}{'MB/s':>9}{'snd CPU s/MiB':>15}{'rcv CPU s/MiB':>15}"
        f"{'lat p50 ms':>12}{'lat p99 ms':>12}{'loaded p50':>12}{'retx frags':>12}{'loss':>8}",
    ]
    for r in doc["runs"]:
        c, lat, lo = r["cpu_s_per_mib"], r["latency_ms"], r["loaded_latency_ms"]
        retx = r["counters"].get("fragments_retransmitted")
        if retx is None:
            retx = r["counters"].get("retransmits")
        lines.append(
            f"{r['label']:<20}{r['goodput_mb_s']:>9.1f}{_f(c.get('sender')):>15}"
            f"{_f(c.get('receiver')):>15}{_f(lat['p50'], 2):>12}{_f(lat['p99'], 2):>12}"
            f"{_f(lo['p50'], 2):>12}{_f(retx, 0):>12}{_f(r.get('loss_rate'), 4):>8}"
        )
        if len(r["flows"]) > 1:
            shares = ", ".join(f"{f['goodput_mb_s']:.1f}" for f in r["flows"])
            both = ", ".join(f"{f.get('overlap_goodput_mb_s', 0):.1f}" for f in r["flows"])
            lines.append(
                f"{'':<20}per flow MB/s: {shares}; while all sent: {both} (max/min {r['fairness']})"
            )
        relay = r.get("relay")
        if relay:
            lines.append(
                f"{'':<20}relay: dropped {relay['dropped']}, duplicated {relay['duplicated']}, "
                f"reordered {relay['reordered']}, queue-dropped {relay['queue_dropped']}, "
                f"over the path MTU {relay['oversize_dropped']}"
            )
        if r.get("warning"):
            lines.append(f"{'':<20}warning: {r['warning']}")
    for label, med in doc.get("medians", {}).items():
        text = ", ".join(f"{k} {v:g}" for k, v in med.items())
        lines.append(f"median {label}: {text}")
    for name, value in doc["ratios"].items():
        lines.append(f"{name}: {value:g}" + (" (median of the rounds)" if "medians" in doc else ""))
    return "\n".join(lines)


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits else f"{value:,.0f}"


# ---------------------------------------------------------------------------------------
# ``python -m p2pfast.bench.bulk``: the subprocess runners


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p2pfast.bench.bulk",
        description="The processes of p2pfast-bench --workload bulk (not meant to be run alone).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rx = sub.add_parser("receive", help="the p2pfast receiver node")
    rx.add_argument("--address", default="127.0.0.1:0")
    rx.add_argument("--network-id", default=NETWORK_ID)
    rx.add_argument("--datagram-size", type=int)
    rx.add_argument("--no-pmtu", dest="pmtu", action="store_false")
    rx.add_argument("--report", required=True)
    tcp = sub.add_parser("tcp-receive", help="the TCP receiver")
    tcp.add_argument("--address", default="127.0.0.1:0")
    tcp.add_argument("--report", required=True)
    relay = sub.add_parser("relay", help="the seeded lossy relay")
    relay.add_argument("--target", required=True)
    relay.add_argument("--loss", type=float, default=0.0)
    relay.add_argument("--duplicate", type=float, default=0.0)
    relay.add_argument("--reorder", type=float, default=0.0)
    relay.add_argument("--seed", type=int, default=1)
    relay.add_argument("--rate", type=float, help="bytes/s")
    relay.add_argument("--queue", type=int, default=262_144)
    relay.add_argument("--max-size", type=int)
    relay.add_argument("--report", required=True)
    run = sub.add_parser("run", help="the p2pfast transfer of a spec, in this process")
    run.add_argument("--spec", required=True)
    run.add_argument("--out", required=True)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        # SIGTERM from the parent unwinds like Ctrl-C: the receiver and relay are stopped.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            result = run_bulk_p2pfast(BulkSpec.from_json(args.spec), child=True)
        except BenchError as exc:
            print(f"p2pfast-bench: error: {exc}", file=sys.stderr)
            return 1
        _write_report(args.out, result)
        return 0
    from ..server import run

    try:
        if args.command == "receive":
            run(_receive(args))
        elif args.command == "tcp-receive":
            run(_tcp_receive(args))
        else:
            run(_relay(args))
    except BenchError as exc:
        print(f"p2pfast-bench: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
