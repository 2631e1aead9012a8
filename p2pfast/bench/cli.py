"""``p2pfast-bench``: the command line (options, checks, rounds, output)."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import socket
import sys
import time
from typing import Any

import click

from .._version import __version__
from .common import ACK_MODES, NETWORK_ID, WORKLOADS, BenchError
from .report import (
    command_line,
    compute_ratios,
    format_ratios,
    format_table,
    machine_info,
    median_ratios,
)
from .run import HANDSHAKE_CONCURRENCY, LOSS_TIMEOUT, WARMUP, Progress, RunSpec, run_one


def raise_nofile(needed: int) -> None:
    """One socket per peer: raise the soft RLIMIT_NOFILE to ``needed`` (within the hard one)."""
    if sys.platform == "win32":  # pragma: no cover - no such limit to raise
        return
    else:  # (an else, so that type checkers for Windows skip it)
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if needed <= soft:
            return
        new = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        if hard != resource.RLIM_INFINITY and needed > hard:
            raise BenchError(
                f"{needed} file descriptors needed, the hard limit is {hard}: use fewer --peers"
            )
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError) as exc:
            raise BenchError(f"cannot raise RLIMIT_NOFILE to {new}: {exc}") from None


def _parse_target(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise click.BadParameter(f"cannot resolve {host!r}: {exc.strerror}") from None
    return infos[0][4][0], int(port)


def _check_network_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value:
        raise click.BadParameter("expected a non-empty network id")
    return value


class _BenchClickError(click.ClickException):
    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"p2pfast-bench: error: {self.format_message()}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="p2pfast-bench")
@click.option(
    "--peers",
    "-n",
    type=click.IntRange(1, 19_000),
    default=None,
    help="Simulated peers (one UDP socket each) [default: 1000; bulk: sender nodes, 1].",
)
@click.option(
    "--duration",
    "-d",
    type=click.FloatRange(0.1, 3600),
    default=5.0,
    help="Seconds of measured closed-loop traffic (after a 0.5 s warm-up).",
)
@click.option(
    "--window",
    "-w",
    type=click.IntRange(1, 1024),
    default=4,
    help="Messages each sending peer keeps in flight "
    "(1000 peers x 4 fits the server's 4 MiB socket buffer).",
)
@click.option(
    "--size",
    "-s",
    type=click.IntRange(0, 1_048_576),
    default=None,
    help="Characters of the Data blob (at most 60000) [default: 64]; bulk: bytes of each "
    "encoded Data message at most [default: 1048576].",
)
@click.option(
    "--workload",
    type=click.Choice(WORKLOADS),
    default="data",
    help="data: Data+Ack; ping: Ping/Pong; routed: A->server->B; bulk: large messages "
    "node to node, against TCP on uvloop.",
)
@click.option(
    "--count", type=click.IntRange(1, 1_000_000), default=64, help="bulk: messages per peer."
)
@click.option("--loss", type=click.FloatRange(0, 0.9), default=0.0, help="bulk: relay loss odds.")
@click.option(
    "--duplicate", type=click.FloatRange(0, 1), default=0.0, help="bulk: relay duplication odds."
)
@click.option(
    "--reorder", type=click.FloatRange(0, 1), default=0.0, help="bulk: relay reordering odds."
)
@click.option(
    "--rate", type=click.FloatRange(0.01, 100_000), help="bulk: relay bandwidth limit, MB/s."
)
@click.option(
    "--queue",
    type=click.IntRange(0, 1 << 30),
    default=262_144,
    help="bulk: relay queue bytes (tail-drop) with --rate.",
)
@click.option(
    "--datagram-size",
    type=click.IntRange(1024, 65_507),
    help="bulk: max_datagram_size of both nodes.",
)
@click.option("--no-pmtu", is_flag=True, help="bulk: pmtu_discovery off on both nodes.")
@click.option(
    "--path-mtu",
    type=click.IntRange(68, 65_507),
    help="bulk: the relay drops datagrams over this size (a path-MTU black hole).",
)
@click.option(
    "--compare-pure", is_flag=True, help="bulk: also run the pure implementation (= --impl both)."
)
@click.option("--no-baseline", is_flag=True, help="bulk: skip the TCP transfer.")
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=300.0,
    help="bulk: seconds each transfer may take.",
)
@click.option(
    "--acks",
    type=click.Choice(ACK_MODES),
    default="plain",
    help="data: plain = one Ack per Data; coalesced = announce 'p2pfast', "
    "one range Ack per peer per server I/O batch.",
)
@click.option(
    "--impl",
    "impl",
    type=click.Choice(("compiled", "pure", "both")),
    default="compiled",
    help="Server implementation (P2PFAST_NO_EXTENSIONS); with --target only a label.",
)
@click.option(
    "--baseline", is_flag=True, help="Also run the minimal uvloop echo server under the same load."
)
@click.option(
    "--target",
    callback=_parse_target,
    metavar="HOST:PORT",
    help="Benchmark a running server instead of starting one.",
)
@click.option(
    "--network-id",
    default=NETWORK_ID,
    callback=_check_network_id,
    help="Network id the peers present (and the server the bench starts uses): "
    "a --target server's network.",
)
@click.option(
    "--target-pid", type=int, help="PID of the --target server, for its CPU time and RSS."
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, writable=True),
    help="Write all results, ratios, the machine and the command line here.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 100),
    default=1,
    help="Run everything this many times, interleaved; "
    "ratios are the median of the per-round ratios.",
)
@click.option("--seed", type=int, help="Seed for node ids (default: random).")
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress line on stderr (also off when stderr is not a terminal).",
)
def main(**options: Any) -> None:
    """Closed-loop benchmark of p2pfast-server: handshakes/s, messages/s, latency, and the
    server's own CPU time per message, optionally against a do-nothing uvloop echo baseline."""
    try:
        _main(**options)
    except BenchError as exc:
        raise _BenchClickError(str(exc)) from None
    except KeyboardInterrupt:
        raise _BenchClickError("interrupted") from None


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _main(
    peers: int,
    duration: float,
    window: int,
    size: int,
    workload: str,
    acks: str,
    impl: str,
    baseline: bool,
    target: tuple[str, int] | None,
    network_id: str,
    target_pid: int | None,
    json_file: str | None,
    rounds: int,
    seed: int | None,
    no_progress: bool,
    **bulk: Any,
) -> None:
    if workload == "bulk":
        _bulk(peers or 1, window, size, impl, json_file, seed, rounds, bulk)
        return
    peers = peers or 1000
    size = 64 if size is None else size
    if size > 60_000:
        raise BenchError(f"--size {size}: at most 60000 for the {workload} workload")
    if any(
        bulk[k]
        for k in ("loss", "duplicate", "reorder", "rate", "datagram_size", "no_pmtu", "path_mtu")
    ):
        raise BenchError(
            "--loss/--duplicate/--reorder/--rate/--datagram-size/--no-pmtu/--path-mtu: bulk only"
        )
    if workload == "routed" and peers < 2:
        raise BenchError("the routed workload needs --peers 2 or more")
    if acks != "plain" and workload != "data":
        raise BenchError(f"--acks {acks} applies to the data workload only")
    if target_pid is not None and target is None:
        raise BenchError("--target-pid needs --target")
    raise_nofile(peers + 64)
    # SIGTERM unwinds like Ctrl-C, so the servers we started are stopped, never orphaned.
    signal.signal(signal.SIGTERM, _terminate)
    progress = Progress(not no_progress and sys.stderr.isatty())
    rng = random.Random(seed)
    impls = ["compiled", "pure"] if impl == "both" else [impl]
    specs = [
        RunSpec(kind="p2pfast", impl=i, workload=workload, peers=peers, duration=duration,
                window=window, size=size, rng=rng, target=target, target_pid=target_pid, acks=acks,
                network_id=network_id)
        for i in impls
    ]  # fmt: skip
    if baseline:
        specs.append(
            RunSpec(kind="baseline", impl="baseline", workload=workload, peers=peers,
                    duration=duration, window=window, size=size, rng=rng)
        )  # fmt: skip
    runs: list[dict[str, Any]] = []
    for round_no, spec in ((k, spec) for k in range(1, rounds + 1) for spec in specs):
        result = run_one(spec, progress)
        result["round"] = round_no
        if (
            spec.kind == "p2pfast"
            and spec.target is None
            and result.get("extensions") not in (None, spec.impl)
        ):
            click.echo(
                f"p2pfast-bench: warning: --impl {spec.impl} asked, but the server runs the "
                f"{result['extensions']} implementation (compiled extensions not built?)",
                err=True,
            )
        runs.append(result)
    per_round = [compute_ratios([r for r in runs if r["round"] == k]) for k in range(1, rounds + 1)]
    ratios = per_round[0] if rounds == 1 else median_ratios(per_round)
    click.echo(format_table(runs))
    text = format_ratios(ratios, rounds)
    if text:
        click.echo(text)
    if json_file:
        doc = {
            "command": command_line(),
            "argv": list(sys.argv),
            "machine": machine_info(),
            "options": {
                "peers": peers, "duration": duration, "window": window, "size": size,
                "workload": workload, "acks": acks, "impl": impl, "baseline": baseline,
                "rounds": rounds,
                "target": None if target is None else f"{target[0]}:{target[1]}",
                "target_pid": target_pid, "network_id": network_id, "seed": seed,
                "warmup": WARMUP, "loss_timeout": LOSS_TIMEOUT,
                "handshake_concurrency": HANDSHAKE_CONCURRENCY,
            },
            "runs": runs,
            "ratios": ratios,
            "ratios_per_round": per_round,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }  # fmt: skip
        try:
            with open(json_file, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
        except OSError as exc:
            raise BenchError(f"cannot write {json_file}: {exc}") from None


def _bulk(
    peers: int,
    window: int,
    size: int | None,
    impl: str,
    json_file: str | None,
    seed: int | None,
    rounds: int,
    opts: dict[str, Any],
) -> None:
    """``--workload bulk``: see :mod:`p2pfast.bench.bulk`."""
    from .bulk import BulkSpec, format_bulk, run_bulk

    signal.signal(signal.SIGTERM, _terminate)
    spec = BulkSpec(
        size=1_048_576 if size is None else size, count=opts["count"], peers=peers,
        window=window, loss=opts["loss"], duplicate=opts["duplicate"], reorder=opts["reorder"],
        rate_mbps=opts["rate"], queue=opts["queue"], datagram_size=opts["datagram_size"],
        pmtu=not opts["no_pmtu"], path_mtu=opts["path_mtu"], baseline=not opts["no_baseline"],
        timeout=opts["timeout"], seed=1 if seed is None else seed,
    )  # fmt: skip
    impls = ["compiled", "pure"] if impl == "both" or opts["compare_pure"] else [impl]
    doc = run_bulk(spec, impls, rounds)
    click.echo(format_bulk(doc, spec))
    if json_file:
        doc.update(command=command_line(), argv=list(sys.argv), machine=machine_info())
        doc.update(spec=dataclasses.asdict(spec), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            with open(json_file, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
        except OSError as exc:
            raise BenchError(f"cannot write {json_file}: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    main()
