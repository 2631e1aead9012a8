"""A real ``p2pfast-server`` subprocess on 127.0.0.1, driven by clients that speak the exact
seed wire format (built from the captured Rust-client datagrams)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from p2pfast.protocol import MessageType as T

from .helpers import captured, envelope, handshake, routed
from .netutil import SeedClient, ServerProcess, needs_posix_signals


@pytest.fixture
def server():
    with ServerProcess("--network-id", "test", "--log-level", "warning") as proc:
        yield proc


@pytest.fixture
def clients(server):
    made: list[SeedClient] = []

    def make() -> SeedClient:
        client = SeedClient(server.addr)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def join(client: SeedClient, name: str, *, prove: bool = True) -> str:
    """Handshake in the seed format; with ``prove``, echo the server's token as p2pfast nodes
    do, so the anti-amplification budget does not limit what the test expects to receive."""
    data, info, rid = handshake(name, port=client.port)
    client.send(data)
    ack = client.recv_type(T.Ack)
    assert ack.ack_for == rid
    response = client.recv_type(T.HandshakeResponse)
    assert response.payload["success"] is True
    client.recv_type(T.DiscoveryResponse)
    if prove:
        client.prove(response)
    return info["id"]


def test_seed_client_session_against_the_server(server, clients):
    alice, bob = clients(), clients()
    # The captured Rust-client handshake, byte for byte.
    alice.send(captured("HandshakeRequest"))
    ack = alice.recv_type(T.Ack)
    assert ack.ack_for == "847332c3-d122-433c-99db-457381ef6092"
    assert ack.sender_addr == f"127.0.0.1:{server.addr[1]}"
    response = alice.recv_type(T.HandshakeResponse)
    assert response.payload["node_info"]["id"] == server.node_id
    assert response.payload["public_addr"] == f"127.0.0.1:{alice.port}"
    assert alice.recv_type(T.DiscoveryResponse).payload == []
    alice_id = "4b1bfa44-87cb-44de-a11e-b0d648397b65"
    # The Rust client ignores the token; a client that echoes it leaves the budget behind.
    alice.prove(response)

    bob_id = join(bob, "bob")
    # Alice is told about bob (debounced broadcast).
    told = alice.recv_type(T.DiscoveryResponse, timeout=3)
    assert [p["id"] for p in told.payload] == [bob_id]

    # list (includes the requester)
    alice.send(captured("ListNodesRequest"))
    nodes = alice.recv_type(T.ListNodesResponse).payload["nodes"]
    assert {n["id"] for n in nodes} == {alice_id, bob_id}

    # ping / pong
    alice.send(envelope("Ping", requires_ack=True))
    alice.recv_type(T.Pong)

    # routed Data alice -> bob through the server
    alice.send(routed(alice_id, bob_id, "hi bob"))
    got = bob.recv_type(T.Data)
    assert got.payload["hop_count"] == 1
    assert got.payload["source_node"] == alice_id
    assert got.payload["original_message"]["payload"] == {"text": "hi bob"}

    # plain Data is echoed (no application attached)
    bob.send(envelope("Data", {"hello": "world"}))
    assert bob.recv_type(T.Data).payload["echo"] == {"hello": "world"}

    # P2PConnect: both sides learn each other's observed address
    alice.send(envelope("P2PConnect", {"peer_id": bob_id}))
    assert alice.recv_type(T.P2PConnect).payload == {
        "peer_addr": f"127.0.0.1:{bob.port}",
        "peer_id": bob_id,
    }
    assert bob.recv_type(T.P2PConnect).payload == {
        "peer_addr": f"127.0.0.1:{alice.port}",
        "peer_id": alice_id,
    }

    # Disconnect (captured datagram): alice leaves
    alice.send(captured("Disconnect"))
    time.sleep(0.2)
    bob.send(envelope("ListNodesRequest"))
    nodes = bob.recv_type(T.ListNodesResponse).payload["nodes"]
    assert [n["id"] for n in nodes] == [bob_id]


def test_hostile_datagrams_do_not_stop_the_server(server, clients):
    victim, attacker = clients(), clients()
    join(victim, "victim")
    junk = [
        b"",
        b"\xff" * 100,
        b"{",
        b"[]",
        b'{"id":1}',
        envelope("Bogus"),
        envelope("Ping").replace(b'"timestamp":1795634857', b'"timestamp":-1'),
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12,  # STUN
        b"{" * 60_000,
        envelope("HandshakeRequest", {"id": "x"}),
        envelope("Data", "x" * 50_000),
    ]
    for data in junk * 5:
        attacker.send(data)
    replies = attacker.drain(0.5)
    assert {m.payload["code"] for m in replies} <= {"invalid_node_info", "handshake_required"}
    # Nothing is served to an address that never completed a handshake.
    attacker.send(envelope("ListNodesRequest"))
    error = attacker.recv_type(T.Error)
    assert error.payload["code"] == "handshake_required"
    # ... and the server still serves its peer.
    victim.send(envelope("Ping"))
    victim.recv_type(T.Pong)


def test_heartbeat_evicts_a_silent_peer_and_tells_the_others():
    with ServerProcess(
        "--network-id",
        "test",
        "--heartbeat-interval",
        "0.5",
        "--connection-timeout",
        "1.5",
        "--log-level",
        "warning",
    ) as proc:
        silent, talker = SeedClient(proc.addr), SeedClient(proc.addr)
        try:
            silent_id = join(silent, "silent")
            talker_id = join(talker, "talker")
            deadline = time.monotonic() + 6
            evicted = False
            while time.monotonic() < deadline and not evicted:
                for msg in talker.drain(0.25):
                    if msg.type == T.Ping:
                        talker.send(envelope("Pong"))
                talker.send(envelope("ListNodesRequest"))
                nodes = talker.recv_type(T.ListNodesResponse).payload["nodes"]
                evicted = [n["id"] for n in nodes] == [talker_id]
            assert evicted, "silent peer was not evicted"
            pings = [m for m in silent.drain(0.2) if m.type == T.Ping]
            assert pings, "the silent peer was never pinged"
        finally:
            silent.close()
            talker.close()
    assert silent_id != talker_id


@needs_posix_signals
def test_sigterm_sends_disconnect_to_every_peer_and_exits_zero():
    proc = ServerProcess("--network-id", "test", "--log-level", "warning")
    a, b = SeedClient(proc.addr), SeedClient(proc.addr)
    try:
        join(a, "a")
        join(b, "b")
        assert proc.terminate() == 0
        for client in (a, b):
            bye = client.recv_type(T.Disconnect)
            assert bye.payload == {"reason": "shutdown"}
    finally:
        a.close()
        b.close()
        proc.stop()


@needs_posix_signals
def test_sigint_also_exits_zero():
    proc = ServerProcess("--log-level", "warning")
    try:
        proc.proc.send_signal(2)
        assert proc.proc.wait(10) == 0
    finally:
        proc.stop()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p2pfast.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("p2pfast-server: error: "), lines[0]
    assert fragment in lines[0], lines[0]


def test_cli_occupied_port(tmp_path):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        result = run_cli("-a", f"127.0.0.1:{port}", "--log-level", "error")
        assert_one_line_error(result, "address already in use")
    finally:
        busy.close()


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"max_connections": 0}', "max_connections"),
        ('{"listen_address": "nowhere"}', "listen_address"),
        ('{"heartbeat_interval": "soon"}', "heartbeat_interval"),
        ('{"discovery_port_range": [9000, 8000]}', "discovery_port_range"),
        ('{"mystery": 1}', "unknown key"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_cli_bad_config_file(tmp_path, content, fragment):
    path = tmp_path / "config.json"
    path.write_text(content)
    assert_one_line_error(run_cli("-c", str(path)), fragment)


def test_cli_missing_config_file(tmp_path):
    assert_one_line_error(run_cli("-c", str(tmp_path / "nope.json")), "cannot read config file")


def test_cli_bad_flag_and_env_values():
    result = run_cli("-m", "0")
    assert_one_line_error(result, "max_connections")
    result = run_cli(env={"P2PFAST_HEARTBEAT_INTERVAL": "often"})
    assert_one_line_error(result, "P2PFAST_HEARTBEAT_INTERVAL")


def test_flags_override_file_and_env(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"network_id": "from-file", "max_connections": 1}')
    with ServerProcess(
        "-c", str(path), "--network-id", "from-flag", env={"P2PFAST_MAX_CONNECTIONS": "2"}
    ) as proc:
        assert "network_id=from-flag" in "".join(proc.stderr_lines)
        clients = [SeedClient(proc.addr) for _ in range(3)]
        try:
            codes = []
            for i, client in enumerate(clients):
                data, _, _ = handshake(f"c{i}", network_id="from-flag")
                client.send(data)
                client.recv_type(T.Ack)
                reply = client.recv()
                codes.append(reply.payload.get("code") if reply.type == T.Error else "ok")
            assert codes == ["ok", "ok", "server_full"]  # env (2) beat the file (1)
        finally:
            for client in clients:
                client.close()


def test_shipped_config_json_is_valid():
    from pathlib import Path

    from p2pfast.config import Config

    config = Config.from_file(Path(__file__).resolve().parent.parent / "config.json")
    assert config.listen_address == "127.0.0.1:8080" and config.max_connections == 100


def test_unknown_rust_config_blocks_are_accepted(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        '{"network_id": "test", "ice": {"enable": false}, "stun_server": {"enable": false}}'
    )
    with ServerProcess("-c", str(path)) as proc:
        assert proc.proc.poll() is None


def test_server_answers_a_handshake_with_new_uuid_forms(server, clients):
    client = clients()
    info_id = uuid.uuid4()
    data, _info, rid = handshake("upper", node_id=str(info_id).upper())
    client.send(data.replace(rid.encode(), rid.replace("-", "").encode()))
    ack = client.recv_type(T.Ack)
    assert ack.ack_for == rid  # simple form normalized to hyphenated lowercase
    assert client.recv_type(T.HandshakeResponse).payload["success"]
