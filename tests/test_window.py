"""Reliability windows: DuplicateFilter and SendWindow, compiled ([c]) and pure ([py]).

Every test takes the ``window`` fixture (tests/conftest.py), so it runs once per implementation.
Besides the example tests there are hypothesis tests against small reference models (both
implementations) and a c-vs-py agreement test on random operation sequences (meaningful under
[c]; skipped under [py], where it would compare the pure twin with itself).
"""

from __future__ import annotations

import copy
import importlib
import math
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast.errors import P2PError, WindowFull

PURE = importlib.import_module("p2pfast._window_py")

HYPO = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _is_pure(mod) -> bool:
    return mod is PURE


# --------------------------------------------------------------------------- module surface


def test_result_constants(window):
    assert (window.NEW, window.DUPLICATE, window.TOO_OLD) == (0, 1, 2)
    assert window.WindowFull is WindowFull


def test_same_public_names(window):
    def public(obj):
        return {n for n in dir(obj) if not n.startswith("_")}

    for name in ("DuplicateFilter", "SendWindow"):
        assert public(getattr(window, name)) == public(getattr(PURE, name)), name


# --------------------------------------------------------------------------- DuplicateFilter


def test_filter_fresh(window):
    f = window.DuplicateFilter()
    assert f.width == 1024
    assert f.highest == -1
    assert f.contains(0) is False
    assert f.missing() == []


@pytest.mark.parametrize("width", [64, 128, 1024, 1 << 20])
def test_filter_valid_widths(window, width):
    f = window.DuplicateFilter(width)
    assert f.width == width
    assert type(f.width) is int


@pytest.mark.parametrize("width", [0, 1, 32, 63, 65, 96, 100, 1000, -64, 1 << 21, 1 << 40])
def test_filter_invalid_widths(window, width):
    with pytest.raises(ValueError, match="power of two between 64 and 1048576"):
        window.DuplicateFilter(width)


def test_filter_new_then_duplicate(window):
    f = window.DuplicateFilter(64)
    assert f.check(5) == window.NEW
    assert f.highest == 5
    assert f.check(5) == window.DUPLICATE
    assert f.check(5) == window.DUPLICATE
    assert f.check(6) == window.NEW
    assert f.check(4) == window.NEW  # below the first, still inside the window
    assert f.check(4) == window.DUPLICATE
    assert f.highest == 6
    assert type(f.check(7)) is int


def test_filter_first_number_can_be_anything(window):
    f = window.DuplicateFilter(64)
    assert f.check(1_000_000) == window.NEW
    assert f.check(1_000_000 - 63) == window.NEW
    assert f.check(1_000_000 - 64) == window.TOO_OLD
    assert f.check(0) == window.TOO_OLD
    assert f.highest == 1_000_000


def test_filter_reorder_does_not_lower_highest(window):
    f = window.DuplicateFilter(64)
    for seq in (10, 12, 11, 9, 13):
        assert f.check(seq) == window.NEW
    assert f.highest == 13
    for seq in (9, 10, 11, 12, 13):
        assert f.check(seq) == window.DUPLICATE


@pytest.mark.parametrize("width", [64, 256])
def test_filter_window_boundary(window, width):
    f = window.DuplicateFilter(width)
    top = 10 * width + 7
    assert f.check(top) == window.NEW
    assert f.check(top - (width - 1)) == window.NEW  # offset width-1: last slot inside
    assert f.check(top - width) == window.TOO_OLD  # offset width: just outside
    assert f.check(top - (width - 1)) == window.DUPLICATE
    assert f.contains(top - (width - 1)) is True
    assert f.contains(top - width) is False
    # One step up pushes the former last slot out.
    assert f.check(top + 1) == window.NEW
    assert f.check(top - (width - 1)) == window.TOO_OLD
    assert f.contains(top - (width - 1)) is False


@pytest.mark.parametrize("width", [64, 128, 1024])
def test_filter_jump_below_width_keeps_older_bits(window, width):
    f = window.DuplicateFilter(width)
    for seq in (10, 20, 30):
        assert f.check(seq) == window.NEW
    top = 10 + width - 1  # jump of width-21 from 30; 10 stays at offset width-1
    assert f.check(top) == window.NEW
    for seq in (10, 20, 30):
        assert f.contains(seq), seq
        assert f.check(seq) == window.DUPLICATE
    for seq in (11, 29, 31, top - 1):
        assert f.check(seq) == window.NEW, seq
    # Slide by 10: the floor becomes 20, so 10 leaves while 20 and 30 stay.
    assert f.check(top + 10) == window.NEW
    assert f.check(10) == window.TOO_OLD
    assert f.check(20) == window.DUPLICATE
    assert f.check(30) == window.DUPLICATE


@pytest.mark.parametrize("width", [64, 256, 1024])
def test_filter_partial_slide_across_words(window, width):
    f = window.DuplicateFilter(width)
    for seq in range(width):  # fill the whole window
        assert f.check(seq) == window.NEW
    shift = width // 2 + 7  # < width: a partial slide
    top = width - 1 + shift
    assert f.check(top) == window.NEW
    for seq in range(shift):
        assert f.check(seq) == window.TOO_OLD, seq
    for seq in range(shift, width):
        assert f.check(seq) == window.DUPLICATE, seq
    for seq in range(width, top):  # slots reused after the slide must read as unseen
        assert f.contains(seq) is False, seq
        assert f.check(seq) == window.NEW, seq
    assert f.missing() == []


@pytest.mark.parametrize("width", [64, 1024])
def test_filter_jump_of_width_clears_everything(window, width):
    f = window.DuplicateFilter(width)
    for seq in range(width):
        f.check(seq)
    top = width - 1 + width  # jump of exactly width
    assert f.check(top) == window.NEW
    for seq in range(width):
        assert f.check(seq) == window.TOO_OLD
    for seq in range(width, top):
        assert f.contains(seq) is False
        assert f.check(seq) == window.NEW
    assert f.check(top) == window.DUPLICATE


def test_filter_jump_of_width_minus_one_keeps_top(window):
    f = window.DuplicateFilter(64)
    f.check(100)
    assert f.check(163) == window.NEW
    assert f.check(100) == window.DUPLICATE
    f2 = window.DuplicateFilter(64)
    f2.check(100)
    assert f2.check(164) == window.NEW
    assert f2.check(100) == window.TOO_OLD


def test_filter_huge_jump(window):
    f = window.DuplicateFilter(128)
    for seq in range(50):
        f.check(seq)
    big = 2**40 + 3
    assert f.check(big) == window.NEW
    assert f.highest == big
    assert f.check(big - 1) == window.NEW
    assert f.check(big - 127) == window.NEW
    assert f.check(big - 128) == window.TOO_OLD
    assert f.check(49) == window.TOO_OLD
    # u32 wire range and the top of u64 both work.
    g = window.DuplicateFilter(64)
    assert g.check(2**32 - 1) == window.NEW
    assert g.check(2**64 - 1) == window.NEW
    assert g.highest == 2**64 - 1
    assert g.check(2**64 - 64) == window.NEW
    assert g.check(2**64 - 65) == window.TOO_OLD


def test_filter_beyond_u64(window):
    f = window.DuplicateFilter(64)
    if _is_pure(window):
        assert f.check(2**64) == window.NEW  # the pure twin has no size limit
    else:
        with pytest.raises(OverflowError):
            f.check(2**64)
        assert f.highest == -1  # nothing recorded
    assert f.contains(2**70) is False


@pytest.mark.parametrize("seq", [-1, -(2**63), -(2**70)])
def test_filter_negative_raises(window, seq):
    f = window.DuplicateFilter(64)
    f.check(3)
    with pytest.raises(ValueError, match="non-negative"):
        f.check(seq)
    assert f.highest == 3
    assert f.contains(seq) is False


def test_filter_contains_does_not_record(window):
    f = window.DuplicateFilter(64)
    assert f.contains(5) is False
    f.check(10)
    assert f.contains(5) is False
    assert f.contains(10) is True
    assert f.contains(11) is False  # above the highest
    assert f.contains(-1) is False
    assert f.check(5) == window.NEW  # contains() did not record it
    assert f.contains(5) is True


def test_filter_missing_gaps(window):
    f = window.DuplicateFilter(64)
    for seq in (1, 2, 5, 9):
        f.check(seq)
    assert f.missing() == [3, 4, 6, 7, 8]
    assert f.missing(2) == [3, 4]
    assert f.missing(1) == [3]
    assert f.missing(5) == [3, 4, 6, 7, 8]
    assert f.missing(0) == []
    assert f.missing(-3) == []
    f.check(7)
    assert f.missing() == [3, 4, 6, 8]
    for seq in (3, 4, 6, 8):
        f.check(seq)
    assert f.missing() == []


def test_filter_missing_nothing_before_lowest(window):
    f = window.DuplicateFilter(64)
    f.check(100)
    assert f.missing() == []
    f.check(103)
    assert f.missing() == [101, 102]
    f.check(98)  # a lower number moves the start down
    assert f.missing() == [99, 101, 102]
    assert f.check(97 - 64 + 6) == window.TOO_OLD  # too old: does not move the start
    assert f.missing() == [99, 101, 102]


def test_filter_missing_after_far_jump(window):
    f = window.DuplicateFilter(64)
    f.check(0)
    f.check(1000)
    assert f.missing(100) == list(range(937, 1000))  # the whole window below the top
    assert f.missing() == list(range(937, 1000))
    assert f.missing(3) == [937, 938, 939]
    f.check(937)
    f.check(999)
    assert f.missing(100) == list(range(938, 999))


@pytest.mark.parametrize("width", [64, 1024])
def test_filter_missing_across_words(window, width):
    f = window.DuplicateFilter(width)
    base = 5 * width + 13  # not word-aligned, wraps the ring
    seen = set(range(base, base + width, 3)) | {base + width - 1}
    for seq in sorted(seen, reverse=True):
        assert f.check(seq) == window.NEW
    expected = [s for s in range(base, base + width - 1) if s not in seen]
    assert f.missing(len(expected) + 10) == expected
    assert f.missing(70) == expected[:70]


def test_filter_pickle_and_copy(window):
    f = window.DuplicateFilter(128)
    for seq in (5, 7, 300, 250):
        f.check(seq)
    for g in (pickle.loads(pickle.dumps(f)), copy.deepcopy(f)):
        assert (g.width, g.highest) == (128, 300)
        assert g.missing(200) == f.missing(200)
        assert [g.check(s) for s in (250, 251, 172, 173, 301)] == [1, 0, 2, 0, 0]
    assert f.check(251) == window.NEW  # the original is independent of its copies
    assert pickle.loads(pickle.dumps(window.DuplicateFilter())).highest == -1


# --------------------------------------------------------------------------- filter properties


class FilterModel:
    """Reference: NEW iff never seen and within ``width`` of the highest so far."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.seen: set[int] = set()
        self.highest = -1
        self.lowest = -1

    def check(self, seq: int) -> int:
        if seq <= self.highest and self.highest - seq >= self.width:
            return PURE.TOO_OLD
        if seq in self.seen:
            return PURE.DUPLICATE
        self.seen.add(seq)
        self.highest = max(self.highest, seq)
        self.lowest = seq if self.lowest < 0 else min(self.lowest, seq)
        return PURE.NEW

    def contains(self, seq: int) -> bool:
        return seq in self.seen and 0 <= self.highest - seq < self.width

    def missing(self, limit: int) -> list[int]:
        if self.highest < 0 or limit <= 0:
            return []
        start = max(self.lowest, self.highest - self.width + 1)
        return [s for s in range(start, self.highest) if s not in self.seen][:limit]


@pytest.mark.parametrize("width", [64, 128, 256])
def test_filter_slides_exhaustive(window, width):
    """Every alignment of the old top in its word x every interesting slide distance."""
    shifts = sorted({1, 2, 31, 62, 63, 64, 65, 127, 128, 129, width - 1, width, width + 1})
    for top_bit in (0, 1, 30, 62, 63):
        for shift in shifts:
            f = window.DuplicateFilter(width)
            model = FilterModel(width)
            top = 3 * width + top_bit
            for seq in range(top - width + 1, top + 1):  # a patterned full window
                if seq % 3 or seq == top:
                    assert f.check(seq) == model.check(seq)
            new_top = top + shift
            assert f.check(new_top) == model.check(new_top) == window.NEW
            for seq in range(top - width - 1, new_top + 2):
                assert f.contains(seq) == model.contains(seq), (top_bit, shift, seq)
            assert f.missing(3 * width) == model.missing(3 * width), (top_bit, shift)
            for seq in range(top - width - 1, new_top + 2):
                assert f.check(seq) == model.check(seq), (top_bit, shift, seq)


_filter_ops = st.lists(
    st.one_of(
        st.tuples(st.just("rel"), st.integers(-80, 40)),  # near the top: reorders, old, dups
        st.tuples(st.just("rel"), st.integers(-2000, 2000)),  # across the window, jumps
        st.tuples(st.just("again"), st.integers(0, 10**6)),  # an earlier number again
        st.tuples(st.just("abs"), st.integers(0, 2**32 - 1)),  # anywhere in u32
        st.tuples(st.just("missing"), st.integers(0, 80)),
    ),
    max_size=120,
)


def _filter_seq(op, arg, highest, history):
    if op == "rel":
        return max(0, highest + arg)
    if op == "again":
        return history[arg % len(history)] if history else arg % 100
    return arg


@HYPO
@given(width=st.sampled_from([64, 128, 1024]), ops=_filter_ops)
def test_filter_matches_set_model(window, width, ops):
    f = window.DuplicateFilter(width)
    model = FilterModel(width)
    history: list[int] = []
    for op, arg in ops:
        if op == "missing":
            assert f.missing(arg) == model.missing(arg)
            continue
        seq = _filter_seq(op, arg, model.highest, history)
        history.append(seq)
        assert f.check(seq) == model.check(seq), (op, arg, seq)
        assert f.highest == model.highest
        for probe in (seq, seq - 1, seq + 1, model.highest - width + 1, model.highest - width):
            assert f.contains(probe) == model.contains(probe), probe
    assert f.missing(2000) == model.missing(2000)


@HYPO
@given(width=st.sampled_from([64, 256]), ops=_filter_ops)
def test_filter_c_agrees_with_py(window, width, ops):
    if _is_pure(window):
        pytest.skip("c-vs-py agreement runs under [c]")
    fc = window.DuplicateFilter(width)
    fp = PURE.DuplicateFilter(width)
    history: list[int] = []
    for op, arg in ops:
        if op == "missing":
            assert fc.missing(arg) == fp.missing(arg)
            continue
        seq = _filter_seq(op, arg, fp.highest, history)
        history.append(seq)
        assert fc.check(seq) == fp.check(seq)
        assert fc.highest == fp.highest
        assert fc.contains(seq - 3) == fp.contains(seq - 3)
    assert fc.missing(5000) == fp.missing(5000)


# --------------------------------------------------------------------------- SendWindow


def rfc6298(samples, granularity, rto_min, rto_max):
    """(srtt, rttvar, rto) after ``samples``, straight from RFC 6298 (2.2)/(2.3)/(2.4)."""
    srtt = rttvar = 0.0
    rto = None
    for i, r in enumerate(samples):
        r = max(r, 0.0)
        if i == 0:
            srtt, rttvar = r, r / 2.0
        else:
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
            srtt = 0.875 * srtt + 0.125 * r
        rto = min(max(srtt + max(granularity, 4.0 * rttvar), rto_min), rto_max)
    return srtt, rttvar, rto


def test_send_defaults(window):
    sw = window.SendWindow()
    assert (sw.capacity, sw.max_retries) == (256, 8)
    assert (sw.rto, sw.rto_min, sw.rto_max) == (1.0, 0.2, 60.0)
    assert (sw.srtt, sw.rttvar) == (0.0, 0.0)
    assert len(sw) == 0
    assert sw.available == 256
    assert sw.full is False
    assert sw.next_deadline() == math.inf
    assert sw.due(1e9) == ([], [])
    assert sw.clear() == []


@pytest.mark.parametrize(
    ("initial", "expected"), [(1.0, 1.0), (0.01, 0.2), (100.0, 60.0), (0.2, 0.2), (60.0, 60.0)]
)
def test_send_initial_rto_clamped(window, initial, expected):
    assert window.SendWindow(rto_initial=initial).rto == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"capacity": -5},
        {"max_retries": -1},
        {"rto_min": 0.0},
        {"rto_min": -1.0},
        {"rto_min": 2.0, "rto_max": 1.0},
        {"rto_min": float("nan")},
    ],
)
def test_send_invalid_arguments(window, kwargs):
    with pytest.raises(ValueError):
        window.SendWindow(**kwargs)


def test_send_first_sample(window):
    sw = window.SendWindow(rto_min=0.001, granularity=0.001)
    sw.add(1, "a", b"x", 10.0)
    assert sw.on_ack("a", 10.3) == 1
    r = 10.3 - 10.0
    assert sw.srtt == r
    assert sw.rttvar == r / 2.0
    assert sw.rto == r + max(0.001, 4.0 * (r / 2.0))
    assert sw.rto == pytest.approx(0.9)
    assert len(sw) == 0


def test_send_subsequent_samples_exact(window):
    g, lo, hi = 0.001, 0.001, 60.0
    sw = window.SendWindow(rto_min=lo, rto_max=hi, granularity=g)
    samples = []
    now = 100.0
    for i, rtt in enumerate([0.3, 0.1, 0.45, 0.2, 0.2, 1.7, 0.05, 0.123456789]):
        sw.add(i, f"m{i}", b"d", now)
        now2 = now + rtt
        assert sw.on_ack(f"m{i}", now2) == i
        samples.append(now2 - now)
        srtt, rttvar, rto = rfc6298(samples, g, lo, hi)
        assert (sw.srtt, sw.rttvar, sw.rto) == (srtt, rttvar, rto), i
        now = now2 + 0.5
    # Second sample by hand: RTTVAR = 3/4*R1/2 + 1/4*|R1 - R2|, SRTT = 7/8*R1 + 1/8*R2.
    sw2 = window.SendWindow(rto_min=lo, granularity=g)
    sw2.add(1, "a", b"", 0.0)
    sw2.on_ack("a", 0.5)
    sw2.add(2, "b", b"", 1.0)
    sw2.on_ack("b", 1.25)
    assert sw2.rttvar == 0.75 * 0.25 + 0.25 * 0.25
    assert sw2.srtt == 0.875 * 0.5 + 0.125 * 0.25
    assert sw2.rto == sw2.srtt + 4.0 * sw2.rttvar


def test_send_granularity_floor(window):
    sw = window.SendWindow(rto_min=0.001, granularity=0.5)
    sw.add(1, "a", b"", 0.0)
    sw.on_ack("a", 0.0625)  # 4*RTTVAR = 0.125 < G
    assert sw.rto == 0.0625 + 0.5


def test_send_clamped_to_rto_min_and_max(window):
    sw = window.SendWindow(rto_min=0.2, rto_max=5.0)
    sw.add(1, "a", b"", 0.0)
    sw.on_ack("a", 0.01)
    assert sw.srtt == 0.01
    assert sw.rto == 0.2
    sw.add(2, "b", b"", 1.0)
    sw.on_ack("b", 101.0)
    assert sw.rto == 5.0
    assert sw.srtt > 5.0


def test_send_zero_first_sample_counts(window):
    # RFC 6298: a first RTT of 0 is still the first measurement; the next one uses (2.3).
    sw = window.SendWindow(rto_min=0.001, granularity=0.001)
    sw.add(1, "a", b"", 5.0)
    sw.on_ack("a", 5.0)
    assert (sw.srtt, sw.rttvar, sw.rto) == (0.0, 0.0, 0.001)
    sw.add(2, "b", b"", 6.0)
    sw.on_ack("b", 6.5)
    assert sw.rttvar == 0.125
    assert sw.srtt == 0.0625
    assert sw.rto == 0.0625 + 0.5


def test_send_negative_rtt_is_zero(window):
    sw = window.SendWindow(rto_min=0.001, granularity=0.001)
    sw.add(1, "a", b"", 5.0)
    sw.on_ack("a", 4.0)  # clock stepped back
    assert (sw.srtt, sw.rttvar, sw.rto) == (0.0, 0.0, 0.001)


def test_send_karn_rule_timeout(window):
    sw = window.SendWindow(rto_initial=1.0)
    sw.add(1, "a", b"x", 0.0)
    assert sw.due(1.0) == ([(1, b"x")], [])
    assert sw.rto == 1.0  # the estimate moves only with samples
    assert sw.backoff == 1 and sw.next_deadline() == 3.0  # the message backs off: 2 x rto
    assert sw.on_ack("a", 1.2) == 1  # ambiguous: no sample
    assert (sw.srtt, sw.rttvar, sw.rto) == (0.0, 0.0, 1.0)
    assert sw.backoff == 0  # but the path answered: new messages start at the plain rto


def test_send_karn_rule_resend(window):
    sw = window.SendWindow(rto_initial=1.0)
    sw.add(1, "a", b"x", 0.0)
    sw.add(2, "b", b"y", 0.0)
    assert sw.resend(1, 0.1) == b"x"
    assert sw.on_ack_seq(1, 0.3) == "a"
    assert (sw.srtt, sw.rttvar, sw.rto) == (0.0, 0.0, 1.0)
    assert sw.on_ack("b", 0.4) == 2  # never retransmitted: a sample
    assert sw.srtt == 0.4
    assert sw.rttvar == 0.2


def test_send_exponential_backoff(window):
    sw = window.SendWindow(rto_initial=1.0, rto_max=10.0, max_retries=20)
    sw.add(7, "a", b"x", 0.0)
    now, waits = 0.0, []
    for _ in range(6):
        deadline = sw.next_deadline()
        assert sw.due(deadline - 1e-9) == ([], [])
        waits.append(deadline - now)
        now = deadline
        assert sw.due(now) == ([(7, b"x")], [])
        assert sw.rto == 1.0
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert sw.backoff == 6 and sw.timeout(6) == 10.0


def test_send_backoff_is_per_message(window):
    sw = window.SendWindow(rto_initial=1.0)
    for i in range(5):
        sw.add(i, f"m{i}", bytes([i]), 0.0)
    resend, failed = sw.due(1.0)
    assert resend == [(i, bytes([i])) for i in range(5)]
    assert failed == []
    assert sw.rto == 1.0 and sw.backoff == 1
    assert sw.next_deadline() == 3.0
    # A message sent while nothing answers starts backed off; after an ack, at the plain rto.
    sw.add(5, "m5", b"5", 1.5)
    assert sw.due(2.9) == ([], [])
    assert sw.on_ack("m0", 2.9) == 0
    sw.add(6, "m6", b"6", 3.0)
    resend, _ = sw.due(3.4)  # m5 (deadline 1.5 + 2) and m6 (3.0 + 1) are not due yet
    assert [s for s, _ in resend] == [1, 2, 3, 4]
    assert sw.next_deadline() == 3.5


def test_send_retry_cap_fails(window):
    sw = window.SendWindow(max_retries=2, rto_initial=1.0)
    sw.add(1, "a", b"x", 0.0)
    sw.add(2, "b", b"y", 0.5)
    assert sw.due(1.0) == ([(1, b"x")], [])  # a: retry 1, waits 2: deadline 3
    assert sw.due(2.5) == ([(2, b"y")], [])  # b: sent at 0.5, due at 1.5: retry 1, deadline 4.5
    assert sw.due(3.0) == ([(1, b"x")], [])  # a: retry 2, waits 4: deadline 7
    assert sw.rto == 1.0
    assert sw.due(7.0) == ([(2, b"y")], [(1, "a")])  # a used up its retries; b: retry 2
    assert 1 not in sw and len(sw) == 1
    assert sw.get(1) is None
    assert sw.on_ack("a", 12.0) == -1
    assert sw.on_ack_seq(1, 12.0) is None
    assert sw.on_ack("b", 12.0) == 2
    assert len(sw) == 0
    assert sw.next_deadline() == math.inf
    sw.add(1, "a", b"again", 30.0)  # the ids are free again
    assert sw.get(1) == b"again"


def test_send_zero_retries(window):
    sw = window.SendWindow(max_retries=0, rto_initial=1.0)
    sw.add(1, "a", b"x", 0.0)
    assert sw.due(1.0) == ([], [(1, "a")])
    assert len(sw) == 0


def test_send_resend_does_not_use_up_a_retry(window):
    sw = window.SendWindow(max_retries=1, rto_initial=1.0)
    sw.add(1, "a", b"x", 0.0)
    assert sw.resend(1, 0.5) == b"x"  # a peer's request: restarts the timer, no retry spent
    assert sw.due(1.5) == ([(1, b"x")], [])
    assert sw.due(3.5) == ([], [(1, "a")])


def test_send_window_full_backpressure(window):
    sw = window.SendWindow(capacity=2)
    sw.add(1, "a", b"", 0.0)
    assert (sw.available, sw.full) == (1, False)
    sw.add(2, "b", b"", 0.0)
    assert (sw.available, sw.full) == (0, True)
    with pytest.raises(WindowFull, match="2 messages awaiting acknowledgement") as info:
        sw.add(3, "c", b"", 0.0)
    assert isinstance(info.value, P2PError)
    assert len(sw) == 2 and 3 not in sw
    assert sw.on_ack("a", 0.1) == 1
    assert (sw.available, sw.full) == (1, False)
    sw.add(3, "c", b"", 0.2)
    assert sw.full is True
    assert sw.on_ack_seq(2, 0.3) == "b"
    assert sw.available == 1


def test_send_duplicate_add(window):
    sw = window.SendWindow()
    sw.add(1, "a", b"x", 0.0)
    with pytest.raises(ValueError, match="already in flight"):
        sw.add(1, "b", b"y", 0.0)
    with pytest.raises(ValueError, match="already in flight"):
        sw.add(2, "a", b"y", 0.0)
    with pytest.raises(TypeError):
        sw.add(3, ["unhashable"], b"y", 0.0)
    assert len(sw) == 1
    assert sw.get(1) == b"x"
    assert sw.on_ack("b", 0.1) == -1
    assert 2 not in sw and 3 not in sw
    assert sw.clear() == [(1, "a")]  # nothing half-added


def test_send_ack_by_id_and_seq(window):
    sw = window.SendWindow()
    assert sw.on_ack("nope", 1.0) == -1
    assert sw.on_ack_seq(5, 1.0) is None
    sw.add(5, "a", b"x", 0.0)
    sw.add(6, "b", b"y", 0.0)
    assert 5 in sw and 6 in sw and 7 not in sw
    assert sw.on_ack("a", 0.2) == 5
    assert sw.on_ack("a", 0.2) == -1
    assert sw.on_ack_seq(5, 0.2) is None
    assert sw.on_ack_seq(6, 0.3) == "b"
    assert sw.on_ack("b", 0.3) == -1
    assert len(sw) == 0


def test_send_get(window):
    sw = window.SendWindow()
    data = b"datagram-bytes"
    sw.add(9, "z", data, 0.0)
    assert sw.get(9) is data
    assert sw.get(10) is None
    sw.on_ack_seq(9, 0.1)
    assert sw.get(9) is None


def test_send_resend_restarts_timer(window):
    sw = window.SendWindow(rto_initial=1.0)
    sw.add(1, "a", b"x", 0.0)
    assert sw.resend(2, 0.5) is None
    assert sw.resend(1, 0.5) == b"x"
    assert sw.next_deadline() <= 1.0
    assert sw.due(1.0) == ([], [])  # restarted: now due at 1.5
    assert sw.rto == 1.0  # no timeout, no backoff
    assert sw.next_deadline() == 1.5
    assert sw.due(1.5) == ([(1, b"x")], [])
    assert sw.rto == 1.0 and sw.next_deadline() == 3.5


def test_send_resend_is_paced_by_the_smoothed_rtt(window):
    sw = window.SendWindow(rto_initial=1.0, rto_min=0.01)
    sw.add(1, "a", b"x", 0.0)
    sw.on_ack("a", 0.2)  # srtt 0.2
    sw.add(2, "b", b"y", 1.0)
    assert [sw.resend(2, 1.0 + t) for t in (0.0, 0.1, 0.19)] == [None, None, None]
    assert sw.resend(2, 1.25) == b"y"  # one smoothed RTT after the last copy
    assert sw.resend(2, 1.3) is None and sw.resend(2, 1.5) == b"y"


def test_send_resend_after_rto_shrank_moves_deadline_earlier(window):
    sw = window.SendWindow(rto_initial=3.0, rto_min=0.2, granularity=0.001)
    sw.add(1, "a", b"x", 0.0)  # deadline 3.0
    sw.add(2, "b", b"y", 0.0)  # deadline 3.0
    sw.on_ack("a", 0.05)  # sample 0.05 -> rto clamps to 0.2
    assert sw.rto == 0.2
    assert sw.resend(2, 0.1) == b"y"  # new deadline 0.1 + 0.2, before the old bound
    assert sw.next_deadline() <= 0.1 + 0.2
    assert sw.due(0.1 + 0.2) == ([(2, b"y")], [])


def test_send_next_deadline_is_lower_bound(window):
    sw = window.SendWindow(rto_initial=1.0)
    assert sw.next_deadline() == math.inf
    sw.add(1, "a", b"", 0.0)
    sw.add(2, "b", b"", 0.25)
    sw.add(3, "c", b"", 0.5)
    assert sw.next_deadline() == 1.0
    sw.on_ack("a", 0.6)  # rto becomes sample-based, earliest left as a lower bound
    assert sw.next_deadline() <= 1.25
    sw.due(sw.next_deadline())  # nothing due yet: recomputes
    assert sw.next_deadline() == 1.25
    sw.on_ack("b", 0.7)
    sw.on_ack("c", 0.8)
    assert sw.next_deadline() == math.inf


def test_send_due_nothing_due(window):
    sw = window.SendWindow(rto_initial=1.0)
    sw.add(1, "a", b"", 0.0)
    resend, failed = sw.due(0.999)
    assert resend == [] and failed == []
    assert type(resend) is list and type(failed) is list
    assert sw.rto == 1.0


def test_send_clear(window):
    sw = window.SendWindow()
    for i in (3, 1, 2):
        sw.add(i, f"m{i}", b"", 0.0)
    assert sw.clear() == [(3, "m3"), (1, "m1"), (2, "m2")]
    assert len(sw) == 0 and 1 not in sw
    assert sw.next_deadline() == math.inf
    assert sw.due(100.0) == ([], [])
    assert sw.on_ack("m1", 1.0) == -1
    sw.add(1, "m1", b"", 1.0)
    assert len(sw) == 1


def test_send_attribute_types(window):
    sw = window.SendWindow(capacity=4, max_retries=2)
    for name in ("srtt", "rttvar", "rto", "rto_min", "rto_max"):
        assert type(getattr(sw, name)) is float, name
    assert type(sw.capacity) is int and type(sw.max_retries) is int
    assert type(sw.available) is int and type(sw.full) is bool
    assert type(len(sw)) is int and type(1 in sw) is bool
    assert type(sw.next_deadline()) is float


def test_send_pickle(window):
    sw = window.SendWindow(capacity=3, rto_min=0.01)
    sw.add(1, "a", b"x", 0.0)
    sw.on_ack("a", 0.5)
    sw.add(2, "b", b"y", 1.0)
    sw.add(3, "c", b"z", 1.0)
    assert sw.resend(3, 1.6) == b"z"  # deadline 1.6 + 1.5
    s2 = pickle.loads(pickle.dumps(sw))
    assert (s2.srtt, s2.rttvar, s2.rto, len(s2), s2.capacity) == (0.5, 0.25, 1.5, 2, 3)
    assert (s2.max_span, s2.backoff, s2.oldest()) == (1024, 0, 2)
    assert s2.get(2) == b"y"
    assert s2.due(2.5) == ([(2, b"y")], [])
    assert s2.on_ack("c", 2.6) == 3  # resent before pickling: still no sample
    assert s2.srtt == 0.5
    assert len(sw) == 2 and sw.rto == 1.5  # the original is untouched


# --------------------------------------------------------------------------- send properties


class SendModel:
    """Reference send window: a list scan for everything, no cached deadline bound.

    The estimate follows RFC 6298 from the samples; each message backs off on its own
    (``rto * 2**retries``, capped); messages added while nothing answers start at the window's
    backoff (timeouts since the last ack), which any ack clears."""

    def __init__(
        self, capacity, max_retries, rto_initial, rto_min, rto_max, granularity, max_span=1024
    ):
        self.capacity, self.max_retries = capacity, max_retries
        self.rto_min, self.rto_max, self.g = rto_min, rto_max, granularity
        self.max_span = max_span
        self.rto = min(max(rto_initial, rto_min), rto_max)
        self.samples: list[float] = []
        self.entries: list[dict] = []  # send order
        self.backoff = 0
        self.largest, self.largest_sent = -1, 0.0

    def timeout(self, k):
        return min(self.rto * 2.0 ** min(k, 16), self.rto_max)

    def srtt(self):
        return rfc6298(self.samples, self.g, 0, 0)[0] if self.samples else 0.0

    def _find(self, key, value):
        return next((e for e in self.entries if e[key] == value), None)

    def add(self, seq, msg_id, data, now):
        if len(self.entries) >= self.capacity:
            raise WindowFull(f"{self.capacity} messages awaiting acknowledgement")
        if self._find("seq", seq) or self._find("id", msg_id):
            raise ValueError("already in flight")
        if self.entries and seq - min(e["seq"] for e in self.entries) >= self.max_span:
            raise WindowFull("span")
        self.entries.append(
            {
                "seq": seq,
                "id": msg_id,
                "data": data,
                "sent": now,
                "last": now,
                "deadline": now + self.timeout(self.backoff),
                "n": 0,
                "amb": False,
            }
        )

    def _ack(self, e, now):
        self.entries.remove(e)
        self.backoff = 0
        if e["seq"] > self.largest:
            self.largest, self.largest_sent = e["seq"], e["last"]
        if not e["amb"]:
            self.samples.append(now - e["sent"])
            self.rto = rfc6298(self.samples, self.g, self.rto_min, self.rto_max)[2]

    def on_ack(self, msg_id, now):
        e = self._find("id", msg_id)
        if e is None:
            return -1
        self._ack(e, now)
        return e["seq"]

    def on_ack_seq(self, seq, now):
        e = self._find("seq", seq)
        if e is None:
            return None
        self._ack(e, now)
        return e["id"]

    def on_ack_ranges(self, ranges, now):
        total = sum(hi - lo + 1 for lo, hi in ranges if hi >= lo)
        if total <= len(self.entries):
            order = [s for lo, hi in ranges for s in range(lo, hi + 1)]
        else:
            order = [
                e["seq"] for e in self.entries if any(lo <= e["seq"] <= hi for lo, hi in ranges)
            ]
        return [i for i in (self.on_ack_seq(s, now) for s in order) if i is not None]

    def get(self, seq):
        e = self._find("seq", seq)
        return None if e is None else e["data"]

    def resend(self, seq, now):
        e = self._find("seq", seq)
        if e is None or now - e["last"] < max(self.srtt(), self.g):
            return None
        e["amb"], e["last"] = True, now
        e["deadline"] = now + self.timeout(e["n"])
        return e["data"]

    def due(self, now):
        resend, failed = [], []
        for e in [e for e in self.entries if e["deadline"] <= now]:
            if e["n"] >= self.max_retries:
                self.entries.remove(e)
                failed.append((e["seq"], e["id"]))
            else:
                e["n"] += 1
                e["amb"], e["last"] = True, now
                e["deadline"] = now + self.timeout(e["n"])
                resend.append((e["seq"], e["data"]))
        if resend:
            self.backoff = min(self.backoff + 1, 16)
        return resend, failed

    def lost(self, now):
        out = []
        for e in self.entries:
            if e["seq"] > self.largest - 3:
                break
            if e["last"] < self.largest_sent:
                e["amb"], e["last"] = True, now
                e["deadline"] = now + self.timeout(e["n"])
                out.append((e["seq"], e["data"]))
        return out

    def clear(self):
        out = [(e["seq"], e["id"]) for e in self.entries]
        self.entries.clear()
        self.largest = -1
        return out

    def earliest(self):
        return min((e["deadline"] for e in self.entries), default=math.inf)


_send_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 6), st.integers(0, 6)),
        st.tuples(st.just("ack"), st.integers(0, 6)),
        st.tuples(st.just("ack_seq"), st.integers(0, 6)),
        st.tuples(st.just("resend"), st.integers(0, 6)),
        st.tuples(st.just("ranges"), st.integers(0, 6), st.integers(0, 3)),
        st.tuples(st.just("lost"), st.just(0)),
        st.tuples(st.just("get"), st.integers(0, 6)),
        st.tuples(st.just("due"), st.just(0)),
        st.tuples(st.just("wait"), st.floats(0.0, 3.0, allow_nan=False)),
        st.tuples(st.just("wait"), st.sampled_from([0.0, 0.001, 0.1, 0.25, 1.0])),
        st.tuples(st.just("to_deadline"), st.just(0)),  # exactly at the next deadline
        st.tuples(st.just("clear"), st.integers(0, 30)),  # rarely: only when arg == 0
    ),
    max_size=80,
)

_send_params = st.fixed_dictionaries(
    {
        "capacity": st.integers(1, 6),
        "max_retries": st.integers(0, 3),
        "rto_initial": st.sampled_from([0.05, 0.3, 1.0, 3.0, 10.0]),
        "rto_min": st.sampled_from([0.01, 0.2]),
        "rto_max": st.sampled_from([0.5, 4.0, 60.0]),
        "granularity": st.sampled_from([0.001, 0.1]),
        "max_span": st.sampled_from([2, 4, 1024]),
    }
)


def _apply(obj, op, a, b, now):
    """Run one operation; return (result, now) with exceptions folded into the result."""
    try:
        if op == "add":
            return obj.add(a, f"m{b}", b"d%d" % a, now), now
        if op == "ack":
            return obj.on_ack(f"m{a}", now), now
        if op == "ack_seq":
            return obj.on_ack_seq(a, now), now
        if op == "resend":
            return obj.resend(a, now), now
        if op == "lost":
            return obj.lost(now), now
        if op == "ranges":
            return obj.on_ack_ranges([(a, a + b), (b, b + 1)], now), now
        if op == "get":
            return obj.get(a), now
        if op == "due":
            return obj.due(now), now
        if op == "clear":
            return (obj.clear() if a == 0 else None), now
    except (ValueError, WindowFull) as exc:
        return type(exc), now
    raise AssertionError(op)


@HYPO
@given(params=_send_params, ops=_send_ops)
def test_send_matches_model(window, params, ops):
    sw = window.SendWindow(**params)
    model = SendModel(**params)
    now = 1000.0
    for op in ops:
        kind, a = op[0], op[1]
        b = op[2] if len(op) > 2 else 0
        if kind == "wait":
            now += a
            continue
        if kind == "to_deadline":
            nd = sw.next_deadline()
            if nd != math.inf and nd > now:
                now = nd
            kind = "due"
        got, _ = _apply(sw, kind, a, b, now)
        want, _ = _apply(model, kind, a, b, now)
        assert got == want, (kind, a, b, now)
        assert sw.rto == model.rto
        assert sw.backoff == model.backoff and sw.largest_acked == model.largest
        assert sw.oldest() == min((e["seq"] for e in model.entries), default=-1)
        assert len(sw) == len(model.entries)
        assert sw.full == (len(model.entries) >= params["capacity"])
        assert sw.next_deadline() <= model.earliest()
        if not model.entries:
            assert sw.next_deadline() == math.inf
    if model.samples:
        srtt, rttvar, _ = rfc6298(model.samples, params["granularity"], 0, 0)
        assert (sw.srtt, sw.rttvar) == (srtt, rttvar)


@HYPO
@given(params=_send_params, ops=_send_ops)
def test_send_c_agrees_with_py(window, params, ops):
    if _is_pure(window):
        pytest.skip("c-vs-py agreement runs under [c]")
    sc = window.SendWindow(**params)
    sp = PURE.SendWindow(**params)
    now = 50.0
    for op in ops:
        kind, a = op[0], op[1]
        b = op[2] if len(op) > 2 else 0
        if kind == "wait":
            now += a
            continue
        if kind == "to_deadline":
            assert sc.next_deadline() == sp.next_deadline()
            nd = sp.next_deadline()
            if nd != math.inf and nd > now:
                now = nd
            kind = "due"
        assert _apply(sc, kind, a, b, now) == _apply(sp, kind, a, b, now), (kind, a, b, now)
        state_c = (
            sc.srtt,
            sc.rttvar,
            sc.rto,
            len(sc),
            sc.available,
            sc.full,
            sc.next_deadline(),
            sc.backoff,
            sc.oldest(),
            sc.work,
        )
        state_p = (
            sp.srtt,
            sp.rttvar,
            sp.rto,
            len(sp),
            sp.available,
            sp.full,
            sp.next_deadline(),
            sp.backoff,
            sp.oldest(),
            sp.work,
        )
        assert state_c == state_p
        assert [s in sc for s in range(7)] == [s in sp for s in range(7)]


def test_send_lost_by_packet_threshold(window):
    sw = window.SendWindow(rto_initial=1.0)
    for i in range(1, 11):
        sw.add(i, f"m{i}", b"%d" % i, i * 0.01)
    assert sw.lost(0.2) == []  # nothing acked yet: no evidence
    assert sw.on_ack("m6", 0.2) == 6 and sw.largest_acked == 6
    assert sw.lost(0.2) == [(1, b"1"), (2, b"2"), (3, b"3")]  # 3 below 6, sent before it
    assert sw.lost(0.21) == []  # resent after 6 left: no new evidence yet
    assert sw.rto < 1.0 and sw.backoff == 0  # no backoff for a loss detected by acks
    sw.add(11, "m11", b"11", 0.3)
    assert sw.on_ack("m11", 0.35) == 11  # sent after the resends: they are lost again
    assert [s for s, _ in sw.lost(0.35)] == [1, 2, 3, 4, 5, 7, 8]
    assert sw.on_ack("m1", 0.4) == 1  # ambiguous now: no sample from it
    assert sw.largest_acked == 11


def test_filter_ranges_newest_first(window):
    f = window.DuplicateFilter(64)
    assert f.ranges() == []
    for s in (1, 2, 3, 7, 9, 10):
        f.check(s)
    assert f.ranges() == [[9, 10], [7, 7], [1, 3]]
    assert f.ranges(2) == [[9, 10], [7, 7]]
    f.check(100)  # slides: only 37..100 stay inside
    assert f.ranges() == [[100, 100]]
    f.check(40)
    f.check(37)
    assert f.ranges() == [[100, 100], [40, 40], [37, 37]]


@HYPO
@given(
    width=st.sampled_from([64, 128, 1024]),
    seqs=st.lists(st.integers(0, 3000), max_size=200),
    limit=st.integers(0, 70),
)
def test_filter_ranges_match_the_set_model(window, width, seqs, limit):
    f = window.DuplicateFilter(width)
    for s in seqs:
        f.check(s)
    seen = [x for x in range(max(0, f.highest - width + 1), f.highest + 1) if f.contains(x)]
    runs: list[list[int]] = []
    for x in reversed(seen):
        if runs and runs[-1][0] == x + 1:
            runs[-1][0] = x
        else:
            runs.append([x, x])
    assert f.ranges(limit) == runs[:limit]


def test_send_holds_by_message_id(window):
    sw = window.SendWindow()
    sw.add(1, "a", b"x", 0.0)
    assert sw.holds("a") and not sw.holds("b")
    sw.on_ack_seq(1, 0.1)
    assert not sw.holds("a")
