"""P2PServer lifecycle under stress: calls on a stopped server, restart, stop while calls
wait, cancellation of run(), a loop that shuts down under a running server, use from another
event loop, and timeouts that are the builtin TimeoutError on every Python version."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import p2pfast
from p2pfast import (
    P2PServer,
    P2PTimeout,
    SendError,
    ServerClosed,
)
from p2pfast.server import new_event_loop, run

from .apiutil import Relay, config, until
from .netutil import needs_posix_signals, on_uvloop

BOUND = 2.0  # "at once": well under any timeout in play, far over a loop iteration


def _silent_udp() -> socket.socket:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    return sink


@on_uvloop
async def test_every_call_on_a_stopped_server_fails_at_once_and_nothing_is_scheduled():
    peer_id = "4b1bfa44-87cb-44de-a11e-b0d648397b65"
    async with P2PServer(config()) as other:
        server = P2PServer(config())
        await server.start()
        await server.connect_to_peer(other.local_address)
        await server.stop()
        calls = [
            server.connect_to_peer(other.local_address, timeout=5),
            server.send(peer_id, "x"),
            server.ping(peer_id, timeout=None),
            server.list_peers(peer_id, timeout=None),
            server.disconnect(peer_id),
        ]
        for call in calls:
            with pytest.raises(ServerClosed) as info:
                await asyncio.wait_for(call, BOUND)
            assert info.value.code == "shutdown" and "stopped" in str(info.value)
        for sync_call in (lambda: server.request_peers(peer_id), server.events, server.messages):
            with pytest.raises(ServerClosed):
                sync_call()
        # A stopped node schedules nothing, even if something pokes the engine directly.
        node, endpoint = server.node, server._endpoint
        fired = 0
        original = node.handle_timer

        def counting(now: float) -> None:
            nonlocal fired
            fired += 1
            original(now)

        node.handle_timer = counting  # type: ignore[method-assign]
        node._pending_connects.clear()
        node._connect_at = node._next_timer = 0.0  # what a late connect() used to leave behind
        endpoint.flush()
        await asyncio.sleep(0.2)
        assert endpoint._timer is None and fired == 0


@on_uvloop
async def test_restart_after_stop_is_a_fresh_node_on_the_same_config_and_id():
    got: list = []
    async with P2PServer(config()) as client:
        server = P2PServer(config(), on_data=got.append)
        await server.start()
        first_id = server.node_id
        first_node = server.node
        await client.connect_to_peer(server.local_address)
        await client.send(first_id, "before")
        await server.stop()
        await until(lambda: first_id not in client.peers)  # it said Disconnect
        await server.start()  # not "server already started"
        assert server.running and server.node is not first_node and server.node_id == first_id
        assert server.get_stats().delivered == 0  # fresh counters
        await client.connect_to_peer(server.local_address)
        await client.send(first_id, "after")
        await until(lambda: len(got) == 2)
        assert [m.payload for m in got] == ["before", "after"]
        with pytest.raises(RuntimeError, match="already running"):
            await server.start()
        await server.stop()
        await server.stop()  # idempotent


@on_uvloop
async def test_stop_fails_every_waiter_promptly_and_ends_the_streams():
    async with P2PServer(config()) as peer:
        server = P2PServer(config(rto_initial=5.0))
        await server.start()
        relay = Relay(peer.local_address)
        await relay.start()
        sink = _silent_udp()
        try:
            await server.connect_to_peer(relay.addr)
            relay.rule = lambda direction, kind: "drop"  # the path goes silent
            inbox = server.messages()
            events = server.events()
            waiting = {
                "ping": asyncio.ensure_future(server.ping(peer.node_id, timeout=None)),
                "ping5": asyncio.ensure_future(server.ping(peer.node_id, timeout=30)),
                "list": asyncio.ensure_future(server.list_peers(peer.node_id, timeout=30)),
                "send": asyncio.ensure_future(server.send(peer.node_id, "lost")),
                "connect": asyncio.ensure_future(
                    server.connect_to_peer(sink.getsockname(), timeout=30)
                ),
                "messages": asyncio.ensure_future(inbox.__anext__()),
                "events": asyncio.ensure_future(_collect(events)),
            }
            await asyncio.sleep(0.2)
            assert not any(t.done() for t in waiting.values())
            await asyncio.wait_for(server.stop(), BOUND)
            _, pending = await asyncio.wait(waiting.values(), timeout=BOUND)
            assert not pending
            for name in ("ping", "ping5", "list", "connect"):
                exc = waiting[name].exception()
                assert isinstance(exc, ServerClosed), (name, exc)
            send_exc = waiting["send"].exception()
            assert isinstance(send_exc, SendError) and send_exc.reason == "shutdown"
            assert isinstance(send_exc, ServerClosed)
            assert isinstance(waiting["messages"].exception(), StopAsyncIteration)
            seen = waiting["events"].result()
            assert sorted((type(e).__name__, getattr(e, "code", e.reason)) for e in seen) == [
                ("ConnectFailed", "shutdown"),
                ("PeerDisconnected", "shutdown"),
                ("SendFailed", "shutdown"),
            ]
        finally:
            relay.close()
            sink.close()


async def _collect(stream) -> list:
    return [event async for event in stream]


@on_uvloop
async def test_async_for_over_messages_ends_at_stop_after_what_was_received():
    async with P2PServer(config()) as client:
        server = P2PServer(config())
        inbox = server.messages()  # before start: delivery begins with start
        await server.start()
        await client.connect_to_peer(server.local_address)
        for i in range(3):
            await client.send(server.node_id, i)
        await server.stop()
        received = [m.payload async for m in inbox]  # ends, as a stream at EOF
        assert received == [0, 1, 2]


@on_uvloop
async def test_cancelling_run_stops_the_server_and_tells_peers():
    async with P2PServer(config()) as client:
        server = P2PServer(config())
        serving = asyncio.ensure_future(server.run())
        await until(lambda: server.running)
        port = server.local_address[1]
        await client.connect_to_peer(server.local_address)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.running
        await until(lambda: server.node_id not in client.peers)  # Disconnect was sent
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", port))  # the socket is closed


def test_a_loop_shutting_down_under_a_running_server_stops_it_cleanly(recwarn):
    """asyncio.run cancels every task at the end: a server left running is stopped (peers
    told, socket closed), with no 'Event loop is closed' noise or unclosed transport."""
    seen: list = []

    async def outer() -> None:
        async with P2PServer(config()) as watcher:
            events = watcher.events()
            result: dict = {}

            def inner_thread() -> None:
                async def inner() -> None:
                    left_running = P2PServer(config())
                    await left_running.start()
                    result["id"] = await left_running.connect_to_peer(watcher.local_address)
                    result["self"] = left_running.node_id
                    result["port"] = left_running.local_address[1]

                run(inner())  # returns without stop()

            thread = threading.Thread(target=inner_thread)
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
            async for event in events:
                seen.append(event)
                if type(event).__name__ == "PeerDisconnected":
                    break
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
                again.bind(("127.0.0.1", result["port"]))

    run(asyncio.wait_for(outer(), 30))
    assert [type(e).__name__ for e in seen] == ["PeerConnected", "PeerDisconnected"]
    assert seen[1].reason == "disconnect"
    assert not [w for w in recwarn if "unclosed" in str(w.message).lower()]


def test_a_server_is_bound_to_the_loop_that_started_it():
    ready = threading.Event()
    holder: dict = {}
    loop = new_event_loop()

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            server = P2PServer(config())
            await server.start()
            holder["server"] = server
            holder["stop"] = asyncio.Event()
            ready.set()
            await holder["stop"].wait()
            await server.stop()

        loop.run_until_complete(main())

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(10)
        server = holder["server"]

        async def elsewhere() -> None:
            for call in (
                lambda: server.ping("4b1bfa44-87cb-44de-a11e-b0d648397b65", timeout=5),
                lambda: server.connect_to_peer("127.0.0.1:9", timeout=5),
                lambda: server.send("4b1bfa44-87cb-44de-a11e-b0d648397b65", "x"),
                lambda: server.stop(),
            ):
                with pytest.raises(RuntimeError, match="bound to the event loop"):
                    await asyncio.wait_for(call(), BOUND)
            with pytest.raises(RuntimeError, match="bound to the event loop"):
                server.request_peers("4b1bfa44-87cb-44de-a11e-b0d648397b65")
            with pytest.raises(RuntimeError, match="bound to the event loop"):
                server.events()

        run(elsewhere())
        assert server.running  # nothing happened to it
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
        loop.close()
    assert not thread.is_alive() and not holder["server"].running


def test_a_server_whose_loop_closed_raises_at_once_and_stops_quietly(recwarn):
    loop = new_event_loop()
    server = P2PServer(config())
    loop.run_until_complete(server.start())
    loop.close()  # without stop(): the caller's mistake

    async def later() -> None:
        with pytest.raises(RuntimeError, match="event loop is closed"):
            await asyncio.wait_for(server.ping("4b1bfa44-87cb-44de-a11e-b0d648397b65"), BOUND)
        await server.stop()  # releases what it can, no "Event loop is closed" error
        assert not server.running
        with pytest.raises(ServerClosed):
            await server.send("4b1bfa44-87cb-44de-a11e-b0d648397b65", "x")

    run(later())


@on_uvloop
async def test_every_timeout_is_the_builtin_timeout_error_naming_what_and_how_long():
    sink = _silent_udp()
    async with (
        P2PServer(config(rto_initial=5.0, send_window=1)) as server,
        P2PServer(config()) as peer,
    ):
        relay = Relay(peer.local_address)
        await relay.start()
        try:
            await server.connect_to_peer(relay.addr)
            relay.rule = lambda direction, kind: "drop"
            where = f"127.0.0.1:{sink.getsockname()[1]}"
            cases = [
                (server.connect_to_peer(sink.getsockname(), timeout=0.3), where),
                (server.connect_to_peer(where, timeout=0.3), where),
                (server.ping(peer.node_id, timeout=0.3), peer.node_id),
                (server.list_peers(peer.node_id, timeout=0.3), peer.node_id),
                (server.send(peer.node_id, "unacked", timeout=0.3), peer.node_id),
                # the window (1) is now full: this one times out waiting for room
                (server.send(peer.node_id, "no room", timeout=0.3), peer.node_id),
            ]
            for call, named in cases:
                with pytest.raises(TimeoutError) as info:  # the builtin, on every version
                    await asyncio.wait_for(call, BOUND)
                exc = info.value
                assert isinstance(exc, P2PTimeout) and exc.code == "timeout"
                assert named in str(exc) and "0.3 s" in str(exc), str(exc)
                assert exc.waited == pytest.approx(0.3)
            assert not server._pings and not server._lists and not server._connects
        finally:
            relay.close()
            sink.close()


@on_uvloop
async def test_timeouts_must_be_positive_numbers():
    async with P2PServer(config()) as server:
        for bad in (0, -1, "5", True):
            with pytest.raises(ValueError, match="timeout"):
                await server.connect_to_peer("127.0.0.1:9", timeout=bad)  # type: ignore[arg-type]


_CTRL_C_SCRIPT = """
import sys
from p2pfast import Config, P2PServer
from p2pfast.server import run

server = P2PServer(Config(listen_address="127.0.0.1:0", network_id="api",
                          enable_discovery=False))

async def main():
    await server.start()
    print(server.local_address[1], flush=True)
    await server.run()

try:
    run(main())
except KeyboardInterrupt:
    print("interrupted", "running" if server.running else "stopped", flush=True)
"""


@needs_posix_signals
@on_uvloop
async def test_ctrl_c_under_run_stops_the_server_and_tells_peers(python_exe):
    import signal
    import subprocess

    proc = subprocess.Popen(
        [python_exe, "-c", _CTRL_C_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 20)
        port = int(line)
        async with P2PServer(config()) as watcher:
            events = watcher.events()
            peer_id = await watcher.connect_to_peer(("127.0.0.1", port))
            proc.send_signal(signal.SIGINT)
            async for event in events:
                if isinstance(event, p2pfast.PeerDisconnected):
                    assert event.node_id == peer_id and event.reason == "disconnect"
                    break
        out, err = await loop.run_in_executor(None, proc.communicate, None, 20)
        assert proc.returncode == 0, err
        assert out.strip() == "interrupted stopped"
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
