"""Every example in ``examples/`` runs as a user would run it: real subprocesses on 127.0.0.1
against a real ``p2pfast-server``, bounded in time, stopped at the end."""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from .helpers import wire_examples
from .netutil import ServerProcess, needs_posix_signals

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def example_env() -> dict[str, str]:
    """The examples import the p2pfast of this checkout, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_example(name: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=example_env(),
        cwd=ROOT,
    )


@pytest.fixture
def hub():
    with ServerProcess("--network-id", "test", "--log-level", "warning") as proc:
        yield proc


# -- simple_client.py ----------------------------------------------------------------------------


def test_simple_client_runs_its_whole_session(hub: ServerProcess) -> None:
    result = run_example(
        "simple_client.py", f"127.0.0.1:{hub.addr[1]}", "alice", "--network-id", "test"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("handshake ok") and hub.node_id in lines[0]
    assert lines[1] == "data acked"
    assert "'echo': {'text': 'hello from alice'}" in lines[2]
    assert lines[3].startswith("ping/pong: rtt")
    assert lines[4].startswith("discovery: 1 node(s): alice@127.0.0.1:")
    assert lines[5] == "disconnected"


@needs_posix_signals
def test_simple_client_stopped_with_ctrl_c_exits_quietly() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never answers the handshake
    silent.bind(("127.0.0.1", 0))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "simple_client.py"),
            f"127.0.0.1:{silent.getsockname()[1]}",
            "x",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=example_env(),
    )
    try:
        silent.settimeout(20)
        silent.recvfrom(65_535)  # its HandshakeRequest: it is now waiting in connect_to_peer
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130


# -- seed_client.py -------------------------------------------------------------------------------


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_client_writes_datagrams_byte_for_byte_as_the_rust_side() -> None:
    seed_client = load_example("seed_client")
    records = wire_examples()
    assert len(records) > 10

    def full_envelope(text: str) -> bool:
        try:
            return set(json.loads(text)) == set(seed_client.ENVELOPE_KEYS)
        except (ValueError, TypeError):
            return False

    # The Rust server's and client's datagrams (the Python probe's omit keys, add spaces or junk).
    rust_side = [r for r in records if '": ' not in r["datagram"] and full_envelope(r["datagram"])]
    assert len(rust_side) > 10
    for record in rust_side:
        datagram = record["datagram"].encode()
        assert seed_client.encode(json.loads(datagram)) == datagram


def test_seed_client_session_against_the_server(hub: ServerProcess) -> None:
    result = run_example("seed_client.py", f"127.0.0.1:{hub.addr[1]}", "--network-id", "test")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"alice: handshake ok, server {hub.node_id}, seen as 127.0.0.1:")
    assert lines[1:] == [
        "bob: handshake ok",
        "alice: echo {'text': 'hello'}",
        "alice: ping/pong ok",
        "alice: nodes alice, bob",
        "bob: routed from alice in 1 hop(s): hi bob",
        "disconnected",
    ]


def test_seed_client_refused_says_why_in_one_line(hub: ServerProcess) -> None:
    result = run_example("seed_client.py", f"127.0.0.1:{hub.addr[1]}", "--network-id", "other")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "seed_client: 网络ID不匹配: 期望 test，收到 other"
    ]


# -- chat.py --------------------------------------------------------------------------------------


class ChatProcess:
    """``examples/chat.py`` with its stdin and stdout piped."""

    def __init__(self, hub: ServerProcess, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / "chat.py"),
                f"127.0.0.1:{hub.addr[1]}",
                name,
                "--network-id",
                "test",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=example_env(),
        )
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def expect(self, wanted: str, timeout: float = 10) -> None:
        """Wait until stdout has shown a line equal to ``wanted``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while wanted not in self.lines:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line.rstrip("\n"))
        assert wanted in self.lines, (self.name, self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


@needs_posix_signals
def test_chat_between_two_nodes_through_the_hub(hub: ServerProcess) -> None:
    alice, bob = ChatProcess(hub, "alice"), ChatProcess(hub, "bob")
    try:
        alice.expect(f"joined 127.0.0.1:{hub.addr[1]} as alice")
        bob.expect(f"joined 127.0.0.1:{hub.addr[1]} as bob")
        alice.say("hello bob")
        alice.expect("* sent to 1 of 1")
        bob.expect("[alice] hello bob")
        bob.say("hi alice")
        alice.expect("[bob] hi alice")
        # Ctrl-D: alice leaves politely and exits 0 ...
        assert alice.proc.stdin is not None
        alice.proc.stdin.close()
        alice.expect("left the room")
        assert alice.proc.wait(10) == 0
        # ... Ctrl-C: bob stops without a traceback.
        bob.proc.send_signal(signal.SIGINT)
        assert bob.proc.wait(10) in (0, 130)
        err = bob.proc.stderr.read()  # type: ignore[union-attr]
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        alice.stop()
        bob.stop()


def test_chat_to_a_hub_that_is_not_there_fails_in_one_line() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    silent.close()  # nobody listens there now
    result = run_example("chat.py", f"127.0.0.1:{port}", "carol", timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"chat: cannot join 127.0.0.1:{port}"), (
        result.stderr
    )
