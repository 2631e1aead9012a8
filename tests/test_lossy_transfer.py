"""Long reliable transfers on real loopback sockets through the seeded lossy relay: every
message exactly once, the sends complete, and the retransmission timer ends near the path's
RTT. (Speed is not asserted here beyond a generous deadline; ``bench/lossy_transfer.py``
measures the lossy/loss-free ratio.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from p2pfast import Config, P2PServer

from .netutil import LossyRelay, on_uvloop

TOTAL = 2000


def config(**kw) -> Config:
    settings = dict(listen_address="127.0.0.1:0", network_id="lossy", enable_discovery=False)
    settings.update(kw)
    return Config(**settings)


async def transfer(loss: float, duplicate: float, reorder: float, seed: int) -> dict:
    """Connect through a relay with these odds (both directions) and send TOTAL reliable
    messages; return what happened."""
    got: list[int] = []
    async with (
        P2PServer(config(), on_data=lambda m: got.append(m.payload["n"])) as server,
        P2PServer(config()) as client,
    ):
        relay = LossyRelay(
            server.local_address, loss=loss, duplicate=duplicate, reorder=reorder, seed=seed
        )
        relay_addr = await relay.start()
        try:
            await client.connect_to_peer(relay_addr, timeout=15)
            start = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(*(client.send(server.node_id, {"n": n}) for n in range(TOTAL))), 120
            )
            elapsed = time.perf_counter() - start
            for _ in range(100):  # the last deliveries may still be on their way to the app
                if len(got) >= TOTAL:
                    break
                await asyncio.sleep(0.01)
            window = client.node.peers_by_id[server.node_id].window
            return {
                "got": got,
                "elapsed": elapsed,
                "rto": window.rto,
                "backoff": window.backoff,
                "rto_min": client.config.rto_min,
                "dropped": relay.dropped,
                "duplicated": relay.duplicated,
                "reordered": relay.reordered,
                "retransmits": client.get_stats().retransmits,
                "duplicates": server.get_stats().duplicates,
            }
        finally:
            relay.close()


@pytest.mark.slow
@on_uvloop
async def test_2000_messages_through_10_percent_loss_arrive_exactly_once():
    result = await transfer(loss=0.10, duplicate=0.05, reorder=0.10, seed=2026)
    assert sorted(result["got"]) == list(range(TOTAL))  # all of them, none twice
    assert result["dropped"] > 150 and result["duplicated"] > 50 and result["reordered"] > 150
    assert result["retransmits"] > 0 and result["duplicates"] > 0
    # the timer came back down: the loopback path is far below rto_min
    assert result["rto"] <= 2 * result["rto_min"] and result["backoff"] == 0
