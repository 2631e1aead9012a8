"""Typed exceptions: one class per kind of failure, each with a machine-readable ``code``.

Every exception p2pfast raises on purpose derives from :class:`P2PError` and, where one fits,
from the builtin exception a caller would already catch: :class:`ConnectRefused` is a
``ConnectionRefusedError``, :class:`P2PTimeout` a ``TimeoutError``, :class:`AddressError` a
``ValueError``. Messages are one line of English; ``code`` is for programs.
"""

from __future__ import annotations

from typing import Any


class P2PError(Exception):
    """Base class of every error p2pfast raises on purpose. ``code`` names the kind of failure."""

    code: str = "error"


class ProtocolError(P2PError):
    """A datagram that is not a valid p2pfast/seed message.

    ``reason`` (also ``code``) is one of ``too_large``, ``stun``, ``not_json``, ``not_object``,
    ``missing_field``, ``bad_type``, ``out_of_range``, ``unknown_type``, ``bad_uuid``,
    ``bad_addr``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.code = reason
        self.detail = detail


class WindowFull(P2PError):
    """The send window towards ``node_id`` holds its maximum of unacknowledged messages.

    ``node_id`` is the peer whose window is full: the destination for a direct send, the next
    hop for a routed one. A :class:`~p2pfast.events.WindowOpened` event naming that same peer
    follows when it has room again.
    """

    code = "window_full"

    def __init__(self, message: str = "", node_id: str = "") -> None:
        super().__init__(message or "send window full")
        self.node_id = node_id


class ConfigError(P2PError):
    """A configuration file or value that cannot be used."""

    code = "config"


class AddressError(P2PError, ValueError):
    """An address that cannot be used: malformed (``code`` ``bad_address``), a host name that
    does not resolve (``unresolved``). The message says how to write it."""

    def __init__(self, message: str, code: str = "bad_address") -> None:
        super().__init__(message)
        self.code = code


class BindError(P2PError, OSError):
    """The listen address cannot be bound (``code``: ``address_in_use``, ``bind``)."""

    def __init__(self, message: str, code: str = "bind") -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "cannot bind"


#: English descriptions of :class:`SendError` reasons.
SEND_REASONS = {
    "no_route": "no connected peer or route leads to the destination",
    "timeout": "not acknowledged after every retransmission",
    "peer_gone": "the peer carrying it disconnected before acknowledging it",
    "too_large": "the message does not fit one datagram",
    "bad_payload": "the payload cannot be encoded as JSON",
    "shutdown": "the server stopped",
}


class SendError(P2PError):
    """A message could not be sent or delivered.

    ``reason`` (also ``code``): ``no_route``, ``timeout``, ``peer_gone``, ``too_large``,
    ``bad_payload``, ``shutdown``. ``detail`` is the English explanation the message shows.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        prefix = f"{reason}: "
        while detail.startswith(prefix):  # never "too_large: too_large: ..."
            detail = detail[len(prefix) :]
        self.reason = reason
        self.code = reason
        self.detail = detail or SEND_REASONS.get(reason, reason)
        super().__init__(self.detail)

    def __str__(self) -> str:
        return self.detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.detail))


class ServerClosed(P2PError):
    """The server is not running: not started yet (``code`` ``not_started``), or stopped
    (``shutdown``), including while the call was waiting."""

    def __init__(self, message: str = "server is stopped", code: str = "shutdown") -> None:
        super().__init__(message)
        self.code = code


class SendShutdown(SendError, ServerClosed):
    """A send that failed because the server stopped: both a :class:`SendError` (``reason``
    ``shutdown``) and a :class:`ServerClosed`."""

    def __init__(self, reason: str = "shutdown", detail: str = "") -> None:
        SendError.__init__(self, "shutdown", detail)


class ConnectError(P2PError, ConnectionError):
    """A handshake that could not be attempted or completed.

    ``code``: ``family`` (an IPv4 node asked to reach an IPv6 peer, or the reverse),
    ``busy`` (too many handshakes pending), or a refusal code (see :class:`ConnectRefused`).
    ``address`` is the peer's ``(host, port)``; ``reason`` is English text.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        address: tuple[str, int] | None = None,
        reason: str = "",
        peer_text: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.address = address
        self.reason = reason or message
        self.peer_text = peer_text

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ConnectRefused(ConnectError, ConnectionRefusedError):
    """The peer refused our handshake.

    ``code``: ``network_mismatch``, ``server_full``, ``node_id_taken``, ``invalid_node_info``
    or ``refused`` (any other refusal). ``reason`` is English; ``peer_text`` keeps the peer's
    own words (the Rust server answers in Chinese).
    """


class P2PTimeout(P2PError, TimeoutError):
    """A call waited its whole timeout. It is a builtin ``TimeoutError`` on every Python version;
    the message names the address or node id and how long it waited (``waited``, seconds)."""

    code = "timeout"

    def __init__(
        self,
        message: str,
        *,
        waited: float | None = None,
        address: tuple[str, int] | None = None,
        node_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.waited = waited
        self.address = address
        self.node_id = node_id

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "timed out"


__all__ = [
    "AddressError",
    "BindError",
    "ConfigError",
    "ConnectError",
    "ConnectRefused",
    "P2PError",
    "P2PTimeout",
    "ProtocolError",
    "SendError",
    "SendShutdown",
    "ServerClosed",
    "WindowFull",
]
