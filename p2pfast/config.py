"""Node configuration: the seed's ``config.json`` keys plus p2pfast's own, each with a default.

Sources, lowest precedence first: built-in defaults, a JSON file, ``P2PFAST_*`` environment
variables, explicit overrides (CLI flags). Every bad value raises :class:`ConfigError` with a
one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from .addr import parse_addr
from .errors import ConfigError

#: Keys of the Rust server's config.json that p2pfast accepts and ignores.
RUST_ONLY_KEYS = frozenset({"ice", "stun_server", "nat_detection", "allow_symmetric_nat_relay"})


@dataclass
class Config:
    """Everything a node needs to run. Times are in seconds."""

    listen_address: str = "127.0.0.1:8080"
    max_connections: int = 100
    heartbeat_interval: float = 30.0
    connection_timeout: float = 60.0
    discovery_port_range: tuple[int, int] = (8081, 8090)
    enable_discovery: bool = True
    network_id: str = "p2p_default"
    peerlist_broadcast_debounce_ms: int = 300
    #: Name announced in our NodeInfo; default ``p2p_node_<port>`` as the Rust server does.
    node_name: str | None = None
    #: Fixed node id (UUID); default a random one per start.
    node_id: str | None = None
    #: Echo plain Data back (``{echo, timestamp}``) when no application consumes it.
    echo: bool = True
    #: Largest datagram built toward a p2pfast peer (1,200 fits every IPv6 path): larger
    #: messages are split into fragments; with ``pmtu_discovery`` the size grows per peer up
    #: to what its path carries (never above this). Peer lists are split to it too.
    max_datagram_size: int = 1200
    #: Probe each p2pfast peer's path for larger datagrams (RFC 8899) when it is sent fragments.
    pmtu_discovery: bool = True
    #: Reassembly memory (bytes of large messages received and not yet consumed by the
    #: application) one peer may be granted, and the whole node at most.
    reassembly_peer_limit: int = 4 * 1024 * 1024
    reassembly_node_limit: int = 64 * 1024 * 1024
    #: Seconds an incomplete large message may go without a new fragment before it is dropped.
    reassembly_timeout: float = 30.0
    #: ``max_hops`` put on routed Data this node originates.
    max_hops: int = 8
    #: Reliability: messages in flight per peer, retransmissions before a send fails.
    send_window: int = 256
    max_retries: int = 8
    rto_initial: float = 1.0
    rto_min: float = 0.1
    rto_max: float = 60.0
    #: Width of the per-peer duplicate filter (a power of two).
    duplicate_window: int = 1024
    #: How long a sequence gap may last before a Retransmit request is sent.
    gap_delay: float = 0.05
    #: Bounded cache of routed-message ids already seen.
    route_cache_size: int = 65_536
    route_cache_ttl: float = 300.0
    #: Bounded routing table (routes learned from discovery), and the share one peer may teach.
    max_routes: int = 65_536
    max_routes_per_peer: int = 4096
    #: Seconds an outgoing handshake is retried (with backoff) before it fails.
    connect_timeout: float = 10.0
    #: Seconds a routed reliable send waits for the destination's end-to-end confirmation.
    delivery_timeout: float = 10.0
    #: Seconds after a disconnect before discovery may connect to that address again.
    reconnect_cooldown: float = 30.0
    #: Seconds between one-line statistics in the log (0 = never).
    stats_interval: float = 60.0
    #: ``ip:port`` serving Prometheus metrics at ``/metrics`` over HTTP (None = off).
    metrics_address: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # -- validation --------------------------------------------------------------------

    def validate(self) -> None:
        """Check every value; raise ConfigError naming the first bad key."""
        _address("listen_address", self.listen_address)
        _positive_int("max_connections", self.max_connections)
        _positive_number("heartbeat_interval", self.heartbeat_interval)
        _positive_number("connection_timeout", self.connection_timeout)
        if self.connection_timeout <= self.heartbeat_interval:
            raise ConfigError(
                f"connection_timeout ({self.connection_timeout:g}s) must exceed "
                f"heartbeat_interval ({self.heartbeat_interval:g}s): idle peers would be "
                "evicted before they are pinged"
            )
        rng = self.discovery_port_range
        if (
            not isinstance(rng, (list, tuple))
            or len(rng) != 2
            or not all(type(p) is int and 1 <= p <= 65535 for p in rng)
            or rng[0] > rng[1]
        ):
            raise ConfigError(
                f"discovery_port_range: expected [low, high] ports with low <= high, got {rng!r}"
            )
        self.discovery_port_range = (rng[0], rng[1])
        for key in ("enable_discovery", "echo"):
            if type(getattr(self, key)) is not bool:
                raise ConfigError(f"{key}: expected true or false, got {getattr(self, key)!r}")
        if not isinstance(self.network_id, str) or not 0 < len(self.network_id) <= 64:
            raise ConfigError("network_id: expected a non-empty string of at most 64 characters")
        if self.node_name is not None and (
            not isinstance(self.node_name, str) or not 0 < len(self.node_name) <= 64
        ):
            raise ConfigError("node_name: expected a non-empty string of at most 64 characters")
        if self.node_id is not None:
            from ._codec_py import normalize_uuid
            from .errors import ProtocolError

            try:
                self.node_id = normalize_uuid(self.node_id)
            except ProtocolError:
                raise ConfigError(f"node_id: not a UUID: {self.node_id!r}") from None
        _non_negative_int("peerlist_broadcast_debounce_ms", self.peerlist_broadcast_debounce_ms)
        _positive_int("max_datagram_size", self.max_datagram_size)
        if not 1200 <= self.max_datagram_size <= 65_507:
            raise ConfigError("max_datagram_size: expected 1200..65507 bytes")
        if type(self.pmtu_discovery) is not bool:
            raise ConfigError(
                f"pmtu_discovery: expected true or false, got {self.pmtu_discovery!r}"
            )
        _positive_int("reassembly_peer_limit", self.reassembly_peer_limit)
        _positive_int("reassembly_node_limit", self.reassembly_node_limit)
        if self.reassembly_peer_limit < 1024 * 1024:
            raise ConfigError(
                "reassembly_peer_limit: expected at least 1048576 (one whole 1 MiB message)"
            )
        if self.reassembly_node_limit < self.reassembly_peer_limit:
            raise ConfigError("reassembly_node_limit: must not be below reassembly_peer_limit")
        _positive_number("reassembly_timeout", self.reassembly_timeout)
        _positive_int("max_hops", self.max_hops)
        _positive_int("send_window", self.send_window)
        _non_negative_int("max_retries", self.max_retries)
        for key in ("rto_initial", "rto_min", "rto_max", "gap_delay", "route_cache_ttl"):
            _positive_number(key, getattr(self, key))
        if self.rto_min > self.rto_max:
            raise ConfigError("rto_min: must not exceed rto_max")
        w = self.duplicate_window
        _positive_int("duplicate_window", w)
        if w < 64 or w & (w - 1) or w > 1 << 20:
            raise ConfigError("duplicate_window: expected a power of two from 64 to 1048576")
        if self.send_window > w:
            raise ConfigError("send_window: must not exceed duplicate_window")
        _positive_int("route_cache_size", self.route_cache_size)
        _positive_int("max_routes", self.max_routes)
        _positive_int("max_routes_per_peer", self.max_routes_per_peer)
        _positive_number("connect_timeout", self.connect_timeout)
        _positive_number("delivery_timeout", self.delivery_timeout)
        if type(self.reconnect_cooldown) not in (int, float) or self.reconnect_cooldown < 0:
            raise ConfigError("reconnect_cooldown: expected a number >= 0")
        if type(self.stats_interval) not in (int, float) or self.stats_interval < 0:
            raise ConfigError("stats_interval: expected a number >= 0")
        if self.metrics_address is not None:
            _address("metrics_address", self.metrics_address)

    def advisories(self) -> list[str]:
        """Settings that work but probably not as intended: one line each, for a warning."""
        notes: list[str] = []
        if self.connection_timeout < 2 * self.heartbeat_interval:
            notes.append(
                f"connection_timeout ({self.connection_timeout:g}s) is under twice "
                f"heartbeat_interval ({self.heartbeat_interval:g}s): a quiet peer may be "
                "evicted before it is pinged"
            )
        if not self.rto_min <= self.rto_initial <= self.rto_max:
            clamped = min(max(self.rto_initial, self.rto_min), self.rto_max)
            notes.append(
                f"rto_initial ({self.rto_initial:g}s) is outside rto_min..rto_max "
                f"({self.rto_min:g}..{self.rto_max:g}s): {clamped:g}s is used"
            )
        if self.gap_delay >= self.rto_initial:
            notes.append(
                f"gap_delay ({self.gap_delay:g}s) is not below rto_initial "
                f"({self.rto_initial:g}s): senders retransmit before a gap is reported"
            )
        return notes

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "config") -> Config:
        """Build from a dict (e.g. parsed config.json); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in RUST_ONLY_KEYS:
                continue
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r}")
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Config:
        """Load a JSON config file (the seed's format)."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r}: expected a JSON object")
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Config:
        """Defaults < file < ``P2PFAST_*`` environment < overrides (None values are skipped)."""
        base = cls.from_file(path) if path is not None else cls()
        merged = dataclasses.asdict(base)
        merged.update(env_overrides(os.environ if env is None else env))
        merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_mapping(merged, source="configuration")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["discovery_port_range"] = list(self.discovery_port_range)
        return data


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``P2PFAST_MAX_CONNECTIONS=5`` → ``{"max_connections": 5}``, converted by the field's type."""
    out: dict[str, Any] = {}
    for f in fields(Config):
        name = "P2PFAST_" + f.name.upper()
        if name not in env:
            continue
        text = env[name]
        default = f.default
        try:
            if isinstance(default, bool):
                lowered = text.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(text)
                out[f.name] = lowered in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                out[f.name] = int(text)
            elif isinstance(default, float):
                out[f.name] = float(text)
            elif isinstance(default, tuple):
                low, high = text.replace(",", "-").split("-")
                out[f.name] = (int(low), int(high))
            else:
                out[f.name] = text
        except ValueError:
            raise ConfigError(f"{name}: invalid value {text!r}") from None
    return out


#: ``P2PFAST_*`` variables that are not configuration keys but are read elsewhere.
OTHER_ENV_VARS = frozenset(
    {"P2PFAST_NO_EXTENSIONS", "P2PFAST_REQUIRE_EXTENSIONS", "P2PFAST_LOG_LEVEL"}
)


def unknown_env_vars(env: Mapping[str, str]) -> list[str]:
    """One warning line per ``P2PFAST_*`` variable p2pfast does not read, with a guess."""
    known = {"P2PFAST_" + f.name.upper() for f in fields(Config)} | OTHER_ENV_VARS
    notes = []
    for name in sorted(env):
        if not name.startswith("P2PFAST_") or name in known:
            continue
        # Compare what follows the prefix, or every name would look alike.
        suffixes = sorted(k[len("P2PFAST_") :] for k in known)
        guess = difflib.get_close_matches(name[len("P2PFAST_") :], suffixes, n=1, cutoff=0.6)
        hint = f" (did you mean P2PFAST_{guess[0]}?)" if guess else ""
        notes.append(f"unknown environment variable {name} is ignored{hint}")
    return notes


def _address(key: str, text: Any) -> None:
    """Check an ``ip:port`` value; the error says how to write what was probably meant."""
    try:
        parse_addr(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _positive_int(key: str, value: Any) -> None:
    if type(value) is not int or value <= 0:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")


def _non_negative_int(key: str, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ConfigError(f"{key}: expected an integer >= 0, got {value!r}")


def _positive_number(key: str, value: Any) -> None:
    if type(value) not in (int, float) or not value > 0:
        raise ConfigError(f"{key}: expected a number > 0, got {value!r}")


__all__ = ["Config", "env_overrides", "field", "unknown_env_vars"]
