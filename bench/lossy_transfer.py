"""Reliable transfer through the seeded lossy relay, against the same transfer loss-free, side
by side in one run on real loopback sockets.

    python bench/lossy_transfer.py [--messages 2000] [--seeds 5] [--loss 0.10]
                                   [--duplicate 0.05] [--reorder 0.10]

For each seed it sends ``--messages`` reliable messages from one node to another through a
relay (loss-free, then with the odds given, both directions) and reports the time until every
send completed, the ratio, the retransmissions and the retransmission timer afterwards; then
the median ratio. Run it once more with ``P2PFAST_NO_EXTENSIONS=1`` for the pure twins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from p2pfast import USE_EXTENSIONS, Config, P2PServer
from p2pfast.relay import LossyRelay
from p2pfast.server import run


async def transfer(messages: int, loss: float, duplicate: float, reorder: float, seed: int) -> dict:
    """One transfer through a relay with these odds; what it took."""
    config = dict(listen_address="127.0.0.1:0", network_id="bench-lossy", enable_discovery=False)
    got: set[int] = set()
    async with (
        P2PServer(Config(**config), on_data=lambda m: got.add(m.payload)) as server,
        P2PServer(Config(**config)) as client,
    ):
        relay = LossyRelay(
            server.local_address, loss=loss, duplicate=duplicate, reorder=reorder, seed=seed
        )
        relay_addr = await relay.start()
        try:
            await client.connect_to_peer(relay_addr, timeout=15)
            start = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(*(client.send(server.node_id, n) for n in range(messages))), 300
            )
            elapsed = time.perf_counter() - start
            window = client.node.peers_by_id[server.node_id].window
            return {
                "seconds": elapsed,
                "complete": len(got) == messages,
                "retransmits": client.get_stats().retransmits,
                "dropped": relay.dropped,
                "rto_after": window.rto,
            }
        finally:
            relay.close()


async def main(args: argparse.Namespace) -> dict:
    rounds = []
    for seed in range(1, args.seeds + 1):
        clean = await transfer(args.messages, 0.0, 0.0, 0.0, seed)
        lossy = await transfer(args.messages, args.loss, args.duplicate, args.reorder, seed)
        ratio = lossy["seconds"] / clean["seconds"]
        rounds.append({"seed": seed, "loss_free": clean, "lossy": lossy, "ratio": ratio})
        print(
            f"seed {seed}: loss-free {clean['seconds']:.3f} s, lossy {lossy['seconds']:.3f} s "
            f"({ratio:.2f}x), {lossy['dropped']} dropped, {lossy['retransmits']} retransmitted, "
            f"rto after {lossy['rto_after'] * 1000:.0f} ms, all delivered: {lossy['complete']}"
        )
    median = statistics.median(r["ratio"] for r in rounds)
    print(f"median lossy / loss-free: {median:.2f}x ({'compiled' if USE_EXTENSIONS else 'pure'})")
    return {"median_ratio": median, "rounds": rounds, "compiled": USE_EXTENSIONS}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--loss", type=float, default=0.10)
    parser.add_argument("--duplicate", type=float, default=0.05)
    parser.add_argument("--reorder", type=float, default=0.10)
    parser.add_argument("--json", help="write the results to this file")
    ns = parser.parse_args()
    result = run(main(ns))
    if ns.json:
        with open(ns.json, "w") as fh:
            json.dump(result, fh, indent=2)
