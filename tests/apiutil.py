"""Helpers shared by the asyncio API tests: configs, waiting for a condition (bounded), and a
loopback relay that can delay or drop chosen datagrams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from p2pfast import Config
from p2pfast._speedups import codec
from p2pfast.protocol import MessageType as T


def config(**kw: object) -> Config:
    settings: dict[str, object] = dict(
        listen_address="127.0.0.1:0", network_id="api", enable_discovery=False
    )
    settings.update(kw)
    return Config(**settings)  # type: ignore[arg-type]


async def until(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.01) -> None:
    """Wait (bounded) until ``predicate()`` is true; fail the test if it never is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


def message_type(data: bytes) -> str:
    try:
        return T(codec.decode(data).type).name
    except Exception:
        return "?"


class Relay(asyncio.DatagramProtocol):
    """Forwards between one client and ``target`` on loopback. ``rule(direction, type_name)``
    returns None (forward now), a delay in seconds, or ``"drop"``. ``direction`` is ``"out"``
    (client → target) or ``"back"``."""

    def __init__(self, target: tuple, rule: Callable[[str, str], object] | None = None) -> None:
        self.target = target
        self.rule = rule or (lambda direction, kind: None)
        self.client: tuple | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None
        self.seen: list[tuple[str, str]] = []

    async def start(self) -> tuple:
        loop = asyncio.get_running_loop()
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple) -> None:
                if relay.client is not None and relay.front is not None:
                    relay._forward("back", relay.front, data, relay.client)

        self.front, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        self.addr = self.front.get_extra_info("sockname")[:2]
        return self.addr

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.client = addr
        assert self.back is not None
        self._forward("out", self.back, data, self.target)

    def _forward(
        self, direction: str, transport: asyncio.DatagramTransport, data: bytes, to: tuple
    ) -> None:
        kind = message_type(data)
        self.seen.append((direction, kind))
        action = self.rule(direction, kind)
        if action == "drop":
            return
        if action:
            asyncio.get_running_loop().call_later(float(action), self._send, transport, data, to)  # type: ignore[arg-type]
        else:
            transport.sendto(data, to)

    @staticmethod
    def _send(transport: asyncio.DatagramTransport, data: bytes, to: tuple) -> None:
        if not transport.is_closing():
            transport.sendto(data, to)

    def close(self) -> None:
        for t in (self.front, self.back):
            if t is not None:
                t.close()
