"""A seeded random walk over the API (start, stop, restart, sends, pings, lists, connects,
disconnects, readers, cancellations) while a peer sends data: every call ends with a result
or a typed error within a bound, and after the last stop nothing of the server is left:
no task, no pending call, no table entry, no 'never retrieved' or 'destroyed' log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest

from p2pfast import P2PError, P2PServer

from .apiutil import config
from .netutil import on_uvloop

ALLOWED = (
    P2PError,
    TimeoutError,
    asyncio.TimeoutError,  # the test's own wait_for on Python 3.10
    asyncio.CancelledError,
    StopAsyncIteration,
    RuntimeError,
)


@pytest.mark.parametrize("seed", [1, 2, 3])
@on_uvloop
async def test_a_random_walk_over_the_api_never_hangs_or_leaks(seed, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    rng = random.Random(seed)
    fast = dict(rto_initial=0.05, rto_min=0.02, rto_max=0.2, max_retries=3, send_window=8)
    server = P2PServer(config(**fast), max_queued_messages=4, handler_concurrency=2)
    tasks: list[asyncio.Task] = []
    async with P2PServer(config(**fast)) as peer:
        await server.start()

        def spawn(coro) -> None:
            tasks.append(asyncio.ensure_future(coro))

        async def read_one() -> object:
            stream = server.messages()
            try:
                return await asyncio.wait_for(stream.__anext__(), 0.3)
            finally:
                await stream.aclose()

        async def peer_sends() -> None:
            for n in range(rng.randrange(1, 6)):
                try:
                    await peer.send(server.node_id, n, timeout=1)
                except (P2PError, TimeoutError):
                    return

        for _ in range(150):
            op = rng.choice(
                [
                    "send",
                    "send_unreliable",
                    "ping",
                    "list",
                    "connect",
                    "disconnect",
                    "stop",
                    "start",
                    "cancel",
                    "read",
                    "peer_sends",
                    "sleep",
                    "request",
                ]
            )
            if op == "send":
                spawn(server.send(peer.node_id, {"op": op}, timeout=rng.choice([None, 0.5])))
            elif op == "send_unreliable":
                spawn(server.send(peer.node_id, "u", reliable=False))
            elif op == "ping":
                spawn(server.ping(peer.node_id, timeout=rng.choice([None, 0.3, 2])))
            elif op == "list":
                spawn(server.list_peers(peer.node_id, full_info=rng.random() < 0.5, timeout=1))
            elif op == "connect":
                spawn(server.connect_to_peer(peer.local_address, timeout=1))
            elif op == "disconnect":
                spawn(server.disconnect(peer.node_id))
            elif op == "stop":
                spawn(server.stop())
            elif op == "start":
                spawn(server.start())
            elif op == "cancel" and tasks:
                rng.choice(tasks).cancel()
            elif op == "read":
                spawn(read_one())
            elif op == "peer_sends":
                spawn(peer_sends())
            elif op == "request":
                with contextlib.suppress(*ALLOWED):
                    server.request_peers(peer.node_id)
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.01, 0.05]))

        await server.stop()
        done, pending = await asyncio.wait(tasks, timeout=5)
        assert not pending, f"{len(pending)} calls still waiting after stop()"
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                assert isinstance(task.exception(), ALLOWED), repr(task.exception())
        if server.running:  # a start() that ran after our stop(): stop again
            await server.stop()
        assert not server.running
        assert not server._tasks
        assert not (server._connects or server._sends or server._pings or server._lists)
        assert not server._window_waiters
    text = caplog.text
    assert "never retrieved" not in text and "destroyed but it is pending" not in text
