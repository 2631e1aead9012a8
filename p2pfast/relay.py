"""A seeded user-space lossy relay (a small "netem") for tests and benchmarks.

The kernel here has no netem, so loss, duplication, reordering, a bandwidth limit and a path
MTU are simulated in user space: the relay sits between its clients and one target address on
loopback and forwards each datagram, in each direction, with the odds given, drawn from a
seeded generator so a run can be repeated. Used by the test suite, by
``bench/lossy_transfer.py`` and by ``p2pfast-bench --workload bulk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import deque
from collections.abc import Callable

from .addr import Address

#: The largest UDP payload over IPv4: the default bucket depth of a rate-limited relay.
MAX_UDP_PAYLOAD = 65_507
#: Datagrams held per client while its back socket is being opened.
MAX_PENDING = 1024


class _Shaper:
    """One direction's bottleneck: a token bucket of ``rate`` bytes/s and ``burst`` bytes
    depth in front of a FIFO of at most ``queue`` bytes (tail-drop), served by a timer.

    A datagram leaves when the bucket holds as many tokens as it has bytes, so over any
    interval ``T`` the bytes sent stay within ``rate * T + burst``.
    """

    def __init__(self, rate: float, queue: int, burst: int, on_send: Callable[[int], None]) -> None:
        self.rate = rate
        self.on_send = on_send
        self.queue_limit = queue
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.fifo: deque[tuple[asyncio.DatagramTransport, bytes, Address]] = deque()
        self.queued_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        #: Datagrams dropped because the queue was full, and their bytes.
        self.dropped = 0
        self.dropped_bytes = 0
        self.sent_bytes = 0

    def offer(self, transport: asyncio.DatagramTransport, data: bytes, to: Address) -> bool:
        """Queue ``data`` (False: tail-dropped, the queue is full) and serve what the bucket
        allows now."""
        size = len(data)
        if self.fifo and self.queued_bytes + size > self.queue_limit:
            self.dropped += 1
            self.dropped_bytes += size
            return False
        self.fifo.append((transport, data, to))
        self.queued_bytes += size
        if self.timer is None:
            self.serve()
        return True

    def serve(self) -> None:
        self.timer = None
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        fifo = self.fifo
        while fifo:
            transport, data, to = fifo[0]
            size = len(data)
            if self.tokens < size:
                wait = (size - self.tokens) / self.rate
                self.timer = asyncio.get_running_loop().call_later(wait, self.serve)
                return
            fifo.popleft()
            self.tokens -= size
            self.queued_bytes -= size
            if not transport.is_closing():
                transport.sendto(data, to)
                self.sent_bytes += size
                self.on_send(size)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.fifo.clear()
        self.queued_bytes = 0


class _Back(asyncio.DatagramProtocol):
    """A back socket: what the target sends to it goes to the one client it serves."""

    def __init__(self, relay: LossyRelay, client: Address | None) -> None:
        self.relay = relay
        self.client = client

    def datagram_received(self, data: bytes, addr: Address) -> None:
        relay = self.relay
        if self.client is not None and relay.front is not None:
            relay._impair("back", relay.front, data, self.client)


class LossyRelay(asyncio.DatagramProtocol):
    """A seeded user-space "netem": forwards between its clients and one target address,
    dropping, duplicating and reordering datagrams with the given probabilities.

    A client talks to ``relay.addr``; the target sees, for each client address, a socket of
    the relay's own (the first client's is ``relay.back``), so several flows can share one
    relay and stay apart at the target. A reordered datagram is held back until the next one
    passes (or ``hold`` seconds, if none does). All sockets get large kernel buffers, so the
    relay itself loses nothing it was not asked to.

    Optional impairments:

    - ``rate`` (bytes/s): a bottleneck in each direction, shared by all flows: a token bucket
      (depth ``burst``, default one largest UDP datagram) served by a timer behind a FIFO of
      ``queue`` bytes; what does not fit the queue is dropped (tail-drop, counted in
      ``queue_dropped``);
    - ``max_size`` (bytes): datagrams larger than this are dropped (counted in
      ``oversize_dropped``), a path-MTU black hole; assign ``relay.max_size`` at run time to
      change it (None: no limit).

    Loss, duplication and reordering are drawn from the seeded generator in arrival order,
    before the bottleneck; a datagram counts in ``forwarded`` (and ``forwarded_bytes``) when
    the relay hands it to its socket.
    """

    hold = 0.005

    def __init__(
        self,
        target: Address,
        *,
        loss: float,
        duplicate: float,
        reorder: float,
        seed: int,
        rate: float | None = None,
        queue: int = 262_144,
        burst: int = MAX_UDP_PAYLOAD,
        max_size: int | None = None,
    ) -> None:
        for name, p in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: expected a probability in 0..1, got {p!r}")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate: expected bytes/s > 0, got {rate!r}")
        if queue < 0 or burst <= 0:
            raise ValueError("queue: expected bytes >= 0; burst: expected bytes > 0")
        self.target = target
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self.rng = random.Random(seed)
        self.max_size = max_size
        self.client: Address | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None
        self.forwarded = self.dropped = self.duplicated = self.reordered = 0
        self.forwarded_bytes = 0
        self.oversize_dropped = 0
        self._held: list[tuple[asyncio.DatagramTransport, bytes, Address]] = []
        #: Back socket per client address, and the client each back socket serves.
        self._backs: dict[Address, asyncio.DatagramTransport] = {}
        self._pending: dict[Address, list[bytes]] = {}
        self._back_protocols: dict[int, _Back] = {}
        self._closed = False
        self._shapers: dict[str, _Shaper] = {}
        if rate is not None:
            self._shapers = {
                d: _Shaper(rate, queue, burst, self._count_sent) for d in ("out", "back")
            }

    @property
    def clients(self) -> list[Address]:
        """The client addresses seen so far, first one first."""
        return list(self._backs)

    @property
    def queue_dropped(self) -> int:
        """Datagrams tail-dropped by the bottleneck queues (both directions)."""
        return sum(s.dropped for s in self._shapers.values())

    def shaper_stats(self) -> dict[str, dict[str, int]]:
        """Per direction (``out``: towards the target): bytes sent, datagrams tail-dropped."""
        return {
            d: {"sent_bytes": s.sent_bytes, "dropped": s.dropped, "queued_bytes": s.queued_bytes}
            for d, s in self._shapers.items()
        }

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.back = await self._open_back(None)
        _grow_buffers(self.front)
        self.addr: Address = tuple(self.front.get_extra_info("sockname")[:2])
        return self.addr

    async def _open_back(self, client: Address | None) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Back(self, client), local_addr=("127.0.0.1", 0)
        )
        _grow_buffers(transport)
        self._back_protocols[id(transport)] = protocol
        return transport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        back = self._backs.get(addr)
        if back is None:
            if self.back is not None and not self._backs:
                back = self.back  # the first client gets the socket opened by start()
                self._backs[addr] = back
                self._back_protocols[id(back)].client = addr
                self.client = addr
            else:
                pending = self._pending.get(addr)
                if pending is None:
                    self._pending[addr] = [data]
                    asyncio.get_running_loop().create_task(self._add_client(addr))
                elif len(pending) < MAX_PENDING:
                    pending.append(data)
                return
        self._impair("out", back, data, self.target)

    async def _add_client(self, addr: Address) -> None:
        back = await self._open_back(addr)
        if self._closed:
            back.close()
            return
        self._backs[addr] = back
        for data in self._pending.pop(addr, ()):
            self._impair("out", back, data, self.target)

    def _impair(
        self, direction: str, transport: asyncio.DatagramTransport, data: bytes, to: Address
    ) -> None:
        limit = self.max_size
        if limit is not None and len(data) > limit:
            self.oversize_dropped += 1
            return
        shaper = self._shapers.get(direction)
        if shaper is None:
            self._forward(transport, data, to)
        else:
            self._forward(transport, data, to, shaper)

    def _forward(
        self,
        transport: asyncio.DatagramTransport,
        data: bytes,
        to: Address,
        shaper: _Shaper | None = None,
    ) -> None:
        rng = self.rng
        if rng.random() < self.loss:
            self.dropped += 1
            return
        if rng.random() < self.reorder:
            self.reordered += 1
            if not self._held:
                asyncio.get_running_loop().call_later(self.hold, self._release)
            self._held.append((transport, data, to))  # sent after the next datagram
            return
        copies = 2 if rng.random() < self.duplicate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            self._emit(transport, data, to, shaper)
        self._release(shaper)

    def _emit(
        self,
        transport: asyncio.DatagramTransport,
        data: bytes,
        to: Address,
        shaper: _Shaper | None,
    ) -> None:
        if shaper is not None:
            shaper.offer(transport, data, to)  # counted by _count_sent when it leaves
            return
        transport.sendto(data, to)
        self._count_sent(len(data))

    def _count_sent(self, size: int) -> None:
        self.forwarded += 1
        self.forwarded_bytes += size

    def _release(self, shaper: _Shaper | None = None) -> None:
        held, self._held = self._held, []
        for t, d, a in held:
            if t.is_closing():
                continue
            s = self._shapers.get("back" if t is self.front else "out")
            if s is not None:
                s.offer(t, d, a)
            else:
                t.sendto(d, a)
                self.forwarded_bytes += len(d)  # ``forwarded`` never counted released ones

    def close(self) -> None:
        self._closed = True
        for shaper in self._shapers.values():
            shaper.close()
        transports = {id(t): t for t in (self.front, self.back, *self._backs.values()) if t}
        for t in transports.values():
            t.close()


def _grow_buffers(transport: asyncio.DatagramTransport) -> None:
    sock = transport.get_extra_info("socket")
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):  # capped by the kernel, not refused
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
