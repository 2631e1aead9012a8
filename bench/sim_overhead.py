"""Simulator overhead per simulated datagram against the engine's own cost per datagram.

Runs a few scenarios with ``profile=True``: the time spent inside the engines' calls
(``receive_datagram``, ``handle_timer``, ``datagrams_to_send``) is the engine's cost; the rest
of the wall time, minus the invariant sampling (a fixed cost per sample, not per datagram), is
the simulator's: event queue, network model, NAT, accounting, event handling. Both are divided
by the datagrams delivered to engines. Target: simulator <= 2x engine.

    python bench/sim_overhead.py                        # compiled twin
    P2PFAST_NO_EXTENSIONS=1 python bench/sim_overhead.py  # pure twin
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pfast.sim import Scenario, parse_nat_mix, simulate

SCENARIOS = {
    # Steady state: a full mesh of 100 nodes, 1 s heartbeats, 5 messages per node per second.
    "steady 100 nodes": Scenario(
        nodes=100, duration=60, seed=1, rate=5.0, heartbeat_interval=1.0, connection_timeout=5.0
    ),
    # Joining and discovery dominate: 1,000 nodes for 60 s.
    "join 1000 nodes": Scenario(nodes=1000, duration=60, seed=1),
    # Everything at once on 300 nodes.
    "lossy NAT churn 300 nodes": Scenario(
        nodes=300,
        duration=120,
        seed=1,
        loss=0.05,
        duplicate=0.01,
        reorder=0.01,
        churn=1.0,
        nat=parse_nat_mix("realistic"),
        partitions=1,
    ),
}


def main() -> None:
    head = f"{'scenario':28} {'datagrams':>10} {'wall s':>7} {'engine µs':>10} {'sim µs':>8}"
    print(head, f"{'sim/engine':>10}")
    for name, scenario in SCENARIOS.items():
        report = simulate(scenario, profile=True)
        wall = report["wall"]
        engine = wall["engine_us_per_datagram"]
        sim = wall["simulator_us_per_datagram"]
        print(
            f"{name:28} {report['datagrams']['delivered']:>10,} {wall['seconds']:>7.1f} "
            f"{engine:>10.2f} {sim:>8.2f} {sim / engine:>10.2f}   ({report['implementation']})"
        )


if __name__ == "__main__":
    main()
