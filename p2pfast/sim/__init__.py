"""A deterministic network simulator: many real :class:`p2pfast.node.Node` engines on one
virtual clock, over a seeded model of loss, latency, bandwidth, partitions, NATs, churn and
hostile nodes, with invariant checkers on throughout. ``p2pfast-sim`` is its CLI.

>>> from p2pfast.sim import Scenario, simulate
>>> report = simulate(Scenario(nodes=10, duration=30, seed=1))
>>> report["ok"]
True
"""

from __future__ import annotations

from typing import Any

from .scenario import NAT_PRESETS, Scenario, ScenarioError, parse_nat_mix
from .simulator import Simulation


def simulate(scenario: Scenario, *, profile: bool = False) -> dict[str, Any]:
    """Run ``scenario`` and return its report."""
    return Simulation(scenario, profile=profile).run()


__all__ = ["NAT_PRESETS", "Scenario", "ScenarioError", "Simulation", "parse_nat_mix", "simulate"]
