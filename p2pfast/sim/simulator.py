"""The simulation: real :class:`p2pfast.node.Node` engines on one virtual clock.

Each engine is driven only through its public sans-I/O interface, as the uvloop endpoint does:
``receive_datagram``, ``handle_timer``, ``datagrams_to_send``, ``next_event``, ``get_timer``,
plus the commands ``connect``, ``send_data`` and ``close``. All datagrams that reach a node in
one 100 µs tick form one I/O batch: the node's output is taken once per batch, which is when
its coalesced Acks go out, as in the endpoint. Invariant checkers read the engines' tables
(``peers_by_id``, ``routes``, ``route_ids``) and their events.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._speedups import codec
from ..config import Config
from ..errors import SendError, WindowFull
from ..events import DataReceived, PeerConnected, PeerDisconnected, SendCompleted, SendFailed
from ..node import Node
from .clock import ACTION, DELIVER, TICKS_PER_SECOND, TIMER, EventQueue, to_seconds, to_ticks
from .hostile import HOSTILE_CLASSES, Hostile, Liar
from .invariants import Convergence, MessageLedger, SentMessage, StateBounds
from .nat import NatBox
from .network import NODE_PORT, Host, Network, host_ip
from .scenario import NAT_KINDS, Scenario

_INF = float("inf")
#: First octet offset of NAT public addresses (hosts use 127.0.x.y upwards).
NAT_OCTET = 128
#: Nodes younger than this (seconds since their start) do not count for convergence yet.
SETTLE_SECONDS = 10.0
#: Workload stops this far before the end, so the last messages can settle.
DRAIN_FRACTION = 0.1
#: Probability that a churn crash is a clean shutdown (``close``) rather than a silent crash.
GRACEFUL_FRACTION = 0.5
#: Restarted nodes stay down for a uniform time in this range (seconds).
DOWNTIME = (5.0, 60.0)
NETWORK_ID = "p2p_sim"
#: State bounds are checked on every this many samples (convergence on every one).
STATE_SAMPLE_EVERY = 5


def _node_takes_rng() -> bool:
    """Whether this engine accepts ``rng=`` (every id and random choice from a given Random)."""
    try:
        return "rng" in inspect.signature(Node.__init__).parameters
    except (TypeError, ValueError):
        return False


class Simulation:
    """One run of a :class:`Scenario`; :meth:`run` returns the report (a dict)."""

    def __init__(self, scenario: Scenario, *, profile: bool = False) -> None:
        self.scenario = s = scenario
        self.profile = profile
        self.network_id = NETWORK_ID
        self.queue = EventQueue()
        self.end_tick = to_ticks(s.duration)

        def stream(name: str) -> random.Random:
            return random.Random(f"p2pfast-sim:{s.seed}:{name}")

        self._stream = stream
        self.network = Network(
            self.queue,
            stream("network"),
            loss=s.loss,
            duplicate=s.duplicate,
            reorder=s.reorder,
            jitter=s.jitter,
            bandwidth=s.bandwidth,
            queue_bytes=s.queue_bytes,
        )
        self.workload_rng = stream("workload")
        self.churn_rng = stream("churn")
        self.partition_rng = stream("partition")
        self.ledger = MessageLedger()
        self.bounds = StateBounds()
        self.convergence = Convergence(stream("convergence"), max_hops=8)
        self.node_rng = _node_takes_rng()
        # Envelope ids the engine draws without its ``rng`` (Pongs, Acks, peer lists...) come
        # from the codec's entropy source: seeded too when the codec can be told so. With both,
        # every byte is reproducible and the trace digest covers contents.
        self._set_id_entropy = getattr(codec, "set_id_entropy", None)
        self.network.digest_content = self.node_rng and self._set_id_entropy is not None

        layout = stream("layout")
        lo, hi = s.latency_ms
        self.hosts: list[Host] = []
        self.host_by_id: dict[str, Host] = {}
        self.hostiles: list[Hostile] = []
        self.nat_counts = dict.fromkeys(NAT_KINDS, 0)
        kinds = [k for k in NAT_KINDS if s.nat.get(k)]
        weights = [s.nat[k] for k in kinds]
        for index in range(s.nodes):
            access = max(1, round(layout.uniform(lo, hi) * TICKS_PER_SECOND / 1000))
            if index < s.bootstraps:
                role = "bootstrap"
            elif index < s.honest:
                role = "node"
            else:
                role = s.hostile_kinds[(index - s.honest) % len(s.hostile_kinds)]
            host = Host(index, host_ip(index), access, role)
            host.node_id = str(uuid.UUID(int=layout.getrandbits(128), version=4))
            nat_kind = layout.choices(kinds, weights)[0] if role == "node" else "open"
            if role in ("flooder", "spoofer"):
                host.hostile = HOSTILE_CLASSES[role](host, stream(f"hostile:{index}"))
                self.hostiles.append(host.hostile)
            else:
                if role == "liar":
                    host.hostile = Liar(host, stream(f"hostile:{index}"))
                    self.hostiles.append(host.hostile)
                    self.network.hostile_ips.add(host.ip)
                self.nat_counts[nat_kind] += 1
                if nat_kind == "open":
                    self.network.attach(host)
                else:
                    box = NatBox(nat_kind, host_ip(index, NAT_OCTET), host, to_ticks(s.nat_timeout))
                    host.nat = box
                    self.network.attach(box)
                self.host_by_id[host.node_id] = host
            self.hosts.append(host)
        self.honest_hosts = self.hosts[: s.honest]
        self.bootstrap_hosts = self.hosts[: s.bootstraps]
        self.public_hosts = [h for h in self.honest_hosts if h.nat is None]
        self.index_by_id = {h.node_id: h.index for h in self.hosts}
        self.restarts = 0
        self.crashes = 0
        self.connects = 0
        self.disconnects = 0
        self.engine_seconds = 0.0
        self._dirty: dict[Host, None] = {}
        self._samples = 0
        self.sampling_seconds = 0.0
        #: Engine counters of nodes that have stopped (crashed, restarted), summed by type.
        self.sent_by_type: dict[str, int] = {}
        self.received_by_type: dict[str, int] = {}

    # ---------------------------------------------------------------------------------
    # Scheduling

    def at(self, seconds: float, action: Callable[[int, Any], None], arg: Any = None) -> None:
        self.queue.push(to_ticks(seconds), ACTION, action, arg)

    def _schedule(self) -> None:
        s = self.scenario
        rng = self._stream("joins")
        for host in self.hosts:
            if host.role == "bootstrap":
                self.at(0.0, self._start, host)
            elif host.role in ("node", "liar"):
                self.at(
                    rng.uniform(0.1, max(0.1, min(s.join_spread, s.duration / 2))),
                    self._start,
                    host,
                )
        for hostile in self.hostiles:
            if not isinstance(hostile, Liar):
                self.at(rng.uniform(1.0, max(1.0, s.duration / 4)), self._hostile_act, hostile)
            else:
                self.at(
                    min(s.duration, s.join_spread + hostile.interval), self._hostile_act, hostile
                )
        if s.rate > 0 and s.honest > 1:
            self.at(self.workload_rng.expovariate(s.rate * s.honest), self._workload)
        if s.churn > 0 and s.honest > s.bootstraps:
            self._next_crash(0)
        for k in range(s.partitions):
            start = s.duration * (k + 1) / (s.partitions + 1) - s.partition_seconds / 2
            self.at(max(0.0, start), self._partition, True)
            self.at(max(0.0, start) + s.partition_seconds, self._partition, False)
        self.at(1.0, self._sample)

    # ---------------------------------------------------------------------------------
    # Node life cycle

    def _config(self, host: Host) -> Config:
        s = self.scenario
        return Config(
            listen_address=f"{host.ip}:{NODE_PORT}",
            node_id=host.node_id,
            node_name=f"sim-{host.index}",
            network_id=NETWORK_ID,
            enable_discovery=True,
            # Discovery probes only this range on our own host: one port, ours, so none.
            discovery_port_range=(NODE_PORT, NODE_PORT),
            echo=False,
            max_connections=(
                (s.bootstrap_connections or max(s.max_connections, s.nodes))
                if host.role == "bootstrap"
                else s.max_connections
            ),
            heartbeat_interval=s.heartbeat_interval,
            connection_timeout=s.connection_timeout,
            stats_interval=0,
        )

    def _start(self, tick: int, host: Host) -> None:
        now = tick / TICKS_PER_SECOND
        kwargs: dict[str, Any] = {"now": now, "local_addr": host.addr, "wall_offset": 0.0}
        host.incarnation += 1
        if self.node_rng:
            kwargs["rng"] = self._stream(f"node:{host.index}:{host.incarnation}")
        node = Node(self._config(host), **kwargs)
        node.app_attached = True
        host.node = node
        host.up = True
        host.joined_at = tick
        host.timer_tick = -1
        for boot in self.bootstrap_hosts:
            if boot is host:
                break  # bootstraps join the ones before them; the others join them all
            node.connect(boot.addr, now)
        self._dirty[host] = None

    def _crash(self, tick: int, host: Host) -> None:
        if not host.up:
            return
        self.crashes += 1
        if self.churn_rng.random() < GRACEFUL_FRACTION:
            host.node.close(tick / TICKS_PER_SECOND)
            self._flush(host, tick)
        self._collect(host.node, tick)
        self.ledger.host_stopped(host.index, tick)
        host.up = False
        host.node = None
        host.timer_tick = -1
        self._dirty.pop(host, None)
        self.at(to_seconds(tick) + self.churn_rng.uniform(*DOWNTIME), self._restart, host)

    def _collect(self, node: Node, tick: int) -> None:
        """Add a node's per-type message counts to the run's totals."""
        stats = node.get_stats(tick / TICKS_PER_SECOND)
        for totals, counts in (
            (self.sent_by_type, stats.messages_sent),
            (self.received_by_type, stats.messages_received),
        ):
            for name, count in counts.items():
                totals[name] = totals.get(name, 0) + count

    def _restart(self, tick: int, host: Host) -> None:
        self.restarts += 1
        self._start(tick, host)

    def _next_crash(self, tick: int, _arg: Any = None) -> None:
        s = self.scenario
        if tick:
            candidates = self.hosts[s.bootstraps : s.honest]
            host = candidates[self.churn_rng.randrange(len(candidates))]
            if host.up:
                self._crash(tick, host)
        rate = s.churn / 3600.0 * (s.honest - s.bootstraps)
        self.at(to_seconds(tick) + self.churn_rng.expovariate(rate), self._next_crash)

    def _partition(self, tick: int, on: bool) -> None:
        self.network.partitioned = on
        if on:
            for host in self.hosts:
                host.side = self.partition_rng.randrange(2)

    def _hostile_act(self, tick: int, hostile: Hostile) -> None:
        hostile.act(self, tick)
        self.queue.push(tick + to_ticks(hostile.interval), ACTION, self._hostile_act, hostile)

    # ---------------------------------------------------------------------------------
    # Workload

    def _workload(self, tick: int, _arg: Any = None) -> None:
        s = self.scenario
        rng = self.workload_rng
        if tick < self.end_tick * (1 - DRAIN_FRACTION):
            self.at(to_seconds(tick) + rng.expovariate(s.rate * s.honest), self._workload)
        host = self.honest_hosts[rng.randrange(s.honest)]
        node = host.node
        if not host.up or node is None:
            return
        target: Host | None = None
        if rng.random() < 0.5 and node.peers_by_id:
            ids = list(node.peers_by_id)
            target = self.host_by_id.get(ids[rng.randrange(len(ids))])
        if target is None or target.index >= s.honest:
            target = self.honest_hosts[rng.randrange(s.honest)]
        if target is host:
            return
        ledger = self.ledger
        tag = ledger.new_tag()
        routed = target.node_id not in node.peers_by_id
        try:
            handle = node.send_data(
                target.node_id, {"tag": tag}, tick / TICKS_PER_SECOND, reliable=True
            )
        except WindowFull:
            ledger.window_full += 1
            return
        except SendError as exc:
            if exc.reason == "no_route":
                ledger.no_route += 1
                return
            raise
        msg = SentMessage(
            tag,
            host.index,
            target.index,
            host.incarnation,
            target.incarnation,
            handle,
            routed,
            tick,
            ledger.epoch(host.index, target.index),
        )
        msg.stale = not routed and ledger.stale_session(host.index, target.index)
        ledger.sent(msg)
        self._dirty[host] = None

    # ---------------------------------------------------------------------------------
    # Sampling: state bounds and convergence

    def _sample(self, tick: int, _arg: Any = None) -> None:
        now = tick / TICKS_PER_SECOND
        s = self.scenario
        interval = 1.0 if s.nodes <= 2000 else 5.0
        if self.queue.now + to_ticks(interval) <= self.end_tick:
            self.at(now + interval, self._sample)
        t0 = time.perf_counter()
        self._samples += 1
        if self._samples % STATE_SAMPLE_EVERY == 0:
            self._check_state(now)
        if self.convergence.converged_at is None:
            self._check_convergence(now)
        self.sampling_seconds += time.perf_counter() - t0

    def _check_state(self, now: float) -> None:
        sample = self.bounds.sample
        for host in self.hosts:
            if host.up and host.node is not None:
                sample(host.index, host.node, now)

    def _check_convergence(self, now: float, *, final: bool = False) -> None:
        # Counted from the start: every honest node must have joined once; after that, a node
        # restarted less than SETTLE_SECONDS ago is not counted yet.
        if any(h.incarnation == 0 for h in self.honest_hosts):
            return
        settle = to_ticks(SETTLE_SECONDS)
        tick = to_ticks(now)
        live = [
            h.node
            for h in self.honest_hosts
            if h.up and (h.incarnation == 1 or h.joined_at + settle <= tick)
        ]
        self.convergence.check(live, now, final=final)

    # ---------------------------------------------------------------------------------
    # The event loop

    def _flush(self, host: Host, tick: int) -> None:
        """Send what the node queued in this batch, take its events, re-arm its timer."""
        node = host.node
        if self.profile:
            t0 = time.perf_counter()
            out = node.datagrams_to_send()
            self.engine_seconds += time.perf_counter() - t0
        else:
            out = node.datagrams_to_send()
        if out:
            if host.fired_tick == tick and len(out) > 1:
                # Timer work may iterate the engine's sets of peers, whose order is not fixed:
                # put this batch in a canonical order (stable: per destination, as emitted).
                out.sort(key=_destination)
            send = self.network.send
            for data, addr in out:
                send(host, data, addr, tick)
        event = node.next_event()
        if event is not None:
            self._events(host, event, tick)
        when = node.get_timer()
        if when != _INF:
            t = to_ticks(when)
            if t <= tick:
                t = tick + 1
            if t != host.timer_tick:
                host.timer_tick = t
                self.queue.push(t, TIMER, host, host.incarnation)
        else:
            host.timer_tick = -1

    def _events(self, host: Host, event: Any, tick: int) -> None:
        node = host.node
        ledger = self.ledger
        index_by_id = self.index_by_id
        while event is not None:
            kind = type(event)
            if kind is DataReceived:
                node.app_consumed(1, event)  # the application takes each message at once
                ledger.delivered(
                    host.index,
                    host.incarnation,
                    index_by_id.get(event.source),
                    event.payload,
                    event.message_id,
                    tick,
                )
            elif kind is SendCompleted:
                ledger.acked(event.handle, tick)
            elif kind is SendFailed:
                ledger.failed(event.handle, event.reason, tick)
            elif kind is PeerDisconnected:
                self.disconnects += 1
                other = index_by_id.get(event.node_id)
                if other is not None:
                    ledger.disconnected(host.index, other)
                    ledger.session_ended(host.index, other, tick)
            elif kind is PeerConnected:
                self.connects += 1
                other = index_by_id.get(event.node_id)
                if other is not None:
                    ledger.session_opened(host.index, other, tick)
            event = node.next_event()

    def run(self) -> dict[str, Any]:
        from .report import build_report

        engine_log = logging.getLogger("p2pfast")
        old_level = engine_log.level
        engine_log.setLevel(logging.ERROR)
        wall_start = time.perf_counter()
        if self._set_id_entropy is not None:
            self._set_id_entropy(self._stream("ids").randbytes)
        try:
            self._schedule()
            self._loop()
            end = self.end_tick / TICKS_PER_SECOND
            self._check_state(end)
            self._check_convergence(end, final=True)
            for host in self.honest_hosts:
                if host.up and host.node is not None:
                    self._collect(host.node, self.end_tick)
        finally:
            engine_log.setLevel(old_level)
            if self._set_id_entropy is not None:
                self._set_id_entropy(None)  # process-wide: give the OS its ids back
        return build_report(self, time.perf_counter() - wall_start)

    def _loop(self) -> None:
        queue = self.queue
        heap = queue.heap
        heappop = heapq.heappop
        dirty = self._dirty
        flush = self._flush
        arrive = self.network.arrive
        end = self.end_tick
        profile = self.profile
        clock = time.perf_counter
        tps = TICKS_PER_SECOND
        cur = 0
        while True:
            if dirty and (not heap or heap[0][0] != cur):
                hosts = list(dirty)
                dirty.clear()
                for host in hosts:
                    if host.up:
                        flush(host, cur)
                continue
            if not heap or heap[0][0] > end:
                break
            event = heappop(heap)
            cur = queue.now = event[0]
            kind = event[2]
            if kind == DELIVER:
                reached = arrive(event[3], event[4], event[5], event[6], cur)
                if reached is not None:
                    if profile:
                        t0 = clock()
                        reached.node.receive_datagram(event[4], event[5], cur / tps)
                        self.engine_seconds += clock() - t0
                    else:
                        reached.node.receive_datagram(event[4], event[5], cur / tps)
                    dirty[reached] = None
            elif kind == TIMER:
                host = event[3]
                if host.up and host.incarnation == event[4] and host.timer_tick == cur:
                    host.timer_tick = -1
                    host.fired_tick = cur
                    if profile:
                        t0 = clock()
                        host.node.handle_timer(cur / tps)
                        self.engine_seconds += clock() - t0
                    else:
                        host.node.handle_timer(cur / tps)
                    dirty[host] = None
            else:
                event[3](cur, event[4])
        queue.now = max(cur, end)


def _destination(item: tuple[bytes, tuple[str, int]]) -> tuple[str, int]:
    return item[1]
