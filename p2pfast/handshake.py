"""Handshake pieces that are not the engine's state: outgoing handshakes in progress and
their retry schedule, what a refusal means, and the address-proof tokens.
"""

from __future__ import annotations

import hmac
from typing import Any

#: Outgoing handshakes are retried with exponential backoff up to this interval, until the
#: caller's deadline: through 30 % loss each way an attempt succeeds about half the time, so
#: a 15 s deadline needs a dozen or more attempts, not five.
CONNECT_RETRY_MAX = 1.0
#: Length of the anti-amplification token (hex characters) and the longest we echo.
TOKEN_HEX = 32
MAX_TOKEN_LEN = 64

#: Why a peer refuses a handshake (the ``code`` of its Error), in words for people.
REFUSAL_REASONS = {
    "network_mismatch": "the peer is on a different network id",
    "server_full": "the peer has reached its max_connections",
    "node_id_taken": "the peer already has a session with this node id",
    "invalid_node_info": "the peer refused our NodeInfo",
    "handshake_required": "the peer has no session with this node",
    "refused": "the peer refused the handshake",
}


def guess_refusal(text: str) -> str:
    """The code of a refusal from a peer that sends none (the Rust server's texts)."""
    if "网络ID不匹配" in text or "network" in text.lower():
        return "network_mismatch"
    if "已存在" in text:
        return "node_id_taken"
    if "full" in text.lower() or "已满" in text:
        return "server_full"
    return "refused"


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of a token (any string a peer sends, non-ASCII included)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class PendingConnect:
    """An outgoing handshake: the request datagram, attempts so far, when to send it again
    and when to give up."""

    __slots__ = (
        "attempts",
        "data",
        "deadline",
        "discovered",
        "early_list",
        "first_seq",
        "msg_id",
        "next_at",
        "started",
    )

    def __init__(
        self, msg_id: str, data: bytes, now: float, first_retry: float, deadline: float
    ) -> None:
        self.msg_id = msg_id
        self.data = data
        self.attempts = 1
        self.started = now
        self.deadline = deadline
        self.next_at = min(now + first_retry, deadline)
        #: The sequence number our first message in the session will carry (announced).
        self.first_seq = 1
        #: Started by discovery (an address learned from a list), not asked for.
        self.discovered = False
        #: A peer list from the address that overtook its HandshakeResponse.
        self.early_list: Any = None

    def retried(self, now: float, first_retry: float) -> None:
        """One more attempt was sent at ``now``: the next waits twice as long (at most
        ``CONNECT_RETRY_MAX``), and never past the deadline."""
        self.attempts += 1
        interval = min(first_retry * 2.0 ** min(self.attempts - 1, 16), CONNECT_RETRY_MAX)
        self.next_at = min(now + interval, self.deadline)
