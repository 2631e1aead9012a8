"""``P2PServer``: the asyncio library API around the engine and its endpoint.

Lifecycle, backpressure, ordering and what each call raises are written down in
``docs/api.md``; the short version:

- ``start()`` binds the socket on the running loop; the server is bound to that loop and
  every call from another loop raises RuntimeError at once. ``stop()`` tells every peer,
  fails every pending call promptly (:class:`~p2pfast.errors.ServerClosed`, or
  ``SendError(shutdown)`` for sends), ends ``messages()`` and ``events()`` iterators (as a
  stream reaches EOF), cancels and awaits running handlers. ``start()`` after ``stop()``
  restarts with a fresh engine on the same config (and the same node id). Cancelling
  ``run()`` stops the server, as ``asyncio.Server.serve_forever`` does.
- Received data goes to one consumer: the ``on_data`` handler (at most
  ``handler_concurrency`` running at once, started in arrival order) or one
  ``messages()`` iterator. The engine holds at most ``max_queued_messages`` of them
  undelivered (handlers count while they run); beyond that it withholds acks, so the sender's
  window applies backpressure instead of anything being dropped.
- Events are dispatched from the loop, one at a time: no handler is ever called inside
  another, or inside a call the application made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import inspect
import logging
import socket
import sys
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Literal, TypeVar, overload

from .addr import Address, format_addr, is_ipv6, resolve
from .config import Config
from .endpoint import NodeEndpoint
from .errors import (
    SEND_REASONS,
    BindError,
    ConnectError,
    ConnectRefused,
    P2PTimeout,
    SendError,
    SendShutdown,
    ServerClosed,
    WindowFull,
)
from .events import (
    ConnectFailed,
    DataReceived,
    Event,
    PeerConnected,
    PeerDisconnected,
    PeerListReceived,
    PongReceived,
    SendCompleted,
    SendFailed,
    WindowOpened,
)
from .info import NodeInfo, PeerInfo
from .node import Node
from .stats import ServerStats

__all__ = ["BindError", "EventStream", "MessageStream", "P2PServer", "new_event_loop", "run"]

log = logging.getLogger("p2pfast")

DataHandler = Callable[[DataReceived], "Awaitable[None] | None"]
EventHandler = Callable[[Event], "Awaitable[None] | None"]
T = TypeVar("T")

#: Events published to ``events()`` iterators and the ``on_event`` callback. SendCompleted
#: and WindowOpened are not: they resolve ``send()`` calls and would flood a subscriber.
PUBLISHED_EVENTS: tuple[type[Event], ...] = (
    PeerConnected,
    PeerDisconnected,
    ConnectFailed,
    SendFailed,
    PongReceived,
    PeerListReceived,
)
_PUBLISHED = frozenset(PUBLISHED_EVENTS)

#: ConnectFailed codes that mean the peer said no.
_REFUSALS = frozenset(
    {"network_mismatch", "server_full", "node_id_taken", "invalid_node_info", "handshake_required"}
)


class _Inbox(Generic[T]):
    """A FIFO read by coroutines; ``close()`` is end of stream (readers get what is left,
    then None). With ``limit``, items beyond it are dropped and counted."""

    def __init__(self, limit: int = 0) -> None:
        self._items: deque[T] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self.limit = limit
        self.dropped = 0
        #: The engine whose messages these are (told when the application takes one).
        self.owner: Node | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        if self.closed:
            return False
        if self.limit and len(self._items) >= self.limit:
            self.dropped += 1
            return False
        self._items.append(item)
        self._wake_one()
        return True

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    def drain(self) -> list[T]:
        items = list(self._items)
        self._items.clear()
        return items

    async def get(self) -> T | None:
        """The next item; None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled():
                    self._wake_one()  # we were woken, then cancelled: pass the wakeup on
                raise
        return self._items.popleft()


class MessageStream:
    """The data addressed to this node, in arrival order: ``async for msg in stream``.

    Returned by :meth:`P2PServer.messages`. It ends (``StopAsyncIteration``) when the server
    stops, after the messages already received. Only one stream is open per server at a
    time: close it with ``await stream.aclose()`` (or ``async with``), or drop it, before
    asking for another. Messages it did not take stay queued for the next one.
    """

    def __init__(self, server: P2PServer, inbox: _Inbox[DataReceived]) -> None:
        self._server = server
        self._inbox = inbox
        self._closed = False

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> DataReceived:
        if self._closed:
            raise StopAsyncIteration
        self._server._check_loop_if_running()
        item = await self._inbox.get()
        if item is None:
            self._closed = True
            raise StopAsyncIteration
        owner = self._inbox.owner
        if owner is not None and not owner.closed:
            owner.app_consumed(1, item)
        return item

    async def aclose(self) -> None:
        """Stop reading: the server may hand out a new stream; queued messages stay queued."""
        self._closed = True
        self._server._release_stream(self)

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once closed, or ended because the server stopped."""
        return self._closed


class EventStream:
    """Peer lifecycle events, in the order they happened: ``async for ev in stream``.

    Returned by :meth:`P2PServer.events`; each call gives an independent stream that sees
    every event from then on (:data:`PUBLISHED_EVENTS`). It ends when the server stops, after
    the events already queued (the ``PeerDisconnected(reason="shutdown")`` ones included). A
    stream holds at most ``max_queued_events``; later events are dropped and counted in
    :attr:`dropped` until it is read again.
    """

    def __init__(self, server: P2PServer, inbox: _Inbox[Event]) -> None:
        self._server = server
        self._inbox = inbox

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        self._server._check_loop_if_running()
        item = await self._inbox.get()
        if item is None:
            raise StopAsyncIteration
        return item

    @property
    def dropped(self) -> int:
        """Events this stream missed because it was not read fast enough."""
        return self._inbox.dropped

    async def aclose(self) -> None:
        """Stop receiving events on this stream."""
        self._inbox.close()
        self._inbox.drain()


class P2PServer:
    """A p2pfast node on asyncio (uvloop recommended): server and client at once.

    - ``config``: the node's settings.
    - ``on_data``: called with each :class:`~p2pfast.events.DataReceived` (sync or async; an
      async handler is awaited), at most ``handler_concurrency`` at a time, started in
      arrival order. Without it, read data with :meth:`messages`.
    - ``on_event``: called with each lifecycle event (see :meth:`events`), one at a time;
      stop() waits until it has seen the shutdown's events.
    - ``echo``: until ``messages()`` is called (and without ``on_data``), answer plain Data
      with ``{echo, timestamp}`` as the Rust server does (``p2pfast-server`` turns it on; a
      library node does not echo unless asked: it queues the data for ``messages()``).
    - ``queue_data``: without ``on_data``, queue received data for ``messages()`` from
      ``start()`` on, so none is lost before the first call. False (``p2pfast-server``, a
      node with no application): until ``messages()`` is called, data is echoed (``echo``)
      or counted in ``stats.delivered`` and dropped.
    - ``max_queued_messages``: received messages the application may hold before the engine
      stops acknowledging new ones (0 = unbounded).
    - ``max_queued_events``: bound of each events() stream.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        on_data: DataHandler | None = None,
        on_event: EventHandler | None = None,
        echo: bool = False,
        queue_data: bool = True,
        max_queued_messages: int = 10_000,
        handler_concurrency: int = 1,
        max_queued_events: int = 10_000,
    ) -> None:
        if type(max_queued_messages) is not int or max_queued_messages < 0:
            raise ValueError("max_queued_messages must be an int >= 0 (0 = unbounded)")
        if type(handler_concurrency) is not int or handler_concurrency < 1:
            raise ValueError("handler_concurrency must be an int >= 1")
        if type(max_queued_events) is not int or max_queued_events < 1:
            raise ValueError("max_queued_events must be an int >= 1")
        self.config = config or Config()
        self._on_data = on_data
        self._on_event = on_event
        self._echo = bool(echo)
        self._queue_data = bool(queue_data)
        self._max_queued = max_queued_messages
        self._handler_concurrency = handler_concurrency
        self._max_queued_events = max_queued_events
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._node: Node | None = None
        self._node_id: str | None = self.config.node_id
        self._endpoint: NodeEndpoint | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._local_address: Address | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._inbox: _Inbox[DataReceived] | None = None
        self._stream: weakref.ref[MessageStream] | None = None
        self._event_streams: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._event_inboxes: list[_Inbox[Event]] = []
        self._on_event_inbox: _Inbox[Event] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._draining: set[asyncio.Task[None]] = set()
        self._reset_waiters()

    def _reset_waiters(self) -> None:
        self._connects: dict[Address, list[tuple[asyncio.Future[str], float]]] = {}
        self._sends: dict[str, tuple[asyncio.Future[None], str]] = {}
        self._window_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._pings: dict[str, asyncio.Future[float]] = {}
        self._lists: dict[str, asyncio.Future[list[Any]]] = {}

    # -- properties ----------------------------------------------------------------------

    @property
    def node(self) -> Node | None:
        """The sans-I/O engine of the current (or last) run; None before the first start."""
        return self._node

    @property
    def node_id(self) -> str:
        """This node's id (kept across restarts). Raises ServerClosed before the first start
        unless ``config.node_id`` fixes it."""
        if self._node_id is None:
            raise ServerClosed("server not started: await server.start() first", "not_started")
        return self._node_id

    @property
    def local_address(self) -> Address:
        """The bound ``(host, port)``, the form every address takes in this API."""
        if self._local_address is None:
            raise ServerClosed("server not started: await server.start() first", "not_started")
        return self._local_address

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._state == "running"

    @property
    def peers(self) -> dict[str, PeerInfo]:
        """Connected peers: node id → :class:`~p2pfast.info.PeerInfo` (with its NodeInfo).
        Empty when the server is not running."""
        node = self._node
        if node is None or self._state != "running":
            return {}
        offset = node.wall_offset
        result: dict[str, PeerInfo] = {}
        for node_id, peer in node.peers_by_id.items():
            info = NodeInfo.from_wire({**peer.node_info, "listen_addr": peer.addr_str})
            result[node_id] = PeerInfo(
                node_id=node_id,
                address=(peer.addr[0], peer.addr[1]),
                capabilities=tuple(peer.node_info.get("capabilities", ())),
                last_seen=int(peer.last_seen + offset),
                node_info=info,
            )
        return result

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket and start the node on the running loop (the server is bound to it).

        After :meth:`stop`, starts again with a fresh engine on the same config and node id.
        Raises BindError if the address is unusable, RuntimeError if already running.
        """
        if self._state == "stopping" and self._stopping is not None:
            await asyncio.shield(self._stopping)  # a stop() in progress finishes first
        if self._state in ("running", "stopping"):
            raise RuntimeError("P2PServer is already running")
        loop = asyncio.get_running_loop()
        sock = _bind(self.config.listen_address)
        previous = self._node
        try:
            bound = sock.getsockname()
            node_config = dataclasses.replace(self.config, echo=self._echo, node_id=self._node_id)
            node = Node(node_config, now=self._now(), local_addr=(bound[0], bound[1]))
            node.app_queue_limit = self._max_queued
            inbox = self._inbox
            if self._on_data is not None or (inbox is None and self._queue_data and not self._echo):
                # Data is queued from the start (for the handlers, or for messages() whenever
                # it is called): never acknowledged and then discarded.
                inbox = _Inbox()
            node.app_attached = inbox is not None
            if inbox is not None:
                inbox.owner = node
            self._reset_waiters()
            self._loop = loop
            self._node = node
            self._node_id = node.node_id
            self._local_address = (bound[0], bound[1])
            self._inbox = inbox
            self._stopped = asyncio.Event()
            self._stopping = None
            endpoint = NodeEndpoint(node, functools.partial(self._dispatch_events, node))
            self._endpoint = endpoint
            transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        except BaseException:
            sock.close()
            self._node, self._endpoint = previous, None
            raise
        self._transport = transport
        self._state = "running"
        if self._on_data is not None and inbox is not None:
            for i in range(self._handler_concurrency):
                self._spawn(self._run_handlers(inbox, node), f"p2pfast on_data #{i}")
        if self._on_event is not None:
            events: _Inbox[Event] = _Inbox(self._max_queued_events)
            self._on_event_inbox = events
            self._event_inboxes.append(events)
            self._spawn(self._run_event_handler(events), "p2pfast on_event", drain=True)
        self._spawn(self._guard(), "p2pfast guard")
        log.info(
            "listening on %s as %s (network %s)",
            node.local_addr_str,
            node.node_id,
            self.config.network_id,
        )

    async def run(self) -> None:
        """Start (if not running) and serve until :meth:`stop`. Cancelling it (Ctrl-C under
        ``asyncio.run``) stops the server as :meth:`stop` does, then re-raises."""
        if self._state != "running":
            await self.start()
        stopped = self._stopped
        assert stopped is not None
        try:
            await stopped.wait()
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def stop(self, reason: str = "shutdown") -> None:
        """Say Disconnect to every peer, fail every pending call, end every stream, cancel and
        await running handlers, close the socket. Idempotent; a no-op before ``start()``."""
        if self._state in ("new", "stopped"):
            return
        if self._state == "stopping":
            stopping = self._stopping
            if stopping is not None and not stopping.done():
                await asyncio.shield(stopping)
            return
        loop = self._loop
        assert loop is not None
        if loop.is_closed():  # the loop it ran on is gone: release what we can, quietly
            self._close_now(reason)
            return
        self._check_loop()
        self._stopping = stopping = loop.create_future()
        try:
            self._close_now(reason, final=False)
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            self._tasks.clear()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0)  # let the transport write the Disconnects
        finally:
            self._state = "stopped"
            if self._stopped is not None:
                self._stopped.set()
            stopping.set_result(None)

    def _close_now(self, reason: str, *, final: bool = True) -> None:
        """The synchronous part of stop(): everything but awaiting the handler tasks (with
        ``final``, the server is stopped when it returns; else stop() finishes the job)."""
        self._state = "stopping"
        node, endpoint = self._node, self._endpoint
        closed = ServerClosed("server stopped")
        self._fail_waiters(closed)
        if node is not None and not node.closed:
            node.close(self._now(), reason)
        if endpoint is not None and not self._loop_closed():
            endpoint.flush()  # Disconnects out, close events published
        if self._inbox is not None:
            if self._on_data is not None:
                left = len(self._inbox.drain())
                if left:
                    log.warning("stop: %d received messages were not handled", left)
            self._inbox.close()
        self._inbox = None
        self._stream = None
        for inbox in self._event_inboxes:
            inbox.close()
        self._event_inboxes.clear()
        loop_closed = self._loop_closed()
        current = None if loop_closed else _current_task()
        for task in self._tasks:
            if loop_closed:  # it can never run again: do not report it as destroyed pending
                # (asyncio's private flag, the one asyncio.Task checks; not in typeshed)
                task._log_destroy_pending = False  # type: ignore[attr-defined]
            elif task is not current and task not in self._draining:
                task.cancel()  # (a handler that called stop() itself finishes on its own)
        if loop_closed:
            self._tasks.clear()
        if self._transport is not None and not self._loop_closed():
            self._transport.close()
        self._transport = None
        if final:
            self._state = "stopped"
            if self._stopped is not None and not self._loop_closed():
                self._stopped.set()

    def _fail_waiters(self, exc: ServerClosed) -> None:
        for waiters in self._connects.values():
            for fut, _ in waiters:
                _fail(fut, ServerClosed(str(exc)))
        for sent, node_id in self._sends.values():
            _fail(sent, SendShutdown("shutdown", f"server stopped before {node_id} acknowledged"))
        for futs in self._window_waiters.values():
            for waiter in futs:
                _fail(waiter, SendShutdown("shutdown", "server stopped while the send waited"))
        for ping in self._pings.values():
            _fail(ping, ServerClosed("server stopped before the pong"))
        for lst in self._lists.values():
            _fail(lst, ServerClosed("server stopped before the peer list"))
        self._reset_waiters()

    async def _guard(self) -> None:
        """Close the socket if the loop shuts down (asyncio.run cancels every task) while the
        server is still running: peers are told and no transport is left unclosed."""
        stopped = self._stopped
        assert stopped is not None
        try:
            await stopped.wait()
        except asyncio.CancelledError:
            if self._state == "running":
                self._close_now("shutdown")
            raise

    async def __aenter__(self) -> P2PServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- commands ------------------------------------------------------------------------

    async def connect_to_peer(
        self, addr: str | tuple[Any, ...], timeout: float | None = None
    ) -> str:
        """Handshake with the node at ``addr``; return its node id.

        ``addr`` is ``"ip:port"``, ``"[v6]:port"``, ``"host:port"`` (resolved without
        blocking) or a ``(host, port)`` tuple. The handshake is retried with backoff until
        ``timeout`` (default ``config.connect_timeout``); when that runs out it is abandoned.
        Raises AddressError (``bad_address``; ``unresolved``; ``family``: the name resolves
        only to the other IP version), ConnectError (``family``: an IPv4 node and an IPv6
        address or the reverse; ``busy``), ConnectRefused (``code``:
        ``network_mismatch``, ``server_full``, ``node_id_taken``, ``invalid_node_info``,
        ``refused``), P2PTimeout (a TimeoutError), ServerClosed.
        """
        node = self._running_node()
        family = socket.AF_INET6 if is_ipv6(node.local_addr[0]) else socket.AF_INET
        wait = self.config.connect_timeout if timeout is None else _check_timeout(timeout)
        target = await resolve(addr, family)
        node = self._running_node()
        if is_ipv6(target[0]) != (family == socket.AF_INET6):
            ours = "IPv6" if family == socket.AF_INET6 else "IPv4"
            raise ConnectError(
                f"cannot connect to {format_addr(target)}: this node listens on {ours} "
                f"({node.local_addr_str}); listen on an address of the same IP version",
                code="family",
                address=target,
            )
        existing = node.peers_by_addr.get(target)
        if existing is not None:
            return str(existing.node_id)
        now = self._now()
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._connects.setdefault(target, []).append((fut, wait))
        node.connect(target, now, deadline=now + wait)
        self._flush()
        try:
            return await _wait_future(
                fut,
                wait,
                lambda: P2PTimeout(
                    f"no handshake answer from {format_addr(target)} within {wait:g} s",
                    waited=wait,
                    address=target,
                ),
            )
        finally:
            waiters = self._connects.get(target)
            if waiters is not None:
                waiters[:] = [w for w in waiters if w[0] is not fut]
                if not waiters:
                    del self._connects[target]
                    # Nobody waits for it any more: do not leave it handshaking in the background.
                    if self._state == "running" and not node.closed:
                        node.cancel_connect(target)
                        self._flush()

    async def send(
        self, node_id: str, data: Any, *, reliable: bool = True, timeout: float | None = None
    ) -> None:
        """Send application data (anything JSON-encodable) to ``node_id``, directly or routed.

        With ``reliable`` this resolves when the next hop acknowledges it; while the window
        towards that hop is full it waits (backpressure). Raises SendError (``reason``:
        ``no_route``, ``timeout``, ``peer_gone``, ``too_large``, ``bad_payload``,
        ``shutdown``), P2PTimeout when ``timeout`` runs out first (the message may still be
        delivered), ServerClosed if the server is not running.
        """
        node = self._running_node()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + _check_timeout(timeout)

        def expired() -> P2PTimeout:
            return P2PTimeout(
                f"send to {node_id} not completed within {timeout:g} s",
                waited=timeout,
                node_id=node_id,
            )

        while True:
            try:
                handle = node.send_data(node_id, data, self._now(), reliable=reliable)
                break
            except WindowFull as exc:
                # The peer whose window is full: the next hop for a routed send (the
                # WindowOpened that follows names it), not the destination.
                key = exc.node_id
                waiter: asyncio.Future[None] = loop.create_future()
                self._window_waiters.setdefault(key, []).append(waiter)
                self._flush()
                try:
                    await _wait_future(waiter, _remaining(loop, deadline), expired)
                finally:
                    futs = self._window_waiters.get(key)
                    if futs is not None and waiter in futs:
                        futs.remove(waiter)
                        if not futs:
                            del self._window_waiters[key]
                self._running_node_or_shutdown()
            except SendError as exc:
                if exc.reason == "shutdown":
                    raise SendShutdown("shutdown", exc.detail) from None
                raise
        if not reliable:
            self._flush()
            return
        fut: asyncio.Future[None] = loop.create_future()
        self._sends[handle] = (fut, node_id)
        self._flush()
        try:
            await _wait_future(fut, _remaining(loop, deadline), expired)
        finally:
            self._sends.pop(handle, None)

    async def ping(self, node_id: str, timeout: float | None = 5.0) -> float:
        """Ping a connected peer; return the round-trip time in seconds. Overlapping pings
        each get the RTT of their own Pong. Raises SendError(no_route) if not connected,
        P2PTimeout, ServerClosed. ``timeout=None`` waits until the pong or stop()."""
        node = self._running_node()
        wait = None if timeout is None else _check_timeout(timeout)
        ping_id = node.ping(node_id, self._now())
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = fut
        self._flush()
        try:
            return await _wait_future(
                fut,
                wait,
                lambda: P2PTimeout(
                    f"no pong from {node_id} within {wait:g} s", waited=wait, node_id=node_id
                ),
            )
        finally:
            self._pings.pop(ping_id, None)

    @overload
    async def list_peers(
        self, node_id: str, *, full_info: Literal[False] = ..., timeout: float | None = ...
    ) -> list[PeerInfo]: ...

    @overload
    async def list_peers(
        self, node_id: str, *, full_info: Literal[True], timeout: float | None = ...
    ) -> list[NodeInfo]: ...

    async def list_peers(
        self, node_id: str, *, full_info: bool = False, timeout: float | None = 5.0
    ) -> list[PeerInfo] | list[NodeInfo]:
        """Ask ``node_id`` for its peer list and return the answer to this request (one
        datagram's worth): PeerInfo objects (DiscoveryRequest), or NodeInfo objects with
        ``full_info`` (ListNodesRequest). Malformed entries are skipped. Raises
        SendError(no_route) if not connected, P2PTimeout, ServerClosed."""
        node = self._running_node()
        wait = None if timeout is None else _check_timeout(timeout)
        request_id = node.request_peers(node_id, self._now(), full_info=full_info)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._lists[request_id] = fut
        self._flush()
        try:
            entries = await _wait_future(
                fut,
                wait,
                lambda: P2PTimeout(
                    f"no peer list from {node_id} within {wait:g} s", waited=wait, node_id=node_id
                ),
            )
        finally:
            self._lists.pop(request_id, None)
        if full_info:
            return [i for i in map(NodeInfo.from_wire, entries) if i is not None]
        return [p for p in map(PeerInfo.from_wire, entries) if p is not None]

    def request_peers(self, node_id: str, *, full_info: bool = False) -> str:
        """Ask ``node_id`` for its peer list without waiting; return the request id. The
        answer feeds routing and discovery and arrives as a PeerListReceived event. A plain
        method: it never waits. Raises SendError(no_route), ServerClosed."""
        node = self._running_node()
        request_id = node.request_peers(node_id, self._now(), full_info=full_info)
        self._flush()
        return request_id

    async def disconnect(self, node_id: str, reason: str = "disconnect") -> None:
        """Tell ``node_id`` we are leaving and drop the session (a no-op if not connected).
        Returns once the peer is gone: its pending reliable sends have failed with
        SendError(peer_gone) in their own tasks. Raises ServerClosed."""
        node = self._running_node()
        node.disconnect(node_id, self._now(), reason)
        self._flush()
        await asyncio.sleep(0)

    def messages(self) -> MessageStream:
        """The application data addressed to this node, in arrival order:
        ``async for msg in server.messages()`` (a :class:`MessageStream`).

        Data is queued from ``start()`` on, so nothing received before the first call is
        lost (with ``echo=True`` or ``queue_data=False``, delivery starts with the first
        call). One stream at a time: a
        second call while the first is open raises RuntimeError. The stream ends when the
        server stops, after the messages already received.
        Raises RuntimeError if the server has an ``on_data`` handler, ServerClosed once
        stopped (call it again after a restart).
        """
        if self._on_data is not None:
            raise RuntimeError(
                "this server hands data to its on_data handler; messages() is for servers "
                "created without one"
            )
        if self._state in ("stopping", "stopped"):
            raise ServerClosed("server is stopped: start it again, then call messages()")
        if self._state == "running":
            self._check_loop()
        current = self._stream() if self._stream is not None else None
        if current is not None and not current.closed:
            raise RuntimeError(
                "messages() already has an open stream: read from it, or close it "
                "(await stream.aclose()) before asking for another"
            )
        if self._inbox is None:
            self._inbox = _Inbox()
            if self._node is not None and self._state == "running":
                self._inbox.owner = self._node
                self._node.app_attached = True
        stream = MessageStream(self, self._inbox)
        self._stream = weakref.ref(stream)
        return stream

    def events(self) -> EventStream:
        """Peer lifecycle events from now on: ``async for ev in server.events()``.

        Yields :class:`~p2pfast.events.PeerConnected`, ``PeerDisconnected`` (with
        ``reason``), ``ConnectFailed`` (with ``code``), ``SendFailed``, ``PongReceived`` and
        ``PeerListReceived``. Every stream sees every event; it ends when the server stops.
        Raises ServerClosed if the server is not running.
        """
        self._running_node()
        inbox: _Inbox[Event] = _Inbox(self._max_queued_events)
        stream = EventStream(self, inbox)
        self._event_streams.add(stream)
        self._event_inboxes.append(inbox)
        return stream

    def get_stats(self) -> ServerStats:
        """A snapshot of the node's counters (:class:`~p2pfast.stats.ServerStats`); after
        stop(), those of the last run. Raises ServerClosed before the first start."""
        node = self._node
        if node is None:
            raise ServerClosed("server not started: await server.start() first", "not_started")
        return node.get_stats(self._now())

    # -- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _now() -> float:
        return time.monotonic()  # the clock the endpoint feeds the engine

    def _loop_closed(self) -> bool:
        return self._loop is None or self._loop.is_closed()

    def _check_loop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if loop.is_closed():
            raise RuntimeError("this P2PServer's event loop is closed; create and start a new one")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            raise RuntimeError(
                "this P2PServer is bound to the event loop that started it; call it from that "
                "loop (from another thread: asyncio.run_coroutine_threadsafe)"
            )

    def _check_loop_if_running(self) -> None:
        if self._state == "running":
            self._check_loop()

    def _running_node(self) -> Node:
        if self._state == "new":
            raise ServerClosed("server not started: await server.start() first", "not_started")
        if self._state != "running":
            raise ServerClosed("server is stopped")
        self._check_loop()
        node = self._node
        assert node is not None
        return node

    def _running_node_or_shutdown(self) -> Node:
        if self._state != "running":
            raise SendShutdown("shutdown", "server stopped while the send waited")
        return self._running_node()

    def _flush(self) -> None:
        if self._endpoint is not None:
            self._endpoint.flush()

    def _release_stream(self, stream: MessageStream) -> None:
        if self._stream is not None and self._stream() is stream:
            self._stream = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str, *, drain: bool = False) -> None:
        """Run a task of this server; stop() cancels it, or with ``drain`` lets it finish
        what its (closed) inbox still holds, and awaits it either way."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        if drain:
            self._draining.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        self._draining.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("p2pfast task %s failed", task.get_name(), exc_info=task.exception())

    async def _run_handlers(self, inbox: _Inbox[DataReceived], node: Node) -> None:
        """One handler slot: take the oldest message, run on_data to completion, repeat."""
        handler = self._on_data
        assert handler is not None
        while (msg := await inbox.get()) is not None:
            try:
                result = handler(msg)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:  # an application bug must not stop the node
                log.exception("on_data handler failed")
            finally:
                if not node.closed:
                    node.app_consumed(1, msg)

    async def _run_event_handler(self, inbox: _Inbox[Event]) -> None:
        handler = self._on_event
        assert handler is not None
        while (event := await inbox.get()) is not None:
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("on_event handler failed")

    def _dispatch_events(self, node: Node) -> None:
        """Take the engine's events: resolve the calls waiting on them, queue data and
        lifecycle events for their consumers. Runs no application code (so nothing nests)."""
        if node is not self._node:  # a late callback of an earlier run: nobody waits on it
            while node.next_event() is not None:
                pass
            return
        # ``type(event)`` is looked up once per event (this runs per message); mypy narrows
        # ``event`` on ``type(event) is C`` but not on ``kind is C``, hence the ignores below.
        while (event := node.next_event()) is not None:
            kind = type(event)
            if kind is DataReceived:
                inbox = self._inbox
                if inbox is not None:
                    inbox.put(event)  # type: ignore[arg-type]
                continue
            if kind is SendCompleted:
                entry = self._sends.get(event.handle)  # type: ignore[attr-defined]
                if entry is not None and not entry[0].done():
                    entry[0].set_result(None)
                continue
            if kind is WindowOpened:
                self._wake_window(event.node_id)  # type: ignore[attr-defined]
                continue
            if kind is SendFailed:
                if self._state != "running" and event.reason != "shutdown":  # type: ignore[attr-defined]
                    event = SendFailed(event.handle, "shutdown")  # type: ignore[attr-defined]
                self._on_send_failed(event)  # type: ignore[arg-type]
            elif kind is PeerConnected:
                for fut, _ in self._connects.pop(event.addr, ()):  # type: ignore[attr-defined]
                    if not fut.done():
                        fut.set_result(event.node_id)  # type: ignore[attr-defined]
            elif kind is ConnectFailed:
                for fut, wait in self._connects.pop(event.addr, ()):  # type: ignore[attr-defined]
                    _fail(fut, _connect_error(event, wait))  # type: ignore[arg-type]
            elif kind is PongReceived:
                ping = self._pings.pop(event.ping_id, None)  # type: ignore[attr-defined]
                if ping is not None and not ping.done():
                    ping.set_result(event.rtt)  # type: ignore[attr-defined]
            elif kind is PeerListReceived:
                rid = event.request_id  # type: ignore[attr-defined]
                lst = self._lists.pop(rid, None) if rid is not None else None
                if lst is not None and not lst.done():
                    lst.set_result(event.entries)  # type: ignore[attr-defined]
            elif kind is PeerDisconnected:
                self._wake_window(event.node_id)  # type: ignore[attr-defined]
            if kind in _PUBLISHED:
                self._publish(event)

    def _on_send_failed(self, event: SendFailed) -> None:
        entry = self._sends.get(event.handle)
        if entry is None or entry[0].done():
            return
        fut, node_id = entry
        reason = event.reason
        text = f"message {event.handle} to {node_id}: {SEND_REASONS.get(reason, reason)}"
        fut.set_exception(
            SendShutdown("shutdown", text) if reason == "shutdown" else SendError(reason, text)
        )

    def _wake_window(self, node_id: str) -> None:
        for fut in self._window_waiters.pop(node_id, ()):
            if not fut.done():
                fut.set_result(None)

    def _publish(self, event: Event) -> None:
        for inbox in self._event_inboxes:
            if (
                not inbox.put(event)
                and not inbox.closed
                and (inbox.dropped == 1 or inbox.dropped % 1000 == 0)
            ):
                log.warning("an events() consumer is behind: %d events dropped", inbox.dropped)
        if len(self._event_inboxes) > len(self._event_streams) + 1:
            self._prune_event_inboxes()

    def _prune_event_inboxes(self) -> None:
        """Forget the inboxes of streams closed or garbage-collected."""
        live = {id(s._inbox) for s in self._event_streams}
        self._event_inboxes = [
            inbox
            for inbox in self._event_inboxes
            if not inbox.closed and (id(inbox) in live or inbox is self._on_event_inbox)
        ]


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved here: a waiter that already left must not log it


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)


def _remaining(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - loop.time())


async def _wait_future(
    fut: asyncio.Future[T], timeout: float | None, on_timeout: Callable[[], BaseException]
) -> T:
    """Await ``fut``; if ``timeout`` runs out first, fail it with ``on_timeout()``. Raises the
    builtin TimeoutError subclass on every Python version (no asyncio.wait_for)."""
    if timeout is None:
        return await fut
    handle = asyncio.get_running_loop().call_later(timeout, _expire, fut, on_timeout)
    try:
        return await fut
    finally:
        handle.cancel()


def _expire(fut: asyncio.Future[Any], on_timeout: Callable[[], BaseException]) -> None:
    if not fut.done():
        fut.set_exception(on_timeout())


def _connect_error(event: ConnectFailed, wait: float) -> BaseException:
    where = format_addr(event.addr)
    code = event.code
    address = (event.addr[0], event.addr[1])
    if code == "timeout":
        return P2PTimeout(
            f"no handshake answer from {where} within {wait:g} s", waited=wait, address=address
        )
    if code == "shutdown":
        return ServerClosed(f"server stopped while connecting to {where}")
    if code in ("busy", "family"):
        return ConnectError(
            f"cannot connect to {where}: {event.reason}",
            code=code,
            address=address,
            reason=event.reason,
        )
    code = code if code in _REFUSALS else "refused"
    return ConnectRefused(
        f"{where} refused the handshake: {event.reason} [{code}]",
        code=code,
        address=address,
        reason=event.reason,
        peer_text=event.peer_text,
    )


def _bind(listen_address: str) -> socket.socket:
    from .addr import parse_addr

    host, port = parse_addr(listen_address)
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BindError(
                f"cannot listen on {listen_address}: address already in use", "address_in_use"
            ) from None
        reason = (exc.strerror or str(exc)).lower()
        raise BindError(f"cannot listen on {listen_address}: {reason}") from None
    _tune_buffers(sock)
    return sock


def _tune_buffers(sock: socket.socket) -> None:
    """Larger kernel buffers absorb bursts (the kernel caps them at its rmem/wmem_max)."""
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available, the default loop elsewhere."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Awaitable[Any]) -> Any:
    """Run a coroutine on uvloop as ``asyncio.run`` does: on the way out (Ctrl-C included)
    every remaining task is cancelled and awaited, so running servers stop cleanly."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            # typeshed: Runner.run takes a Coroutine; callers pass coroutines, typed Awaitable
            return runner.run(main)  # type: ignore[arg-type]
    loop = new_event_loop()  # pragma: no cover - 3.10
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:  # pragma: no cover - 3.10
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
