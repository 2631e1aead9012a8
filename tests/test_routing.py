"""Routing table and route-id cache: bounded, expiring, shortest route wins."""

from p2pfast.routing import RouteIdCache, RoutingTable


def test_route_id_cache_evicts_oldest_at_capacity_and_expires():
    cache = RouteIdCache(capacity=3, ttl=10.0)
    for rid in "abcd":
        assert cache.seen(rid, 0.0) is False
    assert len(cache) == 3
    assert cache.seen("a", 1.0) is False  # evicted first, so new again
    assert cache.seen("c", 1.0) is True
    assert cache.seen("c", 20.0) is False  # expired, recorded anew
    assert cache.expire(11.5) == 2  # "d" (0.0) and "a" (1.0) are older than 10 s
    assert len(cache) == 1


def test_routing_table_keeps_shortest_and_is_bounded():
    table = RoutingTable(max_routes=2)
    assert table.add("x", "hop1", 3)
    assert not table.add("x", "hop2", 3)
    assert table.add("x", "hop2", 2) and table.next_hop("x") == "hop2"
    assert table.add("y", "hop1", 2)
    assert not table.add("z", "hop1", 2)  # full
    assert table.remove_via("hop1") == 1 and table.next_hop("y") is None
    assert table.dump() == [{"destination": "x", "distance": 2, "next_hop": "hop2"}]
