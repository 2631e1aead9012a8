"""p2pfast: fast peer-to-peer messaging over UDP.

``from p2pfast import Config, P2PServer`` for the asyncio node; ``p2pfast.USE_EXTENSIONS``
tells whether the compiled hot paths are active (set ``P2PFAST_NO_EXTENSIONS=1`` to force the
pure-Python twins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._speedups import USE_EXTENSIONS
from ._version import __version__
from .errors import ConfigError, P2PError, ProtocolError, SendError, WindowFull
from .protocol import MAX_MESSAGE_SIZE, MessageType

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .events import DataReceived
    from .server import P2PServer

_LAZY = {
    "Config": ".config",
    "P2PServer": ".server",
    "DataReceived": ".events",
}


def __getattr__(name: str) -> Any:
    """Import the node lazily so ``import p2pfast`` stays cheap for codec-only users."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'p2pfast' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_MESSAGE_SIZE",
    "USE_EXTENSIONS",
    "Config",
    "ConfigError",
    "DataReceived",
    "MessageType",
    "P2PError",
    "P2PServer",
    "ProtocolError",
    "SendError",
    "WindowFull",
    "__version__",
]
