"""Invariant checkers, fed by the simulator as the run goes.

- :class:`MessageLedger`: every reliable message between nodes that stay up and connected is
  delivered exactly once; nothing is delivered that was never sent (each payload carries a
  unique tag, and the delivery must match the tag's sender, receiver and message id); every
  send ends in exactly one SendCompleted or SendFailed.
- :class:`StateBounds`: peers, routes, route-id cache and in-flight windows stay within the
  configured bounds, sampled on a fixed virtual-time schedule.
- :func:`amplification`: bytes a node sends to an address no host ever held stay within 3x
  the bytes it received from that address.
- :class:`Convergence`: the virtual time until every live node can reach every other one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .clock import to_seconds

#: Replies to an unproven address stay within this factor of what it sent (the engine's rule).
AMPLIFICATION_FACTOR = 3
#: Violations quoted in a detail string at most.
MAX_QUOTED = 3


@dataclass
class Verdict:
    """One invariant's outcome: held or not, how often it broke, and the first few breaches."""

    held: bool = True
    detail: str = ""
    violations: list[str] = field(default_factory=list)
    count: int = 0

    def fail(self, text: str) -> None:
        self.held = False
        self.count += 1
        if len(self.violations) < MAX_QUOTED:
            self.violations.append(text)

    def to_dict(self) -> dict[str, Any]:
        detail = self.detail
        if not self.held:
            quoted = "; ".join(self.violations)
            detail = f"{self.count} violation(s): {quoted}" + (f" ({detail})" if detail else "")
        return {"held": self.held, "detail": detail}


class SentMessage:
    """One tagged reliable message: who sent it to whom, in which incarnations and session
    epoch, how the sender's engine resolved it, and where it was delivered."""

    __slots__ = (
        "acked",
        "deliveries",
        "dst",
        "dst_inc",
        "epoch",
        "failed",
        "handle",
        "routed",
        "session",
        "src",
        "src_inc",
        "stale",
        "tag",
        "tick",
    )

    def __init__(
        self,
        tag: int,
        src: int,
        dst: int,
        src_inc: int,
        dst_inc: int,
        handle: str,
        routed: bool,
        tick: int,
        epoch: int,
    ) -> None:
        self.tag = tag
        self.src = src
        self.dst = dst
        self.src_inc = src_inc
        self.dst_inc = dst_inc
        self.handle = handle
        self.routed = routed
        self.tick = tick
        self.epoch = epoch
        self.acked = False
        self.failed = ""
        self.deliveries: dict[int, int] = {}  # receiver incarnation -> times delivered
        #: The receiver's session with the sender predates the sender's own session (see
        #: :meth:`MessageLedger.stale_session`).
        self.stale = False
        self.session = -1  # start tick of the receiver's session that first delivered it


class MessageLedger:
    """Every tagged message sent, acknowledged, failed and delivered."""

    def __init__(self) -> None:
        self.by_tag: dict[int, SentMessage] = {}
        self.by_handle: dict[str, SentMessage] = {}
        #: (lower index, higher index) → disconnections seen between the two.
        self.epochs: dict[tuple[int, int], int] = {}
        #: (at, other) → tick at which ``at`` last opened a session with ``other``.
        self.session_start: dict[tuple[int, int], int] = {}
        #: (at, other) → tick at which ``at`` last dropped its session with ``other``; host →
        #: tick at which it last stopped (crash or shutdown).
        self.session_end: dict[tuple[int, int], int] = {}
        self.stopped: dict[int, int] = {}
        self.lost_stale = 0
        self.duplicates_across_sessions = 0
        self.exactly_once = Verdict()
        self.phantoms = Verdict()
        self.one_outcome = Verdict()
        self.late_hop_outcomes = 0
        self.next_tag = 1
        self.no_route = 0
        self.window_full = 0
        self.duplicates = 0
        self.redelivered_after_restart = 0

    def new_tag(self) -> int:
        tag = self.next_tag
        self.next_tag += 1
        return tag

    def epoch(self, a: int, b: int) -> int:
        return self.epochs.get((a, b) if a < b else (b, a), 0)

    def disconnected(self, a: int, b: int) -> None:
        key = (a, b) if a < b else (b, a)
        self.epochs[key] = self.epochs.get(key, 0) + 1

    def session_opened(self, at: int, other: int, tick: int) -> None:
        self.session_start[(at, other)] = tick

    def session_ended(self, at: int, other: int, tick: int) -> None:
        self.session_end[(at, other)] = tick

    def host_stopped(self, index: int, tick: int) -> None:
        self.stopped[index] = tick

    def stale_session(self, src: int, dst: int) -> bool:
        """Whether ``dst`` holds a session with ``src`` that ``src`` has since abandoned (``src``
        restarted, or dropped ``dst`` alone, and then shook hands again): a classification of
        losses for the report, never an excuse for them."""
        theirs = self.session_start.get((dst, src))
        if theirs is None:
            return False
        abandoned = max(self.session_end.get((src, dst), -1), self.stopped.get(src, -1))
        return theirs < abandoned

    def sent(self, msg: SentMessage) -> None:
        self.by_tag[msg.tag] = msg
        self.by_handle[msg.handle] = msg

    def acked(self, handle: str, tick: int) -> None:
        msg = self.by_handle.get(handle)
        if msg is None:
            return
        if msg.acked or msg.failed:
            self._second_outcome(
                msg,
                f"SendFailed({msg.failed})" if msg.failed else "SendCompleted",
                "SendCompleted",
                tick,
            )
        msg.acked = True

    def failed(self, handle: str, reason: str, tick: int) -> None:
        msg = self.by_handle.get(handle)
        if msg is None:
            return
        if msg.acked or msg.failed:
            self._second_outcome(
                msg,
                f"SendFailed({msg.failed})" if msg.failed else "SendCompleted",
                f"SendFailed({reason})",
                tick,
            )
        msg.failed = msg.failed or reason

    def _second_outcome(self, msg: SentMessage, first: str, second: str, tick: int) -> None:
        """A send must end in one SendCompleted or one SendFailed, never both or twice."""
        if msg.routed:
            # Classified for the report: the routed send was already resolved end to end
            # (confirmed, refused or expired) when the first hop's outcome came in.
            self.late_hop_outcomes += 1
        self.one_outcome.fail(
            f"tag {msg.tag} {msg.src}->{msg.dst}{' (routed)' if msg.routed else ''}: {first}, "
            f"then {second} at {to_seconds(tick):.4f}s"
        )

    def delivered(
        self,
        receiver: int,
        incarnation: int,
        source_index: int | None,
        payload: Any,
        message_id: str,
        tick: int,
    ) -> None:
        """A DataReceived at ``receiver``; ``source_index`` is the host of the claimed source."""
        tag = payload.get("tag") if type(payload) is dict else None
        msg = self.by_tag.get(tag) if type(tag) is int else None
        if msg is None:
            text = str(payload)[:60]
            when = to_seconds(tick)
            self.phantoms.fail(f"host {receiver} got {text!r}, never sent, at {when:.4f}s")
            return
        if msg.dst != receiver or msg.src != source_index or msg.handle != message_id:
            self.phantoms.fail(
                f"tag {tag} sent {msg.src}->{msg.dst} (id {msg.handle}) delivered at host "
                f"{receiver} from host {source_index} with id {message_id}"
            )
            return
        count = msg.deliveries.get(incarnation, 0) + 1
        msg.deliveries[incarnation] = count
        session = self.session_start.get((receiver, msg.src), -1)
        if count == 1:
            msg.session = session
            if len(msg.deliveries) > 1:
                self.redelivered_after_restart += 1
        else:
            self.duplicates += 1
            reopened = session != msg.session
            self.duplicates_across_sessions += reopened
            when = to_seconds(tick)
            self.exactly_once.fail(
                f"tag {tag} ({msg.src}->{msg.dst}) delivered {count} times at {when:.4f}s"
                + (" (the receiver had re-opened its session with the sender)" if reopened else "")
            )

    def finish(self, incarnations: list[int], replay: str) -> dict[str, int]:
        """Check losses: a routed message the destination confirmed, and a direct message that
        was acked between hosts that neither restarted nor disconnected from each other since
        it was sent, must have been delivered."""
        sent = delivered = lost = in_flight = failed = 0
        routed_sent = routed_delivered = 0
        for msg in self.by_tag.values():
            sent += 1
            got = msg.deliveries.get(msg.dst_inc, 0) > 0 or bool(msg.deliveries)
            if got:
                delivered += 1
            if msg.routed:
                routed_sent += 1
                routed_delivered += got
            if msg.failed:
                failed += 1
            elif not msg.acked and not got:
                in_flight += 1
            # A direct message's Ack comes from the receiver's session, so it proves delivery
            # only while that session is the one it was sent on; a routed message's completion
            # is the destination's own end-to-end confirmation, so it always does.
            direct_in_scope = (
                incarnations[msg.src] == msg.src_inc
                and incarnations[msg.dst] == msg.dst_inc
                and self.epoch(msg.src, msg.dst) == msg.epoch
            )
            if msg.acked and not msg.failed and not got and (msg.routed or direct_in_scope):
                lost += 1
                self.lost_stale += msg.stale
                self.exactly_once.fail(
                    f"tag {msg.tag} {msg.src}->{msg.dst} sent at {to_seconds(msg.tick):.4f}s was "
                    "acknowledged but never delivered"
                    + (" (the receiver held an older session with the sender)" if msg.stale else "")
                )
        return {
            "sent": sent,
            "delivered": delivered,
            "duplicates": self.duplicates,
            "duplicates_across_sessions": self.duplicates_across_sessions,
            "lost": lost,
            "lost_to_stale_session": self.lost_stale,
            "in_flight": in_flight,
            "failed": failed,
            "no_route": self.no_route,
            "window_full": self.window_full,
            "routed_sent": routed_sent,
            "routed_delivered": routed_delivered,
            "redelivered_after_restart": self.redelivered_after_restart,
            "late_hop_outcomes": self.late_hop_outcomes,
        }


class StateBounds:
    """Per-node maxima of the engine's tables, checked against the node's own configuration."""

    def __init__(self) -> None:
        self.verdict = Verdict()
        self.maxima = {
            "peers": 0,
            "routes": 0,
            "route_cache": 0,
            "in_flight": 0,
            "in_flight_per_peer": 0,
        }

    def sample(self, index: int, node: Any, now: float) -> None:
        config = node.config
        peers = node.peers_by_id
        n_peers = len(peers)
        routes = len(node.routes)
        cache = len(node.route_ids)
        in_flight = 0
        per_peer = 0
        for peer in peers.values():
            w = len(peer.window)
            in_flight += w
            if w > per_peer:
                per_peer = w
        m = self.maxima
        if n_peers > m["peers"]:
            m["peers"] = n_peers
        if routes > m["routes"]:
            m["routes"] = routes
        if cache > m["route_cache"]:
            m["route_cache"] = cache
        if in_flight > m["in_flight"]:
            m["in_flight"] = in_flight
        if per_peer > m["in_flight_per_peer"]:
            m["in_flight_per_peer"] = per_peer
        for name, value, bound in (
            ("peers", n_peers, config.max_connections),
            ("routes", routes, config.max_routes),
            ("route cache", cache, config.route_cache_size),
            ("in-flight per peer", per_peer, config.send_window),
        ):
            if value > bound:
                self.verdict.fail(
                    f"host {index} holds {value} {name} > bound {bound} at {now:.4f}s"
                )


def amplification(
    unproven: dict[tuple[int, tuple[str, int]], list[int]],
    honest: int,
    hostile_rx: dict[int, int] | None = None,
) -> Verdict:
    """Bytes honest hosts send to never-bound addresses, two rules:

    - an address that sent a host something (a spoofed source) gets at most 3x that back;
    - addresses that never sent it anything (invented entries of a peer list) together get at
      most 3x the bytes the host received from the hostile peers that can send such lists:
      dialing an address a peer listed is paid for by that peer's list.
    """
    verdict = Verdict()
    worst = 0.0
    dialed: dict[int, int] = {}
    for (index, addr), (out, got) in unproven.items():
        if index >= honest or not out:
            continue
        if got:
            worst = max(worst, out / got)
            if out > AMPLIFICATION_FACTOR * got:
                verdict.fail(
                    f"host {index} sent {out} B to {addr[0]}:{addr[1]}, which sent it {got} B"
                )
        else:
            dialed[index] = dialed.get(index, 0) + out
    paid = hostile_rx or {}
    worst_dial = 0.0
    for index, out in sorted(dialed.items()):
        budget = paid.get(index, 0)
        worst_dial = max(worst_dial, out / budget if budget else float("inf"))
        if out > AMPLIFICATION_FACTOR * budget:
            verdict.fail(
                f"host {index} sent {out} B to addresses that never sent it anything, against "
                f"{budget} B of lying peer lists"
            )
    pairs = sum(1 for (index, _), (out, _got) in unproven.items() if index < honest)
    verdict.detail = (
        f"{pairs} (node, unproven address) pairs; worst reply ratio {worst:.2f}; worst dial "
        f"ratio " + ("inf" if worst_dial == float("inf") else f"{worst_dial:.2f}")
    )
    return verdict


class Convergence:
    """Whether every live node can reach every other (directly or along learned routes)."""

    #: Above this many live nodes, reachability is checked on a seeded sample of pairs.
    EXACT_LIMIT = 1500
    SAMPLE_PAIRS = 20_000

    def __init__(self, rng: random.Random, max_hops: int) -> None:
        self.rng = rng
        self.max_hops = max_hops
        self.converged_at: float | None = None
        self.last_fraction = 0.0
        self.checks = 0

    @staticmethod
    def reaches(node: Any, target_id: str, nodes_by_id: dict[str, Any], max_hops: int) -> bool:
        for _ in range(max_hops):
            if target_id in node.peers_by_id:
                return True
            hop = node.routes.next_hop(target_id)
            if hop is None or hop not in node.peers_by_id:
                return False
            node = nodes_by_id.get(hop)
            if node is None:
                return False
        return False

    def check(self, live: list[Any], now: float, *, final: bool = False) -> bool:
        """``live``: the engines of live honest nodes; True once they all reach each other.
        The final check also measures the fraction of pairs that can reach each other."""
        self.checks += 1
        n = len(live)
        if n < 2:
            fraction = 1.0
        elif not final and any(len(node.peers_by_id) + len(node.routes) < n - 1 for node in live):
            return False  # necessary condition: each node knows of at least n - 1 others
        else:
            by_id = {node.node_id: node for node in live}
            fraction = self._sampled(live, by_id, self.SAMPLE_PAIRS if final else 2000)
            if fraction == 1.0 and n <= self.EXACT_LIMIT:
                fraction = self._exact(live, by_id)
        self.last_fraction = fraction
        if fraction == 1.0 and self.converged_at is None:
            self.converged_at = now
        return fraction == 1.0

    def _exact(self, live: list[Any], by_id: dict[str, Any]) -> float:
        reach = self.reaches
        ok = total = 0
        for a in live:
            for b in live:
                if a is not b:
                    total += 1
                    ok += reach(a, b.node_id, by_id, self.max_hops)
        return ok / total

    def _sampled(self, live: list[Any], by_id: dict[str, Any], pairs: int) -> float:
        n = len(live)
        if n * (n - 1) <= pairs:
            return self._exact(live, by_id)
        rng = self.rng
        reach = self.reaches
        ok = total = 0
        for _ in range(pairs):
            a = live[rng.randrange(n)]
            b = live[rng.randrange(n)]
            if a is not b:
                total += 1
                ok += reach(a, b.node_id, by_id, self.max_hops)
        return ok / total if total else 1.0
