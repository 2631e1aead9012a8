"""Delivery to the application: backpressure instead of silent drops, bounded and ordered
handlers that stop() cancels, no nested delivery, one messages() consumer, no echo unless
asked, and what disconnect() guarantees when it returns."""

from __future__ import annotations

import asyncio

import pytest

from p2pfast import P2PServer, SendError

from .apiutil import Relay, config, until
from .netutil import on_uvloop


@on_uvloop
async def test_a_full_queue_withholds_acks_instead_of_dropping_acknowledged_data():
    """max_queued_messages=5 and a consumer that reads late: the sender's sends wait (the
    receiver does not ack what its application has no room for), nothing is lost."""
    fast = dict(rto_initial=0.1, rto_min=0.05, rto_max=0.5, max_retries=100)
    async with (
        P2PServer(config(**fast), max_queued_messages=5) as server,
        P2PServer(config(**fast)) as client,
    ):
        inbox = server.messages()
        await client.connect_to_peer(server.local_address)
        sends = [asyncio.ensure_future(client.send(server.node_id, n)) for n in range(20)]
        await asyncio.sleep(1.0)  # several retransmission rounds with nobody reading
        held = len(server._inbox)
        acked = sum(s.done() for s in sends)
        assert held <= 5, f"the application holds {held} messages, more than its queue"
        assert acked <= 5, f"{acked} sends resolved while the receiver had room for 5"
        got = []
        async for msg in inbox:
            got.append(msg.payload)
            if len(got) == 20:
                break
        await asyncio.wait_for(asyncio.gather(*sends), 20)  # all acked once consumed
        assert got == list(range(20))  # each once, in order
        assert server.get_stats().delivered == 20


@on_uvloop
async def test_unreliable_data_beyond_the_queue_is_dropped_and_counted():
    async with P2PServer(config(), max_queued_messages=5) as server, P2PServer(config()) as client:
        inbox = server.messages()
        await client.connect_to_peer(server.local_address)
        for n in range(20):
            await client.send(server.node_id, n, reliable=False)
        await until(lambda: server.get_stats().rejected.get("app_busy", 0) >= 1)
        await asyncio.sleep(0.2)
        busy = server.get_stats().rejected.get("app_busy", 0)
        got = [m.payload for m in [await inbox.__anext__() for _ in range(len(server._inbox))]]
        assert got == list(range(len(got))) and len(got) <= 5
        assert len(got) + busy == 20


@on_uvloop
async def test_max_queued_messages_zero_means_unbounded():
    async with P2PServer(config(), max_queued_messages=0) as server, P2PServer(config()) as client:
        inbox = server.messages()
        await client.connect_to_peer(server.local_address)
        await asyncio.gather(*(client.send(server.node_id, n) for n in range(50)))
        got = [(await inbox.__anext__()).payload for _ in range(50)]
        assert sorted(got) == list(range(50))


@pytest.mark.parametrize("concurrency", [1, 3])
@on_uvloop
async def test_async_handlers_are_bounded_ordered_and_cancelled_by_stop(concurrency):
    running = 0
    peak = 0
    started: list = []
    cancelled: list = []
    gate = asyncio.Event()

    async def slow(msg) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        started.append(msg.payload)
        try:
            await gate.wait()
            await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            cancelled.append(msg.payload)
            raise
        finally:
            running -= 1

    server = P2PServer(config(), on_data=slow, handler_concurrency=concurrency)
    await server.start()
    async with P2PServer(config()) as client:
        await client.connect_to_peer(server.local_address)
        for n in range(200):
            await client.send(server.node_id, n, reliable=False)
        await until(lambda: len(started) == concurrency)
        await asyncio.sleep(0.1)
        assert peak == concurrency and started == list(range(concurrency))
        gate.set()
        await until(lambda: len(started) >= 100)
        gate.clear()
        await until(lambda: running == concurrency)
        assert peak == concurrency
        assert started == sorted(started)  # started in arrival order
        ours = list(server._tasks)
        assert len(ours) == concurrency + 1  # the handler slots and the shutdown guard
        await server.stop()
        assert len(cancelled) == concurrency  # the running ones were cancelled...
        assert all(t.done() for t in ours)  # ...and awaited: nothing is left pending


@on_uvloop
async def test_delivery_never_nests_inside_a_handler():
    depth = 0
    deepest = 0
    order: list = []
    server: P2PServer

    def handler(msg) -> None:
        nonlocal depth, deepest
        depth += 1
        deepest = max(deepest, depth)
        order.append(msg.payload)
        server.request_peers(msg.source)  # flushes the engine: used to deliver the next here
        depth -= 1

    server = P2PServer(config(), on_data=handler)
    async with server, P2PServer(config()) as client:
        await client.connect_to_peer(server.local_address)
        await asyncio.gather(*(client.send(server.node_id, n) for n in range(64)))
        await until(lambda: len(order) == 64)
        assert deepest == 1
        assert order == list(range(64))


@on_uvloop
async def test_a_handler_error_is_logged_and_delivery_goes_on(caplog):
    got: list = []

    def handler(msg) -> None:
        if msg.payload == 1:
            raise ValueError("application bug")
        got.append(msg.payload)

    async with P2PServer(config(), on_data=handler) as server, P2PServer(config()) as client:
        await client.connect_to_peer(server.local_address)
        for n in range(3):
            await client.send(server.node_id, n)
        await until(lambda: len(got) == 2)
        assert got == [0, 2]
        assert "on_data handler failed" in caplog.text


@on_uvloop
async def test_messages_has_one_consumer_at_a_time():
    async with P2PServer(config()) as server, P2PServer(config()) as client:
        first = server.messages()
        with pytest.raises(RuntimeError, match="already has an open stream"):
            server.messages()
        await client.connect_to_peer(server.local_address)
        for n in range(4):
            await client.send(server.node_id, n)
        assert (await first.__anext__()).payload == 0
        await first.aclose()
        second = server.messages()  # after close: allowed, and nothing was lost
        assert [(await second.__anext__()).payload for _ in range(3)] == [1, 2, 3]
        del second
        async with server.messages() as third:  # a dropped stream frees the slot too
            await client.send(server.node_id, 4)
            assert (await third.__anext__()).payload == 4


@on_uvloop
async def test_messages_is_refused_when_an_on_data_handler_takes_the_data():
    async with P2PServer(config(), on_data=lambda m: None) as server:
        with pytest.raises(RuntimeError, match="on_data"):
            server.messages()


@on_uvloop
async def test_a_library_node_does_not_echo_unless_asked():
    async with P2PServer(config()) as quiet, P2PServer(config()) as sender:
        inbox = sender.messages()
        await sender.connect_to_peer(quiet.local_address)
        await sender.send(quiet.node_id, {"hello": 1})
        await asyncio.sleep(0.3)
        assert quiet.get_stats().echoed == 0 and len(sender._inbox) == 0
    async with P2PServer(config(), echo=True) as echoing, P2PServer(config()) as sender:
        inbox = sender.messages()
        await sender.connect_to_peer(echoing.local_address)
        await sender.send(echoing.node_id, {"hello": 2})
        reply = await asyncio.wait_for(inbox.__anext__(), 5)
        assert reply.payload["echo"] == {"hello": 2}
        assert echoing.get_stats().echoed == 1


@on_uvloop
async def test_two_default_library_nodes_never_echo_each_other():
    async with P2PServer(config()) as a, P2PServer(config()) as b:
        await a.connect_to_peer(b.local_address)
        await a.send(b.node_id, "hi", reliable=False)
        await b.send(a.node_id, "hi", reliable=False)
        await asyncio.sleep(0.3)
        for node in (a, b):
            stats = node.get_stats()
            assert stats.echoed == 0 and stats.messages_received.get("Data", 0) == 1


@on_uvloop
async def test_disconnect_returns_once_pending_sends_have_failed():
    async with P2PServer(config()) as peer, P2PServer(config(rto_initial=5.0)) as server:
        relay = Relay(peer.local_address)
        await relay.start()
        try:
            await server.connect_to_peer(relay.addr)
            relay.rule = lambda direction, kind: "drop"  # the send stays unacked
            pending = asyncio.ensure_future(server.send(peer.node_id, "never acked"))
            await asyncio.sleep(0.05)
            assert not pending.done()
            await server.disconnect(peer.node_id)
            assert pending.done()
            assert isinstance(pending.exception(), SendError)
            assert pending.exception().reason == "peer_gone"
            assert peer.node_id not in server.peers
        finally:
            relay.close()
        # The rule: calls that may wait are coroutines; request_peers() never waits.
        assert asyncio.iscoroutinefunction(server.disconnect)
        assert not asyncio.iscoroutinefunction(server.request_peers)


@on_uvloop
async def test_a_handler_may_stop_the_server_and_on_event_sees_the_shutdown():
    seen: list = []
    stopped = asyncio.Event()
    server: P2PServer

    async def handler(msg) -> None:
        await server.stop()  # from inside a handler: no deadlock, no self-cancellation
        stopped.set()

    async def on_event(event) -> None:
        await asyncio.sleep(0.01)  # a slow async callback still sees everything
        seen.append((type(event).__name__, getattr(event, "reason", None)))

    server = P2PServer(config(), on_data=handler, on_event=on_event)
    await server.start()
    async with P2PServer(config()) as client:
        await client.connect_to_peer(server.local_address)
        await client.send(server.node_id, "please stop")
        await asyncio.wait_for(stopped.wait(), 5)
        assert not server.running
        assert ("PeerDisconnected", "shutdown") in seen
        assert seen[0][0] == "PeerConnected"


@on_uvloop
async def test_data_that_arrives_before_messages_is_called_is_not_lost():
    async with P2PServer(config()) as server, P2PServer(config()) as client:
        await client.connect_to_peer(server.local_address)
        for n in range(3):
            await client.send(server.node_id, n)  # acknowledged: the server's queue holds it
        assert server.get_stats().echoed == 0
        inbox = server.messages()
        assert [(await inbox.__anext__()).payload for _ in range(3)] == [0, 1, 2]


@on_uvloop
async def test_a_node_without_an_application_counts_and_drops_until_messages_is_called():
    """queue_data=False (p2pfast-server --no-echo): no queue grows and the sender is never
    held back; delivery starts with messages()."""
    async with (
        P2PServer(config(), queue_data=False, max_queued_messages=5) as server,
        P2PServer(config()) as client,
    ):
        await client.connect_to_peer(server.local_address)
        await asyncio.wait_for(
            asyncio.gather(*(client.send(server.node_id, n) for n in range(20))), 10
        )  # all acknowledged though nothing reads: nobody was going to
        stats = server.get_stats()
        assert stats.delivered == 20 and stats.echoed == 0 and server._inbox is None
        inbox = server.messages()
        await client.send(server.node_id, "now")
        assert (await asyncio.wait_for(inbox.__anext__(), 5)).payload == "now"
