"""A client that speaks the seed (Rust ``p2p_handshake_server``) protocol with nothing but the
standard library: raw JSON datagrams over a UDP socket, exactly as the Rust client sends them.

It shows what a compatible peer written in any language has to do (see docs/protocol.md):
handshake, plain Data and its echo, Ping/Pong, the node list, routed Data to another client,
and Disconnect. Two clients, ``alice`` and ``bob``, run in one process against a server:

    p2pfast-server -a 127.0.0.1:8080 --network-id test --disable-discovery
    python examples/seed_client.py 127.0.0.1:8080 --network-id test
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import uuid
from typing import Any

ENVELOPE_KEYS = (
    "id",
    "message_type",
    "timestamp",
    "payload",
    "sender_addr",
    "sequence_number",
    "requires_ack",
    "ack_for",
)


def envelope(message_type: str, payload: Any = None, **fields: Any) -> dict[str, Any]:
    """A message in the seed's envelope; payload keys sorted, as the Rust side writes them."""
    message: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "message_type": message_type,
        "timestamp": int(time.time()),
        "payload": payload,
        "sender_addr": None,
        "sequence_number": None,
        "requires_ack": False,
        "ack_for": None,
    }
    message.update(fields)
    return message


def sorted_keys(value: Any) -> Any:
    """``value`` with every object's keys in alphabetical order, at every depth."""
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


def encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON: envelope keys in their fixed order, payload keys sorted."""
    ordered = {key: message[key] for key in ENVELOPE_KEYS}
    ordered["payload"] = sorted_keys(ordered["payload"])
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()


class SeedClient:
    """One UDP socket, one node id; blocking calls with a timeout."""

    def __init__(self, server: tuple[str, int], name: str, network_id: str) -> None:
        self.server = server
        self.name = name
        self.network_id = network_id
        self.node_id = str(uuid.uuid4())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.pending: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendto(encode(message), self.server)

    def receive(self, *message_types: str, timeout: float = 3.0) -> dict[str, Any]:
        """The next message of one of ``message_types``; others are kept for later calls."""
        for i, message in enumerate(self.pending):
            if message["message_type"] in message_types:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65_535)
            except (TimeoutError, ConnectionRefusedError):  # nothing, or nobody there (yet)
                continue
            message = json.loads(data)
            if message["message_type"] in message_types:
                return dict(message)
            if message["message_type"] == "Ping":  # the server's heartbeat: answer it
                self.send(envelope("Pong"))
                continue
            self.pending.append(message)
        raise TimeoutError(f"{self.name}: no {' or '.join(message_types)} from {self.server}")

    def handshake(self) -> dict[str, Any]:
        node_info = {
            "capabilities": ["handshake", "discovery", "data_transfer"],
            "id": self.node_id,
            "listen_addr": f"127.0.0.1:{self.port}",
            "metadata": {},
            "name": self.name,
            "network_id": self.network_id,
            "version": "0.3.0",
        }
        request = envelope(
            "HandshakeRequest",
            node_info,
            sender_addr=f"127.0.0.1:{self.port}",
            sequence_number=1,
            requires_ack=True,
        )
        for attempt in range(3):  # UDP may lose it, or the server may not be up yet
            self.send(request)
            try:
                ack = self.receive("Ack", timeout=1.0 + attempt)  # asked for: it comes first
                break
            except TimeoutError:
                if attempt == 2:
                    raise
        assert ack["ack_for"] == request["id"], ack
        reply = self.receive("HandshakeResponse", "Error")
        if reply["message_type"] == "Error":
            raise ConnectionRefusedError(reply["payload"]["error"])
        self.receive("DiscoveryResponse")  # the first slice of the peer list
        token = reply["payload"].get("token")
        if isinstance(token, str):
            # A p2pfast server limits what it sends to an address until that address proves it
            # receives there, by echoing this token in an Ack (docs/protocol.md, 12.2). A
            # Rust-protocol client that skips this still works, within that limit.
            ack = envelope(
                "Ack",
                {"token": token},
                sender_addr=f"127.0.0.1:{self.port}",
                ack_for=reply["id"],
            )
            self.send(ack)
        return dict(reply["payload"])

    def close(self) -> None:
        self.sock.close()


def session(server: tuple[str, int], network_id: str) -> None:
    alice = SeedClient(server, "alice", network_id)
    bob = SeedClient(server, "bob", network_id)
    try:
        response = alice.handshake()
        server_id = response["node_info"]["id"]
        print(f"alice: handshake ok, server {server_id}, seen as {response['public_addr']}")
        bob.handshake()
        print("bob: handshake ok")

        alice.send(envelope("Data", {"text": "hello"}))
        print(f"alice: echo {alice.receive('Data')['payload']['echo']}")

        alice.send(envelope("Ping"))
        alice.receive("Pong")
        print("alice: ping/pong ok")

        alice.send(envelope("ListNodesRequest"))
        nodes = alice.receive("ListNodesResponse")["payload"]["nodes"]
        print("alice: nodes " + ", ".join(sorted(node["name"] for node in nodes)))

        original = envelope("Data", {"text": "hi bob"})  # nested: its keys get sorted too
        routed = {
            "destination_node": bob.node_id,
            "hop_count": 0,
            "max_hops": 8,
            "original_message": original,
            "route_id": str(uuid.uuid4()),
            "source_node": alice.node_id,
        }
        alice.send(envelope("Data", routed))
        got = bob.receive("Data")["payload"]
        sender = "alice" if got["source_node"] == alice.node_id else got["source_node"]
        text = got["original_message"]["payload"]["text"]
        print(f"bob: routed from {sender} in {got['hop_count']} hop(s): {text}")

        for client in (alice, bob):
            client.send(envelope("Disconnect", {"reason": "done"}))
        print("disconnected")
    finally:
        alice.close()
        bob.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Seed-protocol clients on a raw UDP socket.")
    parser.add_argument("server", help="server address, ip:port")
    parser.add_argument("--network-id", default="p2p_default")
    args = parser.parse_args()
    host, _, port = args.server.rpartition(":")
    try:
        session((host, int(port)), args.network_id)
    except KeyboardInterrupt:
        sys.exit(130)
    except (TimeoutError, ConnectionRefusedError) as exc:
        sys.exit(f"seed_client: {exc}")


if __name__ == "__main__":
    main()
