"""The do-nothing reference for ``p2pfast-bench --baseline``: a minimal uvloop UDP echo server.

``python -m p2pfast.bench.baseline --address 127.0.0.1:0`` binds (port 0 = ephemeral), prints
``p2pfast-baseline listening on IP:PORT`` on stderr when ready, sends every datagram straight
back to its sender and exits 0 on SIGTERM/SIGINT. Its socket buffers are tuned exactly as
``p2pfast-server``'s are, so the two run under identical kernel conditions; the CPU it spends
per datagram is "the cost of a uvloop echo", the floor p2pfast's protocol processing is
compared with.

Deliberately imports nothing from p2pfast (``python -m`` still runs ``p2pfast/__init__``,
which only loads the codec selector, and ``p2pfast/bench/__init__``, which loads nothing) and
does no parsing, logging or bookkeeping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from typing import Any

BUFFER_BYTES = 4 * 1024 * 1024  # as p2pfast.server._tune_buffers


class EchoProtocol(asyncio.DatagramProtocol):
    """``datagram_received`` sends the datagram back and does nothing else."""

    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio types the argument as any transport; a datagram endpoint gets a datagram one
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # connection_made always comes first: no None check on the echo's only path
        self.transport.sendto(data, addr)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:  # ICMP errors: irrelevant for an echo
        pass


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid address {text!r}: expected IP:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"p2pfast-baseline: error: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):  # the kernel may refuse: not fatal
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER_BYTES)
    transport, _ = await loop.create_datagram_endpoint(EchoProtocol, sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # Windows' loops: a plain handler wakes the loop instead
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"
    print(f"p2pfast-baseline listening on {shown}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2pfast.bench.baseline",
        description="Minimal uvloop UDP echo server (the p2pfast-bench baseline).",
    )
    parser.add_argument(
        "-a", "--address", default="127.0.0.1:0", help="IP:PORT to bind (port 0 = any)"
    )
    args = parser.parse_args(argv)
    try:
        host, port = _parse_address(args.address)
    except ValueError as exc:
        parser.exit(2, f"p2pfast-baseline: error: {exc}\n")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(_serve(host, port))
    else:
        if hasattr(uvloop, "run"):
            uvloop.run(_serve(host, port))
        else:  # pragma: no cover - uvloop < 0.18
            _run_legacy(uvloop, host, port)
    return 0


def _run_legacy(uvloop: Any, host: str, port: int) -> None:  # pragma: no cover - uvloop < 0.18
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(_serve(host, port))
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
