"""Constants of the seed wire format, shared by both codec twins and the engine."""

MAX_MESSAGE_SIZE = 1_048_576
STUN_MAGIC = b"\x21\x12\xa4\x42"
MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF

#: Message type names, indexed by their integer code (see ``p2pfast.protocol.MessageType``).
TYPE_NAMES = (
    "HandshakeRequest",
    "HandshakeResponse",
    "Ping",
    "Pong",
    "DiscoveryRequest",
    "DiscoveryResponse",
    "ListNodesRequest",
    "ListNodesResponse",
    "Data",
    "Error",
    "Disconnect",
    "Ack",
    "Retransmit",
    "P2PConnect",
    "RelayRequest",
    "RelayResponse",
    "RelayData",
)
