"""A seeded user-space lossy relay (a small "netem") for tests and benchmarks.

The kernel here has no netem, so loss, duplication and reordering are simulated in user space:
the relay sits between one client and one target address on loopback and forwards each
datagram, in each direction, with the odds given, drawn from a seeded generator so a run can
be repeated. Used by the test suite and by ``bench/lossy_transfer.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

from .addr import Address


class LossyRelay(asyncio.DatagramProtocol):
    """A seeded user-space "netem": forwards between one client and one target address,
    dropping, duplicating and reordering datagrams with the given probabilities.

    The client talks to ``relay.addr``; the target sees the relay's second socket as the client.
    A reordered datagram is held back until the next one passes (or ``hold`` seconds, if none
    does). Both sockets get large kernel buffers, so the relay itself loses nothing it was not
    asked to.
    """

    hold = 0.005

    def __init__(
        self, target: Address, *, loss: float, duplicate: float, reorder: float, seed: int
    ) -> None:
        self.target = target
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self.rng = random.Random(seed)
        self.client: Address | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None
        self.forwarded = self.dropped = self.duplicated = self.reordered = 0
        self._held: list[tuple[asyncio.DatagramTransport, bytes, Address]] = []

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Address) -> None:
                if relay.client is not None:
                    # a client is known only once front received from it: front is set
                    relay._forward(relay.front, data, relay.client)  # type: ignore[arg-type]

        self.front, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        for transport in (self.front, self.back):
            sock = transport.get_extra_info("socket")
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                # the kernel caps an oversized request rather than refusing it: never fatal
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        host, port = self.front.get_extra_info("sockname")[:2]
        self.addr: Address = (host, port)
        return self.addr

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.client = addr
        # clients learn relay.addr from start(), which returns once back is set too
        self._forward(self.back, data, self.target)  # type: ignore[arg-type]

    def _forward(self, transport: asyncio.DatagramTransport, data: bytes, to: Address) -> None:
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
            transport.sendto(data, to)
            self.forwarded += 1
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, []
        for t, d, a in held:
            if not t.is_closing():
                t.sendto(d, a)

    def close(self) -> None:
        for t in (self.front, self.back):
            if t is not None:
                t.close()
