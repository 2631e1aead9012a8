"""Real-socket helpers: a ``p2pfast-server`` subprocess, a blocking seed-format UDP client, and
a seeded lossy UDP relay. Everything binds 127.0.0.1 only and is bounded in time."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest

from p2pfast._speedups import codec
from p2pfast.protocol import MessageType as T
from p2pfast.relay import LossyRelay  # noqa: F401  (re-exported for the tests)


def on_uvloop(fn):
    """Run an async test on a fresh uvloop loop (as p2pfast-server does), bounded to 60 s."""
    from p2pfast.server import run

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run(asyncio.wait_for(fn(*args, **kwargs), 60))

    return wrapper


#: Tests that stop a process with SIGTERM or SIGINT and check how it exits. Windows delivers
#: no POSIX signals: ``Popen.send_signal(SIGTERM)`` terminates the process outright and SIGINT
#: is refused, so those tests skip there (a fallback test covers the server's Windows path).
needs_posix_signals = pytest.mark.skipif(
    sys.platform == "win32",
    reason="stops a process with SIGTERM/SIGINT: POSIX signals, which Windows does not deliver",
)


READY = re.compile(r"listening on (\S+):(\d+) node_id=(\S+)")


class ServerProcess:
    """``python -m p2pfast.cli`` on an ephemeral loopback port, stopped on exit."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 20.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "p2pfast.cli",
            "-a",
            "127.0.0.1:0",
            "--disable-discovery",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr_lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            self.stderr_lines.append(line)
            match = READY.search(line)
            if match:
                self.addr = (match.group(1), int(match.group(2)))
                self.node_id = match.group(3)
                return
        self.stop()
        raise RuntimeError("server did not start: " + "".join(self.stderr_lines)[-2000:])

    def terminate(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SeedClient:
    """A blocking UDP client speaking the seed wire format, as the Rust simple_client does."""

    def __init__(self, server: tuple, timeout: float = 3.0) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.timeout = timeout
        self.backlog: list = []

    def send(self, data: bytes, to: tuple | None = None) -> None:
        self.sock.sendto(data, to or self.server)

    def prove(self, response) -> None:
        """Echo the token of a HandshakeResponse (an Ack carrying it), as p2pfast nodes do: the
        server then counts this address as proven. A client that does not stays within the
        server's anti-amplification budget (tests/test_hardening.py)."""
        token = response.payload.get("token")
        assert isinstance(token, str) and token, response.payload
        self.send(
            orjson.dumps(
                {
                    "id": str(uuid.uuid4()),
                    "message_type": "Ack",
                    "timestamp": 1795634857,
                    "payload": {"token": token},
                    "sender_addr": None,
                    "sequence_number": None,
                    "requires_ack": False,
                    "ack_for": response.id,
                }
            )
        )

    def recv(self):
        if self.backlog:
            return self.backlog.pop(0)
        data, _ = self.sock.recvfrom(65535)
        return codec.decode(data)

    def _arrivals(self, seconds: float):
        """Decoded datagrams as they arrive, until ``seconds`` pass with the socket quiet."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return
            yield codec.decode(data)

    def recv_type(self, mtype: int, timeout: float | None = None):
        """The next message of ``mtype`` (others are kept for later)."""
        for i, msg in enumerate(self.backlog):
            if msg.type == mtype:
                return self.backlog.pop(i)
        for msg in self._arrivals(timeout or self.timeout):
            if msg.type == mtype:
                return msg
            self.backlog.append(msg)
        raise TimeoutError(
            f"no {T(mtype).name} within {timeout or self.timeout}s; "
            f"got {[T(m.type).name for m in self.backlog]}"
        )

    def drain(self, seconds: float = 0.2) -> list:
        out = list(self.backlog)
        self.backlog.clear()
        out.extend(self._arrivals(seconds))
        return out

    def close(self) -> None:
        self.sock.close()


def iter_types(msgs: list) -> Iterator[str]:
    return (T(m.type).name for m in msgs)
