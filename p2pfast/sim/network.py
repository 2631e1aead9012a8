"""The network model: per-link latency and jitter, loss, duplication, reordering, uplink
bandwidth with a tail-drop queue, partitions that heal, NAT traversal, and the byte accounting
the amplification invariant reads.

Every random draw comes from the network's own seeded ``random.Random``, in the order the
datagrams are sent, so a run is reproducible from its seed.
"""

from __future__ import annotations

import heapq
import math
import random
import zlib
from typing import Any

from .clock import DELIVER, TICKS_PER_SECOND, EventQueue
from .nat import Addr, NatBox

_DIGEST_MOD = (1 << 61) - 1
#: The UDP port every simulated node listens on.
NODE_PORT = 9000


class Host:
    """One simulated machine as the network sees it (the simulator adds the engine)."""

    __slots__ = (
        "access",
        "addr",
        "fired_tick",
        "hostile",
        "incarnation",
        "index",
        "ip",
        "joined_at",
        "nat",
        "node",
        "node_id",
        "role",
        "rx_bytes",
        "rx_dgrams",
        "side",
        "timer_tick",
        "tx_bytes",
        "tx_dgrams",
        "up",
        "uplink_free",
    )

    def __init__(self, index: int, ip: str, access: int, role: str) -> None:
        self.index = index
        self.ip = ip
        self.addr: tuple[str, int] = (ip, NODE_PORT)
        self.access = access  # one-way access latency, ticks
        self.side = 0  # partition side
        self.nat: NatBox | None = None
        self.uplink_free = 0.0  # tick at which the uplink queue drains
        self.up = False
        self.node: Any = None
        self.role = role  # "bootstrap", "node", or a hostile kind
        self.node_id = ""
        self.incarnation = 0
        self.timer_tick = -1
        self.fired_tick = -1
        self.joined_at = -1
        self.tx_dgrams = self.tx_bytes = self.rx_dgrams = self.rx_bytes = 0
        self.hostile: Any = None


def host_ip(index: int, first_octet: int = 0) -> str:
    """``127.a.b.c`` for host ``index`` (loopback space only: nothing here is routable)."""
    n = index + 1
    return f"127.{first_octet + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


class Network:
    """Carries datagrams between hosts through the event queue."""

    def __init__(
        self,
        queue: EventQueue,
        rng: random.Random,
        *,
        loss: float,
        duplicate: float,
        reorder: float,
        jitter: float,
        bandwidth: float,
        queue_bytes: int,
    ) -> None:
        self.queue = queue
        self.rng = rng
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.jitter = jitter
        self.bytes_per_tick = bandwidth / TICKS_PER_SECOND
        self.queue_bytes = queue_bytes
        #: IP → Host or NatBox; an IP is never removed, so "never bound" is "not in here".
        self.endpoints: dict[str, Host | NatBox] = {}
        self.partitioned = False
        self.sent = self.sent_bytes = self.delivered = self.duplicated = 0
        self.dropped = {
            "loss": 0,
            "queue": 0,
            "partition": 0,
            "nat": 0,
            "down": 0,
            "unroutable": 0,
        }
        #: (sender index, address) → [bytes sent to it, bytes received from it], for addresses
        #: no host ever held (spoofed sources, invented peer-list entries).
        self.unproven: dict[tuple[int, Addr], list[int]] = {}
        #: Addresses of hostile hosts that hold a session (liars), and per host index the bytes
        #: it received from them: what their peer lists may make it dial (see ``amplification``).
        self.hostile_ips: set[str] = set()
        self.hostile_rx: dict[int, int] = {}
        #: A running digest of every delivery (tick, receiver, size; content too when
        #: ``digest_content``): two runs agree on it only if they agree datagram by datagram.
        self.digest = 0
        self.digest_content = False
        #: A test hook: called as ``tamper(sender, data, dst, tick)``; may return extra
        #: ``(data, dst)`` copies to inject (used to prove the checkers catch a faulty network).
        self.tamper: Any = None

    def attach(self, endpoint: Host | NatBox) -> None:
        ip = endpoint.public_ip if isinstance(endpoint, NatBox) else endpoint.ip
        if ip in self.endpoints:
            raise ValueError(f"address {ip} already in use")
        self.endpoints[ip] = endpoint

    def send(self, host: Host, data: bytes, dst: Addr, tick: int) -> None:
        """``host`` sends ``data`` to ``dst`` at ``tick``: queue, lose, partition or schedule it."""
        size = len(data)
        self.sent += 1
        self.sent_bytes += size
        host.tx_dgrams += 1
        host.tx_bytes += size
        target = self.endpoints.get(dst[0])
        nat = host.nat
        src = host.addr if nat is None else nat.outbound(host.addr, dst, tick)
        if target is None:
            self.dropped["unroutable"] += 1
            key = (host.index, dst)
            record = self.unproven.get(key)
            if record is None:
                self.unproven[key] = [size, 0]
            else:
                record[0] += size
            return
        free = host.uplink_free
        start = free if free > tick else float(tick)
        if (start - tick) * self.bytes_per_tick + size > self.queue_bytes:
            self.dropped["queue"] += 1
            return
        depart = start + size / self.bytes_per_tick
        host.uplink_free = depart
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            self.dropped["loss"] += 1
            return
        far = target.host if isinstance(target, NatBox) else target
        if self.partitioned and far.side != host.side:
            self.dropped["partition"] += 1
            return
        base = host.access + far.access
        delay = base + rng.random() * self.jitter * base
        if self.reorder and rng.random() < self.reorder:
            delay += rng.random() * 2 * base
        # Always in the future (latency >= 2 ticks): straight onto the heap.
        heapq.heappush(
            self.queue.heap,
            (math.ceil(depart + delay), next(self.queue.counter), DELIVER, target, data, src, dst),
        )
        if self.duplicate and rng.random() < self.duplicate:
            self.duplicated += 1
            again = base + rng.random() * (self.jitter + 1.0) * base
            self.queue.push(math.ceil(depart + again), DELIVER, target, data, src, dst)
        if self.tamper is not None:
            for extra, extra_dst in self.tamper(host, data, dst, tick):
                self.queue.push(
                    math.ceil(depart + delay) + 1, DELIVER, target, extra, src, extra_dst
                )

    def arrive(
        self, target: Host | NatBox, data: bytes, src: Addr, dst: Addr, tick: int
    ) -> Host | None:
        """The host a datagram reaches (after NAT filtering), or None if it is dropped."""
        host: Host
        if isinstance(target, NatBox):
            inside = target.inbound(src, dst[1], tick)
            if inside is None:
                self.dropped["nat"] += 1
                return None
            host = target.host
        else:
            host = target
            if dst[1] != NODE_PORT:  # nobody listens there
                self.dropped["unroutable"] += 1
                return None
        if not host.up:
            self.dropped["down"] += 1
            return None
        self.delivered += 1
        size = len(data)
        mix = tick * 65_537 + host.index * 257 + size
        if self.digest_content:
            mix = mix * 4_294_967_311 + zlib.crc32(data)
        self.digest = (self.digest * 1_000_003 + mix) % _DIGEST_MOD
        host.rx_dgrams += 1
        host.rx_bytes += size
        if self.hostile_ips and src[0] in self.hostile_ips:
            self.hostile_rx[host.index] = self.hostile_rx.get(host.index, 0) + size
        if src[0] not in self.endpoints:
            key = (host.index, src)
            record = self.unproven.get(key)
            if record is None:
                self.unproven[key] = [0, size]
            else:
                record[1] += size
        return host

    def inject(
        self, target_ip: str, data: bytes, src: Addr, dst: Addr, tick: int, delay: int
    ) -> None:
        """A datagram with a forged source (hostile senders): no uplink, loss still applies."""
        target = self.endpoints.get(target_ip)
        self.sent += 1
        self.sent_bytes += len(data)
        if target is None:
            self.dropped["unroutable"] += 1
            return
        if self.loss and self.rng.random() < self.loss:
            self.dropped["loss"] += 1
            return
        self.queue.push(tick + delay, DELIVER, target, data, src, dst)
