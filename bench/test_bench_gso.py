"""Send-side cost of 1 MiB of datagrams to a loopback receiver: ``BatchSender`` compiled ([c],
``sendmmsg``) and pure ([py], ``sendto``/``sendmsg``), each with UDP segmentation offload
(``gso``: runs of equal-size datagrams as one message) and without (``plain``).

Run the table (system calls and sending-thread CPU per MiB, best of a few rounds)::

    python -m bench.test_bench_gso          # from the repository root

or the pytest-benchmark rows (wall time per MiB; system calls per MiB in ``extra_info``)::

    python -m pytest bench/test_bench_gso.py --benchmark-enable --benchmark-only -q

On loopback the kernel's receive work (segmenting an offloaded message, queueing each
datagram on the receiving socket) runs in the sender's system call, so it is in these
figures too; with a real NIC the segmentation moves to the device (or to the driver).
Linux only for the ``gso`` rows (elsewhere they equal ``plain``).
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time

import pytest

NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")
MIB = 1 << 20
#: Datagram sizes: the default datagram (fits every IPv6 path), 8 KB, and the largest UDP
#: datagram (65,507 bytes: two never fit one offload message, so gso changes nothing there).
SIZES = [1200, 8192, 65507]


def _module(impl: str):
    if impl == "py":
        return importlib.import_module("p2pfast._sendbatch_py")
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    return importlib.import_module("p2pfast._sendbatch")


class Loopback:
    """A receiver with room for a few MiB and a non-blocking sender socket, both on 127.0.0.1."""

    def __init__(self) -> None:
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MIB)
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.setblocking(False)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
        self.sender.bind(("127.0.0.1", 0))
        self.sender.setblocking(False)

    def items(self, size: int) -> list[tuple[bytes, tuple[str, int]]]:
        """1 MiB as datagrams of ``size`` bytes (the last one shorter)."""
        addr = self.receiver.getsockname()
        payload = bytes(range(256)) * (MIB // 256)
        return [(payload[k : k + size], addr) for k in range(0, MIB, size)]

    def drain(self) -> tuple[int, int]:
        """Read everything queued: (datagrams, bytes)."""
        count = total = 0
        while True:
            try:
                total += len(self.receiver.recv(70_000))
            except BlockingIOError:
                return count, total
            count += 1

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


def send_mib(sender, items: list) -> None:
    """All of ``items``, waiting (without spinning) while the socket buffer is full."""
    i = 0
    while i < len(items):
        i = sender.send(items, i)
        if i < len(items):
            if not sender.blocked:
                raise RuntimeError(f"send stopped at {i}: {items[i][1]!r}")
            time.sleep(0.0005)


def measure(impl: str, gso: bool, size: int, rounds: int = 5) -> dict[str, float]:
    """Best-of-``rounds`` sending-thread CPU and wall time per MiB, and system calls per MiB."""
    loop = Loopback()
    try:
        sender = _module(impl).BatchSender(loop.sender.fileno(), loop.sender.family, gso=gso)
        items = loop.items(size)
        cpu = wall = float("inf")
        calls = 0
        for _ in range(rounds):
            loop.drain()
            before = sender.syscalls
            t0, c0 = time.perf_counter(), time.thread_time()
            send_mib(sender, items)
            c1, t1 = time.thread_time(), time.perf_counter()
            calls = sender.syscalls - before
            cpu, wall = min(cpu, c1 - c0), min(wall, t1 - t0)
            got = loop.drain()
            if got != (len(items), MIB):
                raise RuntimeError(f"receiver got {got}, not ({len(items)}, {MIB})")
        sender.close()
        return {
            "datagrams": len(items),
            "syscalls": calls,
            "cpu_us": cpu * 1e6,
            "wall_us": wall * 1e6,
            "gso": float(sender.gso_enabled),
        }
    finally:
        loop.close()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("gso", [True, False], ids=["gso", "plain"])
@pytest.mark.parametrize("impl", ["c", "py"])
def test_send_one_mib(benchmark, impl, gso, size):
    benchmark.group = f"BatchSender: 1 MiB as {size}-byte datagrams to loopback"
    loop = Loopback()
    try:
        sender = _module(impl).BatchSender(loop.sender.fileno(), loop.sender.family, gso=gso)
        items = loop.items(size)
        before = sender.syscalls

        def setup() -> None:  # a setup's return value would be taken for the arguments
            loop.drain()

        benchmark.pedantic(lambda: send_mib(sender, items), setup=setup, rounds=20)
        benchmark.extra_info["syscalls_per_mib"] = (sender.syscalls - before) / 20
        benchmark.extra_info["gso_enabled"] = sender.gso_enabled
        got = loop.drain()
        assert got == (len(items), MIB)  # the last round arrived whole
        sender.close()
    finally:
        loop.close()


def main() -> None:
    impls = ["py"] if NO_EXTENSIONS else ["c", "py"]
    print(f"1 MiB to a loopback receiver, best of 5 (Python {sys.version.split()[0]})")
    print(
        f"{'impl':<5}{'mode':<7}{'size':>7}{'datagrams':>11}{'syscalls':>10}"
        f"{'CPU us/MiB':>12}{'wall us/MiB':>13}"
    )
    for size in SIZES:
        for impl in impls:
            for gso in (True, False):
                r = measure(impl, gso, size)
                mode = "gso" if gso and r["gso"] else "plain"
                print(
                    f"{impl:<5}{mode:<7}{size:>7}{r['datagrams']:>11.0f}{r['syscalls']:>10.0f}"
                    f"{r['cpu_us']:>12.0f}{r['wall_us']:>13.0f}"
                )


if __name__ == "__main__":
    main()
