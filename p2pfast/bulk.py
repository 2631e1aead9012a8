"""Large messages between p2pfast peers: fragments, loss recovery, congestion and flow control.

A message (an encoded JSON envelope, up to 1 MiB) that does not fit the path's datagram size
is carried by the peer's :class:`BulkConnection` as FRAGMENT frames (binary, see
:mod:`p2pfast._fragment_py`) instead of as one datagram. The design follows QUIC (RFC 9000
streams, RFC 9002 recovery), reduced to one-shot messages:

- every transmission gets a new packet number, so acknowledgements (ranges of packet numbers)
  are unambiguous; a lost fragment's bytes go back to its message's to-send ranges and are cut
  again at the current datagram size (a path-MTU drop does not strand them);
- loss is declared by packet or time threshold (RFC 9002 §6.1), a probe timeout resends the
  oldest fragment, and too many probe timeouts in a row fail the messages (the peer is gone);
- NewReno congestion control in bytes with pacing (:mod:`p2pfast.congestion`);
- flow control: the receiver grants a cumulative byte credit of message totals it will hold
  (in reassembly, and delivered but not yet consumed by the application); a sender starts a
  message only within it, so a slow application holds the sender, not the receiver's memory.
  Grants are bounded per peer and for the whole node (:class:`BulkMemory`);
- the receiver commits a message's buffer when its first fragment arrives, after checking the
  declared total (≤ 1 MiB) against the credit; inconsistent fragments are refused and counted;
  incomplete messages expire; each message is delivered once (message numbers are remembered);
- the datagram size grows by path-MTU discovery (:mod:`p2pfast.pmtu`, RFC 8899).

Nothing here touches a socket or a clock: the node feeds frames and ``now`` and takes
datagrams, completed messages and send outcomes.

The per-fragment work (the transmit loop, ACK settlement and loss detection, storing a
fragment, building an ACK frame) is a hot path: :class:`BulkConnection` is the compiled
``_bulk`` class when the extensions are in use (it calls the compiled fragment bookkeeping and
congestion controller as C functions), else its pure twin :mod:`p2pfast._bulk_py`. Both have
the same API and behaviour, down to the bytes of every frame; this module holds what the node
and the tests import: the tuning constants, :class:`BulkMemory` and the class chosen.
"""

from __future__ import annotations

from ._speedups import bulk as _impl
from ._speedups import fragment

FRAGMENT_HEADER = fragment.FRAGMENT_HEADER
KIND_FRAGMENT = fragment.KIND_FRAGMENT
KIND_ACK = fragment.KIND_ACK
KIND_PROBE = fragment.KIND_PROBE
KIND_PROBE_ACK = fragment.KIND_PROBE_ACK
KIND_CREDIT_REQUEST = fragment.KIND_CREDIT_REQUEST
FRAME_MAGIC = fragment.FRAME_MAGIC

#: RFC 9002 §6.1.1: a packet this many numbers older than one acknowledged is lost.
PACKET_THRESHOLD: int = _impl.PACKET_THRESHOLD
#: Most fragments acknowledged by one ACK frame before the receiver sends it anyway.
ACK_EVERY: int = _impl.ACK_EVERY
#: Longest the receiver holds an acknowledgement (it also sends one per receive batch).
MAX_ACK_DELAY: float = _impl.MAX_ACK_DELAY
#: Probe timeouts in a row after which the messages in flight fail (the peer is gone).
MAX_PTO_COUNT: int = _impl.MAX_PTO_COUNT
#: Messages a sender may have started and not finished at once (and the receiver in progress).
MAX_MESSAGES_AHEAD: int = _impl.MAX_MESSAGES_AHEAD
#: Separate byte ranges one incomplete message may have.
MAX_RANGES_PER_MESSAGE: int = _impl.MAX_RANGES_PER_MESSAGE
#: Packet-number ranges the receiver keeps for its ACK frames.
MAX_RECEIVED_RANGES: int = _impl.MAX_RECEIVED_RANGES
#: Bytes of messages queued at a sender before ``send`` raises WindowFull.
MAX_QUEUED_BYTES: int = _impl.MAX_QUEUED_BYTES

#: Large-message transfer with one p2pfast peer (compiled or pure, see above).
BulkConnection = _impl.BulkConnection

__all__ = [
    "ACK_EVERY",
    "FRAGMENT_HEADER",
    "FRAME_MAGIC",
    "KIND_ACK",
    "KIND_CREDIT_REQUEST",
    "KIND_FRAGMENT",
    "KIND_PROBE",
    "KIND_PROBE_ACK",
    "MAX_ACK_DELAY",
    "MAX_MESSAGES_AHEAD",
    "MAX_PTO_COUNT",
    "MAX_QUEUED_BYTES",
    "MAX_RANGES_PER_MESSAGE",
    "MAX_RECEIVED_RANGES",
    "PACKET_THRESHOLD",
    "BulkConnection",
    "BulkMemory",
]


class BulkMemory:
    """The node-wide budget of reassembly credit: the sum over peers of credit granted and not
    yet released never exceeds ``limit`` bytes."""

    __slots__ = ("limit", "outstanding")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outstanding = 0

    @property
    def free(self) -> int:
        return max(0, self.limit - self.outstanding)
