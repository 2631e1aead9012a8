"""Pieces of the reliable transport that are not the windows themselves: the ranges of a
coalesced Ack (built and read), and the allowance for bytes resent on a peer's request.

The send and receive windows (``_window``) are the compiled hot path; these run once per
Ack datagram or Retransmit request, and bound the work either can cause.
"""

from __future__ import annotations

from typing import Any

#: Coalesced Acks carry at most this many ranges, each at most this long.
MAX_ACK_RANGES = 64
MAX_ACK_RANGE_LEN = 4096
#: Retransmit requests carry at most this many sequence numbers.
MAX_RETRANSMIT_REQUEST = 64
#: Bytes resent on a peer's Retransmit requests: at most this much per request, and on
#: average per second (a token bucket of one request's worth).
RESEND_BURST = 256 * 1024
RESEND_RATE = 1024 * 1024


def ack_ranges(owed: list[int], seen: list[list[int]], floor: int = 1) -> list[list[int]]:
    """The ``[lo, hi]`` ranges of a coalesced Ack: the sequence numbers ``owed`` (as received
    since the last Ack, any order, repeats allowed), then, like a QUIC ACK frame, the newest
    runs the duplicate filter has ``seen`` that these do not already cover, up to
    ``MAX_ACK_RANGES`` ranges in all, so a lost Ack is made good by the next one. No range is
    longer than ``MAX_ACK_RANGE_LEN``; nothing below ``floor`` is repeated (the number before
    the peer's first message stands for "nothing yet")."""
    seqs = sorted(set(owed))
    ranges: list[list[int]] = []
    lo = hi = seqs[0]
    for seq in seqs[1:]:
        if seq > hi + 1 or seq - lo >= MAX_ACK_RANGE_LEN:
            ranges.append([lo, hi])
            lo = seq
        hi = seq
    ranges.append([lo, hi])
    if len(ranges) < MAX_ACK_RANGES:
        covered = _union(ranges)
        for lo, hi in seen[: MAX_ACK_RANGES - len(ranges)]:
            lo = max(lo, hi - MAX_ACK_RANGE_LEN + 1, floor)
            if hi >= lo and not any(a <= lo and hi <= b for a, b in covered):
                ranges.append([lo, hi])
    return ranges


def parse_ack_ranges(raw: Any) -> tuple[list[tuple[int, int]], int] | None:
    """The valid ranges of a received coalesced Ack (at most ``MAX_ACK_RANGES`` items are
    looked at; malformed ones are skipped) and how many items were looked at; None when the
    ranges are not a list at all."""
    if type(raw) is not list:
        return None
    items = raw[:MAX_ACK_RANGES]
    valid: list[tuple[int, int]] = []
    for item in items:
        if type(item) is not list or len(item) != 2:
            continue
        lo, hi = item
        if type(lo) is not int or type(hi) is not int or not 0 <= hi - lo < MAX_ACK_RANGE_LEN:
            continue
        valid.append((lo, hi))
    return valid, len(items)


def _union(ranges: list[list[int]]) -> list[tuple[int, int]]:
    """Sorted ``[lo, hi]`` ranges with adjacent and overlapping ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


class ResendAllowance:
    """Bytes a peer's Retransmit requests may still make us resend: a token bucket of
    ``RESEND_BURST`` bytes refilled at ``RESEND_RATE`` bytes per second."""

    __slots__ = ("at", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = float(RESEND_BURST)
        self.at = now

    def refill(self, now: float) -> None:
        elapsed = now - self.at
        self.at = now
        if elapsed > 0:
            self.tokens = min(float(RESEND_BURST), self.tokens + elapsed * RESEND_RATE)

    def take(self, size: int) -> bool:
        """Spend ``size`` bytes if the allowance covers them."""
        if size > self.tokens:
            return False
        self.tokens -= size
        return True
