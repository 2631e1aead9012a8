"""What every part of ``p2pfast-bench`` agrees on: its error type and the workload names."""

from __future__ import annotations

#: The closed-loop workloads (see :mod:`p2pfast.bench`).
WORKLOADS = ("data", "ping", "routed", "bulk")
#: ``--acks``: one Ack per Data, or one range Ack per peer per server I/O batch.
ACK_MODES = ("plain", "coalesced")
#: The network id the simulated peers present (and the servers the bench starts use);
#: ``--network-id`` overrides it, for a ``--target`` server on another network.
NETWORK_ID = "bench"


class BenchError(Exception):
    """A failure reported as one line on stderr (no traceback) with a non-zero exit."""
