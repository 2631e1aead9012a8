"""A chat room between p2pfast nodes through a hub.

The hub is a plain ``p2pfast-server``; every participant is a p2pfast node that joins it and
learns the others from its peer lists. A line typed on stdin goes to every other participant
as routed Data (hub → destination, acknowledged hop by hop), and incoming lines are printed as
``[name] text``. End with Ctrl-D (leaves the room politely) or Ctrl-C.

    p2pfast-server -a 127.0.0.1:9500 --network-id chat --disable-discovery   # the hub
    python examples/chat.py 127.0.0.1:9500 alice --network-id chat            # one terminal each
    python examples/chat.py 127.0.0.1:9500 bob --network-id chat
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from p2pfast import Config, P2PServer, SendError
from p2pfast.server import run


async def stdin_lines() -> asyncio.StreamReader:
    """stdin as an asyncio stream (no thread left blocked in ``readline`` at exit)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def node_id_of(entry: Any) -> str:
    """The node id of a peer-list entry (a ``PeerInfo``, or the JSON object of older versions)."""
    return str(entry.node_id if hasattr(entry, "node_id") else entry["id"])


def others(entries: list[Any], me: str) -> list[str]:
    """Node ids in a peer list, without our own."""
    return [node for node in map(node_id_of, entries) if node != me]


async def chat(hub_addr: str, name: str, network_id: str) -> None:
    config = Config(
        listen_address="127.0.0.1:0",
        network_id=network_id,
        node_name=name,
        enable_discovery=False,  # talk through the hub, not directly
    )
    async with P2PServer(config) as node:
        hub = await node.connect_to_peer(hub_addr)
        inbox = node.messages()

        async def show_incoming() -> None:
            async for msg in inbox:
                payload = msg.payload
                if isinstance(payload, dict) and "text" in payload:
                    print(f"[{payload.get('from', msg.source[:8])}] {payload['text']}", flush=True)

        printer = asyncio.create_task(show_incoming())
        print(f"joined {hub_addr} as {name}", flush=True)
        lines = await stdin_lines()
        try:
            while line := await lines.readline():
                text = line.decode(errors="replace").rstrip("\n")
                if not text:
                    continue
                # Ask the hub who is here: its DiscoveryResponse also teaches us routes via it.
                room = others(await node.list_peers(hub), node.node_id)
                results = await asyncio.gather(
                    *(node.send(peer, {"from": name, "text": text}) for peer in room),
                    return_exceptions=True,
                )
                failed = [r for r in results if isinstance(r, SendError)]
                print(f"* sent to {len(room) - len(failed)} of {len(room)}", flush=True)
        finally:
            printer.cancel()
            await node.disconnect(hub, reason="bye")
    print("left the room", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="A chat room through a p2pfast hub.")
    parser.add_argument("hub", help="the hub's address, ip:port")
    parser.add_argument("name", help="your name in the room")
    parser.add_argument("--network-id", default="p2p_default")
    args = parser.parse_args()
    try:
        run(chat(args.hub, args.name, args.network_id))
    except KeyboardInterrupt:  # Ctrl-C: leave without a traceback
        sys.exit(130)
    except (ConnectionRefusedError, TimeoutError) as exc:
        sys.exit(f"chat: cannot join {args.hub}: {exc or 'no answer'}")


if __name__ == "__main__":
    main()
