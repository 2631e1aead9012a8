"""p2pfast: fast peer-to-peer messaging over UDP.

``from p2pfast import Config, P2PServer`` for the asyncio node (``docs/api.md``: lifecycle,
backpressure and ordering, what each call raises); ``p2pfast.node.Node`` is the sans-I/O
engine underneath. Every exception p2pfast raises on purpose is a :class:`P2PError` with a
``code``. ``p2pfast.USE_EXTENSIONS`` tells whether the compiled hot paths are active (set
``P2PFAST_NO_EXTENSIONS=1`` to force the pure-Python twins).
"""

from __future__ import annotations

from ._speedups import USE_EXTENSIONS
from ._version import __version__
from .addr import Address
from .config import Config
from .errors import (
    AddressError,
    BindError,
    ConfigError,
    ConnectError,
    ConnectRefused,
    P2PError,
    P2PTimeout,
    ProtocolError,
    SendError,
    SendShutdown,
    ServerClosed,
    WindowFull,
)
from .events import (
    ConnectFailed,
    DataReceived,
    Event,
    PeerConnected,
    PeerDisconnected,
    PeerListReceived,
    PongReceived,
    SendCompleted,
    SendFailed,
    WindowOpened,
)
from .info import NodeInfo, PeerInfo
from .protocol import MAX_MESSAGE_SIZE, MessageType
from .server import EventStream, MessageStream, P2PServer
from .stats import PeerStats, ServerStats

__all__ = [
    "MAX_MESSAGE_SIZE",
    "USE_EXTENSIONS",
    "Address",
    "AddressError",
    "BindError",
    "Config",
    "ConfigError",
    "ConnectError",
    "ConnectFailed",
    "ConnectRefused",
    "DataReceived",
    "Event",
    "EventStream",
    "MessageStream",
    "MessageType",
    "NodeInfo",
    "P2PError",
    "P2PServer",
    "P2PTimeout",
    "PeerConnected",
    "PeerDisconnected",
    "PeerInfo",
    "PeerListReceived",
    "PeerStats",
    "PongReceived",
    "ProtocolError",
    "SendCompleted",
    "SendError",
    "SendFailed",
    "SendShutdown",
    "ServerClosed",
    "ServerStats",
    "WindowFull",
    "WindowOpened",
    "__version__",
]
