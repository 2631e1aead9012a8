"""Hostile nodes: flooders, spoofers and liars, each acting on its own seeded schedule.

- A **flooder** sends junk, oversized and pre-handshake requests from one address that never
  completes a handshake.
- A **spoofer** sends HandshakeRequests, Pings and DiscoveryRequests whose source addresses it
  invents (no host ever holds them): whatever the victims answer lands nowhere, and the
  amplification invariant weighs it against what the spoofer sent in that address's name.
- A **liar** is a real engine node that joins normally, then keeps sending its peers
  DiscoveryResponses listing invented nodes at invented addresses and real nodes' ids at
  invented addresses.
"""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING

from .._speedups import codec
from ..protocol import MessageType
from .clock import TICKS_PER_SECOND
from .network import NODE_PORT

if TYPE_CHECKING:
    from .network import Host
    from .simulator import Simulation

T_HANDSHAKE_REQUEST = int(MessageType.HandshakeRequest)
T_PING = int(MessageType.Ping)
T_DISCOVERY_REQUEST = int(MessageType.DiscoveryRequest)
T_DISCOVERY_RESPONSE = int(MessageType.DiscoveryResponse)
T_DATA = int(MessageType.Data)

#: First octets of the address pools hostile nodes invent (never bound by any host).
SPOOF_OCTET = 254
LIE_OCTET = 253
#: Seconds between two actions of a hostile node.
INTERVAL = 0.5
LIAR_INTERVAL = 10.0
#: Invented entries per lying DiscoveryResponse.
LIES_PER_RESPONSE = 16


def seeded_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def invented_addr(rng: random.Random, octet: int) -> tuple[str, int]:
    return (f"127.{octet}.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1024, 65536))


class Hostile:
    """Base class: ``act`` runs every ``interval`` seconds of virtual time."""

    interval = INTERVAL

    def __init__(self, host: Host, rng: random.Random) -> None:
        self.host = host
        self.rng = rng
        self.sent = 0
        self.sent_bytes = 0

    def act(self, sim: Simulation, tick: int) -> None:
        raise NotImplementedError

    def _victim(self, sim: Simulation) -> Host | None:
        """A live honest host with a public address (a NAT hides the others)."""
        candidates = sim.public_hosts
        for _ in range(8):
            host = candidates[self.rng.randrange(len(candidates))]
            if host.up:
                return host
        return None

    def _inject(
        self, sim: Simulation, victim: Host, data: bytes, src: tuple[str, int], tick: int
    ) -> None:
        self.sent += 1
        self.sent_bytes += len(data)
        delay = self.host.access + victim.access
        sim.network.inject(victim.ip, data, src, victim.addr, tick, delay)


class Flooder(Hostile):
    def act(self, sim: Simulation, tick: int) -> None:
        victim = self._victim(sim)
        if victim is None:
            return
        rng = self.rng
        ts = tick // TICKS_PER_SECOND
        choice = rng.randrange(5)
        if choice == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
        elif choice == 1:
            data = codec.encode(
                T_DATA, {"junk": "x" * rng.randrange(1, 500)}, ts, id=seeded_uuid(rng)
            )
        elif choice == 2:
            data = codec.encode_raw(T_PING, b"null", ts, seeded_uuid(rng), None, None, False, None)
        elif choice == 3:
            data = codec.encode_raw(
                T_DISCOVERY_REQUEST, b"null", ts, seeded_uuid(rng), None, None, False, None
            )
        else:
            data = b'{"id":"' + b"z" * 2000 + b'"}'
        self._inject(sim, victim, data, self.host.addr, tick)


class Spoofer(Hostile):
    def act(self, sim: Simulation, tick: int) -> None:
        victim = self._victim(sim)
        if victim is None:
            return
        rng = self.rng
        ts = tick // TICKS_PER_SECOND
        src = invented_addr(rng, SPOOF_OCTET)
        choice = rng.randrange(3)
        if choice == 0:
            node_id = seeded_uuid(rng)
            info = {
                "capabilities": ["handshake", "discovery", "data_transfer", "reliable", "p2pfast"],
                "id": node_id,
                "listen_addr": f"{src[0]}:{src[1]}",
                "metadata": {},
                "name": "spoofed",
                "network_id": sim.network_id,
                "version": "0.3.0",
            }
            data = codec.encode(
                T_HANDSHAKE_REQUEST, info, ts, id=seeded_uuid(rng), requires_ack=True
            )
        elif choice == 1:
            data = codec.encode_raw(T_PING, b"null", ts, seeded_uuid(rng), None, None, False, None)
        else:
            data = codec.encode_raw(
                T_DISCOVERY_REQUEST, b"null", ts, seeded_uuid(rng), None, None, False, None
            )
        self._inject(sim, victim, data, src, tick)


class Liar(Hostile):
    """Runs a real engine (the simulator drives it like any node) and lies on top of it."""

    interval = LIAR_INTERVAL

    def act(self, sim: Simulation, tick: int) -> None:
        host = self.host
        node = host.node
        if not host.up or node is None:
            return
        rng = self.rng
        ts = tick // TICKS_PER_SECOND
        entries = []
        for _ in range(LIES_PER_RESPONSE):
            if rng.random() < 0.5:
                target_id = sim.hosts[rng.randrange(sim.scenario.honest)].node_id
            else:
                target_id = seeded_uuid(rng)
            ip, _port = invented_addr(rng, LIE_OCTET)
            entries.append(
                {
                    "addr": f"{ip}:{NODE_PORT}",
                    "capabilities": ["p2pfast"],
                    "id": target_id,
                    "last_seen": ts,
                }
            )
        data = codec.encode(T_DISCOVERY_RESPONSE, entries, ts, id=seeded_uuid(rng))
        for peer_id in sorted(node.peers_by_id):
            dst = node.peers_by_id[peer_id].addr
            self.sent += 1
            self.sent_bytes += len(data)
            sim.network.send(host, data, dst, tick)


HOSTILE_CLASSES: dict[str, type[Hostile]] = {"flooder": Flooder, "spoofer": Spoofer, "liar": Liar}
