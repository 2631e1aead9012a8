"""Multi-hop routing state: next hops learned from discovery and the seen-``route_id`` cache.

Both are bounded and expire, so neither a flood of route ids nor a hostile peer list can grow
memory without limit.
"""

from __future__ import annotations

from collections import OrderedDict


class RoutingTable:
    """destination node id → (next-hop node id, distance). Direct peers are not stored here:
    the peer table answers for them. A route is replaced only by a strictly shorter one."""

    __slots__ = ("max_routes", "_routes")

    def __init__(self, max_routes: int = 65_536) -> None:
        self.max_routes = max_routes
        self._routes: dict[str, tuple[str, int]] = {}

    def __len__(self) -> int:
        return len(self._routes)

    def add(self, destination: str, next_hop: str, distance: int) -> bool:
        """Learn a route; False when it is not shorter than the one held or the table is full."""
        current = self._routes.get(destination)
        if current is not None:
            if distance >= current[1]:
                return False
        elif len(self._routes) >= self.max_routes:
            return False
        self._routes[destination] = (next_hop, distance)
        return True

    def next_hop(self, destination: str) -> str | None:
        route = self._routes.get(destination)
        return None if route is None else route[0]

    def remove_via(self, node_id: str) -> int:
        """Forget every route to or through ``node_id``; return how many were removed."""
        doomed = [d for d, (hop, _) in self._routes.items() if hop == node_id or d == node_id]
        for d in doomed:
            del self._routes[d]
        return len(doomed)

    def dump(self) -> list[dict]:
        """Routes as the Rust server's ``get_routes`` reply lists them."""
        return [
            {"destination": d, "distance": dist, "next_hop": hop}
            for d, (hop, dist) in self._routes.items()
        ]


class RouteIdCache:
    """Route ids seen recently, for dropping duplicates of routed Data.

    An OrderedDict used as a FIFO (O(1) eviction of the oldest, unlike a plain dict whose
    front fills with deleted slots): entries expire after ``ttl`` seconds and the oldest is
    evicted when ``capacity`` is reached, so memory is fixed whatever the input rate.
    """

    __slots__ = ("capacity", "ttl", "_seen")

    def __init__(self, capacity: int = 65_536, ttl: float = 300.0) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, route_id: str, now: float) -> bool:
        """True if ``route_id`` was recorded within ``ttl``; otherwise record it and return False."""
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
