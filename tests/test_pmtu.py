"""Path-MTU discovery (p2pfast.pmtu): the state machine driven through simulated paths with a
fake clock. A path carries a datagram when it is no larger than the path's limit (and, where
asked, a seeded coin says it is not lost); the peer answers every probe that arrives."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast.errors import ConfigError
from p2pfast.pmtu import (
    BASE_PLPMTU,
    BLACK_HOLE_LOSSES,
    COMMON_SIZES,
    MAX_UDP_PAYLOAD,
    MAX_UDP_PAYLOAD_IPV6,
    SEARCH_GRANULARITY,
    PathMtu,
)

RTT = 0.02


@dataclass
class Path:
    """A simulated path: datagrams up to ``limit`` bytes get through, each lost with
    probability ``loss`` (seeded), and an answer comes back one ``rtt`` later."""

    limit: int
    rtt: float = RTT
    loss: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def carries(self, size: int) -> bool:
        return size <= self.limit and not (self.loss and self.rng.random() < self.loss)


@dataclass
class Run:
    probes: list[int] = field(default_factory=list)
    now: float = 0.0


def discover(
    pm: PathMtu,
    path: Path,
    now: float = 0.0,
    max_events: int = 10_000,
    interface_limit: int | None = None,
) -> Run:
    """Drive ``pm`` over ``path`` until its search ends (search_complete or error), sending
    every probe it asks for the moment it asks; bounded in events. Probes larger than
    ``interface_limit`` are refused by the (simulated) local stack, as EMSGSIZE would."""
    run = Run(now=now)
    acks: list[tuple[float, int]] = []
    for _ in range(max_events):
        size = pm.next_probe(run.now)
        if size is not None:
            run.probes.append(size)
            if interface_limit is not None and size > interface_limit:
                pm.on_probe_refused(size, run.now)
            elif path.carries(size):
                heapq.heappush(acks, (run.now + path.rtt, size))
        if pm.state in ("search_complete", "error", "disabled") and not acks:
            return run
        if pm.probe_pending:
            continue  # a refused probe: the next one goes at once
        wake = min(acks[0][0] if acks else math.inf, pm.next_timer())
        assert wake < math.inf, "discovery stalled with nothing scheduled"
        run.now = max(run.now, wake)
        while acks and acks[0][0] <= run.now:
            pm.on_probe_acked(heapq.heappop(acks)[1], run.now)
        pm.handle_timer(run.now)
    raise AssertionError(f"no convergence within {max_events} events (state {pm.state})")


def rungs_up_to(limit: int) -> int:
    """How many of the search's rungs (each common size and the byte above it, and the
    base's next byte) are at most ``limit``: the probes a climb to ``limit`` acknowledges."""
    rungs = {BASE_PLPMTU + 1} | set(COMMON_SIZES) | {s + 1 for s in COMMON_SIZES}
    return sum(1 for r in rungs if BASE_PLPMTU < r <= limit and r < MAX_UDP_PAYLOAD)


# -- convergence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit",
    [
        1200,  # a path of exactly the base
        1232,  # 1,280-byte MTU, IPv6
        1252,  # 1,280-byte MTU, IPv4
        1392,  # WireGuard, IPv4
        1464,  # PPPoE, IPv4
        1452,  # Ethernet, IPv6
        1472,  # Ethernet, IPv4
        8952,  # jumbo, IPv6
        8972,  # jumbo, IPv4
        8973,  # EC2 jumbo, IPv4
        65488,  # loopback, IPv6
    ],
)
def test_converges_exactly_on_common_paths_with_at_most_two_failed_sizes(limit):
    pm = PathMtu(probe_timeout=0.5)
    pm.set_rtt(RTT)  # probe timeout 0.1 s (the floor)
    run = discover(pm, Path(limit))
    assert pm.state == "search_complete"
    assert pm.current == limit
    # The maximum fails, then the rung one byte above the limit: two sizes given up on.
    assert pm.probes_failed == 2
    successes = 1 + rungs_up_to(limit)  # the base confirmation, then every rung climbed
    assert pm.probes_acked == successes
    assert len(run.probes) == pm.probes_sent == successes + 2 * pm.max_probes
    assert run.now == pytest.approx(successes * RTT + 2 * pm.max_probes * pm.probe_timeout)
    assert run.now < 1.5  # the 1,500-byte path settles in ~0.9 s at a 20 ms RTT


def test_sizes_the_interface_refuses_fail_at_once():
    pm = PathMtu()
    pm.set_rtt(RTT)
    run = discover(pm, Path(1472), interface_limit=1472)
    assert pm.current == 1472
    assert pm.state == "search_complete"
    assert pm.probes_failed == 2
    assert run.probes.count(MAX_UDP_PAYLOAD) == 1
    assert run.probes.count(1473) == 1
    assert run.now == pytest.approx(pm.probes_acked * RTT)  # no probe timeout waited for


def test_a_refusal_for_a_size_not_in_flight_is_ignored():
    pm = PathMtu()
    pm.on_probe_refused(BASE_PLPMTU, 0.0)  # not sent yet
    assert pm.next_probe(0.0) == BASE_PLPMTU
    pm.on_probe_refused(1472, 0.0)
    pm.on_probe_acked(BASE_PLPMTU, 0.01)
    pm.on_probe_refused(MAX_UDP_PAYLOAD, 0.01)  # chosen, not sent
    assert pm.next_probe(0.02) == MAX_UDP_PAYLOAD
    assert pm.probes_failed == 0
    pm.on_probe_refused(MAX_UDP_PAYLOAD, 0.02)
    assert pm.probes_failed == 1
    assert pm.current == BASE_PLPMTU
    assert pm.next_probe(0.02) == BASE_PLPMTU + 1


def test_an_ipv6_maximum_finds_ipv6_loopback_with_its_first_probe():
    pm = PathMtu(maximum=MAX_UDP_PAYLOAD_IPV6)
    run = discover(pm, Path(MAX_UDP_PAYLOAD_IPV6))
    assert run.probes == [BASE_PLPMTU, MAX_UDP_PAYLOAD_IPV6]


def test_loopback_converges_in_two_round_trips():
    pm = PathMtu()
    run = discover(pm, Path(MAX_UDP_PAYLOAD, rtt=0.0001))
    assert pm.current == MAX_UDP_PAYLOAD
    assert run.probes == [BASE_PLPMTU, MAX_UDP_PAYLOAD]
    assert pm.state == "search_complete"
    assert run.now == pytest.approx(0.0002)


def test_the_maximum_is_the_first_size_searched_and_never_exceeded():
    pm = PathMtu(maximum=4000)
    run = discover(pm, Path(MAX_UDP_PAYLOAD))
    assert run.probes == [BASE_PLPMTU, 4000]
    assert pm.current == 4000


def test_a_maximum_equal_to_the_base_only_confirms_the_base():
    pm = PathMtu(maximum=BASE_PLPMTU)
    run = discover(pm, Path(MAX_UDP_PAYLOAD))
    assert run.probes == [BASE_PLPMTU]
    assert pm.current == BASE_PLPMTU
    assert pm.state == "search_complete"


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(BASE_PLPMTU, MAX_UDP_PAYLOAD), rtt=st.sampled_from([0.0001, 0.02, 0.3]))
def test_converges_within_the_granularity_on_any_path(limit, rtt):
    pm = PathMtu()
    pm.set_rtt(rtt)
    run = discover(pm, Path(limit, rtt=rtt))
    assert pm.state == "search_complete"
    assert limit - SEARCH_GRANULARITY < pm.current <= limit
    assert all(BASE_PLPMTU <= p <= MAX_UDP_PAYLOAD for p in run.probes)
    # Failures: the maximum, one rung, then a bisection of at most 65,507 bytes down to 16.
    bisections = math.ceil(math.log2(MAX_UDP_PAYLOAD / SEARCH_GRANULARITY))
    assert pm.probes_failed <= 2 + bisections
    assert pm.probes_acked <= 1 + rungs_up_to(limit) + bisections
    spent = pm.probes_acked * rtt + pm.probes_failed * pm.max_probes * pm.probe_timeout
    assert run.now == pytest.approx(spent)


def test_a_lost_probe_is_retried_before_its_size_is_given_up():
    pm = PathMtu()
    path = Path(MAX_UDP_PAYLOAD)
    lost_once = {MAX_UDP_PAYLOAD}

    class Flaky(Path):
        def carries(self, size: int) -> bool:
            if size in lost_once:
                lost_once.discard(size)
                return False
            return path.carries(size)

    run = discover(pm, Flaky(MAX_UDP_PAYLOAD))
    assert run.probes == [BASE_PLPMTU, MAX_UDP_PAYLOAD, MAX_UDP_PAYLOAD]
    assert pm.current == MAX_UDP_PAYLOAD
    assert pm.probes_failed == 0


def test_a_late_answer_to_a_timed_out_probe_of_the_size_still_being_probed_counts():
    pm = PathMtu(probe_timeout=0.5)
    assert pm.next_probe(0.0) == BASE_PLPMTU
    pm.on_probe_acked(BASE_PLPMTU, 0.01)
    assert pm.next_probe(0.01) == MAX_UDP_PAYLOAD
    pm.handle_timer(0.51)  # first probe of the maximum counted lost
    assert pm.state == "searching"
    pm.on_probe_acked(MAX_UDP_PAYLOAD, 0.6)  # ... but it arrived after all
    assert pm.current == MAX_UDP_PAYLOAD
    assert pm.state == "search_complete"


# -- disabled, error -----------------------------------------------------------------------


def test_disabled_never_probes_and_never_moves():
    pm = PathMtu(enabled=False)
    assert pm.state == "disabled"
    assert pm.next_timer() == math.inf
    for step in range(2000):
        now = step * 1.0
        assert pm.next_probe(now) is None
        pm.handle_timer(now)
        pm.on_probe_acked(MAX_UDP_PAYLOAD, now)
        pm.on_packet_lost(MAX_UDP_PAYLOAD, now)
        pm.on_packet_acked(MAX_UDP_PAYLOAD, now)
    assert pm.current == BASE_PLPMTU
    assert pm.state == "disabled"
    assert pm.probes_sent == 0
    assert not pm.probe_pending


def test_a_base_that_never_gets_through_is_an_error_retried_later():
    pm = PathMtu(probe_timeout=0.5, raise_interval=600.0)
    dead = Path(0)
    run = discover(pm, dead)
    assert pm.state == "error"
    assert run.probes == [BASE_PLPMTU] * pm.max_probes
    assert pm.current == BASE_PLPMTU
    assert pm.next_probe(run.now + 1) is None  # waits for the retry
    retry = pm.next_timer()
    assert retry == pytest.approx(run.now + 60.0)
    run2 = discover(pm, Path(1472), now=retry)  # the path came back
    assert run2.probes[0] == BASE_PLPMTU
    assert pm.current == 1472
    assert pm.state == "search_complete"


def test_bad_settings_are_refused_with_a_config_error():
    for kwargs in (
        {"base": 0},
        {"base": 1500, "maximum": 1400},
        {"maximum": MAX_UDP_PAYLOAD + 1},
        {"probe_timeout": 0.0},
        {"probe_timeout": math.nan},
        {"max_probes": 0},
        {"raise_interval": 0.0},
        {"granularity": 0},
    ):
        with pytest.raises(ConfigError) as info:
            PathMtu(**kwargs)  # type: ignore[arg-type]
        assert info.value.code == "config"
        assert "\n" not in str(info.value)


def test_probe_timeout_follows_the_rtt_within_its_bounds():
    pm = PathMtu(probe_timeout=0.5)
    pm.set_rtt(0.00005)
    assert pm.probe_timeout == 0.1
    pm.set_rtt(0.2)
    assert pm.probe_timeout == pytest.approx(0.6)
    pm.set_rtt(30.0)
    assert pm.probe_timeout == 15.0
    for bad in (math.nan, math.inf, -1.0):
        pm.set_rtt(bad)
        assert pm.probe_timeout == 15.0
    assert pm.next_probe(0.0) == BASE_PLPMTU
    assert pm.next_timer() == 15.0


# -- acknowledgments that must not count ---------------------------------------------------


def test_acks_for_sizes_never_probed_do_not_raise_current():
    pm = PathMtu()
    rng = random.Random(7)
    now = 0.0
    # Before anything is sent, while the base is outstanding, and throughout a search on a
    # 1,472-byte path, a lying peer acknowledges sizes it was never sent.
    for size in (MAX_UDP_PAYLOAD, 1472, 9000, BASE_PLPMTU + 1):
        pm.on_probe_acked(size, now)
    assert pm.current == BASE_PLPMTU and pm.state == "base" and pm.probes_acked == 0
    path = Path(1472)
    for _ in range(2000):
        size = pm.next_probe(now)
        for _ in range(3):
            lie = rng.randint(BASE_PLPMTU, MAX_UDP_PAYLOAD)
            if lie != pm.in_flight:
                pm.on_probe_acked(lie, now)
        if size is not None and path.carries(size):
            pm.on_probe_acked(size, now + RTT)
        now = max(now + RTT, min(pm.next_timer(), now + 1.0))
        pm.handle_timer(now)
        assert pm.current <= 1472
        if pm.state == "search_complete":
            break
    assert pm.state == "search_complete"
    assert pm.current == 1472


def test_acks_for_sizes_already_given_up_are_ignored():
    pm = PathMtu()
    run = discover(pm, Path(1472))
    failed = sorted({p for p in run.probes if p > 1472})
    assert failed == [1473, MAX_UDP_PAYLOAD]
    for size in failed:
        pm.on_probe_acked(size, run.now)  # late (or forged) answers to given-up probes
    assert pm.current == 1472
    assert pm.state == "search_complete"


def test_an_ack_for_the_next_size_before_it_is_sent_is_ignored():
    pm = PathMtu()
    assert pm.next_probe(0.0) == BASE_PLPMTU
    pm.on_probe_acked(BASE_PLPMTU, 0.01)
    assert pm.probe_pending
    pm.on_probe_acked(MAX_UDP_PAYLOAD, 0.01)  # guessed, not yet probed
    assert pm.current == BASE_PLPMTU
    assert pm.next_probe(0.02) == MAX_UDP_PAYLOAD


# -- black holes and congestion ------------------------------------------------------------


def transfer(
    pm: PathMtu,
    path: Path,
    start: float,
    duration: float,
    interval: float = 0.001,
    ack_every: int = 16,
    probe_path: Path | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> float:
    """Send a datagram of ``pm.current`` bytes every ``interval`` seconds for ``duration``
    over ``path``, with probes as asked. Outcomes come back as coalesced Acks do: one report
    per ``ack_every`` datagrams, an RTT after the last of them, naming those acknowledged and
    then those lost all at once (the harshest order for a detector that counts losses in a
    row). Ends early when ``stop()`` says so."""
    events: list[tuple[float, int, str, list[int]]] = []
    batch: list[tuple[bool, int]] = []
    order = 0
    now = start
    next_send = start
    end = start + duration
    while now < end and not stop():
        size = pm.next_probe(now)
        if size is not None and (probe_path or path).carries(size):
            heapq.heappush(events, (now + path.rtt, order, "probe", [size]))
            order += 1
        if now >= next_send:
            size = pm.current
            batch.append((path.carries(size), size))
            if len(batch) == ack_every:
                acked = [s for ok, s in batch if ok]
                lost = [s for ok, s in batch if not ok]
                heapq.heappush(events, (now + path.rtt, order, "acked", acked))
                heapq.heappush(events, (now + path.rtt, order + 1, "lost", lost))
                order += 2
                batch = []
            next_send = now + interval
        now = min(next_send, events[0][0] if events else math.inf, pm.next_timer(), end)
        while events and events[0][0] <= now:
            _, _, kind, sizes = heapq.heappop(events)
            for size in sizes:
                if kind == "probe":
                    pm.on_probe_acked(size, now)
                elif kind == "acked":
                    pm.on_packet_acked(size, now)
                else:
                    pm.on_packet_lost(size, now)
        pm.handle_timer(now)
    return now


def test_a_black_hole_falls_back_to_the_base_then_finds_the_new_limit():
    pm = PathMtu()
    pm.set_rtt(RTT)
    run = discover(pm, Path(MAX_UDP_PAYLOAD))
    assert pm.current == MAX_UDP_PAYLOAD
    path = Path(1472)  # the route changes: large datagrams vanish without a word
    now = transfer(pm, path, run.now, 60.0, stop=lambda: pm.black_holes > 0)
    assert pm.black_holes == 1
    assert pm.current == BASE_PLPMTU
    assert pm.state == "base"
    detected = now - run.now
    # Losses must span BLACK_HOLE_SPAN probe timeouts (0.2 s here), and then stop.
    assert 0.2 <= detected < 0.3
    now = transfer(pm, path, now, 60.0, stop=lambda: pm.state == "search_complete")
    assert pm.current == 1472
    assert pm.state == "search_complete"
    assert now - run.now < 1.5


def test_a_burst_of_losses_reported_at_once_is_not_a_black_hole():
    pm = PathMtu()
    discover(pm, Path(1472))
    for _ in range(BLACK_HOLE_LOSSES * 10):
        pm.on_packet_lost(1472, 100.0)
    assert pm.black_holes == 0
    assert pm.current == 1472


def test_losses_interleaved_with_large_acks_are_not_a_black_hole():
    pm = PathMtu()
    discover(pm, Path(1472))
    for step in range(10_000):
        now = 100.0 + step * 0.1
        for _ in range(BLACK_HOLE_LOSSES - 1):
            pm.on_packet_lost(1472, now)
        pm.on_packet_acked(1472, now)
    assert pm.black_holes == 0
    # ... while small acks do not break a run: the large datagrams are what vanish.
    for step in range(BLACK_HOLE_LOSSES):
        pm.on_packet_lost(1472, 2000.0 + step)
        pm.on_packet_acked(BASE_PLPMTU, 2000.0 + step)
    assert pm.black_holes == 1
    assert pm.current == BASE_PLPMTU
    assert pm.state == "base"


def test_five_percent_random_loss_never_looks_like_a_black_hole():
    pm = PathMtu(raise_interval=30.0)
    pm.set_rtt(RTT)
    path = Path(1472, loss=0.05, rng=random.Random(20261130))
    discover(pm, path)
    assert pm.current == 1472
    # 200 simulated seconds at one 1,472-byte datagram per millisecond: 200,000 datagrams,
    # about 10,000 of them lost, probes included (the raise timer searches 6 more times).
    sent_before = pm.probes_sent
    transfer(pm, path, 10.0, 200.0, probe_path=path)
    assert pm.black_holes == 0
    assert pm.probes_sent - sent_before >= 6 * 2 * pm.max_probes
    assert pm.current == 1472


def test_the_raise_timer_finds_a_path_that_grew():
    pm = PathMtu(raise_interval=600.0)
    run = discover(pm, Path(1472))
    assert pm.next_timer() == pytest.approx(run.now + 600.0)
    assert pm.next_probe(run.now + 599.0) is None
    run2 = discover(pm, Path(8972), now=pm.next_timer())
    assert pm.current == 8972
    assert pm.state == "search_complete"
    assert run2.probes[0] == MAX_UDP_PAYLOAD  # the maximum first, from where it stood
    assert min(run2.probes) > 1472


def test_the_raise_timer_keeps_a_path_that_did_not_change():
    pm = PathMtu()
    run = discover(pm, Path(1472))
    run2 = discover(pm, Path(1472), now=pm.next_timer())
    assert pm.current == 1472
    assert sorted(set(run2.probes)) == [1473, MAX_UDP_PAYLOAD]
    assert pm.probes_failed == 4
    assert run2.now > run.now


# -- any sequence of calls -----------------------------------------------------------------

_SIZES = st.one_of(
    st.integers(0, 70_000),
    st.sampled_from([BASE_PLPMTU, BASE_PLPMTU + 1, 1472, 1473, 8972, MAX_UDP_PAYLOAD]),
)
_CALLS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "probe",
                "ack_probe",
                "ack_in_flight",
                "refuse",
                "refuse_in_flight",
                "timer",
                "acked",
                "lost",
                "rtt",
                "wait",
            ]
        ),
        _SIZES,
        st.floats(0.0, 700.0, allow_nan=False),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=_CALLS,
    base=st.sampled_from([BASE_PLPMTU, 1280, 500]),
    maximum=st.sampled_from([MAX_UDP_PAYLOAD, 1500, 9000, 1280]),
    enabled=st.booleans(),
    max_probes=st.integers(1, 4),
)
def test_any_sequence_of_calls_keeps_the_invariants(calls, base, maximum, enabled, max_probes):
    maximum = max(base, maximum)
    pm = PathMtu(base, maximum, enabled=enabled, max_probes=max_probes, raise_interval=300.0)
    now = 0.0
    probed: set[int] = set()
    for op, size, dt in calls:
        if op == "wait":
            now += dt
        elif op == "probe":
            before = pm.current
            state = pm.state
            got = pm.next_probe(now)
            if got is not None:
                probed.add(got)
                assert enabled
                if pm.state == "base":
                    assert got == base
                else:
                    assert pm.current < got <= maximum, (state, before, got)
        elif op == "ack_probe":
            pm.on_probe_acked(size, now)
        elif op == "ack_in_flight":
            if pm.in_flight is not None:
                pm.on_probe_acked(pm.in_flight, now)
        elif op == "refuse":
            pm.on_probe_refused(size, now)
        elif op == "refuse_in_flight":
            if pm.in_flight is not None:
                pm.on_probe_refused(pm.in_flight, now)
        elif op == "timer":
            now = max(now, min(pm.next_timer(), now + dt))
            pm.handle_timer(now)
        elif op == "acked":
            pm.on_packet_acked(size, now)
        elif op == "lost":
            pm.on_packet_lost(size, now)
        else:
            pm.set_rtt(dt / 100)
        assert base <= pm.current <= maximum
        assert pm.current == base or pm.current in probed
        assert pm.next_timer() >= 0
        if not enabled:
            assert pm.state == "disabled" and pm.current == base and pm.probes_sent == 0
        assert pm.probes_acked + pm.probes_failed <= pm.probes_sent
