"""Large messages on real loopback sockets through the public asyncio API, on both
implementations: 1 MiB messages intact and exactly once (directly and through the seeded lossy
relay), the 1 MiB limit, seed peers, path-MTU discovery, a slow application, and a reassembly
flood against a server process whose memory is measured."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import sys

import pytest

from p2pfast import Config, P2PServer
from p2pfast._speedups import codec, fragment
from p2pfast.errors import P2PTimeout, SendError
from p2pfast.protocol import MAX_DATAGRAM_SIZE, MAX_MESSAGE_SIZE

from .helpers import envelope, handshake
from .netutil import LossyRelay, ServerProcess, on_uvloop

MiB = 1024 * 1024


def config(**kw) -> Config:
    settings = dict(
        listen_address="127.0.0.1:0", network_id="bulk", enable_discovery=False, stats_interval=0
    )
    settings.update(kw)
    return Config(**settings)


def blob(size: int, seed: int) -> str:
    """A str payload of ``size`` characters that hashes differently for every seed."""
    rng = random.Random(seed)
    return rng.randbytes(size // 2).hex()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def transfer(client: P2PServer, server_id: str, payloads: list[str], concurrency=4):
    sem = asyncio.Semaphore(concurrency)

    async def one(p: str) -> None:
        async with sem:
            await client.send(server_id, p, timeout=60)

    await asyncio.wait_for(asyncio.gather(*(one(p) for p in payloads)), 120)


async def collect(server: P2PServer, count: int, seconds: float = 60) -> list[str]:
    got: list[str] = []

    async def read() -> None:
        async for message in server.messages():
            got.append(message.payload)
            if len(got) >= count:
                return

    await asyncio.wait_for(read(), seconds)
    return got


@on_uvloop
async def test_one_mib_messages_arrive_intact_and_exactly_once():
    payloads = [blob(MAX_MESSAGE_SIZE - 300, seed) for seed in range(12)]
    async with P2PServer(config()) as server, P2PServer(config()) as client:
        reader = asyncio.ensure_future(collect(server, len(payloads)))
        await client.connect_to_peer(server.local_address)
        await transfer(client, server.node_id, payloads)
        got = await reader
        assert sorted(map(sha, got)) == sorted(map(sha, payloads))
        await asyncio.sleep(0.2)
        stats = server.get_stats()
        assert stats.messages_reassembled == len(payloads)
        # Path-MTU discovery found what loopback carries.
        conn = client.node.peers_by_id[server.node_id].bulk
        assert conn is not None and conn.datagram_size == 65_507


@pytest.mark.parametrize("seed", [7, 8])
@on_uvloop
async def test_one_mib_messages_through_loss_duplication_and_reordering(seed):
    payloads = [blob(MiB - 400, 100 + i) for i in range(6)]
    async with P2PServer(config()) as server, P2PServer(config()) as client:
        relay = LossyRelay(server.local_address, loss=0.05, duplicate=0.02, reorder=0.05, seed=seed)
        relay_addr = await relay.start()
        try:
            reader = asyncio.ensure_future(collect(server, len(payloads), seconds=120))
            await client.connect_to_peer(relay_addr, timeout=15)
            await transfer(client, server.node_id, payloads)
            got = await reader
            await asyncio.sleep(0.5)  # late duplicates arrive and must not be delivered
        finally:
            relay.close()
        assert sorted(map(sha, got)) == sorted(map(sha, payloads))
        assert relay.dropped > 0 and relay.duplicated > 0
        assert client.get_stats().fragments_retransmitted > 0
        assert server.get_stats().messages_reassembled == len(payloads)


@on_uvloop
async def test_one_byte_over_1_mib_is_refused_before_a_fragment_leaves():
    async with P2PServer(config()) as server, P2PServer(config()) as client:
        await client.connect_to_peer(server.local_address)
        base = codec.encode(8, "", 1795634857, id="6f1c1f0e-1111-4222-8333-444455556666")
        before = client.get_stats()
        with pytest.raises(SendError) as info:
            await client.send(server.node_id, "x" * (MAX_MESSAGE_SIZE - len(base) + 1))
        assert info.value.reason == "too_large"
        after = client.get_stats()
        assert after.fragments_sent == before.fragments_sent
        assert after.bytes_out == before.bytes_out


class SeedPeer(asyncio.DatagramProtocol):
    """A client speaking only the seed wire format (no ``p2pfast`` capability)."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.put_nowait(data)


@on_uvloop
async def test_a_seed_peer_gets_whole_datagrams_and_too_large_beyond_one():
    async with P2PServer(config()) as server:
        loop = asyncio.get_running_loop()
        transport, seed = await loop.create_datagram_endpoint(SeedPeer, local_addr=("127.0.0.1", 0))
        try:
            request, info, _ = handshake("seed", network_id="bulk")
            transport.sendto(request, server.local_address)
            for _ in range(20):
                if info["id"] in server.peers:
                    break
                await asyncio.sleep(0.05)
            assert info["id"] in server.peers
            # Prove the address (echo the handshake token), or the anti-amplification budget
            # would hold back a datagram this large.
            response = None
            while not seed.received.empty():
                message = codec.decode(seed.received.get_nowait())
                if message.type_name == "HandshakeResponse":
                    response = message
            assert response is not None
            proof = {"token": response.payload["token"]}
            transport.sendto(envelope("Ack", proof, ack_for=response.id), server.local_address)
            await asyncio.sleep(0.1)
            await server.send(info["id"], "w" * 40_000, reliable=False)
            data = await asyncio.wait_for(seed.received.get(), 5)
            assert data[:1] == b"{" and codec.decode(data).payload == "w" * 40_000
            with pytest.raises(SendError) as refused:
                await server.send(info["id"], "w" * MAX_DATAGRAM_SIZE)
            assert refused.value.reason == "too_large"
            assert str(MAX_DATAGRAM_SIZE) in str(refused.value)
            assert server.get_stats().fragments_sent == 0
        finally:
            transport.close()


@on_uvloop
async def test_path_mtu_falls_back_when_the_path_starts_dropping_large_datagrams():
    async with P2PServer(config()) as server, P2PServer(config(rto_initial=0.2)) as client:
        relay = LossyRelay(server.local_address, loss=0.0, duplicate=0.0, reorder=0.0, seed=1)
        if not hasattr(relay, "max_size"):
            pytest.skip("the relay cannot drop by size")
        relay_addr = await relay.start()
        try:
            reader = asyncio.ensure_future(collect(server, 4, seconds=120))
            await client.connect_to_peer(relay_addr, timeout=15)
            await transfer(client, server.node_id, [blob(300_000, 1), blob(300_000, 2)])
            conn = client.node.peers_by_id[server.node_id].bulk
            assert conn is not None
            for _ in range(100):
                if conn.path.state == "search_complete":
                    break
                await asyncio.sleep(0.05)
            assert conn.datagram_size == 65_507
            relay.max_size = 1472  # the path now carries Ethernet-sized datagrams only
            await transfer(client, server.node_id, [blob(300_000, 3), blob(300_000, 4)])
            got = await reader
            assert len(got) == 4
            assert conn.path.black_holes >= 1 and conn.datagram_size <= 1472
        finally:
            relay.close()


@on_uvloop
async def test_an_application_that_stops_reading_makes_the_sender_wait():
    limit = 2 * MiB
    async with (
        P2PServer(config(reassembly_peer_limit=limit), max_queued_messages=1) as server,
        P2PServer(config()) as client,
    ):
        server.messages()  # a consumer that never reads
        await client.connect_to_peer(server.local_address)
        payloads = [blob(MiB - 400, 200 + i) for i in range(6)]
        sends = [asyncio.ensure_future(client.send(server.node_id, p)) for p in payloads]
        await asyncio.sleep(2.0)
        done = sum(s.done() for s in sends)
        assert done < len(payloads)  # the sender waits ...
        conn = server.node.peers_by_id[client.node_id].bulk
        assert conn is not None
        assert conn.allocated - conn.released <= limit  # ... and the receiver holds its cap
        received = []
        async for message in server.messages():
            received.append(message.payload)
            if len(received) == len(payloads):
                break
        await asyncio.wait_for(asyncio.gather(*sends), 60)
        assert sorted(map(sha, received)) == sorted(map(sha, payloads))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@on_uvloop
async def test_a_reassembly_flood_stays_within_the_memory_cap_and_others_are_served():
    node_limit = 16 * MiB
    with ServerProcess(
        "--network-id", "bulk", "--no-echo",
        env={
            "P2PFAST_REASSEMBLY_PEER_LIMIT": str(4 * MiB),
            "P2PFAST_REASSEMBLY_NODE_LIMIT": str(node_limit),
        },
    ) as proc:  # fmt: skip
        baseline = rss_kib(proc.proc.pid)
        attackers = [P2PServer(config()) for _ in range(6)]
        try:
            for attacker in attackers:
                await attacker.start()
                await attacker.connect_to_peer(proc.addr)
            chunk = b"z" * 1000
            for attacker in attackers:
                transport = attacker._transport
                assert transport is not None
                transport.sendto(fragment.encode_credit_request(0), proc.addr)
            await asyncio.sleep(0.2)
            for number in range(1, 2001):
                for attacker in attackers:
                    transport = attacker._transport
                    assert transport is not None
                    frame = fragment.encode_fragment(number, number, MiB, 0, chunk, 0, 1000)
                    transport.sendto(frame, proc.addr)
                if number % 100 == 0:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            grown = rss_kib(proc.proc.pid) - baseline
            # Committed buffers stay within the node's cap (plus interpreter slack).
            assert grown < (node_limit + 12 * MiB) // 1024, f"RSS grew by {grown} KiB"
            # An honest peer is still served.
            async with P2PServer(config()) as honest:
                await honest.connect_to_peer(proc.addr)
                assert await honest.ping(proc.node_id, timeout=5) >= 0
                await honest.send(proc.node_id, "hello", timeout=5)
        finally:
            for attacker in attackers:
                await attacker.stop()


@on_uvloop
async def test_a_send_to_a_vanished_peer_fails_instead_of_hanging():
    async with P2PServer(config()) as server, P2PServer(config(rto_initial=0.1)) as client:
        await client.connect_to_peer(server.local_address)
        server_id = server.node_id
        await server.stop()
        with pytest.raises((SendError, P2PTimeout)):
            await client.send(server_id, blob(MiB // 2, 5), timeout=90)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _ipv6_loopback(), reason="Linux, IPv6 loopback"
)
@on_uvloop
async def test_probes_leave_unfragmented_and_a_refused_size_settles_the_search_at_once():
    """The client's socket is limited to a 1,280-byte IPv6 MTU (IPV6_MTU): probes above 1,232
    bytes of payload must be refused by the local stack (fragmentation forbidden), not sent as
    IP fragments, and the search must settle on 1,232 without waiting for probe timeouts."""
    ipv6 = dict(listen_address="[::1]:0")
    async with P2PServer(config(**ipv6)) as server, P2PServer(config(**ipv6)) as client:
        sock = client._transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.IPPROTO_IPV6, 24, 1280)  # IPV6_MTU
        reader = asyncio.ensure_future(collect(server, 1))
        await client.connect_to_peer(server.local_address)
        payload = blob(300_000, 9)
        await client.send(server.node_id, payload, timeout=30)
        assert await reader == [payload]
        conn = client.node.peers_by_id[server.node_id].bulk
        assert conn is not None
        for _ in range(100):
            if conn.path.state == "search_complete":
                break
            await asyncio.sleep(0.02)
        assert conn.path.state == "search_complete"
        assert conn.datagram_size == 1232
        assert conn.path.probes_failed >= 1
