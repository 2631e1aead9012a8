"""Protocol constants shared by both codec implementations and the engine."""

from __future__ import annotations

from enum import IntEnum

from ._wire import MAX_MESSAGE_SIZE, TYPE_NAMES


class MessageType(IntEnum):
    """Integer codes of ``message_type``; ``TYPE_NAMES[code]`` is the wire string."""

    HandshakeRequest = 0
    HandshakeResponse = 1
    Ping = 2
    Pong = 3
    DiscoveryRequest = 4
    DiscoveryResponse = 5
    ListNodesRequest = 6
    ListNodesResponse = 7
    Data = 8
    Error = 9
    Disconnect = 10
    Ack = 11
    Retransmit = 12
    P2PConnect = 13
    RelayRequest = 14
    RelayResponse = 15
    RelayData = 16


assert tuple(t.name for t in MessageType) == TYPE_NAMES

#: Largest encoded message p2pfast accepts or sends (1 MiB).
MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE
#: Largest UDP payload over IPv4.
MAX_DATAGRAM_SIZE = 65_507

__all__ = ["MAX_DATAGRAM_SIZE", "MAX_MESSAGE_SIZE", "TYPE_NAMES", "MessageType"]
