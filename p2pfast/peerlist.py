"""Peer lists on the wire: DiscoveryResponse (PeerInfo entries) and ListNodesResponse
(NodeInfo entries) datagrams, built from pre-serialized entries.

Entries are spliced as bytes (each peer keeps its serialized form), so building a list costs
one join per datagram. Every builder skips or splits rather than stopping at an entry that
does not fit, so one large entry cannot hide the others from a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ._speedups import codec
from ._wire import TYPE_NAMES
from .peer import Peer

encode_raw = codec.encode_raw

T_DISCOVERY_RESPONSE = TYPE_NAMES.index("DiscoveryResponse")
T_LIST_RESPONSE = TYPE_NAMES.index("ListNodesResponse")
#: Room left in a datagram for the envelope around a list payload.
ENVELOPE_OVERHEAD = 256


def _discovery(items: list[bytes], ts: int, answering: str | None) -> bytes:
    payload = b"[" + b",".join(items) + b"]"
    return encode_raw(T_DISCOVERY_RESPONSE, payload, ts, None, None, None, False, answering)


def _node_list(items: list[bytes], ts: int, answering: str | None) -> bytes:
    payload = b'{"nodes":[' + b",".join(items) + b"]}"
    return encode_raw(T_LIST_RESPONSE, payload, ts, None, None, None, False, answering)


def discovery_slice(peers: Iterable[Peer], ts: int, room: int) -> bytes:
    """One DiscoveryResponse listing as many of ``peers`` as fit in ``room`` bytes (those that
    do not fit are skipped, not the rest after them)."""
    stamp = b"%d}" % ts
    items: list[bytes] = []
    size = ENVELOPE_OVERHEAD - 40
    for p in peers:
        item = p.peerinfo_prefix + stamp
        if size + len(item) + 1 > room:
            continue
        size += len(item) + 1
        items.append(item)
    return _discovery(items, ts, None)


def _split(items: Iterable[bytes], limit: int) -> Iterator[list[bytes]]:
    """Batches of ``items`` whose joined size stays within ``limit`` (at least one batch)."""
    batch: list[bytes] = []
    size = 0
    for item in items:
        if batch and size + len(item) + 1 > limit:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += len(item) + 1
    yield batch


def discovery_datagrams(
    peers: Iterable[Peer], ts: int, max_datagram_size: int, answering: str | None = None
) -> Iterator[bytes]:
    """DiscoveryResponse datagrams covering all of ``peers`` (at least one, maybe empty),
    made one at a time so a caller that stops early builds no more; ``answering`` is the id
    of the request answered (``ack_for``, for p2pfast peers)."""
    stamp = b"%d}" % ts
    items = (p.peerinfo_prefix + stamp for p in peers)
    for batch in _split(items, max_datagram_size - ENVELOPE_OVERHEAD):
        yield _discovery(batch, ts, answering)


def node_list_datagrams(
    peers: Iterable[Peer], ts: int, max_datagram_size: int, answering: str | None = None
) -> Iterator[bytes]:
    """ListNodesResponse datagrams with every peer's NodeInfo (at least one), one at a time."""
    items = (p.nodeinfo_json for p in peers)
    for batch in _split(items, max_datagram_size - ENVELOPE_OVERHEAD):
        yield _node_list(batch, ts, answering)
