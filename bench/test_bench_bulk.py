"""Micro-benchmarks of BulkConnection, compiled ([c]) vs pure ([py]): one 1 MiB message from a
sender connection to a receiver connection in memory, no network, no node.

Run: ``python -m pytest bench/test_bench_bulk.py --benchmark-enable --benchmark-only -q``
(benchmarks are disabled by default in pyproject addopts). Each round moves one whole message
(891 fragments at 1,200-byte datagrams, 17 at 65,507), so per-fragment cost = mean / count.
"""

from __future__ import annotations

import importlib
import os
import random
from typing import Any

import pytest

from p2pfast.bulk import BulkMemory

NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")

MESSAGE = random.Random(1).randbytes(1_048_576)


@pytest.fixture(params=["c", "py"])
def bulk(request: pytest.FixtureRequest) -> Any:
    """The connection module, compiled ([c]) and pure ([py])."""
    if request.param == "py":
        return importlib.import_module("p2pfast._bulk_py")
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    return importlib.import_module("p2pfast._bulk")


def _pair(bulk: Any, size: int) -> tuple[Any, Any]:
    def connection() -> Any:
        return bulk.BulkConnection(
            BulkMemory(64 << 20),
            peer_limit=16 << 20,
            max_datagram_size=size,
            pmtu_discovery=False,
            reassembly_timeout=5.0,
            now=0.0,
        )

    sender, receiver = connection(), connection()
    receiver.grant(0.0)
    sender.on_ack(receiver.ack_frame(0.0), 0.0)
    return sender, receiver


@pytest.mark.parametrize("size", [1200, 65_507])
def test_one_mib_message(benchmark: Any, bulk: Any, size: int) -> None:
    """Transmit (as the window and pacer allow), store every fragment, ACK every 16 and at the
    end of each burst, settle the ACKs: the whole per-fragment path of both sides."""
    benchmark.group = f"bulk: a 1 MiB message sender -> receiver at {size}-byte datagrams"
    sender, receiver = _pair(bulk, size)
    clock = [0.0]

    def run() -> int:
        now = clock[0]
        sender.send(MESSAGE, "h")
        fragments = 0
        delivered = None
        while len(sender):
            now += 0.0001
            out: list[bytes] = []
            sender.transmit(now, out, [])
            fragments += len(out)
            acks = []
            for frame in out:
                message = receiver.on_fragment(frame, now)
                if message is not None:
                    delivered = message
                    receiver.release(len(message), now)
                if receiver.ack_owed >= 16:
                    acks.append(receiver.ack_frame(now))
            last = receiver.ack_frame(now)
            if last is not None:
                acks.append(last)
            for ack in acks:
                sender.on_ack(ack, now)
        clock[0] = now
        sender.completed.clear()
        assert delivered == MESSAGE
        return fragments

    fragments = benchmark(run)
    assert fragments == -(-len(MESSAGE) // (size - 22))
