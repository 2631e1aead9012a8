"""Coalesced Ack ranges (built and read) and the resend allowance."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pfast.reliability import (
    MAX_ACK_RANGE_LEN,
    MAX_ACK_RANGES,
    RESEND_BURST,
    RESEND_RATE,
    ResendAllowance,
    ack_ranges,
    parse_ack_ranges,
)


def covered(ranges: list[list[int]]) -> set[int]:
    return {s for lo, hi in ranges for s in range(lo, hi + 1)}


def test_owed_numbers_become_runs_and_the_filter_adds_what_they_do_not_cover():
    assert ack_ranges([5, 1, 2, 3, 2], []) == [[1, 3], [5, 5]]
    assert ack_ranges([7], [[7, 7], [1, 5]]) == [[7, 7], [1, 5]]
    assert ack_ranges([1, 2, 3], [[0, 3]]) == [[1, 3]]  # covered; 0 means "nothing yet"
    assert ack_ranges([9], [[0, 0]]) == [[9, 9]]


@given(
    owed=st.lists(st.integers(1, 20_000), min_size=1, max_size=300),
    seen=st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 5000)), max_size=100),
)
def test_ack_ranges_cover_everything_owed_and_respect_the_bounds(owed, seen):
    seen_ranges = [[lo, lo + n] for lo, n in seen]
    ranges = ack_ranges(owed, seen_ranges)
    assert set(owed) <= covered(ranges)  # everything owed is acknowledged
    assert covered(ranges) <= set(owed) | covered(seen_ranges)  # nothing never received
    assert 0 not in covered(ranges)
    assert all(0 <= hi - lo < MAX_ACK_RANGE_LEN for lo, hi in ranges)
    owed_runs = len(ack_ranges(owed, []))
    assert len(ranges) <= max(MAX_ACK_RANGES, owed_runs)  # the filter never adds past the cap


def test_parse_keeps_valid_ranges_and_bounds_what_it_reads():
    assert parse_ack_ranges("x") is None
    raw = [[1, 2], [5, 1], ["a", 1], [1], [0, MAX_ACK_RANGE_LEN], [3, 3], 7, True]
    assert parse_ack_ranges(raw) == ([(1, 2), (3, 3)], len(raw))
    many = [[i, i] for i in range(10_000)]
    valid, looked_at = parse_ack_ranges(many)
    assert looked_at == MAX_ACK_RANGES and len(valid) == MAX_ACK_RANGES


def test_resend_allowance_is_a_token_bucket():
    allowance = ResendAllowance(now=0.0)
    assert allowance.take(RESEND_BURST) and not allowance.take(1)
    allowance.refill(0.1)
    assert allowance.tokens == min(RESEND_BURST, RESEND_RATE * 0.1)
    allowance.refill(100.0)
    assert allowance.tokens == RESEND_BURST  # never more than one burst
    allowance.refill(99.0)  # a clock stepping back adds nothing
    assert allowance.tokens == RESEND_BURST
