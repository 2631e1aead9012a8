"""What a library user sees: refusals in English with a ``code``, addresses parsed with hints
and resolved without blocking, SendError text, typed results, peer lifecycle events, every
exception importable from ``p2pfast``, documented public methods, no leaked futures."""

from __future__ import annotations

import asyncio
import inspect
import pydoc
import socket

import pytest

import p2pfast
from p2pfast import (
    AddressError,
    ConnectError,
    ConnectFailed,
    ConnectRefused,
    NodeInfo,
    P2PError,
    P2PServer,
    P2PTimeout,
    PeerConnected,
    PeerDisconnected,
    PeerInfo,
    SendError,
    SendFailed,
    ServerClosed,
    ServerStats,
)
from p2pfast.addr import parse_addr
from p2pfast.server import EventStream, MessageStream, _connect_error

from .apiutil import Relay, config, message_type, until
from .helpers import envelope
from .netutil import on_uvloop

UNKNOWN = "4b1bfa44-87cb-44de-a11e-b0d648397b65"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# -- refusals ----------------------------------------------------------------------------


@on_uvloop
async def test_network_mismatch_is_refused_in_english_with_a_code_and_the_peer_words():
    async with P2PServer(config()) as server, P2PServer(config(network_id="other")) as client:
        with pytest.raises(ConnectionRefusedError) as info:
            await client.connect_to_peer(server.local_address)
        exc = info.value
        assert isinstance(exc, ConnectRefused) and isinstance(exc, P2PError)
        assert exc.code == "network_mismatch"
        assert exc.address == server.local_address
        text = str(exc)
        assert text.isascii() and "network" in text and "127.0.0.1" in text, text
        assert "网络ID不匹配" in exc.peer_text  # the Rust server's words, kept for who wants them


@on_uvloop
async def test_server_full_and_node_id_taken_are_refusals_with_their_code():
    async with (
        P2PServer(config(max_connections=1)) as server,
        P2PServer(config()) as first,
        P2PServer(config()) as second,
    ):
        await first.connect_to_peer(server.local_address)
        with pytest.raises(ConnectRefused) as info:
            await second.connect_to_peer(server.local_address)
        assert info.value.code == "server_full" and str(info.value).isascii()
    fixed = "0b9c2d44-87cb-44de-a11e-b0d648397b65"
    async with (
        P2PServer(config()) as server,
        P2PServer(config(node_id=fixed)) as first,
        P2PServer(config(node_id=fixed)) as twin,
    ):
        await first.connect_to_peer(server.local_address)
        with pytest.raises(ConnectRefused) as info:
            await twin.connect_to_peer(server.local_address)
        assert info.value.code == "node_id_taken" and str(info.value).isascii()


class _RefusingPeer(asyncio.DatagramProtocol):
    """Answers every HandshakeRequest with an Error carrying ``text`` and ``code``."""

    def __init__(self, text: str, code: str | None) -> None:
        self.text, self.code = text, code

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if message_type(data) == "HandshakeRequest":
            payload = {"error": self.text}
            if self.code is not None:
                payload["code"] = self.code
            self.transport.sendto(envelope("Error", payload), addr)


@pytest.mark.parametrize(
    ("text", "code", "expected"),
    [
        ("无效的节点信息", "invalid_node_info", "invalid_node_info"),
        ("服务器已满", "server_full", "server_full"),
        ("某种新的拒绝", None, "refused"),
        ("another refusal", "not_a_known_code", "refused"),
    ],
)
@on_uvloop
async def test_a_refusal_from_the_wire_keeps_its_code_and_the_peer_words(text, code, expected):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _RefusingPeer(text, code), local_addr=("127.0.0.1", 0)
    )
    try:
        async with P2PServer(config()) as client:
            with pytest.raises(ConnectRefused) as info:
                await client.connect_to_peer(transport.get_extra_info("sockname")[:2])
            exc = info.value
            assert exc.code == expected and exc.peer_text == text
            assert str(exc).isascii() and f"[{expected}]" in str(exc)
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("network_mismatch", ConnectRefused),
        ("server_full", ConnectRefused),
        ("node_id_taken", ConnectRefused),
        ("invalid_node_info", ConnectRefused),
        ("refused", ConnectRefused),
        ("handshake_required", ConnectRefused),
        ("something_new", ConnectRefused),
        ("timeout", P2PTimeout),
        ("shutdown", ServerClosed),
        ("busy", ConnectError),
        ("family", ConnectError),
    ],
)
def test_every_connect_failure_code_maps_to_a_typed_exception(code, kind):
    event = ConnectFailed(("127.0.0.1", 9400), "reason in English", code, "原话")
    exc = _connect_error(event, 3.0)
    assert type(exc) is kind
    assert "127.0.0.1:9400" in str(exc)
    if kind is ConnectRefused:
        assert exc.code == ("refused" if code == "something_new" else code)
        assert exc.peer_text == "原话" and exc.reason == "reason in English"
        assert exc.address == ("127.0.0.1", 9400)
    if kind is P2PTimeout:
        assert "3 s" in str(exc) and isinstance(exc, TimeoutError)


# -- addresses ---------------------------------------------------------------------------


def test_an_ipv6_address_without_brackets_gets_the_hint():
    with pytest.raises(AddressError, match=r"written \[::1\]:9301"):
        parse_addr("::1:9301")
    with pytest.raises(ValueError, match="host name"):
        parse_addr("localhost:9300")
    with pytest.raises(p2pfast.ConfigError, match=r"\[::1\]:9301"):
        config(listen_address="::1:9301")  # the same one line the CLI prints


@on_uvloop
async def test_tuple_addresses_are_validated_at_once():
    async with P2PServer(config()) as server:
        for bad in (
            ("127.0.0.1", "p"),
            ("127.0.0.1",),
            ("", 5),
            ("127.0.0.1", 70000),
            ("127.0.0.1", True),
            12,
            "127.0.0.1",
            "127.0.0.1:",
        ):
            with pytest.raises(AddressError):
                await asyncio.wait_for(server.connect_to_peer(bad, timeout=5), 1)  # type: ignore[arg-type]
        assert not server.node._pending_connects and not server._connects


@on_uvloop
async def test_host_names_are_resolved_asynchronously():
    async with P2PServer(config()) as server, P2PServer(config()) as client:
        port = server.local_address[1]
        resolved: list = []
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def spy(*args, **kwargs):
            resolved.append(args[0])
            return await real(*args, **kwargs)

        loop.getaddrinfo = spy  # type: ignore[method-assign]
        try:
            assert await client.connect_to_peer(f"localhost:{port}") == server.node_id
            await client.disconnect(server.node_id)
            assert await client.connect_to_peer(("localhost", port)) == server.node_id
        finally:
            del loop.getaddrinfo
        assert resolved == ["localhost", "localhost"]


@on_uvloop
async def test_an_unresolvable_name_is_a_clear_error(monkeypatch):
    async with P2PServer(config()) as client:
        loop = asyncio.get_running_loop()

        async def fail(*args, **kwargs):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(loop, "getaddrinfo", fail)
        with pytest.raises(AddressError) as info:
            await client.connect_to_peer("no-such-host.invalid:9400")
        assert info.value.code == "unresolved" and "no-such-host.invalid" in str(info.value)


@on_uvloop
async def test_an_ipv4_node_asked_for_an_ipv6_peer_fails_at_once():
    async with P2PServer(config()) as client:
        with pytest.raises(ConnectError) as info:
            await asyncio.wait_for(client.connect_to_peer("[::1]:9301", timeout=10), 1)
        assert info.value.code == "family" and "IPv4" in str(info.value)
        assert "[::1]:9301" in str(info.value)


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@on_uvloop
async def test_an_ipv6_node_asked_for_an_ipv4_peer_fails_at_once():
    async with P2PServer(config(listen_address="[::1]:0")) as client:
        with pytest.raises(ConnectError) as info:
            await asyncio.wait_for(client.connect_to_peer(("127.0.0.1", 9), timeout=10), 1)
        assert info.value.code == "family" and "IPv6" in str(info.value)


# -- send errors -------------------------------------------------------------------------


@on_uvloop
async def test_send_error_text_does_not_repeat_its_reason():
    async with P2PServer(config()) as server, P2PServer(config()) as client:
        await client.connect_to_peer(server.local_address)
        with pytest.raises(SendError) as info:
            await client.send(server.node_id, "x" * (1024 * 1024 + 1))
        assert info.value.reason == info.value.code == "too_large"
        assert "too_large" not in str(info.value) and str(info.value)
        with pytest.raises(SendError) as info:
            await client.send(UNKNOWN, "x")
        assert info.value.reason == "no_route" and UNKNOWN in str(info.value)
        assert "no_route" not in str(info.value)
    assert str(SendError("too_large", "too_large: too_large: 1 MiB")) == "1 MiB"


# -- typed results -----------------------------------------------------------------------


@on_uvloop
async def test_peers_list_peers_and_stats_are_documented_dataclasses():
    async with (
        P2PServer(config()) as hub,
        P2PServer(config(node_name="alice")) as alice,
        P2PServer(config(node_name="bob")) as bob,
    ):
        await alice.connect_to_peer(hub.local_address)
        await bob.connect_to_peer(hub.local_address)
        peers = hub.peers
        assert set(peers) == {alice.node_id, bob.node_id}
        entry = peers[alice.node_id]
        assert isinstance(entry, PeerInfo) and entry.address == alice.local_address
        assert isinstance(entry.node_info, NodeInfo) and entry.node_info.name == "alice"
        assert entry.node_info.listen_addr == alice.local_address
        assert isinstance(entry.last_seen, int)
        listed = await alice.list_peers(hub.node_id)
        assert [type(p) for p in listed] == [PeerInfo] and listed[0].node_id == bob.node_id
        assert listed[0].address == bob.local_address
        full = await alice.list_peers(hub.node_id, full_info=True)
        assert {type(n) for n in full} == {NodeInfo}
        assert {n.name for n in full} == {"alice", "bob"}
        assert isinstance(hub.get_stats(), ServerStats)
        host, port = hub.local_address
        assert isinstance(host, str) and isinstance(port, int)  # the form connect_to_peer takes


# -- events ------------------------------------------------------------------------------


@on_uvloop
async def test_events_and_on_event_see_the_peer_lifecycle_in_order():
    callback: list = []
    async with P2PServer(config(), on_event=callback.append) as watcher:
        stream = watcher.events()
        async with P2PServer(config()) as peer:
            await watcher.connect_to_peer(peer.local_address)
            async with P2PServer(config(network_id="other")) as stranger:
                with pytest.raises(ConnectRefused):
                    await watcher.connect_to_peer(stranger.local_address)
        lifecycle = (PeerConnected, ConnectFailed, PeerDisconnected)
        await until(lambda: sum(isinstance(e, lifecycle) for e in callback) >= 3)
        seen = []
        while len(seen) < len(callback):
            seen.append(await asyncio.wait_for(stream.__anext__(), 5))
        assert callback == seen  # the callback and the stream see the same, in order
        seen = [e for e in seen if isinstance(e, lifecycle)]
        assert [type(e) for e in seen] == [PeerConnected, ConnectFailed, PeerDisconnected]
        assert seen[0].node_id == seen[2].node_id and seen[2].reason == "disconnect"
        assert seen[1].code == "network_mismatch" and seen[1].reason.isascii()
    assert [e async for e in stream] == []  # ended at stop
    assert isinstance(stream, EventStream)


@on_uvloop
async def test_a_failed_send_is_an_event_too():
    async with (
        P2PServer(config(max_retries=1, rto_initial=0.05, rto_min=0.05)) as server,
        P2PServer(config()) as peer,
    ):
        relay = Relay(peer.local_address)
        await relay.start()
        try:
            await server.connect_to_peer(relay.addr)
            events = server.events()
            relay.rule = lambda direction, kind: "drop"
            with pytest.raises(SendError) as info:
                await server.send(peer.node_id, "lost", timeout=10)
            assert info.value.reason == "timeout" and peer.node_id in str(info.value)
            kinds = []
            while not any(isinstance(e, SendFailed) for e in kinds):
                kinds.append(await asyncio.wait_for(events.__anext__(), 5))
            failed = next(e for e in kinds if isinstance(e, SendFailed))
            assert failed.reason == "timeout"
        finally:
            relay.close()


# -- the public surface ------------------------------------------------------------------


def test_every_exception_is_importable_from_the_package():
    from p2pfast import errors
    from p2pfast.server import BindError as FromServer

    for name in errors.__all__:
        assert getattr(p2pfast, name) is getattr(errors, name)
        assert name in p2pfast.__all__
    assert FromServer is p2pfast.BindError
    for name in (
        "P2PServer",
        "Config",
        "NodeInfo",
        "PeerInfo",
        "PeerConnected",
        "PeerDisconnected",
        "ConnectFailed",
        "SendFailed",
        "DataReceived",
    ):
        assert name in p2pfast.__all__


def test_help_shows_the_server_the_config_and_the_events():
    text = pydoc.plain(pydoc.render_doc(p2pfast))
    for name in (
        "P2PServer",
        "Config",
        "PeerConnected",
        "PeerDisconnected",
        "ConnectFailed",
        "DataReceived",
        "ServerClosed",
        "BindError",
    ):
        assert f"class {name}(" in text, name


@pytest.mark.parametrize("cls", [P2PServer, MessageStream, EventStream])
def test_every_public_method_has_a_docstring(cls):
    missing = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_"):
            continue  # dunders are documented on the class
        if (callable(member) or isinstance(member, property)) and not (
            inspect.getdoc(member) or ""
        ).strip():
            missing.append(name)
    assert missing == [] and inspect.getdoc(cls)


# -- no leaks ----------------------------------------------------------------------------


@on_uvloop
async def test_calls_that_fail_at_once_leave_nothing_behind():
    async with P2PServer(config()) as server:
        for _ in range(1000):
            with pytest.raises(SendError):
                await server.ping(UNKNOWN)
            with pytest.raises(SendError):
                await server.list_peers(UNKNOWN)
            with pytest.raises(SendError):
                server.request_peers(UNKNOWN)
        assert not server._pings and not server._lists and not server._sends
