"""``p2pfast-sim``: run one simulated network and report; exit 0 only if every invariant held.

A failing run prints its seed and the one command that replays it. Bad arguments print one
line and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import orjson

from .scenario import HOSTILE_KINDS, Scenario, ScenarioError, parse_nat_mix
from .simulator import Simulation

_D = Scenario()


def _run(scenario: Scenario, json_path: str | None, profile: bool, quiet: bool) -> int:
    report = Simulation(scenario, profile=profile).run()
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if json_path == "-":
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()
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
            detail = report["invariants"][name]["detail"]
            print(f"p2pfast-sim: invariant {name} failed: {detail}", file=sys.stderr)
        print(
            f"p2pfast-sim: seed {scenario.seed}; replay with: {report['replay']}", file=sys.stderr
        )
        return 1
    return 0


def _latency(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(",")
    try:
        return float(low), float(high if sep else low)
    except ValueError:
        raise ScenarioError(
            "latency_ms", f"--latency-ms: expected LOW,HIGH, got {text!r}"
        ) from None


def scenario_from_options(opts: dict[str, Any]) -> Scenario:
    """The Scenario the CLI options describe; raises ScenarioError."""
    return Scenario(
        nodes=opts["nodes"],
        duration=opts["duration"],
        seed=opts["seed"],
        loss=opts["loss"],
        churn=opts["churn"],
        nat=parse_nat_mix(opts["nat_mix"]),
        hostile=opts["hostile"],
        hostile_kinds=tuple(k.strip() for k in opts["hostile_kinds"].split(",") if k.strip()),
        duplicate=opts["duplicate"],
        reorder=opts["reorder"],
        partitions=opts["partitions"],
        partition_seconds=opts["partition_seconds"],
        bootstraps=opts["bootstraps"],
        rate=opts["rate"],
        join_spread=opts["join_spread"],
        latency_ms=_latency(opts["latency_ms"]),
        jitter=opts["jitter"],
        bandwidth=opts["bandwidth"],
        queue_bytes=opts["queue_bytes"],
        nat_timeout=opts["nat_timeout"],
        max_connections=opts["max_connections"],
        bootstrap_connections=opts["bootstrap_connections"],
        heartbeat_interval=opts["heartbeat"],
        connection_timeout=opts["connection_timeout"],
    )


def parse_args(argv: Sequence[str]) -> Scenario:
    """The Scenario a ``p2pfast-sim`` command line (without the program name) describes."""
    with main.make_context("p2pfast-sim", list(argv)) as ctx:
        return scenario_from_options(ctx.params)


_Decorated = Callable[..., Any]


def _opt(
    flag: str, default: Any, text: str, *names: str, **kw: Any
) -> Callable[[_Decorated], _Decorated]:
    return click.option(flag, *names, default=default, show_default=True, help=text, **kw)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_opt("--nodes", _D.nodes, "Nodes, hostile ones included.", type=int)
@_opt("--duration", _D.duration, "Virtual seconds.", type=float)
@_opt("--seed", _D.seed, "Every random choice follows from it.", type=int)
@_opt("--loss", _D.loss, "Datagram loss probability.", type=float)
@_opt("--churn", _D.churn, "Crash-and-restarts per node per hour (0.1: 10 % of nodes).", type=float)
@_opt("--nat", "none", "none, realistic, or open=..,eim=..,adf=..,sym=..", "nat_mix")
@_opt("--hostile", _D.hostile, "Hostile nodes (flooder, spoofer, liar in turn).", type=int)
@click.option("--json", "json_path", default=None, help="Write the JSON report here ('-': stdout).")
@_opt("--hostile-kinds", ",".join(HOSTILE_KINDS), "Hostile behaviours to cycle through.")
@_opt("--duplicate", _D.duplicate, "Datagram duplication probability.", type=float)
@_opt("--reorder", _D.reorder, "Probability of an extra reordering delay.", type=float)
@_opt("--partitions", _D.partitions, "Partition episodes (each heals).", type=int)
@_opt("--partition-seconds", _D.partition_seconds, "Length of each partition.", type=float)
@_opt("--bootstraps", _D.bootstraps, "Bootstrap nodes every node joins through.", type=int)
@_opt("--rate", _D.rate, "Reliable messages per node per second.", type=float)
@_opt("--join-spread", _D.join_spread, "Seconds over which nodes join.", type=float)
@_opt("--latency-ms", "2,40", "Per-host one-way access latency range LOW,HIGH (ms).")
@_opt("--jitter", _D.jitter, "Jitter as a fraction of a link's latency.", type=float)
@_opt("--bandwidth", _D.bandwidth, "Uplink bytes per second per host.", type=float)
@_opt("--queue-bytes", _D.queue_bytes, "Uplink queue per host (tail drop).", type=int)
@_opt("--nat-timeout", _D.nat_timeout, "Idle seconds before a NAT mapping expires.", type=float)
@_opt("--max-connections", _D.max_connections, "Engine max_connections.", type=int)
@_opt("--bootstrap-connections", 0, "Bootstrap max_connections (0: every node).", type=int)
@_opt("--heartbeat", _D.heartbeat_interval, "Engine heartbeat_interval.", type=float)
@_opt("--connection-timeout", _D.connection_timeout, "Engine connection_timeout.", type=float)
@click.option("--profile", is_flag=True, help="Time the engine's calls apart from the simulator's.")
@click.option("--quiet", "-q", is_flag=True)
def main(json_path: str | None, profile: bool, quiet: bool, **opts: Any) -> None:
    """Simulate NODES real p2pfast engines for DURATION virtual seconds from SEED."""
    try:
        scenario = scenario_from_options(opts)
    except ScenarioError as exc:
        click.echo(f"p2pfast-sim: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(_run(scenario, json_path, profile, quiet))
