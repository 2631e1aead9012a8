"""A small virtual network for engine tests: real ``Node`` engines, a virtual clock, seeded
loss, duplication, reordering and per-datagram filters, and a record of every byte each address
was sent (spoofed addresses included). Deterministic for a given seed."""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Callable

from p2pfast.config import Config
from p2pfast.events import Event
from p2pfast.node import Node

T0 = 1000.0
WALL = 1795634857 - T0

#: ``drop(data, src, dst)`` → True to lose that datagram.
DropRule = Callable[[bytes, tuple, tuple], bool]


def make_node(port: int, **overrides) -> Node:
    settings = dict(
        listen_address=f"127.0.0.1:{port}",
        network_id="test",
        enable_discovery=False,
        echo=False,
        stats_interval=0,
    )
    settings.update(overrides)
    return Node(Config(**settings), now=T0, wall_offset=WALL)


class VirtualNet:
    """Datagrams between engines with a one-way ``delay``; ``loss``, ``duplicate`` and
    ``reorder`` (an extra random delay of up to ``3 * delay``) drawn from ``seed``."""

    def __init__(
        self,
        seed: int = 1,
        *,
        delay: float = 0.01,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.delay, self.loss, self.duplicate, self.reorder = delay, loss, duplicate, reorder
        self.now = T0
        self.nodes: dict[tuple, Node] = {}
        self.events: dict[tuple, list[Event]] = defaultdict(list)
        self.drop_rules: list[DropRule] = []
        self.sent_to: dict[tuple, int] = defaultdict(int)  # bytes any node sent to an address
        self.sent_by: dict[tuple, int] = defaultdict(int)  # bytes an address sent to a node
        self.lost = 0
        self._queue: list[tuple[float, int, tuple, tuple, bytes]] = []
        self._n = 0

    def add(self, node: Node) -> Node:
        self.nodes[node.local_addr] = node
        return node

    def inject(self, data: bytes, src: tuple, dst: tuple) -> None:
        """Deliver ``data`` to ``dst`` now as if ``src`` sent it (a spoofer needs no node)."""
        self.sent_by[src] += len(data)
        self.nodes[dst].receive_datagram(data, src, self.now)
        self.flush()

    def flush(self) -> None:
        """Take every node's output onto the wire, and its events into ``events``."""
        for addr, node in self.nodes.items():
            for data, dst in node.datagrams_to_send():
                self._transmit(addr, dst, data)
            while (event := node.next_event()) is not None:
                self.events[addr].append(event)

    def _transmit(self, src: tuple, dst: tuple, data: bytes) -> None:
        self.sent_to[dst] += len(data)
        if any(rule(data, src, dst) for rule in self.drop_rules):
            self.lost += 1
            return
        rng = self.rng
        if rng.random() < self.loss:
            self.lost += 1
            return
        copies = 2 if rng.random() < self.duplicate else 1
        for _ in range(copies):
            delay = self.delay
            if rng.random() < self.reorder:
                delay += rng.random() * 3 * self.delay
            self._n += 1
            heapq.heappush(self._queue, (self.now + delay, self._n, src, dst, data))

    def step(self, until: float) -> bool:
        """Advance to the next datagram or timer no later than ``until``; False when idle."""
        next_timer = min((n.get_timer() for n in self.nodes.values()), default=float("inf"))
        next_packet = self._queue[0][0] if self._queue else float("inf")
        at = min(next_timer, next_packet)
        if at > until:
            self.now = max(self.now, until)
            return False
        self.now = max(self.now, at)
        while self._queue and self._queue[0][0] <= self.now:
            _, _, src, dst, data = heapq.heappop(self._queue)
            node = self.nodes.get(dst)
            if node is not None:
                self.sent_by[src] += len(data)
                node.receive_datagram(data, src, self.now)
        for node in self.nodes.values():
            if node.get_timer() <= self.now:
                node.handle_timer(self.now)
        self.flush()
        return True

    def run(
        self, seconds: float, until: Callable[[], bool] | None = None, max_steps: int = 2_000_000
    ) -> bool:
        """Run for up to ``seconds`` of virtual time (bounded in steps); True if ``until``
        became true."""
        end = self.now + seconds
        for _ in range(max_steps):
            if until is not None and until():
                return True
            if not self.step(end):
                return until is not None and until()
        raise AssertionError("virtual network did not settle within max_steps")

    def connect(self, client: Node, server: Node, seconds: float = 30.0) -> None:
        client.connect(server.local_addr, self.now)
        self.flush()
        assert self.run(seconds, lambda: server.local_addr in client.peers_by_addr), "no handshake"
        self.run(5 * self.delay)  # the token Ack arrives
