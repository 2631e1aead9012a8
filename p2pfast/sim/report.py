"""The JSON report of a run. Everything in it follows from the scenario and the seed, except
the keys containing ``wall`` (wall-clock and process figures) and ``implementation``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .. import USE_EXTENSIONS
from .clock import TICKS_PER_SECOND
from .invariants import amplification

if TYPE_CHECKING:
    from .simulator import Simulation

#: Per-node arrays are included up to this many nodes (beyond, summaries only).
PER_NODE_LIMIT = 10_000


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB: ``getrusage`` on POSIX, psutil's peak
    working set on Windows (no ``resource`` module there), None if neither is available."""
    if sys.platform == "win32":
        try:
            import psutil
        except ImportError:
            return None
        peak = getattr(psutil.Process().memory_info(), "peak_wset", None)
        return round(peak / 2**20, 1) if peak is not None else None
    else:  # (an else, so that type checkers for Windows skip it)
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
        return round(rss / 1024 if sys.platform != "darwin" else rss / 2**20, 1)


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "mean": round(sum(ordered) / n, 3),
        "p50": float(ordered[n // 2]),
        "p99": float(ordered[min(n - 1, (n * 99) // 100)]),
        "max": float(ordered[-1]),
    }


def build_report(sim: Simulation, wall_seconds: float) -> dict[str, Any]:
    s = sim.scenario
    net = sim.network
    honest = sim.honest_hosts
    incarnations = [h.incarnation for h in sim.hosts]
    messages: dict[str, Any] = dict(sim.ledger.finish(incarnations, s.replay_command()))
    routed = messages["routed_sent"] + messages["no_route"]
    messages["routed_success"] = round(messages["routed_delivered"] / routed, 4) if routed else None

    conv = sim.convergence
    convergence = conv.converged_at
    conv_verdict = {
        "held": convergence is not None,
        "detail": (
            f"every live node reached every other at {convergence:.1f}s"
            if convergence is not None
            else f"never converged; reachable pairs at the end: {conv.last_fraction:.4f}"
        ),
    }
    ampl = amplification(net.unproven, s.honest, net.hostile_rx)
    invariants = {
        "exactly_once": sim.ledger.exactly_once.to_dict(),
        "no_phantom_delivery": sim.ledger.phantoms.to_dict(),
        "one_outcome_per_send": sim.ledger.one_outcome.to_dict(),
        "state_bounds": sim.bounds.verdict.to_dict(),
        "amplification": ampl.to_dict(),
        "convergence": conv_verdict,
    }
    minutes = s.duration / 60.0
    tx = [h.tx_dgrams for h in honest]
    tx_bytes = [h.tx_bytes for h in honest]
    rx = [h.rx_dgrams for h in honest]
    rx_bytes = [h.rx_bytes for h in honest]
    n = max(1, len(honest))
    report: dict[str, Any] = {
        "seed": s.seed,
        "nodes": s.nodes,
        "duration": s.duration,
        "scenario": s.to_dict(),
        "implementation": "compiled" if USE_EXTENSIONS else "pure",
        "engine_rng": sim.node_rng,
        "invariants": invariants,
        "ok": all(v["held"] for v in invariants.values()),
        "convergence_seconds": convergence,
        "reachable_pairs_final": round(conv.last_fraction, 6),
        "messages": messages,
        "datagrams": {
            "sent": net.sent,
            "bytes": net.sent_bytes,
            "delivered": net.delivered,
            "duplicated": net.duplicated,
            "dropped": dict(net.dropped),
            "per_node_per_minute": round(sum(tx) / n / minutes, 3),
            "bytes_per_node_per_minute": round(sum(tx_bytes) / n / minutes, 1),
        },
        "messages_by_type": {
            "sent": dict(sorted(sim.sent_by_type.items())),
            "received": dict(sorted(sim.received_by_type.items())),
        },
        "per_node": {
            "datagrams_sent": _summary(tx),
            "bytes_sent": _summary(tx_bytes),
            "datagrams_received": _summary(rx),
            "bytes_received": _summary(rx_bytes),
        },
        "state_maxima": dict(sim.bounds.maxima),
        "state_final": {
            "peers": _summary([len(h.node.peers_by_id) for h in honest if h.up and h.node]),
            "routes": _summary([len(h.node.routes) for h in honest if h.up and h.node]),
        },
        "events": {
            "connects": sim.connects,
            "disconnects": sim.disconnects,
            "crashes": sim.crashes,
            "restarts": sim.restarts,
        },
        "nat": {
            "hosts": dict(sim.nat_counts),
            "dropped_by_filter": net.dropped["nat"],
        },
        "hostile": [
            {"host": h.host.index, "kind": h.host.role, "sent": h.sent, "bytes": h.sent_bytes}
            for h in sim.hostiles
        ],
        "replay": s.replay_command(),
        "trace_digest": f"{net.digest:016x}",
    }
    if len(honest) <= PER_NODE_LIMIT:
        report["per_node"]["by_node"] = {
            "datagrams_sent": tx,
            "bytes_sent": tx_bytes,
            "datagrams_received": rx,
            "bytes_received": rx_bytes,
        }
    wall: dict[str, Any] = {
        "seconds": round(wall_seconds, 3),
        "virtual_seconds_per_wall_second": round(s.duration / wall_seconds, 2)
        if wall_seconds
        else None,
        "datagrams_per_wall_second": round(net.sent / wall_seconds) if wall_seconds else None,
        "rss_peak_mib": peak_rss_mib(),
        "ticks_per_second": TICKS_PER_SECOND,
    }
    if sim.profile:
        handled = max(1, net.delivered)
        wall["engine_seconds"] = round(sim.engine_seconds, 3)
        wall["engine_us_per_datagram"] = round(sim.engine_seconds / handled * 1e6, 3)
        wall["sampling_seconds"] = round(sim.sampling_seconds, 3)
        wall["simulator_us_per_datagram"] = round(
            (wall_seconds - sim.engine_seconds - sim.sampling_seconds) / handled * 1e6, 3
        )
    report["wall"] = wall
    return report
