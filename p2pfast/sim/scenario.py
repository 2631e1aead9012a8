"""A simulation's parameters: everything that, with the seed, fixes the whole run."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any

#: NAT kinds: ``open`` (public address), ``eim`` (endpoint-independent mapping and filtering,
#: "full cone"), ``adf`` (endpoint-independent mapping, address-dependent filtering) and
#: ``sym`` (a new mapping per destination, filtering by address and port: "symmetric").
NAT_KINDS = ("open", "eim", "adf", "sym")
#: Named NAT mixes for ``--nat``.
NAT_PRESETS: dict[str, dict[str, float]] = {
    "none": {"open": 1.0},
    # Roughly what measurement studies of home and mobile networks report: most hosts behind a
    # cone NAT, a minority public, a sizeable minority (carrier-grade / mobile) symmetric.
    "realistic": {"open": 0.2, "eim": 0.3, "adf": 0.3, "sym": 0.2},
}
#: Hostile behaviours, assigned to hostile nodes in turn.
HOSTILE_KINDS = ("flooder", "spoofer", "liar")


class ScenarioError(ValueError):
    """A scenario parameter is out of range (``reason`` names it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_nat_mix(text: str) -> dict[str, float]:
    """``realistic``, ``none`` or ``open=0.5,eim=0.2,adf=0.2,sym=0.1`` → normalised fractions."""
    text = text.strip()
    if text in NAT_PRESETS:
        return dict(NAT_PRESETS[text])
    mix: dict[str, float] = {}
    for part in text.split(","):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in NAT_KINDS:
            raise ScenarioError(
                "nat",
                f"--nat: expected a preset ({', '.join(NAT_PRESETS)}) or kind=fraction pairs "
                f"with kinds {', '.join(NAT_KINDS)}, got {text!r}",
            )
        try:
            fraction = float(value)
        except ValueError:
            raise ScenarioError("nat", f"--nat: {value!r} is not a number") from None
        if not 0.0 <= fraction <= 1.0:
            raise ScenarioError("nat", f"--nat: fraction for {kind} must be in [0, 1]")
        mix[kind] = fraction
    total = sum(mix.values())
    if total <= 0:
        raise ScenarioError("nat", "--nat: fractions sum to zero")
    return {kind: mix[kind] / total for kind in NAT_KINDS if mix.get(kind)}


def format_nat_mix(mix: dict[str, float]) -> str:
    for name, preset in NAT_PRESETS.items():
        if mix == preset:
            return name
    return ",".join(f"{kind}={mix[kind]!r}" for kind in NAT_KINDS if kind in mix)


@dataclass(frozen=True)
class Scenario:
    """One run: the network, the workload and the engine settings of every node."""

    nodes: int = 20
    duration: float = 60.0
    seed: int = 0
    #: Per-datagram probabilities.
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    #: Fraction of nodes that crash and restart per hour of virtual time.
    churn: float = 0.0
    nat: dict[str, float] = field(default_factory=lambda: {"open": 1.0})
    hostile: int = 0
    hostile_kinds: tuple[str, ...] = HOSTILE_KINDS
    #: Partition episodes: the network splits in two for ``partition_seconds``, then heals.
    partitions: int = 0
    partition_seconds: float = 20.0
    bootstraps: int = 1
    #: Reliable messages per node per second (half direct to a peer, half to any node).
    rate: float = 0.05
    #: Seconds over which non-bootstrap nodes join.
    join_spread: float = 10.0
    #: Per-host access latency range (ms); a link's latency is the sum of both ends'.
    latency_ms: tuple[float, float] = (2.0, 40.0)
    #: Jitter as a fraction of a link's latency.
    jitter: float = 0.1
    #: Uplink bandwidth per host (bytes/s) and its queue (bytes); tail drop beyond.
    bandwidth: float = 1_250_000.0
    queue_bytes: int = 256 * 1024
    #: Idle seconds after which a NAT forgets a mapping.
    nat_timeout: float = 120.0
    # Engine settings given to every node.
    max_connections: int = 100
    #: max_connections of the bootstrap nodes (0: enough for every node).
    bootstrap_connections: int = 0
    heartbeat_interval: float = 15.0
    connection_timeout: float = 45.0

    def __post_init__(self) -> None:
        def check(ok: bool, reason: str, message: str) -> None:
            if not ok:
                raise ScenarioError(reason, message)

        check(
            type(self.nodes) is int and 2 <= self.nodes <= 1_000_000,
            "nodes",
            "--nodes: expected 2..1000000",
        )
        check(self.duration > 0, "duration", "--duration: expected seconds > 0")
        check(type(self.seed) is int and self.seed >= 0, "seed", "--seed: expected an integer >= 0")
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, name, f"--{name}: expected a probability in [0, 1)")
        check(self.churn >= 0, "churn", "--churn: expected restarts per node per hour >= 0")
        check(0 <= self.hostile < self.nodes, "hostile", "--hostile: expected 0..nodes-1")
        check(
            all(kind in HOSTILE_KINDS for kind in self.hostile_kinds) and bool(self.hostile_kinds),
            "hostile_kinds",
            f"hostile kinds must be among {', '.join(HOSTILE_KINDS)}",
        )
        check(
            1 <= self.bootstraps <= max(1, self.nodes - self.hostile),
            "bootstraps",
            "--bootstraps: 1..honest nodes",
        )
        check(
            self.partitions >= 0 and self.partition_seconds > 0,
            "partitions",
            "--partitions: expected >= 0",
        )
        check(self.rate >= 0, "rate", "--rate: expected messages per node per second >= 0")
        check(
            self.bandwidth > 0 and self.queue_bytes > 0,
            "bandwidth",
            "bandwidth and queue must be > 0",
        )
        check(set(self.nat) <= set(NAT_KINDS) and sum(self.nat.values()) > 0, "nat", "bad NAT mix")

    @property
    def honest(self) -> int:
        return self.nodes - self.hostile

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["latency_ms"] = list(self.latency_ms)
        data["hostile_kinds"] = list(self.hostile_kinds)
        return data

    def replay_command(self) -> str:
        """The one command that reruns this scenario (defaults left out)."""
        default = Scenario()
        args = ["p2pfast-sim", "--nodes", str(self.nodes), "--duration", f"{self.duration:g}"]
        args += ["--seed", str(self.seed), "--loss", f"{self.loss:g}", "--churn", f"{self.churn:g}"]
        if self.nat != default.nat:
            args += ["--nat", format_nat_mix(self.nat)]
        if self.hostile:
            args += ["--hostile", str(self.hostile)]
        for name, flag in _EXTRA_FLAGS.items():
            value = getattr(self, name)
            if value != getattr(default, name):
                if isinstance(value, tuple):
                    value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
                text = (
                    value
                    if isinstance(value, str)
                    else str(value)
                    if isinstance(value, int)
                    else f"{value:g}"
                )
                args += [flag, text]
        return shlex.join(args)


#: Scenario fields with a CLI flag of their own (beyond the core flags), for replay commands.
_EXTRA_FLAGS = {
    "hostile_kinds": "--hostile-kinds",
    "duplicate": "--duplicate",
    "reorder": "--reorder",
    "partitions": "--partitions",
    "partition_seconds": "--partition-seconds",
    "bootstraps": "--bootstraps",
    "rate": "--rate",
    "join_spread": "--join-spread",
    "latency_ms": "--latency-ms",
    "jitter": "--jitter",
    "bandwidth": "--bandwidth",
    "queue_bytes": "--queue-bytes",
    "nat_timeout": "--nat-timeout",
    "max_connections": "--max-connections",
    "bootstrap_connections": "--bootstrap-connections",
    "heartbeat_interval": "--heartbeat",
    "connection_timeout": "--connection-timeout",
}
