"""The compiled BulkConnection (``_bulk``) against its pure twin (``_bulk_py``), in lockstep.

Two worlds, one per implementation, each with two connected BulkConnections (X and Y) and the
same fake clock, are driven by one seeded random walk: messages queued on either side,
transmits, datagrams delivered through a network that loses, duplicates, reorders and (for
path-MTU discovery) drops what exceeds the path's size, applications that consume late,
timers, and hostile frames. After every step the datagrams each world emitted must be the
same bytes and every observable of every connection (counters, outcomes, timers, congestion
and RTT state, credit, memory) must be equal. Each walk also checks the transfer's own
promises on both: messages arrive intact and exactly once, and once the network heals every
reliable send completes.

With ``P2PFAST_NO_EXTENSIONS=1`` (or no build) the walks run on the pure twin alone: the
transfer's promises are still checked, the comparison has nothing to compare.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import random
import struct
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast import _fragment_py as frames
from p2pfast.bulk import BulkMemory
from p2pfast.errors import ProtocolError, WindowFull

PURE = importlib.import_module("p2pfast._bulk_py")
NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")


def _compiled() -> ModuleType | None:
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module("p2pfast._bulk")
    except ImportError as exc:  # a missing build is a failure, not a skip
        pytest.fail(f"compiled module p2pfast._bulk not importable: {exc}")


def _impls() -> list[ModuleType]:
    compiled = _compiled()
    return [PURE] if compiled is None else [PURE, compiled]


# --------------------------------------------------------------------------- the worlds


@dataclass
class Side:
    conn: Any
    memory: BulkMemory
    #: Totals of delivered messages the application has not consumed yet.
    pending: list[int] = field(default_factory=list)


def _snapshot(side: Side) -> tuple[Any, ...]:
    """Everything observable of one connection (what the node and its statistics read)."""
    c = side.conn
    cc, rtt, pacer, log, path = c.cc, c.rtt, c.pacer, c.log, c.path
    return (
        c.datagram_size,
        len(c),
        c.incoming_count,
        c.ack_owed,
        c.credit_update_owed,
        c.timer_changed,
        tuple(c.completed),
        tuple(c.failed),
        c.dead,
        c.work,
        c.fragments_sent,
        c.fragments_retransmitted,
        c.fragments_received,
        c.messages_reassembled,
        tuple(sorted(c.refused.items())),
        c.allocated,
        c.released,
        c.granted,
        c.credit,
        c.queued_bytes,
        c.started_total,
        c.pto_count,
        c.next_timer(),
        c.ack_deadline,
        (cc.congestion_window, cc.bytes_in_flight, cc.ssthresh, cc.recovery_start),
        (cc.congestion_events, cc.in_flight_underflows, cc.max_datagram_size),
        (rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt, rtt.latest_rtt),
        (pacer.pacing_rate, pacer.tokens, pacer.burst_size, pacer.max_datagram_size),
        (len(log), log.next_packet, log.largest_acked, log.work),
        (path.current, path.state, path.probes_sent, path.probes_acked, path.black_holes),
        side.memory.outstanding,
        tuple(side.pending),
    )


def _outcome(fn: Any, *args: Any) -> Any:
    """What a call returned, or the error it raised (type and reason)."""
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return ("protocol", exc.reason)
    except WindowFull:
        return ("window_full",)


class World:
    """Two connected BulkConnections of one implementation, fed like the node feeds them."""

    def __init__(self, impl: ModuleType, cfg: dict[str, Any]) -> None:
        self.sides = []
        for _ in range(2):
            memory = BulkMemory(cfg["node_limit"])
            conn = impl.BulkConnection(
                memory,
                peer_limit=cfg["peer_limit"],
                max_datagram_size=cfg["datagram_size"],
                pmtu_discovery=cfg["pmtu"],
                reassembly_timeout=cfg["reassembly_timeout"],
                now=0.0,
            )
            self.sides.append(Side(conn, memory))
        self.delivered: list[tuple[int, bytes]] = []

    def step(self, side: int, now: float) -> tuple[list[bytes], list[bytes]]:
        """The node's ``_bulk_step``: transmit what is due."""
        out: list[bytes] = []
        probes: list[bytes] = []
        self.sides[side].conn.transmit(now, out, probes)
        return out, probes

    def feed(self, side: int, frame: bytes, now: float) -> tuple[Any, list[bytes], list[bytes]]:
        """The node's ``_on_frame``: dispatch one frame, answer it, then transmit."""
        s = self.sides[side]
        conn = s.conn
        answers: list[bytes] = []
        kind = frame[1] if len(frame) > 1 else 0

        def dispatch() -> Any:
            if kind == frames.KIND_FRAGMENT:
                message = conn.on_fragment(frame, now)
                if conn.ack_owed >= PURE.ACK_EVERY:
                    ack = conn.ack_frame(now)
                    if ack is not None:
                        answers.append(ack)
                if message is not None:
                    self.delivered.append((side, message))
                    s.pending.append(len(message))
                    return hashlib.sha256(message).hexdigest()
                return None
            if kind == frames.KIND_ACK:
                return conn.on_ack(frame, now)
            if kind == frames.KIND_PROBE:
                number = frames.parse_probe(frame)
                answers.append(frames.encode_probe_ack(number, len(frame)))
                return None
            if kind == frames.KIND_PROBE_ACK:
                return conn.on_probe_ack(frame, now)
            if kind == frames.KIND_CREDIT_REQUEST:
                conn.on_credit_request(frame)
                conn.grant(now)
                ack = conn.ack_frame(now)
                if ack is not None:
                    answers.append(ack)
                return None
            raise ProtocolError("unknown_frame", f"frame kind {kind}")

        result = _outcome(dispatch)
        out, probes = self.step(side, now)
        return result, answers + out, probes

    def flush_ack(self, side: int, now: float) -> bytes | None:
        ack: bytes | None = self.sides[side].conn.ack_frame(now)
        return ack

    def consume(self, side: int, now: float) -> None:
        s = self.sides[side]
        while s.pending:
            s.conn.release(s.pending.pop(0), now)

    def timer(self, side: int, now: float) -> tuple[Any, list[bytes], list[bytes]]:
        """The node's ``_run_bulk`` for one connection whose timer is due."""
        conn = self.sides[side].conn
        expired = conn.on_timer(now)
        answers = []
        if conn.ack_owed and now >= conn.ack_deadline:
            ack = conn.ack_frame(now)
            if ack is not None:
                answers.append(ack)
        out, probes = self.step(side, now)
        return expired, answers + out, probes

    def snapshot(self) -> tuple[Any, ...]:
        return tuple(_snapshot(s) for s in self.sides)


class Lockstep:
    """One seeded walk applied to a world of each implementation, compared after each step."""

    def __init__(self, seed: int, impls: list[ModuleType], **overrides: Any) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.cfg: dict[str, Any] = {
            "datagram_size": rng.choice([1200, 1200, 1400, 3000]),
            "pmtu": rng.random() < 0.5,
            "peer_limit": rng.choice([40_000, 200_000, 2_000_000]),
            "node_limit": rng.choice([100_000, 4_000_000]),
            "reassembly_timeout": rng.choice([0.5, 2.0]),
            "loss": rng.choice([0.0, 0.02, 0.1]),
            "duplicate": rng.choice([0.0, 0.02]),
            "reorder": rng.choice([0.0, 0.05, 0.2]),
            #: The largest datagram the path carries (None: any).
            "path_limit": rng.choice([None, 1500, 9000]),
            "max_message": rng.choice([5_000, 60_000, 300_000]),
            "hostile": rng.random() < 0.3,
        }
        self.cfg.update(overrides)
        # A message larger than the receiver's per-peer grant could never start (the node's
        # configuration keeps the limit at least the largest message).
        self.cfg["peer_limit"] = max(self.cfg["peer_limit"], self.cfg["max_message"])
        self.cfg["node_limit"] = max(self.cfg["node_limit"], self.cfg["peer_limit"])
        self.worlds = [World(impl, self.cfg) for impl in impls]
        self.now = 0.0
        self.queue: list[tuple[int, bytes]] = []  # (destination side, datagram)
        self.sent: dict[int, set[bytes]] = {0: set(), 1: set()}  # by destination side
        self.reliable: dict[int, list[str]] = {0: [], 1: []}  # handles queued, by sender
        self.steps = 0
        #: Set once a hostile frame was fed: a frame from the peer's own session may corrupt
        #: or stall that peer's messages (nothing authenticates fragments at this layer), so
        #: from then on only the twins' agreement is checked, not the transfer's promises.
        self.tampered = False

    def each(self, what: str, fn: Any) -> Any:
        """Apply ``fn`` to every world; the results and the worlds must stay equal."""
        results = [fn(world) for world in self.worlds]
        snapshots = [world.snapshot() for world in self.worlds]
        for i in range(1, len(self.worlds)):
            assert results[i] == results[0], f"step {self.steps} {what}: results differ"
            assert snapshots[i] == snapshots[0], (
                f"step {self.steps} {what}: state differs\n{snapshots[0]}\n{snapshots[i]}"
            )
        self.steps += 1
        return results[0]

    def post(self, side: int, datagrams: list[bytes], probes: list[bytes] = ()) -> None:  # type: ignore[assignment]
        for data in [*datagrams, *probes]:
            self.queue.append((1 - side, data))

    # -- operations

    def op_send(self) -> None:
        side = self.rng.randrange(2)
        size = self.rng.randint(1, self.cfg["max_message"])
        data = self.rng.randbytes(size)
        handle = f"h{self.steps}" if self.rng.random() < 0.8 else None
        result = self.each("send", lambda w: _outcome(w.sides[side].conn.send, data, handle))
        if result == ("ok", None):
            self.sent[1 - side].add(data)
            if handle is not None:
                self.reliable[side].append(handle)
        self.post(side, *self.each("transmit", lambda w: w.step(side, self.now)))

    def op_deliver(self) -> None:
        if not self.queue:
            return
        rng, cfg = self.rng, self.cfg
        index = rng.randrange(len(self.queue)) if rng.random() < cfg["reorder"] else 0
        side, data = self.queue[index]
        if rng.random() < cfg["duplicate"]:
            self.queue.insert(rng.randrange(len(self.queue) + 1), (side, data))
        del self.queue[index]
        if rng.random() < cfg["loss"]:
            return
        limit = cfg["path_limit"]
        if limit is not None and len(data) > limit:
            return
        _, out, probes = self.each("feed", lambda w: w.feed(side, data, self.now))
        self.post(side, out, probes)

    def op_flush_acks(self) -> None:
        for side in (0, 1):
            ack = self.each("ack", lambda w, side=side: w.flush_ack(side, self.now))
            if ack is not None:
                self.post(side, [ack])

    def op_consume(self) -> None:
        side = self.rng.randrange(2)
        self.each("consume", lambda w: w.consume(side, self.now))
        self.post(side, *self.each("transmit", lambda w: w.step(side, self.now)))

    def op_tick(self) -> None:
        roll = self.rng.random()
        if roll < 0.8:
            dt = self.rng.random() * 0.002
        elif roll < 0.97:
            dt = self.rng.random() * 0.2
        else:
            dt = self.rng.random() * 3.0
        self.now += dt
        for side in (0, 1):
            due = self.worlds[0].sides[side].conn.next_timer()
            if due <= self.now:
                _, out, probes = self.each("timer", lambda w, side=side: w.timer(side, self.now))
                self.post(side, out, probes)

    def op_hostile(self) -> None:
        side = self.rng.randrange(2)
        frame = hostile_frame(self.rng, self.queue)
        self.tampered = True
        _, out, probes = self.each("hostile", lambda w: w.feed(side, frame, self.now))
        self.post(side, out, probes)

    def op_path_change(self) -> None:
        self.cfg["path_limit"] = self.rng.choice([None, 1300, 1500, 9000])

    def walk(self, steps: int) -> None:
        ops = [
            (self.op_send, 3),
            (self.op_deliver, 40),
            (self.op_flush_acks, 4),
            (self.op_consume, 3),
            (self.op_tick, 8),
        ]
        if self.cfg["hostile"]:
            ops.append((self.op_hostile, 2))
        if self.cfg["pmtu"]:
            ops.append((self.op_path_change, 1))
        choices = [op for op, _ in ops]
        weights = [w for _, w in ops]
        for _ in range(steps):
            self.rng.choices(choices, weights)[0]()
            self.check_integrity()

    def check_integrity(self) -> None:
        """What was delivered is what was sent, whole, once (in every world)."""
        if self.tampered:
            return
        for world in self.worlds:
            seen: set[tuple[int, bytes]] = set()
            for side, message in world.delivered:
                assert message in self.sent[side], "delivered a message never sent"
                assert (side, message) not in seen, "delivered a message twice"
                seen.add((side, message))

    def heal_and_drain(self, limit: int = 100_000, *, complete: bool = True) -> None:
        """A perfect network from now on: every reliable send completes (unless a connection
        gave up on its peer, which a long enough outage may cause). With ``complete`` False
        only the twins' agreement on the way is checked (after short reassembly timeouts,
        expiries and their credit penalties can make the drain take many times ``limit``)."""
        self.cfg.update(loss=0.0, duplicate=0.0, reorder=0.0, hostile=False)
        self.cfg["path_limit"] = None
        for _ in range(limit):
            conns = [s.conn for s in self.worlds[0].sides]
            if not self.queue and all(len(c) == 0 for c in conns):
                break
            if self.queue:
                self.op_deliver()
            else:
                self.op_flush_acks()
                for side in (0, 1):
                    self.each("consume", lambda w, side=side: w.consume(side, self.now))
                    self.post(
                        side, *self.each("transmit", lambda w, side=side: w.step(side, self.now))
                    )
                if not self.queue:  # nothing moves until a timer: go there
                    due = min(s.conn.next_timer() for s in self.worlds[0].sides)
                    if due == float("inf"):
                        break
                    self.now = max(self.now, due)
                    self.op_tick()
        if self.tampered or not complete:
            return
        for world in self.worlds:
            for side, s in enumerate(world.sides):
                if s.conn.dead:
                    continue
                assert len(s.conn) == 0, f"side {side}: {len(s.conn)} messages never completed"
                done = set(s.conn.completed)
                assert set(self.reliable[side]) <= done
        self.check_integrity()


def hostile_frame(rng: random.Random, queue: list[tuple[int, bytes]]) -> bytes:
    """A frame a hostile or broken peer might send: random bytes after the magic, a real frame
    with bytes flipped or cut, or fields chosen to hit the edges."""
    roll = rng.random()
    if roll < 0.3 and queue:
        frame = bytearray(rng.choice(queue)[1])
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        if rng.random() < 0.3:
            del frame[rng.randrange(1, len(frame) + 1) :]
        return bytes(frame)
    if roll < 0.5:
        kind = rng.randint(0, 7)
        return bytes([0xF5, kind]) + rng.randbytes(rng.randint(0, 60))
    if roll < 0.75:  # a fragment with edge fields
        packet = rng.choice([0, 1, 2**62, 2**64 - 1, rng.randrange(2**64)])
        message = rng.choice([0, 1, 2, 1024, 1025, 2**32 - 1])
        total = rng.choice([1, 100, 1 << 20, (1 << 20) + 1, 2**32 - 1])
        offset = rng.choice([0, 1, total - 1, rng.randrange(2**32)]) % 2**32
        data = rng.randbytes(rng.randint(0, 40))
        return struct.pack(">BBQIII", 0xF5, 1, packet, message, total, offset) + data
    # an ACK with edge ranges and credit
    count = rng.randint(0, 33)
    head = struct.pack(
        ">BBQIB",
        0xF5,
        2,
        rng.choice([0, 2**64 - 1, rng.randrange(2**40)]),
        rng.randrange(2**32),
        count,
    )
    body = b"".join(
        struct.pack(">QQ", *sorted((rng.randrange(2**64), rng.randrange(300)))[::-1])
        if rng.random() < 0.2
        else struct.pack(">QQ", lo, lo + rng.randrange(50))
        for lo in (rng.randrange(400) for _ in range(count))
    )
    if rng.random() < 0.2:
        body = body[: rng.randrange(len(body) + 1)]
    return head + body


# --------------------------------------------------------------------------- tests

SEEDS = range(24)


@pytest.mark.parametrize("seed", SEEDS)
def test_lockstep_walk(seed: int) -> None:
    """A long seeded walk: identical frames and state at every step, then a healed network
    completes every reliable send."""
    run = Lockstep(seed, _impls())
    run.walk(1500)
    run.heal_and_drain()


@pytest.mark.parametrize("seed", range(100, 106))
def test_lockstep_walk_hostile(seed: int) -> None:
    """Hostile frames mixed into a lossy exchange: both twins refuse the same frames with the
    same reasons and stay equal; the honest transfer still completes."""
    run = Lockstep(seed, _impls(), hostile=True)
    run.walk(1500)
    run.heal_and_drain()


@pytest.mark.parametrize("seed", range(200, 203))
def test_lockstep_black_hole(seed: int) -> None:
    """Path-MTU discovery on a path that shrinks mid-transfer (large datagrams vanish)."""
    run = Lockstep(
        seed,
        _impls(),
        pmtu=True,
        path_limit=None,
        max_message=200_000,
        loss=0.0,
        reorder=0.0,
        duplicate=0.0,
        hostile=False,
    )
    run.walk(600)
    run.cfg["path_limit"] = 1400
    run.walk(2500)
    run.heal_and_drain()
    assert run.worlds[0].sides[0].conn.path.probes_sent > 0


HYPO = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@HYPO
@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.integers(1, 400),
    loss=st.sampled_from([0.0, 0.05, 0.3]),
    reorder=st.sampled_from([0.0, 0.3]),
    hostile=st.booleans(),
)
def test_lockstep_hypothesis(
    seed: int, steps: int, loss: float, reorder: float, hostile: bool
) -> None:
    run = Lockstep(seed, _impls(), loss=loss, reorder=reorder, hostile=hostile)
    run.walk(steps)
    run.heal_and_drain(20_000, complete=False)


@HYPO
@given(st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=30))
def test_hostile_bytes_fuzz(blobs: list[bytes]) -> None:
    """Arbitrary frames (magic and a known kind, then anything) fed to a connection that is
    mid-transfer: same outcome on both twins, nothing but ProtocolError escapes."""
    run = Lockstep(7, _impls(), hostile=False, loss=0.0)
    run.walk(60)
    for blob in blobs:
        kind = blob[0] % 6 if blob else 1
        frame = bytes([0xF5, kind]) + blob[1:]
        side = len(blob) % 2
        run.tampered = True
        run.each("fuzz", lambda w, f=frame, s=side: w.feed(s, f, run.now)[:2])


def test_parity_is_compared() -> None:
    """The walks above compare two implementations when the compiled one is built."""
    impls = _impls()
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled: the walks run on the pure twin alone")
    assert [m.__name__ for m in impls] == ["p2pfast._bulk_py", "p2pfast._bulk"]
    compiled = impls[1]
    for name in (
        "PACKET_THRESHOLD",
        "ACK_EVERY",
        "MAX_ACK_DELAY",
        "MAX_PTO_COUNT",
        "MAX_MESSAGES_AHEAD",
        "MAX_RANGES_PER_MESSAGE",
        "MAX_RECEIVED_RANGES",
        "MAX_QUEUED_BYTES",
        "FRAGMENT_HEADER",
    ):
        assert getattr(compiled, name) == getattr(PURE, name), name


def test_a_divergence_is_caught() -> None:
    """The comparison is not vacuous: a world whose connection misbehaves fails the step."""
    run = Lockstep(3, [PURE, PURE], hostile=False)
    run.walk(50)
    run.worlds[1].sides[0].conn.fragments_sent += 1
    with pytest.raises(AssertionError, match="state differs"):
        run.op_tick()


@pytest.mark.parametrize("impl", ["py", "c"])
def test_a_message_expired_at_the_receiver_is_accepted_again_after_the_penalty(impl: str) -> None:
    """A message whose reassembly expired is resent by a sender that is not blocked by credit
    (it started the message long ago), so no CREDIT_REQUEST comes: once the penalty for the
    expiry is over, its fragments must be accepted again, not refused as over credit for ever
    (a stall the lockstep walks found)."""
    module = PURE if impl == "py" else _compiled()
    if module is None:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")

    def connection() -> Any:
        return module.BulkConnection(
            BulkMemory(1 << 20),
            peer_limit=1000,
            max_datagram_size=222,
            pmtu_discovery=False,
            reassembly_timeout=1.0,
            now=0.0,
        )

    sender, receiver = connection(), connection()
    receiver.grant(0.0)
    sender.on_ack(receiver.ack_frame(0.0), 0.0)
    data = bytes(range(250)) * 4  # 1,000 bytes: five 200-byte fragments
    sender.send(data, "m")
    out: list[bytes] = []
    for step in range(20):
        sender.transmit(step * 0.01, out, [])
    assert len(out) == 5
    assert receiver.on_fragment(out[0], 0.0) is None  # the rest is lost
    assert receiver.on_timer(1.5) == [(1, 1000)]  # expired: penalised until 2.5
    now, delivered = 1.5, None
    while delivered is None and now < 60.0:
        now += 0.25
        if sender.next_timer() <= now:
            sender.on_timer(now)
        frames: list[bytes] = []
        sender.transmit(now, frames, [])
        for frame in frames:
            delivered = receiver.on_fragment(frame, now) or delivered
        ack = receiver.ack_frame(now)
        if ack is not None:
            sender.on_ack(ack, now)
    assert delivered == data, receiver.refused
    assert now < 10.0  # within a few probe timeouts of the penalty's end
    assert sender.completed == ["m"]
