"""``p2pfast-bench``: closed-loop load generator and server-cost meter for ``p2pfast-server``.

One run = start a server subprocess (or use ``--target``), create ``--peers`` UDP sockets in
one uvloop event loop, handshake them all, run a timed closed-loop workload (each peer keeps
``--window`` messages in flight), say Disconnect, stop the server. It reports handshakes/s,
messages/s, latency percentiles, retransmissions, losses, and, read from ``/proc`` for the
server process itself, **server CPU time per message** and its resident memory.

Workloads (SPEC §7, seed-protocol §17):

``data``
    Data with ``requires_ack: true``, a per-peer ``sequence_number`` from 1 and payload
    ``{"blob": "<size chars>"}``; complete when the Ack (``ack_for`` = its id) arrives.
    With ``--acks coalesced`` the peers also announce the ``p2pfast`` capability, and the server
    answers with one Ack per peer per I/O batch whose payload ``{"seq": [[lo, hi], ...]}``
    lists inclusive ranges of acknowledged sequence numbers (its ``ack_for`` names one message
    only: the last one the server received, so it is ignored); every outstanding message in a
    range completes. Such runs are labelled
    ``data/coalesced``; ``ack_datagrams`` and ``msgs_per_ack`` show how much one Ack covered.
``ping``
    Ping → Pong (a Pong names no request, so a peer's Pongs complete its Pings in order).
``routed``
    Peers paired A→B; A sends routed Data (``max_hops`` 8, a fresh ``route_id``) addressed to
    B's node id; complete when B receives it (matched by the original message id).

``--baseline`` adds a run against :mod:`p2pfast._baseline` (a uvloop echo that does nothing
else) under the identical load; the echo of a message completes it. The ratio
p2pfast/baseline of server CPU per message is "protocol cost over bare uvloop I/O".

The generator is cheap per message: datagrams are formatted from pre-encoded templates
(``bytes % (id, timestamp, seq)``), replies are matched by slicing fixed offsets of the
server's canonical encoding (falling back to the codec for anything else), latencies go into a
fixed 10 µs-bucket histogram, and nothing is logged per message.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import platform
import random
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from time import perf_counter
from typing import Any

import click

with warnings.catch_warnings():  # the server reports which implementation it runs
    warnings.simplefilter("ignore", RuntimeWarning)
    from ._speedups import codec

from .errors import ProtocolError
from .protocol import MessageType

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is the safety net
    from json import loads as _loads

T_HANDSHAKE_REQUEST = int(MessageType.HandshakeRequest)
T_HANDSHAKE_RESPONSE = int(MessageType.HandshakeResponse)
T_PING = int(MessageType.Ping)
T_PONG = int(MessageType.Pong)
T_DATA = int(MessageType.Data)
T_ERROR = int(MessageType.Error)
T_DISCONNECT = int(MessageType.Disconnect)
T_ACK = int(MessageType.Ack)
T_RETRANSMIT = int(MessageType.Retransmit)

WORKLOADS = ("data", "ping", "routed")
NETWORK_ID = "bench"
PROTOCOL_VERSION = "0.3.0"
CAPABILITIES = ["handshake", "discovery", "data_transfer"]
#: ``--acks coalesced``: the capability that makes a p2pfast server coalesce its Acks.
CAPABILITIES_COALESCED = [*CAPABILITIES, "p2pfast"]
ACK_MODES = ("plain", "coalesced")

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
#: Latency histogram: 10 µs buckets up to 2 s (the last bucket holds everything slower).
HIST_RES = 1e-5
HIST_BUCKETS = 200_001
HIST_MAX = HIST_BUCKETS - 1
#: Servers: seconds to become ready, seconds between SIGTERM and SIGKILL.
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_READY_RE = re.compile(r"listening on (\S+):(\d+)")
_EXT_RE = re.compile(r"extensions=(\w+)")

# A coalesced Ack: {"id":..,"message_type":"Ack","timestamp":N,"payload":{"seq":[[lo,hi],..]},...
# (payload keys sorted, compact); the ranges are the JSON list from after _SEQ_AT to "]]".
_SEQ_AT = b'"payload":{"seq":'
_SEQ_AT_LEN = len(_SEQ_AT)
#: A range wider than this is matched against the outstanding messages instead of walked.
_RANGE_WALK_MAX = 64

# Offsets in a canonically encoded envelope: {"id":"<36>","message_type":"<Type>", ...
# The fast paths below slice these literally: the id is data[7:43], the type name starts at
# data[61], an Ack's ack_for is data[-38:-2] (the envelope ends ..."ack_for":"<36>"}).
_ID = slice(7, 43)
_ORIGINAL_ID = b'"original_message":{"ack_for":null,"id":"'
_ORIGINAL_ID_LEN = len(_ORIGINAL_ID)


class BenchError(Exception):
    """A failure reported as one line on stderr (no traceback) with a non-zero exit."""


# ---------------------------------------------------------------------------------------
# /proc readers (Linux); psutil when /proc is unavailable


def proc_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of ``pid`` (its own, not its children's), in seconds."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except Exception:
        return None


def proc_status_kb(pid: int | None, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmHWM``: peak RSS, ``VmRSS``: current)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    if key == "VmRSS":
        try:
            import psutil

            return psutil.Process(pid).memory_info().rss // 1024
        except Exception:
            return None
    return None


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024.0, 1)


# ---------------------------------------------------------------------------------------
# Server subprocesses


class ServerProcess:
    """A server subprocess that prints ``... listening on IP:PORT ...`` on stderr when ready.

    stderr is drained by a thread for the whole life of the process (a full pipe would block
    the server); the last lines are kept for error messages.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.host = ""
        self.port = 0
        self.ready_line = ""
        self.tail: deque[str] = deque(maxlen=20)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=self.env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the bench only
            )
        except OSError as exc:
            raise BenchError(f"cannot start {self.name}: {exc}") from None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(1.0)
                if self._ready.is_set():
                    break
                last = self._last_line() or "no output"
                raise BenchError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready: {last}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BenchError(f"{self.name} did not report ready within {timeout:.0f} s")
        match = _READY_RE.search(self.ready_line)
        assert match is not None
        self.host = match.group(1).strip("[]")
        self.port = int(match.group(2))

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if not self._ready.is_set() and _READY_RE.search(line):
                self.ready_line = line
                self._ready.set()

    def _last_line(self) -> str:
        for line in reversed(self.tail):
            if line.strip():
                return line.strip()
        return ""

    def terminate(self) -> None:
        """Send SIGTERM (non-blocking)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:  # pragma: no cover
                pass

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:  # pragma: no cover
                pass

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.returncode = self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(1.0)
        return self.returncode


def p2pfast_server(peers: int, impl: str) -> ServerProcess:
    env = dict(os.environ)
    env.pop("P2PFAST_NO_EXTENSIONS", None)
    if impl == "pure":
        env["P2PFAST_NO_EXTENSIONS"] = "1"
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    argv = [
        sys.executable, "-m", "p2pfast.cli",
        "-a", "127.0.0.1:0",
        "--network-id", NETWORK_ID,
        "-m", str(peers + 16),
        "--no-echo",
        "--disable-discovery",
        "--heartbeat-interval", "3600",
        "--connection-timeout", "7200",
        "--stats-interval", "0",
        "--log-level", "warning",
    ]  # fmt: skip
    return ServerProcess(f"p2pfast-server ({impl})", argv, env)


def baseline_server() -> ServerProcess:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    argv = [sys.executable, "-m", "p2pfast._baseline", "--address", "127.0.0.1:0"]
    return ServerProcess("baseline echo server", argv, env)


# ---------------------------------------------------------------------------------------
# Message templates


def _template(data: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """Turn an encoded datagram into a ``bytes %`` template: every ``(placeholder, spec)`` in
    ``fields`` must occur, in that order, exactly as many times as listed."""
    out = data.replace(b"%", b"%%")
    pos = 0
    for placeholder, spec in fields:
        at = out.find(placeholder, pos)
        if at < 0:
            raise AssertionError(f"template placeholder {placeholder!r} missing or out of order")
        out = out[:at] + spec + out[at + len(placeholder) :]
        pos = at + len(spec)
    for placeholder, _ in fields:
        if placeholder in out:
            raise AssertionError(f"template placeholder {placeholder!r} occurs too often")
    return out


_PH_ID = "ffffffff-ffff-4fff-bfff-fffffffffff1"
_PH_ID2 = "ffffffff-ffff-4fff-bfff-fffffffffff2"
_PH_ID3 = "ffffffff-ffff-4fff-bfff-fffffffffff3"
_PH_TS = 9_999_999_991
_PH_SEQ = 4_294_967_295


def data_template(size: int) -> bytes:
    """Data, requires_ack, sequence number: ``tmpl % (id, ts, seq)``."""
    raw = codec.encode(
        T_DATA, {"blob": "x" * size}, _PH_TS, id=_PH_ID, sequence_number=_PH_SEQ, requires_ack=True
    )
    return _template(raw, [(_PH_ID.encode(), b"%s"), (b"%d" % _PH_TS, b"%d"), (b"%d" % _PH_SEQ, b"%d")])


def ping_template() -> bytes:
    """Ping: ``tmpl % (id, ts)``."""
    raw = codec.encode(T_PING, None, _PH_TS, id=_PH_ID)
    return _template(raw, [(_PH_ID.encode(), b"%s"), (b"%d" % _PH_TS, b"%d")])


def routed_template(size: int, source: str, destination: str, max_hops: int = 8) -> bytes:
    """Routed Data A→B: ``tmpl % (envelope id, ts, original id, ts, route id)``."""
    payload = {
        "destination_node": destination,
        "hop_count": 0,
        "max_hops": max_hops,
        "original_message": {
            "ack_for": None,
            "id": _PH_ID2,
            "message_type": "Data",
            "payload": {"blob": "x" * size},
            "requires_ack": False,
            "sender_addr": None,
            "sequence_number": None,
            "timestamp": _PH_TS,
        },
        "route_id": _PH_ID3,
        "source_node": source,
    }
    raw = codec.encode(T_DATA, payload, _PH_TS, id=_PH_ID)
    ts = b"%d" % _PH_TS
    return _template(
        raw,
        [(_PH_ID.encode(), b"%s"), (ts, b"%d"), (_PH_ID2.encode(), b"%s"), (ts, b"%d"), (_PH_ID3.encode(), b"%s")],
    )


# ---------------------------------------------------------------------------------------
# The load generator: one DatagramProtocol per peer, behaviour switched per phase by class


class Shared:
    """State every peer of a run shares (kept in one object: one attribute hop from a peer)."""

    def __init__(self) -> None:
        self.running = False  # closed loop: send the next message on completion
        self.ts = int(time.time())
        self.hist = array.array("q", [0]) * HIST_BUCKETS
        self.last_push = 0.0  # last unsolicited datagram (settle detection)
        self.errors = 0
        self.first_error = ""
        self.icmp_errors = 0
        self.stray = 0
        self.retransmit_requests = 0  # Retransmit requests from the server (it saw a gap)
        self.reacked = 0  # coalesced Acks: sequence numbers acked again after they completed
        self.server_disconnects = 0
        self.hs_pending: deque[Peer] = deque()
        self.hs_done = 0
        self.hs_failed = 0
        self.hs_last = 0.0  # perf_counter() of the latest completed handshake
        self.server_node_id: str | None = None


class Peer(asyncio.DatagramProtocol):
    """One simulated node. Subclasses change only methods, so a peer moves from phase to
    phase by ``peer.__class__ = ...`` (uvloop looks ``datagram_received`` up on every call)."""

    __slots__ = (
        "b",
        "idx",
        "transport",
        "node_id",
        "baseline",
        "workload",
        "hs_data",
        "hs_id",
        "hs_tries",
        "hs_at",
        "state",
        "out",
        "counter",
        "prefix",
        "oprefix",
        "rprefix",
        "tmpl",
        "partner",
        "hist",
        "done",
        "retx",
        "nacks",
    )

    HS_IDLE, HS_SENT, HS_DONE, HS_FAILED = 0, 1, 2, 3

    def __init__(self, b: Shared, idx: int, node_id: str, run_tag: int, baseline: bool, workload: str) -> None:
        self.b = b
        self.idx = idx
        self.transport: Any = None
        self.node_id = node_id
        self.baseline = baseline
        self.workload = workload
        self.hs_data = b""
        self.hs_id = b""
        self.hs_tries = 0
        self.hs_at = 0.0
        self.state = Peer.HS_IDLE
        self.out: dict[bytes, float] = {}
        self.counter = 0
        # Message ids: <run tag>-<peer>-4<kind>-8000-<counter>, valid v4-shaped UUIDs, unique
        # per run, cheap to make. Kind 000: envelope, 001: original message, 002: route id.
        stem = b"%08x-%04x-4" % (run_tag & 0xFFFFFFFF, idx & 0xFFFF)
        self.prefix = stem + b"000-8000-"
        # Baseline echoes come back to the sender: the envelope id is the key there.
        self.oprefix = self.prefix if baseline else stem + b"001-8000-"
        self.rprefix = stem + b"002-8000-"
        self.tmpl = b""
        self.partner: Peer | None = None
        self.hist = b.hist
        self.done = 0
        self.retx = 0
        self.nacks = 0  # Ack datagrams received (data workload)

    # -- asyncio callbacks (defaults; phases override datagram_received) ------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def error_received(self, exc: Exception) -> None:
        self.b.icmp_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._slow(data)

    # -- the rare path: decode with the codec ------------------------------------------------

    def _completed(self, sent_at: float) -> float:
        """Count one completed message and its latency (10 µs histogram bins); return now."""
        now = perf_counter()
        i = int((now - sent_at) / HIST_RES)
        self.hist[i if i < HIST_MAX else HIST_MAX] += 1
        self.done += 1
        return now

    def _slow(self, data: bytes) -> None:
        b = self.b
        try:
            msg = codec.decode(data)
        except (ProtocolError, ValueError):
            b.stray += 1
            return
        mtype = msg.type
        if mtype == T_ERROR:
            b.errors += 1
            if not b.first_error:
                payload = msg.payload
                text = payload.get("error") if type(payload) is dict else None
                b.first_error = str(text or payload)[:200]
        elif mtype == T_DISCONNECT:
            b.server_disconnects += 1
        elif mtype == T_RETRANSMIT and self.workload == "data":
            b.retransmit_requests += 1
            payload = msg.payload
            seqs = payload.get("sequence_numbers") if type(payload) is dict else None
            if type(seqs) is list:
                for seq in seqs[:64]:
                    if type(seq) is int and 0 < seq <= self.counter:
                        key = self.key_of(seq)
                        if key in self.out:
                            self.retx += 1
                            self.resend(key, perf_counter())
        elif mtype in (T_ACK, T_PONG, T_DATA):
            self._complete_slow(msg, data)
        else:
            b.last_push = perf_counter()  # DiscoveryResponse pushes and the like

    def _complete_slow(self, msg: Any, data: bytes) -> None:
        """A reply in a form the fast path did not recognise (e.g. another server's encoding)."""
        b = self.b
        key: str | None = None
        owner: Peer = self
        if self.baseline:
            key = msg.id
        elif msg.type == T_ACK and self.workload == "data":
            self.nacks += 1
            payload = msg.payload
            if type(payload) is dict and "seq" in payload and isinstance(self, CoalescedDataPeer):
                if not self.complete_ranges(payload["seq"]):
                    b.stray += 1
                return
            key = msg.ack_for
        elif msg.type == T_PONG and self.workload == "ping":
            for k in self.out:
                key = k.decode()
                break
        elif msg.type == T_DATA and self.workload == "routed" and self.partner is not None:
            payload = msg.payload
            original = payload.get("original_message") if type(payload) is dict else None
            key = original.get("id") if type(original) is dict else None
            owner = self.partner
        t = owner.out.pop(owner.key_of_id(key), None) if type(key) is str else None
        if t is None:
            b.stray += 1
            return
        now = owner._completed(t)
        if b.running:
            owner.send_one(now)

    # -- keys of ``out``: message ids (bytes), or sequence numbers for CoalescedDataPeer -------

    def key_of(self, seq: int) -> Any:
        """The ``out`` key of this peer's Data with sequence number ``seq``."""
        return self.prefix + b"%012x" % seq

    def key_of_id(self, msg_id: str) -> Any:
        """The ``out`` key of the message with id ``msg_id``."""
        return msg_id.encode()

    # -- sending -----------------------------------------------------------------------------

    def send_one(self, now: float) -> None:
        raise NotImplementedError

    def resend(self, key: bytes, now: float) -> None:
        """A message outstanding for LOSS_TIMEOUT: send it (or a fresh one) again."""
        raise NotImplementedError


# Senders per workload ---------------------------------------------------------------------


class _DataSender(Peer):
    __slots__ = ()

    def send_one(self, now: float) -> None:
        c = self.counter + 1
        self.counter = c
        key = self.prefix + b"%012x" % c
        self.out[key] = now
        self.transport.sendto(self.tmpl % (key, self.b.ts, c))

    def resend(self, key: bytes, now: float) -> None:
        # Same id and sequence number: the server acks a duplicate again, never a gap.
        self.out[key] = now
        self.transport.sendto(self.tmpl % (key, self.b.ts, int(key[-12:], 16)))


class _SeqDataSender(Peer):
    """Data like :class:`_DataSender`, but ``out`` is keyed by sequence number (an int): a
    coalesced Ack names sequence-number ranges, and each lookup is then one dict probe."""

    __slots__ = ()

    def key_of(self, seq: int) -> Any:
        return seq

    def key_of_id(self, msg_id: str) -> Any:
        key = msg_id.encode()
        prefix = self.prefix
        if key[: len(prefix)] != prefix:
            return None
        try:
            return int(key[len(prefix) :], 16)
        except ValueError:
            return None

    def send_one(self, now: float) -> None:
        c = self.counter + 1
        self.counter = c
        self.out[c] = now
        self.transport.sendto(self.tmpl % (self.prefix + b"%012x" % c, self.b.ts, c))

    def resend(self, key: Any, now: float) -> None:
        # Same id and sequence number: the server acks a duplicate again (inside a range).
        self.out[key] = now
        self.transport.sendto(self.tmpl % (self.prefix + b"%012x" % key, self.b.ts, key))


class _PingSender(Peer):
    __slots__ = ()

    def send_one(self, now: float) -> None:
        c = self.counter + 1
        self.counter = c
        key = self.prefix + b"%012x" % c
        self.out[key] = now
        self.transport.sendto(self.tmpl % (key, self.b.ts))

    def resend(self, key: bytes, now: float) -> None:
        del self.out[key]
        self.send_one(now)


class _RoutedSender(Peer):
    __slots__ = ()

    def send_one(self, now: float) -> None:
        c = self.counter + 1
        self.counter = c
        hexc = b"%012x" % c
        key = self.oprefix + hexc
        self.out[key] = now
        ts = self.b.ts
        self.transport.sendto(self.tmpl % (self.prefix + hexc, ts, key, ts, self.rprefix + hexc))

    def resend(self, key: bytes, now: float) -> None:
        # A fresh route_id (the server drops a repeated one), so simply a fresh message.
        del self.out[key]
        self.send_one(now)


# Phase: handshake -------------------------------------------------------------------------


class HandshakePeer(Peer):
    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.state != Peer.HS_SENT:
            self.b.last_push = perf_counter()  # the server's peer-list pushes
            return
        if self.baseline:
            if data[_ID] == self.hs_id:
                self._handshake_done()
            return
        try:
            msg = codec.decode(data)
        except (ProtocolError, ValueError):
            self.b.stray += 1
            return
        if msg.type == T_HANDSHAKE_RESPONSE:
            payload = msg.payload
            if type(payload) is dict and payload.get("success") is True:
                info = payload.get("node_info")
                if type(info) is dict and self.b.server_node_id is None:
                    self.b.server_node_id = str(info.get("id"))
                token = payload.get("token")
                if type(token) is str:  # prove our address: no anti-amplification budget
                    self.transport.sendto(
                        codec.encode(T_ACK, {"token": token}, self.b.ts, ack_for=msg.id)
                    )
                self._handshake_done()
            else:
                text = payload.get("error_message") if type(payload) is dict else None
                self._handshake_failed(str(text or "HandshakeResponse success=false"))
        elif msg.type == T_ERROR:
            payload = msg.payload
            text = payload.get("error") if type(payload) is dict else None
            self._handshake_failed(str(text or payload))
        # Ack, DiscoveryResponse: part of the answer, nothing to do

    def _handshake_done(self) -> None:
        b = self.b
        self.state = Peer.HS_DONE
        b.hs_done += 1
        b.last_push = b.hs_last = perf_counter()
        _start_next_handshake(b)

    def _handshake_failed(self, reason: str) -> None:
        b = self.b
        self.state = Peer.HS_FAILED
        b.hs_failed += 1
        if not b.first_error:
            b.first_error = reason[:200]
        _start_next_handshake(b)

    def send_handshake(self, now: float) -> None:
        self.state = Peer.HS_SENT
        self.hs_tries += 1
        self.hs_at = now
        self.transport.sendto(self.hs_data)


def _start_next_handshake(b: Shared) -> None:
    if b.hs_pending:
        b.hs_pending.popleft().send_handshake(perf_counter())


# Phase: closed loop (fast paths) ----------------------------------------------------------


class DataPeer(_DataSender):
    """p2pfast, data: the Ack's ``ack_for`` (the last 36 characters) completes a message."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[61:65] == b'Ack"':
            self.nacks += 1
            t = self.out.pop(data[-38:-2], None)
            if t is None:
                self.b.stray += 1  # a late Ack for a message already resent and acked
                return
            now = self._completed(t)
            b = self.b
            if b.running:
                c = self.counter + 1
                self.counter = c
                key = self.prefix + b"%012x" % c
                self.out[key] = now
                self.transport.sendto(self.tmpl % (key, b.ts, c))
            return
        self._slow(data)


class CoalescedDataPeer(_SeqDataSender):
    """p2pfast, data, ``--acks coalesced``: an Ack's ``{"seq": [[lo, hi], ...]}`` completes
    every outstanding message whose sequence number is in a range (a plain Ack, from a server
    that does not coalesce, completes the message its ``ack_for`` names)."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[61:65] == b'Ack"':
            at = data.find(_SEQ_AT, 70)
            if at >= 0:
                at += _SEQ_AT_LEN
                end = data.find(b"]]}", at)
                if end >= 0:
                    try:
                        ranges = _loads(data[at : end + 2])
                    except ValueError:
                        ranges = None
                    if ranges is not None and self.complete_ranges(ranges):
                        self.nacks += 1
                        return
            elif data.find(b'"payload":null,', 70) >= 0:
                seq = self.key_of_id(data[-38:-2].decode("ascii", "replace"))
                t = self.out.pop(seq, None)
                self.nacks += 1
                if t is None:
                    self.b.stray += 1
                    return
                now = self._completed(t)
                if self.b.running:
                    self.send_one(now)
                return
        self._slow(data)

    def complete_ranges(self, ranges: Any) -> bool:
        """Complete the outstanding messages in ``[[lo, hi], ...]``; False if ``ranges`` is not
        a list of two-int lists (nothing is completed then). A sequence number acked again
        (a resend's duplicate, a late range) counts once, in ``Shared.reacked``."""
        if type(ranges) is not list:
            return False
        for item in ranges:
            if type(item) is not list or len(item) != 2 or type(item[0]) is not int or type(item[1]) is not int:
                return False
        out = self.out
        hist = self.hist
        now = perf_counter()
        done = 0
        reacked = 0
        for lo, hi in ranges:
            if hi < lo:
                continue
            if hi - lo < _RANGE_WALK_MAX:
                for seq in range(lo, hi + 1):
                    t = out.pop(seq, None)
                    if t is None:
                        reacked += 1
                        continue
                    i = int((now - t) * 100000.0)
                    hist[i if i < HIST_MAX else HIST_MAX] += 1
                    done += 1
            else:  # wide: probe the few outstanding messages instead of the whole range
                hit = [seq for seq in out if lo <= seq <= hi]
                for seq in hit:
                    i = int((now - out.pop(seq)) * 100000.0)
                    hist[i if i < HIST_MAX else HIST_MAX] += 1
                done += len(hit)
                reacked += hi - lo + 1 - len(hit)
        b = self.b
        b.reacked += reacked
        if done:
            self.done += done
            if b.running:
                prefix, tmpl, ts, sendto = self.prefix, self.tmpl, b.ts, self.transport.sendto
                c = self.counter
                for _ in range(done):
                    c += 1
                    out[c] = now
                    sendto(tmpl % (prefix + b"%012x" % c, ts, c))
                self.counter = c
        return True


class PingPeer(_PingSender):
    """p2pfast, ping: a Pong completes the peer's oldest outstanding Ping."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[61:66] == b'Pong"':
            out = self.out
            for key in out:
                break
            else:
                self.b.stray += 1
                return
            t = out.pop(key)
            now = self._completed(t)
            b = self.b
            if b.running:
                c = self.counter + 1
                self.counter = c
                key = self.prefix + b"%012x" % c
                out[key] = now
                self.transport.sendto(self.tmpl % (key, b.ts))
            return
        self._slow(data)


class RoutedSenderPeer(_RoutedSender):
    """p2pfast, routed, side A: sends; hears nothing in the normal case."""

    __slots__ = ()


class RoutedReceiverPeer(Peer):
    """p2pfast, routed, side B: the forwarded Data's original message id completes A's send."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        at = data.find(_ORIGINAL_ID)
        if at >= 0:
            a = self.partner
            at += _ORIGINAL_ID_LEN
            t = a.out.pop(data[at : at + 36], None)  # type: ignore[union-attr]
            if t is None:
                self.b.stray += 1
                return
            now = a._completed(t)  # type: ignore[union-attr]
            if self.b.running:
                a.send_one(now)  # type: ignore[union-attr]
            return
        self._slow(data)


def _echo_received(self: Peer, data: bytes, addr: Any) -> None:
    """Baseline: the echo is our own datagram; its id (bytes 7..43) completes it."""
    t = self.out.pop(data[7:43], None)
    if t is None:
        self._slow(data)
        return
    now = self._completed(t)
    if self.b.running:
        self.send_one(now)


class EchoDataPeer(_DataSender):
    __slots__ = ()
    datagram_received = _echo_received


class EchoPingPeer(_PingSender):
    __slots__ = ()
    datagram_received = _echo_received


class EchoRoutedPeer(_RoutedSender):
    __slots__ = ()
    datagram_received = _echo_received


class IdlePeer(Peer):
    """A peer with no part in the workload (routed B sides on the baseline, an odd one out)."""

    __slots__ = ()


# Phase: disconnect ------------------------------------------------------------------------


class ClosingPeer(Peer):
    """Counts the server's Disconnects (peers it still held when it shut down)."""

    __slots__ = ()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[61:72] == b'Disconnect"':
            self.b.server_disconnects += 1


_DATA_CLASSES: dict[tuple[bool, str], tuple[type[Peer], type[Peer]]] = {
    # (baseline, workload) -> (sender class, partner/receiver class)
    (False, "data"): (DataPeer, DataPeer),
    (False, "ping"): (PingPeer, PingPeer),
    (False, "routed"): (RoutedSenderPeer, RoutedReceiverPeer),
    (True, "data"): (EchoDataPeer, EchoDataPeer),
    (True, "ping"): (EchoPingPeer, EchoPingPeer),
    (True, "routed"): (EchoRoutedPeer, IdlePeer),
}


# ---------------------------------------------------------------------------------------
# Progress line


class Progress:
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

    @property
    def label(self) -> str:
        return "baseline" if self.kind == "baseline" else self.impl

    @property
    def tag(self) -> str:
        """The workload as the table shows it: ``data``, ``data/coalesced``, ``ping``..."""
        return self.workload if self.acks == "plain" else f"{self.workload}/{self.acks}"


class Run:
    """Drives one run inside a uvloop event loop; returns the result dict."""

    def __init__(self, spec: RunSpec, host: str, port: int, server: ServerProcess | None, pid: int | None, progress: Progress) -> None:
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
                await loop.create_datagram_endpoint(
                    lambda peer=peer: peer,  # type: ignore[misc]
                    local_addr=("127.0.0.1", 0),
                    remote_addr=(self.host, self.port),
                )
            except OSError as exc:
                raise BenchError(f"cannot create peer socket {i + 1}/{spec.peers}: {exc}") from None
            local = peer.transport.get_extra_info("sockname")
            info = {
                "capabilities": CAPABILITIES_COALESCED if spec.acks == "coalesced" else CAPABILITIES,
                "id": node_id,
                "listen_addr": f"{local[0]}:{local[1]}",
                "metadata": {},
                "name": f"bench-{i}",
                "network_id": NETWORK_ID,
                "version": PROTOCOL_VERSION,
            }
            hs_id = codec.new_id()
            peer.hs_id = hs_id.encode()
            peer.hs_data = codec.encode(T_HANDSHAKE_REQUEST, info, ts, id=hs_id, requires_ack=True)
            self.peers.append(peer)
            if i % 200 == 199:
                self.progress.show(f"[{spec.label} {spec.tag}] sockets {i + 1}/{spec.peers}")

    async def _handshake(self) -> None:
        spec, b, peers = self.spec, self.b, self.peers
        label = f"[{spec.label} {spec.tag}]"
        b.hs_pending.extend(peers)
        t0 = perf_counter()
        for _ in range(min(HANDSHAKE_CONCURRENCY, len(peers))):
            _start_next_handshake(b)
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
            self.progress.show(f"[{self.spec.label} {self.spec.tag}] waiting for the server to settle")
        self.progress.clear()
        self.result["settle_seconds"] = round(perf_counter() - t0, 3)
        self.result["server_rss_after_handshake_mb"] = _mb(proc_status_kb(self.pid, "VmRSS"))
        b.errors = 0
        b.first_error = ""
        b.stray = 0
        b.retransmit_requests = 0
        b.reacked = 0

    async def _data_phase(self) -> None:
        spec, b, peers = self.spec, self.b, self.peers
        label = f"[{spec.label} {spec.tag}]"
        sender_cls, partner_cls = _DATA_CLASSES[(spec.kind == "baseline", spec.workload)]
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
            wake = min(next_sweep, t_end if measuring else t_measure, mark["t"] + 1.0 if mark else t_measure)
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
            server_cpu_util=None if server_cpu is None or wall <= 0 else round(server_cpu / wall, 3),
            server_cpu_us_per_msg=(
                round(server_cpu / completions * 1e6, 2) if server_cpu is not None and completions else None
            ),
            msgs_per_server_cpu_s=(
                round(completions / server_cpu, 1) if server_cpu and completions else None
            ),
            bench_cpu_s=round(bench_cpu, 3),
            bench_cpu_us_per_msg=round(bench_cpu / completions * 1e6, 2) if completions else None,
            server_rss_end_mb=_mb(proc_status_kb(self.pid, "VmRSS")),
            server_peak_rss_mb=_mb(proc_status_kb(self.pid, "VmHWM")),
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
            self.result["server_peak_rss_mb"] = _mb(peak)
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
    h = "%032x" % rng.getrandbits(128)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def _percentiles(hist: array.array, qs: tuple[float, ...]) -> list[float | None]:
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
    import uvloop

    server: ServerProcess | None = None
    extensions: str | None = None
    if spec.kind == "baseline":
        server = baseline_server()
    elif spec.target is None:
        server = p2pfast_server(spec.peers, spec.impl)
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
    loop = uvloop.new_event_loop()
    try:
        task = loop.create_task(Run(spec, host, port, server, pid, progress).main())
        try:
            result.update(loop.run_until_complete(task))
        except BaseException:  # Ctrl-C: unwind the run inside the loop, then re-raise
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException:  # noqa: S110 - the original exception matters
                    pass
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


# ---------------------------------------------------------------------------------------
# Reporting


def compute_ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_label = {r["label"]: r for r in runs}
    ratios: dict[str, Any] = {}
    c, p, base = by_label.get("compiled"), by_label.get("pure"), by_label.get("baseline")

    def div(x: Any, y: Any) -> float | None:
        return round(x / y, 3) if x is not None and y else None

    if c and p:
        ratios["compiled_over_pure"] = {
            "msgs_per_s": div(c["msgs_per_s"], p["msgs_per_s"]),
            "server_cpu_us_per_msg": div(c.get("server_cpu_us_per_msg"), p.get("server_cpu_us_per_msg")),
            "handshakes_per_s": div(c.get("handshakes_per_s"), p.get("handshakes_per_s")),
        }
    if base:
        ratios["p2pfast_over_baseline"] = {
            label: {
                "server_cpu_us_per_msg": div(r.get("server_cpu_us_per_msg"), base.get("server_cpu_us_per_msg")),
                "msgs_per_s": div(r["msgs_per_s"], base["msgs_per_s"]),
            }
            for label, r in by_label.items()
            if r["kind"] == "p2pfast"
        }
    return ratios


def median_ratios(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each ratio over rounds (each round's ratios are paired: same minute)."""

    def merge(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            keys = dict.fromkeys(k for v in present for k in v)
            return {k: merge([v.get(k) for v in present]) for k in keys}
        return round(statistics.median(present), 3) if present else None

    return merge(per_round)


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "n/a"
    return format(value, spec)


def format_table(runs: list[dict[str, Any]]) -> str:
    rounds = len({r.get("round", 1) for r in runs}) > 1
    headers = [
        "impl", "workload", "peers", "hs/s", "msgs/s", "p50 ms", "p99 ms",
        "srv us/msg", "srv CPU", "srv peak MB", "RSS@hs MB", "msgs/ack", "retx", "lost",
    ]  # fmt: skip
    rows = []
    for r in runs:
        lat = r.get("latency_ms") or {}
        impl = r["label"]
        if r["kind"] == "p2pfast" and r.get("extensions") and r["extensions"] != r["impl"]:
            impl += f"({r['extensions']}!)"
        if rounds:
            impl += f" #{r['round']}"
        rows.append(
            [
                impl,
                r["workload"] if r.get("acks") in (None, "plain") else f"{r['workload']}/{r['acks']}",
                str(r["peers"]),
                _fmt(r.get("handshakes_per_s")),
                _fmt(r.get("msgs_per_s")),
                _fmt(lat.get("p50"), ".2f"),
                _fmt(lat.get("p99"), ".2f"),
                _fmt(r.get("server_cpu_us_per_msg"), ".1f"),
                _fmt(r.get("server_cpu_util"), ".2f"),
                _fmt(r.get("server_peak_rss_mb"), ".1f"),
                _fmt(r.get("server_rss_after_handshake_mb"), ".1f"),
                _fmt(r.get("msgs_per_ack"), ".2f"),
                str(r.get("retransmits", "n/a")),
                str(r.get("lost", "n/a")),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def format_ratios(ratios: dict[str, Any], rounds: int = 1) -> str:
    lines = [f"ratios: median over {rounds} rounds, each taken within its round"] if rounds > 1 else []
    cp = ratios.get("compiled_over_pure")
    if cp:
        lines.append(
            f"compiled/pure: msgs/s x{_fmt(cp['msgs_per_s'], '.2f')}, "
            f"server CPU per message x{_fmt(cp['server_cpu_us_per_msg'], '.2f')}, "
            f"handshakes/s x{_fmt(cp['handshakes_per_s'], '.2f')}"
        )
    for label, r in (ratios.get("p2pfast_over_baseline") or {}).items():
        lines.append(
            f"p2pfast({label})/baseline: server CPU per message x{_fmt(r['server_cpu_us_per_msg'], '.2f')}, "
            f"msgs/s x{_fmt(r['msgs_per_s'], '.2f')}"
        )
    return "\n".join(lines)


def _command_line() -> str:
    """The command as typed: ``python -m p2pfast.bench ...`` or ``p2pfast-bench ...``."""
    argv = list(sys.argv) or ["p2pfast-bench"]
    if argv[0].endswith(("bench.py", "-m")):
        head = [os.path.basename(sys.executable), "-m", "p2pfast.bench"]
    else:
        head = [os.path.basename(argv[0])]
    return shlex.join(head + argv[1:])


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except Exception:  # pragma: no cover
        pass
    try:  # which code was measured (read-only git query; absent outside a checkout)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5, check=False,
            )  # fmt: skip
            info["git"] = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    new = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise BenchError(f"{needed} file descriptors needed, the hard limit is {hard}: use fewer --peers")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError) as exc:
        raise BenchError(f"cannot raise RLIMIT_NOFILE to {new}: {exc}") from None


def _parse_target(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise click.BadParameter(f"cannot resolve {host!r}: {exc.strerror}") from None
    return infos[0][4][0], int(port)


class _BenchClickError(click.ClickException):
    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"p2pfast-bench: error: {self.format_message()}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--peers", "-n", type=click.IntRange(1, 19_000), default=1000, help="Simulated peers (one UDP socket each).")
@click.option("--duration", "-d", type=click.FloatRange(0.1, 3600), default=5.0, help="Seconds of measured closed-loop traffic (after a 0.5 s warm-up).")
@click.option("--window", "-w", type=click.IntRange(1, 1024), default=4, help="Messages each sending peer keeps in flight (1000 peers x 4 fits the server's 4 MiB socket buffer).")
@click.option("--size", "-s", type=click.IntRange(0, 60_000), default=64, help="Characters of the Data blob.")
@click.option("--workload", type=click.Choice(WORKLOADS), default="data", help="data: Data+Ack; ping: Ping/Pong; routed: A->server->B.")
@click.option("--acks", type=click.Choice(ACK_MODES), default="plain", help="data: plain = one Ack per Data; coalesced = announce 'p2pfast', one range Ack per peer per server I/O batch.")
@click.option("--impl", "impl", type=click.Choice(("compiled", "pure", "both")), default="compiled", help="Server implementation (P2PFAST_NO_EXTENSIONS); with --target only a label.")
@click.option("--baseline", is_flag=True, help="Also run the minimal uvloop echo server under the same load.")
@click.option("--target", callback=_parse_target, metavar="HOST:PORT", help="Benchmark a running server instead of starting one.")
@click.option("--target-pid", type=int, help="PID of the --target server, for its CPU time and RSS.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, writable=True), help="Write all results, ratios, the machine and the command line here.")
@click.option("--rounds", type=click.IntRange(1, 100), default=1, help="Run everything this many times, interleaved; ratios are the median of the per-round ratios.")
@click.option("--seed", type=int, help="Seed for node ids (default: random).")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr (also off when stderr is not a terminal).")
def main(**options: Any) -> None:
    """Closed-loop benchmark of p2pfast-server: handshakes/s, messages/s, latency, and the
    server's own CPU time per message, optionally against a do-nothing uvloop echo baseline."""
    try:
        _main(**options)
    except BenchError as exc:
        raise _BenchClickError(str(exc)) from None
    except KeyboardInterrupt:
        raise _BenchClickError("interrupted") from None


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _main(
    peers: int,
    duration: float,
    window: int,
    size: int,
    workload: str,
    acks: str,
    impl: str,
    baseline: bool,
    target: tuple[str, int] | None,
    target_pid: int | None,
    json_file: str | None,
    rounds: int,
    seed: int | None,
    no_progress: bool,
) -> None:
    if workload == "routed" and peers < 2:
        raise BenchError("the routed workload needs --peers 2 or more")
    if acks != "plain" and workload != "data":
        raise BenchError(f"--acks {acks} applies to the data workload only")
    if target_pid is not None and target is None:
        raise BenchError("--target-pid needs --target")
    raise_nofile(peers + 64)
    # SIGTERM unwinds like Ctrl-C, so the servers we started are stopped, never orphaned.
    signal.signal(signal.SIGTERM, _terminate)
    progress = Progress(not no_progress and sys.stderr.isatty())
    rng = random.Random(seed)
    impls = ["compiled", "pure"] if impl == "both" else [impl]
    specs = [
        RunSpec(kind="p2pfast", impl=i, workload=workload, peers=peers, duration=duration,
                window=window, size=size, rng=rng, target=target, target_pid=target_pid, acks=acks)
        for i in impls
    ]  # fmt: skip
    if baseline:
        specs.append(
            RunSpec(kind="baseline", impl="baseline", workload=workload, peers=peers,
                    duration=duration, window=window, size=size, rng=rng)
        )  # fmt: skip
    runs: list[dict[str, Any]] = []
    for round_no, spec in ((k, spec) for k in range(1, rounds + 1) for spec in specs):
        result = run_one(spec, progress)
        result["round"] = round_no
        if spec.kind == "p2pfast" and spec.target is None and result.get("extensions") not in (None, spec.impl):
            click.echo(
                f"p2pfast-bench: warning: --impl {spec.impl} asked, but the server runs the "
                f"{result['extensions']} implementation (compiled extensions not built?)",
                err=True,
            )
        runs.append(result)
    per_round = [compute_ratios([r for r in runs if r["round"] == k]) for k in range(1, rounds + 1)]
    ratios = per_round[0] if rounds == 1 else median_ratios(per_round)
    click.echo(format_table(runs))
    text = format_ratios(ratios, rounds)
    if text:
        click.echo(text)
    if json_file:
        doc = {
            "command": _command_line(),
            "argv": list(sys.argv),
            "machine": machine_info(),
            "options": {
                "peers": peers, "duration": duration, "window": window, "size": size,
                "workload": workload, "acks": acks, "impl": impl, "baseline": baseline, "rounds": rounds,
                "target": None if target is None else f"{target[0]}:{target[1]}",
                "target_pid": target_pid, "seed": seed,
                "warmup": WARMUP, "loss_timeout": LOSS_TIMEOUT,
                "handshake_concurrency": HANDSHAKE_CONCURRENCY,
            },
            "runs": runs,
            "ratios": ratios,
            "ratios_per_round": per_round,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }  # fmt: skip
        try:
            with open(json_file, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
        except OSError as exc:
            raise BenchError(f"cannot write {json_file}: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    main()
