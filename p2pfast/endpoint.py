"""The I/O shell: a datagram endpoint that feeds the sans-I/O :class:`~p2pfast.node.Node`.

``datagram_received`` → ``Node.receive_datagram``; once the event loop has delivered a batch
of datagrams (one ``call_soon`` per batch), what the node queued is sent, many datagrams per
system call (:mod:`p2pfast._sendbatch_py`), its events are handed over and one
``loop.call_at`` timer follows ``Node.get_timer()``. Nothing protocol-specific lives here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._speedups import sendbatch
from .addr import Address
from .node import Node

log = logging.getLogger("p2pfast")

_INF = float("inf")
# time.monotonic, not loop.time(): uvloop's clock is cached per loop iteration at 1 ms
# resolution, too coarse for RTT samples.
_monotonic = time.monotonic

#: Linux's per-socket path-MTU mode (ip(7), ipv6(7)), not in the socket module: "probe" sets
#: DF, ignores the cached path MTU and never fragments. Elsewhere probes leave as ordinary
#: datagrams.
_LINUX = sys.platform.startswith("linux")
_IP_MTU_DISCOVER = 10
_IPV6_MTU_DISCOVER = 23
_PMTUDISC_PROBE = 3


def _df_options(family: int) -> list[tuple[int, int]]:
    """``(level, option)`` pairs that forbid fragmentation on a socket of ``family`` (an IPv6
    socket may also send to IPv4-mapped addresses: both apply)."""
    if family == socket.AF_INET6:
        return [(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER), (socket.IPPROTO_IP, _IP_MTU_DISCOVER)]
    return [(socket.IPPROTO_IP, _IP_MTU_DISCOVER)]


if TYPE_CHECKING:

    class _DatagramTransport(asyncio.DatagramTransport):
        """The transport as the endpoint uses it: every datagram transport of asyncio
        (selector and proactor) and uvloop has ``get_write_buffer_size``; typeshed's
        DatagramTransport leaves it out."""

        def get_write_buffer_size(self) -> int: ...


class NodeEndpoint(asyncio.DatagramProtocol):
    """Binds one Node to one UDP socket and one event loop."""

    def __init__(self, node: Node, on_events: Callable[[], None]) -> None:
        self.node = node
        self._receive = node.receive_datagram
        self._on_events = on_events
        self._loop = asyncio.get_running_loop()
        self.transport: _DatagramTransport | None = None
        self._batch: sendbatch.BatchSender | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._flush_scheduled = False
        self._probe_sock: socket.socket | None = None
        self._send_errors = 0

    @property
    def send_errors(self) -> int:
        """Datagrams the kernel refused (ICMP errors reported later included)."""
        return self._send_errors + (self._batch.errors if self._batch is not None else 0)

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio types the argument as any transport; a datagram endpoint gets a datagram one
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._batch = sendbatch.BatchSender(sock.fileno(), sock.family)
        self.flush()

    def datagram_received(
        self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]
    ) -> None:
        if len(addr) != 2:  # IPv6: (host, port, flowinfo, scope_id) -> (host, port)
            addr = addr[:2]
        self._receive(data, addr, _monotonic())
        if not self._flush_scheduled:
            # Once the loop has delivered this batch of datagrams: send every reply with as
            # few system calls as possible, one coalesced Ack per p2pfast peer, hand the
            # events over and re-arm the timer.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_batch)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable) for an earlier sendto: not fatal for a UDP node.
        self._send_errors += 1
        log.debug("socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._probe_sock is not None:
            self._probe_sock.close()
            self._probe_sock = None
        if self._batch is not None:
            self._batch.close()
        self.transport = None

    # -- driving the node --------------------------------------------------------------

    def flush(self) -> None:
        """Send what the node queued, hand over its events, and re-arm its timer."""
        node = self.node
        if node.ack_peers or node.bulk_acks:
            node.flush_acks()
        out = node._out  # the node's own queue: read in place, then emptied
        if out:
            if self.transport is not None:
                self._send(out)
            out.clear()
        if node.probes:
            if self.transport is not None:
                self._send_probes(node.probes)
            node.probes.clear()
        if node._events:
            self._on_events()
        if node.get_timer() != self._timer_at:
            self._arm()

    def _flush_batch(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def _send(self, out: list[tuple[bytes, Address]]) -> None:
        """Batched writes while the transport has nothing buffered; the transport takes the
        rest (a full socket buffer: it queues them in order) and any address it must resolve."""
        transport = self.transport
        assert transport is not None
        batch = self._batch
        i, n = 0, len(out)
        while i < n:
            if batch is not None and not transport.get_write_buffer_size():
                i = batch.send(out, i)
                if i >= n:
                    break
                if batch.blocked:  # socket buffer full: the transport queues the rest, in order
                    batch = None
            self._sendto(transport, *out[i])
            i += 1

    def _send_probes(self, probes: list[tuple[bytes, Address]]) -> None:
        """Path-MTU probes leave with IP fragmentation forbidden (else a probe larger than the
        path would arrive as IP fragments and prove nothing): the socket's path-MTU mode is
        switched to "probe" (don't fragment, ignore the cached path MTU) around them, on Linux.
        A size the local stack refuses (EMSGSIZE) is reported to the node at once."""
        transport = self.transport
        assert transport is not None
        sock = self._probe_socket()
        if sock is None:  # no way to forbid fragmentation here: they go as ordinary datagrams
            for data, addr in probes:
                self._sendto(transport, data, addr)
            return
        saved: list[tuple[int, int, int]] = []
        try:
            for level, name in _df_options(sock.family):
                try:
                    saved.append((level, name, sock.getsockopt(level, name)))
                    sock.setsockopt(level, name, _PMTUDISC_PROBE)
                except OSError:  # (IPv4 options on an IPv6-only socket)
                    continue
            for data, addr in probes:
                try:
                    sock.sendto(data, addr)
                except OSError as exc:
                    if exc.errno == errno.EMSGSIZE:
                        self.node.probe_refused(data, addr, _monotonic())
                    else:  # a full buffer or an unreachable peer: the probe is simply lost
                        self._send_errors += 1
        finally:
            for level, name, value in saved:
                sock.setsockopt(level, name, value)

    def _probe_socket(self) -> socket.socket | None:
        """A duplicate of the endpoint's socket for probes (Linux only), made once."""
        if self._probe_sock is None and _LINUX and self.transport is not None:
            raw = self.transport.get_extra_info("socket")
            if raw is not None:
                self._probe_sock = socket.socket(fileno=os.dup(raw.fileno()))
                self._probe_sock.setblocking(False)
        return self._probe_sock

    def _sendto(self, transport: asyncio.DatagramTransport, data: bytes, addr: Address) -> None:
        try:
            transport.sendto(data, addr)
        except (OSError, ValueError) as exc:  # e.g. an IPv6 peer on an IPv4 socket
            self._send_errors += 1
            log.debug("cannot send to %s: %s", addr, exc)

    def _arm(self) -> None:
        self._cancel_timer()
        when = self.node.get_timer()
        # A closed node or socket schedules nothing (a closed node ignores its timer: arming
        # it would re-fire at once, forever).
        if when != _INF and self.transport is not None and not self.node.closed:
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
