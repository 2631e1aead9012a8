"""``P2PServer``: the asyncio library API around the engine and its endpoint (SPEC §5)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from .addr import parse_addr
from .config import Config
from .endpoint import NodeEndpoint
from .errors import P2PError, SendError, WindowFull
from .events import (
    ConnectFailed,
    DataReceived,
    PeerConnected,
    PeerDisconnected,
    PeerListReceived,
    PongReceived,
    SendCompleted,
    SendFailed,
    WindowOpened,
)
from .node import Node
from .stats import ServerStats

log = logging.getLogger("p2pfast")

DataHandler = Callable[[DataReceived], "Awaitable[None] | None"]


class BindError(P2PError):
    """The listen address cannot be bound (in use, not local, permission)."""


class P2PServer:
    """A p2pfast node on asyncio (uvloop recommended): server and client at once.

    Application data arrives through ``on_data`` (a callback, sync or async) or through
    ``async for msg in server.messages()``. Without either, plain Data is echoed back when
    ``config.echo`` is on, as the Rust server does.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        on_data: DataHandler | None = None,
        max_queued_messages: int = 10_000,
    ) -> None:
        self.config = config or Config()
        self._on_data = on_data
        self._queue: asyncio.Queue[DataReceived] | None = None
        self._max_queued = max_queued_messages
        self.node: Node | None = None
        self._endpoint: NodeEndpoint | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connects: dict[tuple, list[asyncio.Future]] = {}
        self._sends: dict[str, asyncio.Future] = {}
        self._window_waiters: dict[str, asyncio.Event] = {}
        self._pings: dict[str, list[asyncio.Future]] = {}
        self._lists: dict[tuple[str, bool], list[asyncio.Future]] = {}
        self._stopped: asyncio.Event | None = None
        self.dropped_messages = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._require_node().node_id

    @property
    def local_address(self) -> tuple:
        return self._require_node().local_addr

    @property
    def peers(self) -> dict[str, dict]:
        """Connected peers: node id → NodeInfo."""
        return {pid: p.node_info for pid, p in self._require_node().peers_by_id.items()}

    async def start(self) -> None:
        """Bind the socket and start the timers. Raises BindError if the address is unusable."""
        if self.node is not None:
            raise P2PError("server already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = asyncio.Event()
        host, port = parse_addr(self.config.listen_address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            reason = (
                "address already in use"
                if exc.errno == errno.EADDRINUSE
                else (exc.strerror or str(exc)).lower()
            )
            raise BindError(f"cannot listen on {self.config.listen_address}: {reason}") from None
        _tune_buffers(sock)
        bound = sock.getsockname()[:2]
        node = Node(self.config, now=self._now(), local_addr=bound)
        node.app_attached = self._on_data is not None or self._queue is not None
        self.node = node
        endpoint = NodeEndpoint(node, self._dispatch_events)
        self._endpoint = endpoint
        transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        self._transport = transport  # type: ignore[assignment]
        log.info(
            "listening on %s as %s (network %s)",
            node.local_addr_str,
            node.node_id,
            self.config.network_id,
        )

    async def run(self) -> None:
        """Start (if needed) and serve until :meth:`stop` is called."""
        if self.node is None:
            await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self, reason: str = "shutdown") -> None:
        """Send Disconnect to every peer, fail what is pending, close the socket."""
        node, endpoint = self.node, self._endpoint
        if node is None or endpoint is None or node.closed:
            return
        node.close(self._now(), reason)
        endpoint.flush()
        if self._transport is not None:
            self._transport.close()
        # Let the transport write the Disconnects before the loop moves on.
        await asyncio.sleep(0)
        if self._stopped is not None:
            self._stopped.set()

    async def __aenter__(self) -> "P2PServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    # -- commands ------------------------------------------------------------------------

    async def connect_to_peer(self, addr: str | tuple, timeout: float = 10.0) -> str:
        """Handshake with the node at ``addr`` (``"ip:port"`` or a tuple); return its node id.

        Raises ConnectionRefusedError with the peer's reason, or TimeoutError.
        """
        node = self._require_node()
        target = parse_addr(addr) if isinstance(addr, str) else tuple(addr[:2])
        existing = node.peers_by_addr.get(target)
        if existing is not None:
            return existing.node_id
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._connects.setdefault(target, []).append(fut)
        node.connect(target, self._now())
        self._flush()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            waiters = self._connects.get(target)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._connects[target]

    async def send(
        self, node_id: str, data: Any, *, reliable: bool = True, timeout: float | None = None
    ) -> None:
        """Send application data to ``node_id`` (directly or routed). With ``reliable`` this
        resolves when the next hop acknowledges it and raises SendError when it cannot be
        delivered; a full send window makes it wait (backpressure)."""
        node = self._require_node()

        async def attempt() -> None:
            while True:
                try:
                    handle = node.send_data(node_id, data, self._now(), reliable=reliable)
                    break
                except WindowFull:
                    event = self._window_waiters.setdefault(node_id, asyncio.Event())
                    self._flush()
                    await event.wait()
            if not reliable:
                self._flush()
                return
            fut: asyncio.Future = asyncio.get_running_loop().create_future()
            self._sends[handle] = fut
            self._flush()
            try:
                await fut
            finally:
                self._sends.pop(handle, None)

        await asyncio.wait_for(attempt(), timeout)

    async def ping(self, node_id: str, timeout: float = 5.0) -> float:
        """Ping a connected peer; return the round-trip time in seconds."""
        fut = self._expect(self._pings, node_id)
        self._require_node().ping(node_id, self._now())
        self._flush()
        return await self._wait(self._pings, node_id, fut, timeout)

    async def list_peers(self, node_id: str, *, full_info: bool = False, timeout: float = 5.0) -> list:
        """Ask ``node_id`` for its peer list and return the first datagram's worth of it:
        PeerInfo objects, or NodeInfo objects with ``full_info`` (ListNodesRequest)."""
        key = (node_id, full_info)
        fut = self._expect(self._lists, key)
        self.request_peers(node_id, full_info=full_info)
        return await self._wait(self._lists, key, fut, timeout)

    def _expect(self, table: dict, key: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        table.setdefault(key, []).append(fut)
        return fut

    @staticmethod
    async def _wait(table: dict, key: Any, fut: asyncio.Future, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            waiters = table.get(key)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del table[key]

    @staticmethod
    def _resolve(table: dict, key: Any, value: Any) -> None:
        for fut in table.pop(key, ()):
            if not fut.done():
                fut.set_result(value)

    async def disconnect(self, node_id: str, reason: str = "disconnect") -> None:
        self._require_node().disconnect(node_id, self._now(), reason)
        self._flush()

    def request_peers(self, node_id: str, *, full_info: bool = False) -> None:
        """Ask ``node_id`` for its peer list; what it answers feeds routing and discovery."""
        self._require_node().request_peers(node_id, self._now(), full_info=full_info)
        self._flush()

    def messages(self) -> AsyncIterator[DataReceived]:
        """Application data addressed to this node, in arrival order
        (``async for msg in server.messages()``). Delivery starts when this is called."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            if self.node is not None:
                self.node.app_attached = True
        return self._iter_messages(self._queue)

    @staticmethod
    async def _iter_messages(queue: asyncio.Queue) -> AsyncIterator[DataReceived]:
        while True:
            yield await queue.get()

    def get_stats(self) -> ServerStats:
        return self._require_node().get_stats(self._now())

    # -- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _now() -> float:
        return time.monotonic()  # the clock the endpoint feeds the engine

    def _require_node(self) -> Node:
        if self.node is None:
            raise P2PError("server not started")
        return self.node

    def _flush(self) -> None:
        if self._endpoint is not None:
            self._endpoint.flush()

    def _dispatch_events(self) -> None:
        node = self.node
        assert node is not None
        while (event := node.next_event()) is not None:
            kind = type(event)
            if kind is DataReceived:
                self._deliver(event)  # type: ignore[arg-type]
            elif kind is SendCompleted:
                fut = self._sends.get(event.handle)  # type: ignore[attr-defined]
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind is SendFailed:
                fut = self._sends.get(event.handle)  # type: ignore[attr-defined]
                if fut is not None and not fut.done():
                    fut.set_exception(SendError(event.reason, f"message {event.handle}"))  # type: ignore[attr-defined]
            elif kind is WindowOpened:
                waiter = self._window_waiters.pop(event.node_id, None)  # type: ignore[attr-defined]
                if waiter is not None:
                    waiter.set()
            elif kind is PeerConnected:
                for fut in self._connects.pop(event.addr, ()):  # type: ignore[attr-defined]
                    if not fut.done():
                        fut.set_result(event.node_id)  # type: ignore[attr-defined]
            elif kind is ConnectFailed:
                for fut in self._connects.pop(event.addr, ()):  # type: ignore[attr-defined]
                    if not fut.done():
                        exc_type = TimeoutError if event.reason == "timeout" else ConnectionRefusedError  # type: ignore[attr-defined]
                        fut.set_exception(exc_type(f"handshake with {event.addr}: {event.reason}"))  # type: ignore[attr-defined]
            elif kind is PongReceived:
                self._resolve(self._pings, event.node_id, event.rtt)  # type: ignore[attr-defined]
            elif kind is PeerListReceived:
                self._resolve(self._lists, (event.node_id, event.full_info), event.entries)  # type: ignore[attr-defined]
            elif kind is PeerDisconnected:
                waiter = self._window_waiters.pop(event.node_id, None)  # type: ignore[attr-defined]
                if waiter is not None:
                    waiter.set()

    def _deliver(self, event: DataReceived) -> None:
        if self._on_data is not None:
            try:
                result = self._on_data(event)
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result).add_done_callback(_log_handler_error)
            except Exception:  # an application bug must not stop the node
                log.exception("on_data handler failed")
        if self._queue is not None:
            if self._queue.qsize() >= self._max_queued:
                self.dropped_messages += 1
                return
            self._queue.put_nowait(event)


def _log_handler_error(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("on_data handler failed", exc_info=task.exception())


def _tune_buffers(sock: socket.socket) -> None:
    """Larger kernel buffers absorb bursts (the kernel caps them at its rmem/wmem_max)."""
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        except OSError:  # pragma: no cover
            pass


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available, the default loop elsewhere."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Awaitable[Any]) -> Any:
    """Run a coroutine on uvloop (``asyncio.Runner(loop_factory=...)`` on 3.11+)."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(main)  # type: ignore[arg-type]
    loop = new_event_loop()  # pragma: no cover - 3.10
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
