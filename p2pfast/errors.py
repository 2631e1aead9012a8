"""Typed exceptions: one class per kind of failure, each with a machine-readable reason."""

from __future__ import annotations


class P2PError(Exception):
    """Base class of every error p2pfast raises on purpose."""


class ProtocolError(P2PError):
    """A datagram that is not a valid p2pfast/seed message.

    ``reason`` is one of ``too_large``, ``stun``, ``not_json``, ``not_object``,
    ``missing_field``, ``bad_type``, ``out_of_range``, ``unknown_type``,
    ``bad_uuid``, ``bad_addr``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class WindowFull(P2PError):
    """The per-peer send window holds its maximum of unacknowledged messages; wait and retry.

    ``node_id`` names the peer whose window is full (for a routed send, the next hop): the
    WindowOpened event for that peer says when to retry."""

    node_id: str = ""


class ConfigError(P2PError):
    """A configuration file or value that cannot be used."""


class SendError(P2PError):
    """A message could not be delivered (``reason``: no_route, timeout, too_large, peer_gone, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
