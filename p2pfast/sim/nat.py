"""NAT boxes: one per host behind a NAT, each with its own public address.

Three behaviours (RFC 4787 terms): ``eim`` maps an inside endpoint to one public port for every
destination and lets anyone send to it; ``adf`` keeps that mapping but only lets in hosts the
inside endpoint has sent to (any port); ``sym`` makes a new mapping per destination address
and port and only lets that destination in. Mappings expire after ``timeout`` ticks without
outbound traffic. Ports are handed out in sequence, so the boxes are deterministic.
"""

from __future__ import annotations

from typing import Any

#: A UDP address as the engine sees it.
Addr = tuple[str, int]

#: First public port a NAT box hands out.
FIRST_PORT = 20_000


class Mapping:
    __slots__ = ("allowed", "inside", "last_out", "public_port", "remote")

    def __init__(self, public_port: int, inside: Addr, remote: Addr | None, last_out: int) -> None:
        self.public_port = public_port
        self.inside = inside
        self.remote = remote  # the one destination of a symmetric mapping
        self.allowed: set[str] = set()  # remote hosts let in (address-dependent filtering)
        self.last_out = last_out


class NatBox:
    """Translates one inside host's datagrams; ``host`` is the inside host's record."""

    __slots__ = (
        "_by_key",
        "_by_port",
        "_next_port",
        "dropped",
        "host",
        "kind",
        "public_ip",
        "timeout",
    )

    def __init__(self, kind: str, public_ip: str, host: Any, timeout: int) -> None:
        if kind not in ("eim", "adf", "sym"):
            raise ValueError(f"unknown NAT kind {kind!r}")
        self.kind = kind
        self.public_ip = public_ip
        self.host = host
        self.timeout = timeout
        self._by_key: dict[Any, Mapping] = {}
        self._by_port: dict[int, Mapping] = {}
        self._next_port = FIRST_PORT
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._by_port)

    def outbound(self, inside: Addr, dst: Addr, tick: int) -> tuple[str, int]:
        """The public source address of a datagram from ``inside`` to ``dst``."""
        key: Any = (inside, dst) if self.kind == "sym" else inside
        mapping = self._by_key.get(key)
        if mapping is not None and tick - mapping.last_out > self.timeout:
            self._forget(key, mapping)
            mapping = None
        if mapping is None:
            port = self._next_port
            self._next_port = port + 1 if port < 65_535 else FIRST_PORT
            old = self._by_port.get(port)
            if old is not None:  # wrapped round: the oldest mapping on that port goes
                self._forget((old.inside, old.remote) if self.kind == "sym" else old.inside, old)
            mapping = Mapping(port, inside, dst if self.kind == "sym" else None, tick)
            self._by_key[key] = mapping
            self._by_port[port] = mapping
        mapping.last_out = tick
        if self.kind == "adf":
            mapping.allowed.add(dst[0])
        return self.public_ip, mapping.public_port

    def inbound(self, src: Addr, public_port: int, tick: int) -> Addr | None:
        """The inside address a datagram from ``src`` to ``public_port`` reaches, or None."""
        mapping = self._by_port.get(public_port)
        if mapping is None:
            self.dropped += 1
            return None
        if tick - mapping.last_out > self.timeout:
            self._forget(
                (mapping.inside, mapping.remote) if self.kind == "sym" else mapping.inside, mapping
            )
            self.dropped += 1
            return None
        kind = self.kind
        if (kind == "adf" and src[0] not in mapping.allowed) or (
            kind == "sym" and src != mapping.remote
        ):
            self.dropped += 1
            return None
        return mapping.inside

    def _forget(self, key: Any, mapping: Mapping) -> None:
        self._by_key.pop(key, None)
        if self._by_port.get(mapping.public_port) is mapping:
            del self._by_port[mapping.public_port]
