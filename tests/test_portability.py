"""The Windows code paths, exercised on any platform: stopping on SIGINT/SIGTERM where the
event loop cannot watch signals, the standard asyncio loop where uvloop is absent, the
transport sending every datagram where there is no ``sendmmsg``, and the bench and simulator
without the ``resource`` module."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

import p2pfast.endpoint
import p2pfast.server
from p2pfast import Config, P2PServer
from p2pfast.bench.cli import raise_nofile
from p2pfast.cli import STOP_SIGNALS, stop_on_signals
from p2pfast.protocol import MessageType as T
from p2pfast.sim.report import peak_rss_mib

from .helpers import handshake
from .netutil import READY, SeedClient, needs_posix_signals


class WindowsLikeLoop(asyncio.SelectorEventLoop):
    """asyncio's loop as on Windows in the one way that matters here: no signal handlers."""

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError


def _handlers() -> dict[int, Any]:
    return {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stop_signals_reach_the_loop_through_signal_signal_where_it_cannot_watch_them(sig):
    before = _handlers()
    loop = WindowsLikeLoop()
    try:

        async def scenario() -> None:
            stop = asyncio.Event()
            restore = stop_on_signals(loop, stop.set)
            try:
                installed = _handlers()
                # Our handler, not the default (which would end this test process).
                assert all(callable(h) and h is not before[s] for s, h in installed.items())
                signal.raise_signal(sig)
                await asyncio.wait_for(stop.wait(), 5)
            finally:
                restore()

        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert _handlers() == before, "the previous handlers are put back"


def test_a_signal_after_the_loop_closed_is_ignored():
    before = _handlers()
    loop = WindowsLikeLoop()
    calls: list[int] = []
    restore = stop_on_signals(loop, lambda: calls.append(1))
    try:
        loop.close()
        signal.raise_signal(signal.SIGTERM)  # call_soon_threadsafe on a closed loop: no error
    finally:
        restore()
    assert calls == [] and _handlers() == before


def test_where_the_loop_watches_signals_it_does_and_nothing_process_wide_is_left():
    if sys.platform == "win32":
        pytest.skip("Windows' event loops cannot watch signals (the fallback tests cover it)")
    loop = asyncio.new_event_loop()
    try:

        async def scenario() -> None:
            stop = asyncio.Event()
            restore = stop_on_signals(loop, stop.set)
            try:
                signal.raise_signal(signal.SIGTERM)
                await asyncio.wait_for(stop.wait(), 5)
            finally:
                restore()
                for sig in STOP_SIGNALS:
                    assert loop.remove_signal_handler(sig), "the loop held the handler"

        loop.run_until_complete(scenario())
    finally:
        loop.close()


_WINDOWS_LIKE_SERVER = """
import asyncio, sys
import p2pfast.server

class WindowsLikeLoop(asyncio.SelectorEventLoop):
    def add_signal_handler(self, sig, callback, *args):
        raise NotImplementedError

p2pfast.server.new_event_loop = WindowsLikeLoop
from p2pfast.cli import main
main(sys.argv[1:])
"""


@needs_posix_signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_server_stops_cleanly_on_a_loop_without_signal_handlers(sig):
    """p2pfast-server as on Windows (asyncio's loop, ``add_signal_handler`` refused): a signal
    still disconnects every peer and exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WINDOWS_LIKE_SERVER, "-a", "127.0.0.1:0", "--disable-discovery"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = None
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        match = None
        lines: list[str] = []
        while match is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = READY.search(line)
        assert match is not None, "".join(lines)
        client = SeedClient((match.group(1), int(match.group(2))))
        data, _, _ = handshake("windows-like", network_id="p2p_default")
        client.send(data)
        client.prove(client.recv_type(T.HandshakeResponse))
        time.sleep(0.1)
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        assert client.recv_type(T.Disconnect).payload == {"reason": "shutdown"}
        err = proc.stderr.read()
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert "Traceback" not in err, err
    assert "stopped: sent Disconnect to 1 peers" in err, err


class _NoBatch:
    """The compiled BatchSender as built for Windows: it takes no datagram, so the event
    loop's transport sends every one (the portable send path)."""

    calls = 0
    blocked = False
    errors = 0
    syscalls = 0

    def __init__(self, fd: int, family: int) -> None:
        pass

    def send(self, items: list[Any], start: int = 0) -> int:
        _NoBatch.calls += 1
        return start

    def close(self) -> None:
        pass


def test_without_uvloop_and_sendmmsg_p2pfast_runs_on_the_standard_loop(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    monkeypatch.setattr(p2pfast.endpoint, "sendbatch", SimpleNamespace(BatchSender=_NoBatch))
    _NoBatch.calls = 0
    standard = type(asyncio.new_event_loop())
    loop = p2pfast.server.new_event_loop()
    try:
        assert type(loop) is standard
    finally:
        loop.close()

    def config() -> Config:
        return Config(listen_address="127.0.0.1:0", network_id="win", enable_discovery=False)

    async def scenario() -> list[Any]:
        assert type(asyncio.get_running_loop()) is standard
        received: list[Any] = []
        async with (
            P2PServer(config(), on_data=received.append) as server,
            P2PServer(config()) as client,
        ):
            await client.connect_to_peer(f"127.0.0.1:{server.local_address[1]}")
            for i in range(20):
                await client.send(server.node_id, {"i": i})
        return [m.payload for m in received]

    payloads = p2pfast.server.run(asyncio.wait_for(scenario(), 30))
    assert payloads == [{"i": i} for i in range(20)]
    assert _NoBatch.calls > 0, "the endpoint offered its datagrams to the batch sender first"


def _without_resource(monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: not importable


def test_peak_memory_without_the_resource_module(monkeypatch):
    assert (peak_rss_mib() or 0) > 0  # here: getrusage
    _without_resource(monkeypatch)
    memory = SimpleNamespace(rss=1, peak_wset=3 * 2**20)
    fake_psutil = SimpleNamespace(Process=lambda: SimpleNamespace(memory_info=lambda: memory))
    monkeypatch.setitem(sys.modules, "psutil", fake_psutil)
    assert peak_rss_mib() == 3.0  # psutil's peak working set
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert peak_rss_mib() is None  # nothing to ask: unknown, not an error


def test_the_bench_has_no_file_limit_to_raise_without_the_resource_module(monkeypatch):
    _without_resource(monkeypatch)
    assert raise_nofile(10**9) is None  # no BenchError, no ImportError
