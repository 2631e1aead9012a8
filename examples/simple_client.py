"""A p2pfast node used as a client, like the seed's ``examples/simple_client.rs``:
handshake → data → ping/pong → discovery → disconnect against a running server.

    python examples/simple_client.py 127.0.0.1:8080 alice [--network-id p2p_default]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from p2pfast import Config, DataReceived, P2PServer
from p2pfast.addr import format_addr
from p2pfast.server import run


async def main(server_addr: str, name: str, network_id: str) -> None:
    echoes: asyncio.Queue[DataReceived] = asyncio.Queue()
    config = Config(
        listen_address="127.0.0.1:0",
        network_id=network_id,
        node_name=name,
        enable_discovery=False,
    )
    client = P2PServer(config, on_data=echoes.put_nowait)
    async with client:
        server_id = await client.connect_to_peer(server_addr)
        print(f"handshake ok: {name} is {client.node_id}, server is {server_id}")

        await client.send(server_id, {"text": f"hello from {name}"})  # resolves on the Ack
        print("data acked")
        try:
            echo = await asyncio.wait_for(echoes.get(), 2)
            print(f"server replied: {echo.payload}")
        except TimeoutError:
            print("server sent no echo (it has an application attached or --no-echo)")

        rtt = await client.ping(server_id)
        print(f"ping/pong: rtt {rtt * 1000:.2f} ms")

        peers = await client.list_peers(server_id, full_info=True)
        names = ", ".join(f"{p.name}@{format_addr(p.listen_addr)}" for p in peers if p.listen_addr)
        print(f"discovery: {len(peers)} node(s): {names}")

        await client.disconnect(server_id, reason="done")
        print("disconnected")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", help="server address, ip:port")
    parser.add_argument("name", help="this node's name")
    parser.add_argument("--network-id", default="p2p_default")
    args = parser.parse_args()
    try:
        run(main(args.server, args.name, args.network_id))
    except KeyboardInterrupt:  # Ctrl-C: stop without a traceback
        sys.exit(130)
