"""``p2pfast-bench``: closed-loop load generator and server-cost meter for ``p2pfast-server``.

One run = start a server subprocess (or use ``--target``), create ``--peers`` UDP sockets in
one uvloop event loop, handshake them all, run a timed closed-loop workload (each peer keeps
``--window`` messages in flight), say Disconnect, stop the server. It reports handshakes/s,
messages/s, latency percentiles, retransmissions, losses, and, read from ``/proc`` for the
server process itself, **server CPU time per message** and its resident memory.

Workloads:

``data``
    Data with ``requires_ack: true``, a per-peer ``sequence_number`` from 1 and payload
    ``{"blob": "<size chars>"}``; complete when the Ack (``ack_for`` = its id) arrives.
    With ``--acks coalesced`` the peers also announce the ``p2pfast`` capability, and the server
    answers with one Ack per peer per I/O batch whose payload ``{"seq": [[lo, hi], ...]}``
    lists inclusive ranges of acknowledged sequence numbers (its ``ack_for`` names one message
    only: the last one the server received, so it is ignored); every outstanding message in a
    range completes. Such runs are labelled
    ``data/coalesced``; ``ack_datagrams`` and ``msgs_per_ack`` show how much one Ack covered.
``ping``
    Ping → Pong (a Pong names no request, so a peer's Pongs complete its Pings in order).
``routed``
    Peers paired A→B; A sends routed Data (``max_hops`` 8, a fresh ``route_id``) addressed to
    B's node id; complete when B receives it (matched by the original message id).

``--baseline`` adds a run against :mod:`p2pfast.bench.baseline` (a uvloop echo that does nothing
else) under the identical load; the echo of a message completes it. The ratio
p2pfast/baseline of server CPU per message is "protocol cost over bare uvloop I/O".

The package, one module per concern:

- :mod:`~p2pfast.bench.loadgen`: the load generator (one cheap ``DatagramProtocol`` per peer);
- :mod:`~p2pfast.bench.run`: one run's phases, from server start to Disconnect;
- :mod:`~p2pfast.bench.metering`: the server subprocesses and their CPU time and memory;
- :mod:`~p2pfast.bench.baseline`: the do-nothing uvloop echo server;
- :mod:`~p2pfast.bench.report`: the table, the ratios, the machine description;
- :mod:`~p2pfast.bench.cli`: the ``p2pfast-bench`` command.

Importing this package imports none of them (the names below load on first use), so that
``python -m p2pfast.bench.baseline`` stays as lean as the echo server it is meant to be.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .cli import main
    from .common import BenchError
    from .report import compute_ratios, format_ratios, format_table, median_ratios
    from .run import RunSpec, run_one

_LAZY = {
    "main": ".cli",
    "BenchError": ".common",
    "compute_ratios": ".report",
    "format_ratios": ".report",
    "format_table": ".report",
    "median_ratios": ".report",
    "RunSpec": ".run",
    "run_one": ".run",
}


def __getattr__(name: str) -> Any:
    """Load the submodule that defines ``name`` on first use (see the module docstring)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BenchError",
    "RunSpec",
    "compute_ratios",
    "format_ratios",
    "format_table",
    "main",
    "median_ratios",
    "run_one",
]
