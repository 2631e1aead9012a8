"""``p2pfast-sim``: run one simulated network and report; exit 0 only if every invariant held.

A failing run prints its seed and the one command that replays it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from .scenario import HOSTILE_KINDS, Scenario, ScenarioError, parse_nat_mix
from .simulator import Simulation


def _run(scenario: Scenario, json_path: str | None, profile: bool, quiet: bool) -> int:
    report = Simulation(scenario, profile=profile).run()
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if json_path == "-":
        sys.stdout.buffer.write(data + b"\n")
    elif json_path:
        Path(json_path).write_bytes(data + b"\n")
    failed = [name for name, verdict in report["invariants"].items() if not verdict["held"]]
    out = sys.stderr if json_path == "-" else sys.stdout
    if not quiet:
        m = report["messages"]
        wall = report["wall"]
        conv = report["convergence_seconds"]
        converged = f"at {conv:.1f}s" if conv is not None else "never"
        print(
            f"p2pfast-sim: {scenario.nodes} nodes, {scenario.duration:g}s virtual in "
            f"{wall['seconds']:.1f}s wall ({report['implementation']}); converged {converged}; "
            f"messages sent {m['sent']}, delivered {m['delivered']}, duplicates "
            f"{m['duplicates']}, lost {m['lost']}; datagrams {report['datagrams']['sent']}",
            file=out,
        )
    if failed:
        for name in failed:
            print(
                f"p2pfast-sim: invariant {name} failed: {report['invariants'][name]['detail']}",
                file=sys.stderr,
            )
        print(
            f"p2pfast-sim: seed {scenario.seed}; replay with: {report['replay']}", file=sys.stderr
        )
        return 1
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--nodes", type=int, default=20, show_default=True, help="Nodes, hostile ones included."
)
@click.option("--duration", type=float, default=60.0, show_default=True, help="Virtual seconds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--loss", type=float, default=0.0, show_default=True, help="Datagram loss probability."
)
@click.option(
    "--churn", type=float, default=0.0, show_default=True, help="Restarts per node per hour."
)
@click.option(
    "--nat",
    "nat_mix",
    default="none",
    show_default=True,
    help="none, realistic, or open=..,eim=..,adf=..,sym=..",
)
@click.option(
    "--hostile",
    type=int,
    default=0,
    show_default=True,
    help="Hostile nodes (flooder, spoofer, liar in turn).",
)
@click.option("--json", "json_path", default=None, help="Write the JSON report here ('-': stdout).")
@click.option("--hostile-kinds", default=",".join(HOSTILE_KINDS), show_default=True)
@click.option(
    "--duplicate",
    type=float,
    default=0.0,
    show_default=True,
    help="Datagram duplication probability.",
)
@click.option(
    "--reorder",
    type=float,
    default=0.0,
    show_default=True,
    help="Probability of an extra reordering delay.",
)
@click.option(
    "--partitions", type=int, default=0, show_default=True, help="Partition episodes (they heal)."
)
@click.option("--bootstraps", type=int, default=1, show_default=True)
@click.option(
    "--rate", type=float, default=0.05, show_default=True, help="Messages per node per second."
)
@click.option("--max-connections", type=int, default=100, show_default=True)
@click.option(
    "--bootstrap-connections",
    type=int,
    default=0,
    show_default=True,
    help="Bootstrap max_connections (0: every node).",
)
@click.option(
    "--heartbeat", type=float, default=15.0, show_default=True, help="Engine heartbeat_interval."
)
@click.option("--connection-timeout", type=float, default=45.0, show_default=True)
@click.option(
    "--profile", is_flag=True, help="Time the engine's calls apart from the simulator's work."
)
@click.option("--quiet", "-q", is_flag=True)
def main(
    nodes: int,
    duration: float,
    seed: int,
    loss: float,
    churn: float,
    nat_mix: str,
    hostile: int,
    json_path: str | None,
    hostile_kinds: str,
    duplicate: float,
    reorder: float,
    partitions: int,
    bootstraps: int,
    rate: float,
    max_connections: int,
    bootstrap_connections: int,
    heartbeat: float,
    connection_timeout: float,
    profile: bool,
    quiet: bool,
) -> None:
    """Simulate NODES real p2pfast engines for DURATION virtual seconds from SEED."""
    try:
        kwargs: dict[str, Any] = {
            "nodes": nodes,
            "duration": duration,
            "seed": seed,
            "loss": loss,
            "churn": churn,
            "nat": parse_nat_mix(nat_mix),
            "hostile": hostile,
            "hostile_kinds": tuple(k.strip() for k in hostile_kinds.split(",") if k.strip()),
            "duplicate": duplicate,
            "reorder": reorder,
            "partitions": partitions,
            "bootstraps": bootstraps,
            "rate": rate,
            "max_connections": max_connections,
            "bootstrap_connections": bootstrap_connections,
            "heartbeat_interval": heartbeat,
            "connection_timeout": connection_timeout,
        }
        scenario = Scenario(**kwargs)
    except ScenarioError as exc:
        click.echo(f"p2pfast-sim: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(_run(scenario, json_path, profile, quiet))
