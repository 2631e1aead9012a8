"""The I/O shell: a datagram endpoint that feeds the sans-I/O :class:`~p2pfast.node.Node`.

``datagram_received`` → ``Node.receive_datagram`` → ``transport.sendto`` for what it queued;
one ``loop.call_at`` timer follows ``Node.get_timer()``. Nothing protocol-specific lives here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .node import Node

log = logging.getLogger("p2pfast")

_INF = float("inf")
# time.monotonic, not loop.time(): uvloop's clock is cached per loop iteration at 1 ms
# resolution, too coarse for RTT samples.
_monotonic = time.monotonic


class NodeEndpoint(asyncio.DatagramProtocol):
    """Binds one Node to one UDP socket and one event loop."""

    def __init__(self, node: Node, on_events: Callable[[], None]) -> None:
        self.node = node
        self._on_events = on_events
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._acks_scheduled = False
        self.send_errors = 0

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sendto = transport.sendto  # type: ignore[attr-defined]
        self.flush()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(addr) != 2:  # IPv6: (host, port, flowinfo, scope_id) -> (host, port)
            addr = addr[:2]
        node = self.node
        node.receive_datagram(data, addr, _monotonic())
        out = node._out
        if out:
            sendto = self._sendto
            try:
                for item in out:
                    sendto(*item)
            except (OSError, ValueError) as exc:
                self.send_errors += 1
                log.debug("send failed: %s", exc)
            out.clear()  # reuse the list: no allocation per datagram
        if node.ack_peers and not self._acks_scheduled:
            # Coalesce acks to p2pfast peers over this batch of datagrams.
            self._acks_scheduled = True
            self._loop.call_soon(self._flush_acks)
        if node._events:
            self._on_events()
        if node._next_timer < self._timer_at:
            self._arm()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable) for an earlier sendto: not fatal for a UDP node.
        self.send_errors += 1
        log.debug("socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.transport = None

    # -- driving the node --------------------------------------------------------------

    def flush(self) -> None:
        """Send what the node queued, hand over its events, and re-arm its timer."""
        node = self.node
        transport = self.transport
        if transport is not None:
            for data, addr in node.datagrams_to_send():
                try:
                    transport.sendto(data, addr)
                except (OSError, ValueError) as exc:  # e.g. an IPv6 peer on an IPv4 socket
                    self.send_errors += 1
                    log.debug("cannot send to %s: %s", addr, exc)
        if node._events:
            self._on_events()
        if node.get_timer() != self._timer_at:
            self._arm()

    def _flush_acks(self) -> None:
        self._acks_scheduled = False
        self.flush()

    def _arm(self) -> None:
        self._cancel_timer()
        when = self.node.get_timer()
        if when != _INF:
            self._timer_at = when
            self._timer = self._loop.call_later(max(0.0, when - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = _INF
        self.node.handle_timer(_monotonic())
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = _INF
