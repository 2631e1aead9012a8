"""One benchmark run: start the server, drive the peers through their phases, stop it.

A run creates ``--peers`` UDP sockets in one event loop (uvloop where available), handshakes
them all, waits for the server to settle, runs the timed closed-loop workload (each peer keeps
``--window`` messages in flight; a warm-up first, then the measurement, then a drain), says
Disconnect and stops the server; the result is one dict (the JSON report's ``runs`` entry).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import random
import re
import sys
import time
from time import perf_counter
from typing import Any, cast

from .common import NETWORK_ID, BenchError
from .loadgen import (
    DATA_CLASSES,
    HIST_BUCKETS,
    HIST_RES,
    T_DISCONNECT,
    T_HANDSHAKE_REQUEST,
    ClosingPeer,
    CoalescedDataPeer,
    HandshakePeer,
    IdlePeer,
    Peer,
    Shared,
    codec,
    data_template,
    ping_template,
    routed_template,
    start_next_handshake,
)
from .metering import (
    STOP_TIMEOUT,
    ServerProcess,
    baseline_server,
    p2pfast_server,
    proc_cpu_seconds,
    proc_status_kb,
    to_mb,
)

PROTOCOL_VERSION = "0.3.0"
CAPABILITIES = ["handshake", "discovery", "data_transfer"]
#: ``--acks coalesced``: the capability that makes a p2pfast server coalesce its Acks.
CAPABILITIES_COALESCED = [*CAPABILITIES, "p2pfast"]

#: Handshakes in flight at once, seconds between tries, tries per peer.
HANDSHAKE_CONCURRENCY = 256
HANDSHAKE_RETRY = 1.0
HANDSHAKE_TRIES = 5
#: After the handshakes, wait until the server's peer-list broadcasts stop (quiet this long).
SETTLE_QUIET = 0.4
SETTLE_MAX = 20.0
#: Closed-loop warm-up (not counted), loss timeout, end-of-phase drain.
WARMUP = 0.5
LOSS_TIMEOUT = 1.0
DRAIN = 1.0
TICK = 0.1

_EXT_RE = re.compile(r"extensions=(\w+)")


# Progress line


class Progress:
    """The one-line progress display on stderr (rate-limited to 5 updates a second)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0
        self._shown = False

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        sys.stderr.write("\r\x1b[2K" + text)
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self.enabled and self._shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._shown = False


# ---------------------------------------------------------------------------------------
# One run


class RunSpec:
    """What one run measures: which server, which workload, how hard, for how long."""

    def __init__(
        self,
        *,
        kind: str,
        impl: str,
        workload: str,
        peers: int,
        duration: float,
        window: int,
        size: int,
        rng: random.Random,
        target: tuple[str, int] | None = None,
        target_pid: int | None = None,
        acks: str = "plain",
        network_id: str = NETWORK_ID,
    ) -> None:
        self.kind = kind  # "p2pfast" or "baseline"
        # "plain" or "coalesced" (p2pfast data runs only; "plain" for everything else)
        self.acks = acks if kind == "p2pfast" and workload == "data" else "plain"
        self.impl = impl
        self.workload = workload
        self.peers = peers
        self.duration = duration
        self.window = window
        self.size = size
        self.rng = rng
        self.target = target
        self.target_pid = target_pid
        self.network_id = network_id

    @property
    def label(self) -> str:
        return "baseline" if self.kind == "baseline" else self.impl

    @property
    def tag(self) -> str:
        """The workload as the table shows it: ``data``, ``data/coalesced``, ``ping``..."""
        return self.workload if self.acks == "plain" else f"{self.workload}/{self.acks}"


class Run:
    """Drives one run inside a uvloop event loop; returns the result dict."""

    def __init__(
        self,
        spec: RunSpec,
        host: str,
        port: int,
        server: ServerProcess | None,
        pid: int | None,
        progress: Progress,
    ) -> None:
        self.spec = spec
        self.host = host
        self.port = port
        self.server = server
        self.pid = pid
        self.progress = progress
        self.b = Shared()
        self.peers: list[Peer] = []
        self.result: dict[str, Any] = {}

    # -- phases ------------------------------------------------------------------------------

    async def main(self) -> dict[str, Any]:
        try:
            await self._create_peers()
            await self._handshake()
            await self._settle()
            await self._data_phase()
            await self._disconnect()
        finally:
            for p in self.peers:
                if p.transport is not None:
                    p.transport.close()
        return self.result

    async def _create_peers(self) -> None:
        spec, b = self.spec, self.b
        loop = asyncio.get_running_loop()
        baseline = spec.kind == "baseline"
        run_tag = int.from_bytes(os.urandom(4), "big")
        ts = int(time.time())
        for i in range(spec.peers):
            node_id = _uuid4(spec.rng)
            peer = HandshakePeer(b, i, node_id, run_tag, baseline, spec.workload)
            try:
                # (a lambda with a default binds this peer; mypy cannot infer its type)
                await loop.create_datagram_endpoint(
                    lambda peer=peer: peer,  # type: ignore[misc]
                    local_addr=("127.0.0.1", 0),
                    remote_addr=(self.host, self.port),
                )
            except OSError as exc:
                raise BenchError(f"cannot create peer socket {i + 1}/{spec.peers}: {exc}") from None
            local = peer.transport.get_extra_info("sockname")
            info = {
                "capabilities": CAPABILITIES_COALESCED
                if spec.acks == "coalesced"
                else CAPABILITIES,
                "id": node_id,
                "listen_addr": f"{local[0]}:{local[1]}",
                "metadata": {},
                "name": f"bench-{i}",
                "network_id": spec.network_id,
                "version": PROTOCOL_VERSION,
            }
            hs_id = codec.new_id()
            peer.hs_id = hs_id.encode()
            peer.hs_data = codec.encode(T_HANDSHAKE_REQUEST, info, ts, id=hs_id, requires_ack=True)
            self.peers.append(peer)
            if i % 200 == 199:
                self.progress.show(f"[{spec.label} {spec.tag}] sockets {i + 1}/{spec.peers}")

    async def _handshake(self) -> None:
        spec, b = self.spec, self.b
        peers = cast("list[HandshakePeer]", self.peers)  # each one is, until the data phase
        label = f"[{spec.label} {spec.tag}]"
        b.hs_pending.extend(peers)
        t0 = perf_counter()
        for _ in range(min(HANDSHAKE_CONCURRENCY, len(peers))):
            start_next_handshake(b)
        while b.hs_done + b.hs_failed < len(peers):
            await asyncio.sleep(0.02)
            now = perf_counter()
            for p in peers:
                if p.state == Peer.HS_SENT and now - p.hs_at >= HANDSHAKE_RETRY:
                    if p.hs_tries >= HANDSHAKE_TRIES:
                        reason = f"no answer after {HANDSHAKE_TRIES} tries"
                        if b.icmp_errors:
                            reason += " (ICMP port unreachable: is anything listening there?)"
                        p._handshake_failed(reason)
                    else:
                        p.send_handshake(now)
            self.progress.show(f"{label} handshakes {b.hs_done}/{len(peers)}")
            if b.hs_failed:
                break  # a refusal will not go away: fail now
        elapsed = b.hs_last - t0
        self.progress.clear()
        if b.hs_failed or b.hs_done < len(peers):
            raise BenchError(
                f"handshake failed against {self.host}:{self.port} "
                f"({b.hs_done}/{len(peers)} peers connected): {b.first_error or 'no answer'}"
            )
        self.result.update(
            handshakes=b.hs_done,
            handshake_seconds=round(elapsed, 4),
            handshakes_per_s=round(b.hs_done / elapsed, 1) if elapsed > 0 else None,
            server_node_id=b.server_node_id,
        )

    async def _settle(self) -> None:
        """Let the server finish what the handshakes set off (its debounced peer-list
        broadcasts) before the timed phase, then read its RSS. Settled = no unsolicited
        datagram for SETTLE_QUIET and, when its pid is known, the server idle (under 10 % of
        a core over the last 0.2 s: a broadcast may keep it busy long before it sends)."""
        b = self.b
        t0 = perf_counter()
        cpu_prev, t_prev = proc_cpu_seconds(self.pid), t0
        idle = cpu_prev is None
        while True:
            await asyncio.sleep(0.05)
            now = perf_counter()
            if now - t_prev >= 0.2:
                cpu = proc_cpu_seconds(self.pid)
                idle = cpu is None or cpu_prev is None or cpu - cpu_prev <= 0.1 * (now - t_prev)
                cpu_prev, t_prev = cpu, now
            if idle and now - b.last_push >= SETTLE_QUIET:
                break
            if now - t0 >= SETTLE_MAX:
                self.result["settle_timed_out"] = True
                break
            self.progress.show(
                f"[{self.spec.label} {self.spec.tag}] waiting for the server to settle"
            )
        self.progress.clear()
        self.result["settle_seconds"] = round(perf_counter() - t0, 3)
        self.result["server_rss_after_handshake_mb"] = to_mb(proc_status_kb(self.pid, "VmRSS"))
        b.errors = 0
        b.first_error = ""
        b.stray = 0
        b.retransmit_requests = 0
        b.reacked = 0

    async def _data_phase(self) -> None:
        spec, b, peers = self.spec, self.b, self.peers
        label = f"[{spec.label} {spec.tag}]"
        sender_cls, partner_cls = DATA_CLASSES[(spec.kind == "baseline", spec.workload)]
        if spec.acks == "coalesced":
            sender_cls = partner_cls = CoalescedDataPeer
        senders: list[Peer] = []
        if spec.workload == "routed":
            for i in range(0, len(peers) - 1, 2):
                a, r = peers[i], peers[i + 1]
                a.__class__ = sender_cls
                r.__class__ = partner_cls
                r.partner = a
                a.tmpl = routed_template(spec.size, a.node_id, r.node_id)
                senders.append(a)
            if len(peers) % 2:
                peers[-1].__class__ = IdlePeer
        else:
            tmpl = data_template(spec.size) if spec.workload == "data" else ping_template()
            for p in peers:
                p.__class__ = sender_cls
                p.tmpl = tmpl
                senders.append(p)
        if not senders:
            raise BenchError("the routed workload needs at least 2 peers")

        b.ts = int(time.time())
        b.running = True
        now = perf_counter()
        for p in senders:
            for _ in range(spec.window):
                p.send_one(now)

        t_start = perf_counter()
        t_measure = t_start + WARMUP
        t_end = t_measure + spec.duration
        next_sweep = t_start + 0.25
        measuring = False
        snap: dict[str, Any] = {}
        # One point a second: (seconds into the measurement, msgs/s, server CPU utilisation),
        # to see a rate that drifts (a cache filling up, a leak) rather than only the mean.
        timeline: list[list[float | None]] = []
        mark: dict[str, Any] = {}
        while True:
            now = perf_counter()
            if not measuring and now >= t_measure:
                measuring = True
                b.hist[:] = array.array("q", [0]) * HIST_BUCKETS
                snap = mark = self._snapshot(senders)
            if now >= t_end:
                break
            if measuring and now - mark["t"] >= 1.0:
                cur = self._snapshot(senders)
                timeline.append(_timeline_point(snap, mark, cur))
                mark = cur
            if now >= next_sweep:
                self._sweep(senders, now)
                next_sweep = now + 0.25
            b.ts = int(time.time())
            if measuring:
                done = sum(p.done for p in senders) - snap["done"]
                rate = done / max(now - snap["t"], 1e-9)
                self.progress.show(
                    f"{label} {now - snap['t']:4.1f}/{spec.duration:g} s  {rate:,.0f} msg/s  "
                    f"retransmits {sum(p.retx for p in senders) - snap['retx']}"
                )
            else:
                self.progress.show(f"{label} warm-up")
            wake = min(
                next_sweep,
                t_end if measuring else t_measure,
                mark["t"] + 1.0 if mark else t_measure,
            )
            await asyncio.sleep(max(0.0, min(TICK, wake - perf_counter())))
        end = self._snapshot(senders)
        hist = array.array("q", b.hist)
        if mark and end["t"] - mark["t"] >= 0.2:
            timeline.append(_timeline_point(snap, mark, end))
        b.running = False
        self.progress.clear()

        # Drain: what is still in flight may complete (not counted); the rest is lost.
        t_drain = perf_counter()
        while perf_counter() - t_drain < DRAIN and any(p.out for p in senders):
            await asyncio.sleep(0.02)
        lost = sum(len(p.out) for p in senders)
        for p in senders:
            p.out.clear()

        wall = end["t"] - snap["t"]
        completions = end["done"] - snap["done"]
        server_cpu = (
            end["server_cpu"] - snap["server_cpu"]
            if end["server_cpu"] is not None and snap["server_cpu"] is not None
            else None
        )
        bench_cpu = end["bench_cpu"] - snap["bench_cpu"]
        p50, p90, p99, pmax = _percentiles(hist, (0.5, 0.9, 0.99, 1.0))
        acked = spec.kind == "p2pfast" and spec.workload == "data"
        ack_datagrams = end["nacks"] - snap["nacks"] if acked else None
        self.result.update(
            measured_seconds=round(wall, 4),
            completions=completions,
            msgs_per_s=round(completions / wall, 1) if wall > 0 else 0.0,
            latency_ms={"p50": p50, "p90": p90, "p99": p99, "max": pmax},
            retransmits=end["retx"] - snap["retx"],
            lost=lost,
            errors=b.errors,
            first_error=b.first_error or None,
            stray_datagrams=b.stray,
            retransmit_requests=b.retransmit_requests,
            # Ack datagrams received while measuring, and completions per Ack datagram (1.0
            # for plain acks; how many messages one coalesced Ack covered on average).
            ack_datagrams=ack_datagrams,
            msgs_per_ack=round(completions / ack_datagrams, 3) if ack_datagrams else None,
            reacked_seqs=b.reacked if spec.acks == "coalesced" else None,
            server_cpu_s=None if server_cpu is None else round(server_cpu, 3),
            server_cpu_util=None
            if server_cpu is None or wall <= 0
            else round(server_cpu / wall, 3),
            server_cpu_us_per_msg=(
                round(server_cpu / completions * 1e6, 2)
                if server_cpu is not None and completions
                else None
            ),
            msgs_per_server_cpu_s=(
                round(completions / server_cpu, 1) if server_cpu and completions else None
            ),
            bench_cpu_s=round(bench_cpu, 3),
            bench_cpu_us_per_msg=round(bench_cpu / completions * 1e6, 2) if completions else None,
            server_rss_end_mb=to_mb(proc_status_kb(self.pid, "VmRSS")),
            server_peak_rss_mb=to_mb(proc_status_kb(self.pid, "VmHWM")),
            timeline=timeline,
        )

    def _snapshot(self, senders: list[Peer]) -> dict[str, Any]:
        return {
            "t": perf_counter(),
            "server_cpu": proc_cpu_seconds(self.pid),
            "bench_cpu": time.process_time(),
            "done": sum(p.done for p in senders),
            "retx": sum(p.retx for p in senders),
            "nacks": sum(p.nacks for p in senders),
        }

    def _sweep(self, senders: list[Peer], now: float) -> None:
        """Resend what has been outstanding for LOSS_TIMEOUT, so a loss never stalls a peer."""
        cutoff = now - LOSS_TIMEOUT
        for p in senders:
            out = p.out
            if not out:
                continue
            expired = [k for k, t in out.items() if t < cutoff]
            for key in expired:
                p.retx += 1
                p.resend(key, now)

    async def _disconnect(self) -> None:
        b, peers = self.b, self.peers
        ts = int(time.time())
        data = codec.encode(T_DISCONNECT, {"reason": "benchmark finished"}, ts)
        for p in peers:
            p.__class__ = ClosingPeer
        b.server_disconnects = 0
        for p in peers:
            p.transport.sendto(data)
        await asyncio.sleep(0.3)
        # Peak RSS must be read while the process still exists.
        peak = proc_status_kb(self.pid, "VmHWM")
        if peak is not None:
            self.result["server_peak_rss_mb"] = to_mb(peak)
        if self.server is not None:
            self.server.terminate()
            t0 = perf_counter()
            proc = self.server.proc
            assert proc is not None
            while proc.poll() is None and perf_counter() - t0 < STOP_TIMEOUT:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                self.server.kill()
            self.result["server_exit_code"] = self.server.stop()
            await asyncio.sleep(0.1)  # let its Disconnects (if any) arrive
            # Peers the server still held after our Disconnects (0 expected for p2pfast; the
            # echo baseline sends our own Disconnects back, so it has no such number).
            if self.spec.kind == "p2pfast":
                self.result["server_disconnects"] = b.server_disconnects


def _timeline_point(start: dict[str, Any], prev: dict[str, Any], cur: dict[str, Any]) -> list[Any]:
    """[seconds since the measurement began, msgs/s, server CPU utilisation] over prev→cur."""
    span = cur["t"] - prev["t"]
    cpu = (
        None
        if cur["server_cpu"] is None or prev["server_cpu"] is None
        else round((cur["server_cpu"] - prev["server_cpu"]) / span, 3)
    )
    return [round(cur["t"] - start["t"], 2), round((cur["done"] - prev["done"]) / span, 1), cpu]


def _uuid4(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def _percentiles(hist: array.array[int], qs: tuple[float, ...]) -> list[float | None]:
    total = sum(hist)
    if not total:
        return [None] * len(qs)
    out: list[float | None] = []
    targets = [max(1, int(q * total + 0.999999)) for q in qs]
    cum = 0
    ti = 0
    for i, n in enumerate(hist):
        if not n:
            continue
        cum += n
        while ti < len(targets) and cum >= targets[ti]:
            out.append(round((i + 0.5) * HIST_RES * 1000.0, 3))  # bucket middle, in ms
            ti += 1
        if ti == len(targets):
            break
    return out


def run_one(spec: RunSpec, progress: Progress) -> dict[str, Any]:
    """Start the server (if ours), run the phases in a fresh uvloop loop, stop everything."""

    server: ServerProcess | None = None
    extensions: str | None = None
    if spec.kind == "baseline":
        server = baseline_server()
    elif spec.target is None:
        server = p2pfast_server(spec.peers, spec.impl, spec.network_id)
    if server is not None:
        progress.show(f"[{spec.label} {spec.tag}] starting {server.name}", force=True)
        server.start()
        host, port, pid = server.host, server.port, server.pid
        m = _EXT_RE.search(server.ready_line)
        extensions = m.group(1) if m else None
    else:
        assert spec.target is not None
        host, port = spec.target
        pid = spec.target_pid
    result: dict[str, Any] = {
        "label": spec.label,
        "kind": spec.kind,
        "impl": spec.impl if spec.kind == "p2pfast" else "baseline",
        "extensions": extensions if spec.kind == "p2pfast" else None,
        "workload": spec.workload,
        "acks": spec.acks if spec.kind == "p2pfast" and spec.workload == "data" else None,
        "peers": spec.peers,
        "window": spec.window,
        "size": spec.size,
        "duration": spec.duration,
        "server": f"{host}:{port}",
        "server_pid": pid,
        "target": spec.target is not None and spec.kind == "p2pfast",
    }
    loop = _new_event_loop()
    try:
        task = loop.create_task(Run(spec, host, port, server, pid, progress).main())
        try:
            result.update(loop.run_until_complete(task))
        except BaseException:  # Ctrl-C: unwind the run inside the loop, then re-raise
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):  # the original exception matters
                    loop.run_until_complete(task)
            raise
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
        progress.clear()
        if server is not None and server.proc is not None and server.proc.poll() is None:
            result["server_exit_code"] = server.stop()
    if not result.get("completions"):
        err = result.get("first_error")
        raise BenchError(
            f"zero messages completed in the {spec.tag} phase against {spec.label} "
            f"({host}:{port})" + (f": {err}" if err else "")
        )
    return result


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop, as p2pfast-server runs on; the standard loop where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
