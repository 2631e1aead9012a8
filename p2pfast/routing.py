"""Multi-hop routing state: next hops learned from discovery and the seen-``route_id`` cache.

Both are bounded and expire, so neither a flood of route ids nor a hostile peer list can grow
memory without limit.
"""

from __future__ import annotations

from collections import OrderedDict


class RoutingTable:
    """destination node id → (next-hop node id, distance). Direct peers are not stored here:
    the peer table answers for them. A route is replaced only by a strictly shorter one.

    Routes are indexed by next hop, so forgetting a peer (it left, or it became a direct
    peer) costs what that peer taught, not the size of the table; and one peer may teach at
    most ``max_per_hop`` routes, so no single peer can fill the table.
    """

    __slots__ = ("_by_hop", "_p2pfast", "_routes", "max_per_hop", "max_routes")

    def __init__(self, max_routes: int = 65_536, max_per_hop: int = 4096) -> None:
        self.max_routes = max_routes
        self.max_per_hop = max_per_hop
        self._routes: dict[str, tuple[str, int]] = {}
        self._by_hop: dict[str, set[str]] = {}
        #: Destinations that announced the ``p2pfast`` capability (they confirm routed
        #: messages end to end).
        self._p2pfast: set[str] = set()

    def __len__(self) -> int:
        return len(self._routes)

    def taught_by(self, next_hop: str) -> int:
        """How many routes go through ``next_hop``."""
        return len(self._by_hop.get(next_hop, ()))

    def speaks_p2pfast(self, destination: str) -> bool:
        """Whether the route's destination announced the ``p2pfast`` capability."""
        return destination in self._p2pfast

    def add(self, destination: str, next_hop: str, distance: int, p2pfast: bool = False) -> bool:
        """Learn a route; False when it is not shorter than the one held, or the table (or
        this next hop's share of it) is full."""
        current = self._routes.get(destination)
        if current is not None:
            if distance >= current[1]:
                return False
        elif len(self._routes) >= self.max_routes:
            return False
        via = self._by_hop.get(next_hop)
        if via is not None and len(via) >= self.max_per_hop:
            return False
        if current is not None:
            self._unlink(destination, current[0])
        self._routes[destination] = (next_hop, distance)
        if p2pfast:
            self._p2pfast.add(destination)
        else:
            self._p2pfast.discard(destination)
        if via is None:
            self._by_hop[next_hop] = via = set()
        via.add(destination)
        return True

    def next_hop(self, destination: str) -> str | None:
        route = self._routes.get(destination)
        return None if route is None else route[0]

    def remove_via(self, node_id: str) -> int:
        """Forget every route to or through ``node_id``; return how many were removed."""
        removed = 0
        route = self._routes.pop(node_id, None)
        if route is not None:
            self._unlink(node_id, route[0])
            self._p2pfast.discard(node_id)
            removed += 1
        for destination in self._by_hop.pop(node_id, ()):
            if self._routes.pop(destination, None) is not None:
                self._p2pfast.discard(destination)
                removed += 1
        return removed

    def _unlink(self, destination: str, next_hop: str) -> None:
        via = self._by_hop.get(next_hop)
        if via is not None:
            via.discard(destination)
            if not via:
                del self._by_hop[next_hop]

    def dump(self, limit: int | None = None) -> list[dict[str, str | int]]:
        """Routes as the Rust server's ``get_routes`` reply lists them (at most ``limit``)."""
        out: list[dict[str, str | int]] = []
        for d, (hop, dist) in self._routes.items():
            if limit is not None and len(out) >= limit:
                break
            out.append({"destination": d, "distance": dist, "next_hop": hop})
        return out


class RouteIdCache:
    """Route ids seen recently, for dropping duplicates of routed Data.

    An OrderedDict used as a FIFO (O(1) eviction of the oldest, unlike a plain dict whose
    front fills with deleted slots): entries expire after ``ttl`` seconds and the oldest is
    evicted when ``capacity`` is reached, so memory is fixed whatever the input rate.
    """

    __slots__ = ("_seen", "capacity", "ttl")

    def __init__(self, capacity: int = 65_536, ttl: float = 300.0) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def contains(self, route_id: str, now: float) -> bool:
        """True if ``route_id`` was recorded within ``ttl`` (records nothing)."""
        stamp = self._seen.get(route_id)
        return stamp is not None and now - stamp < self.ttl

    def seen(self, route_id: str, now: float) -> bool:
        """True if ``route_id`` was recorded within ``ttl``; otherwise record it and return
        False."""
        seen = self._seen
        stamp = seen.get(route_id)
        if stamp is not None:
            if now - stamp < self.ttl:
                return True
            del seen[route_id]
        elif len(seen) >= self.capacity:
            seen.popitem(last=False)
        seen[route_id] = now
        return False

    def expire(self, now: float) -> int:
        """Drop entries older than ``ttl`` (they are in insertion order); return how many."""
        seen = self._seen
        horizon = now - self.ttl
        removed = 0
        while seen:
            key = next(iter(seen))
            if seen[key] > horizon:
                break
            del seen[key]
            removed += 1
        return removed
