"""Builders for seed-format datagrams (as the Rust client sends them) and small test utilities."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import orjson

from p2pfast._speedups import codec
from p2pfast.protocol import MessageType as T

WIRE_EXAMPLES = Path(__file__).resolve().parent / "data" / "wire-examples.jsonl"


def wire_examples() -> list[dict]:
    return [json.loads(line) for line in WIRE_EXAMPLES.read_text().splitlines() if line.strip()]


def captured(message_type: str, direction: str = "to_server", index: int = 0) -> bytes:
    """The ``index``-th captured datagram of that type and direction."""
    found = [
        r["datagram"].encode()
        for r in wire_examples()
        if r["direction"] == direction
        and f'"message_type":"{message_type}"' in r["datagram"].replace(" ", "")
    ]
    return found[index]


def envelope(
    message_type: str,
    payload: Any = None,
    *,
    id: str | None = None,
    seq: int | None = None,
    requires_ack: bool = False,
    sender_addr: str | None = None,
    ack_for: str | None = None,
    timestamp: int = 1795634857,
) -> bytes:
    """A datagram exactly as the seed's serde serializer writes it (struct order, compact)."""
    return orjson.dumps(
        {
            "id": id or str(uuid.uuid4()),
            "message_type": message_type,
            "timestamp": timestamp,
            "payload": payload,
            "sender_addr": sender_addr,
            "sequence_number": seq,
            "requires_ack": requires_ack,
            "ack_for": ack_for,
        }
    )


def node_info(
    name: str, *, node_id: str | None = None, network_id: str = "test", port: int = 0, caps=None
) -> dict:
    return {
        "capabilities": caps if caps is not None else ["handshake", "discovery", "data_transfer"],
        "id": node_id or str(uuid.uuid4()),
        "listen_addr": f"0.0.0.0:{port}",
        "metadata": {},
        "name": name,
        "network_id": network_id,
        "version": "0.3.0",
    }


def handshake(name: str, **kw: Any) -> tuple[bytes, dict, str]:
    """(datagram, NodeInfo, request id) for a seed client's HandshakeRequest (requires_ack,
    seq 1)."""
    info = node_info(name, **kw)
    rid = str(uuid.uuid4())
    data = envelope(
        "HandshakeRequest",
        info,
        id=rid,
        seq=1,
        requires_ack=True,
        sender_addr=f"0.0.0.0:{kw.get('port', 0)}",
    )
    return data, info, rid


def routed(
    source: str,
    destination: str,
    text: str,
    *,
    route_id: str | None = None,
    hop_count: int = 0,
    max_hops: int = 8,
    requires_ack: bool = False,
    seq: int | None = None,
) -> bytes:
    inner = {
        "ack_for": None,
        "id": str(uuid.uuid4()),
        "message_type": "Data",
        "payload": {"text": text},
        "requires_ack": False,
        "sender_addr": None,
        "sequence_number": None,
        "timestamp": 1795634895,
    }
    return envelope(
        "Data",
        {
            "destination_node": destination,
            "source_node": source,
            "route_id": route_id or str(uuid.uuid4()),
            "hop_count": hop_count,
            "max_hops": max_hops,
            "original_message": inner,
        },
        requires_ack=requires_ack,
        seq=seq,
    )


def decoded(out: list[tuple[bytes, tuple]], addr: tuple | None = None) -> list:
    """Decode queued datagrams (optionally only those for ``addr``)."""
    return [codec.decode(d) for d, a in out if addr is None or a == addr]


def types(msgs: list) -> list[str]:
    return [T(m.type).name for m in msgs]
