"""Pure-Python batched output: the twin of the compiled ``_sendbatch`` (same API and behaviour).

Python has no ``sendmmsg``, so this one makes one ``sendto`` per datagram; what it shares
with the compiled module is the contract the endpoint relies on (see :class:`BatchSender`).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any

#: Datagrams per system call in the compiled twin.
BATCH = 64

_BLOCKED = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


def _target(host: Any, port: Any, family: int) -> tuple[str, int] | None:
    """The address to pass to ``sendto``, or None unless ``host`` is an IP literal of the
    socket's family (checked with ``inet_pton`` as the compiled twin does; an AF_INET6 socket
    also takes IPv4, as a v4-mapped address)."""
    if type(host) is not str or type(port) is not int or not 0 <= port <= 65535:
        return None
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        socket.inet_pton(family, host)
        return (host, port)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    if family == socket.AF_INET6:
        try:
            socket.inet_pton(socket.AF_INET, host)
            return ("::ffff:" + host, port)
        except (OSError, ValueError):
            pass
    return None


class BatchSender:
    """Writes ``(data, (host, port))`` pairs to a non-blocking UDP socket's descriptor.

    ``send`` returns the index of the first pair it did not send, for the caller to hand to
    the transport: ``blocked`` is then true if the socket buffer was full (send the rest
    through the transport too, to keep their order), false if that pair's address is not an
    IP literal of the socket's family (the transport knows what to do with it). Datagrams the
    kernel refuses for any other reason are counted in ``errors`` and skipped, as the
    transport would report them to ``error_received`` and drop them.
    """

    __slots__ = ("_closed", "_sock", "blocked", "errors", "family", "syscalls")

    def __init__(self, fd: int, family: int) -> None:
        self.family = family
        self._sock: socket.socket | None = None
        self._closed = False
        # Windows: socket handles are no C runtime descriptors (no os.dup), and there is no
        # sendmmsg to mirror: every pair goes to the transport, as in the compiled twin.
        if family in (socket.AF_INET, socket.AF_INET6) and sys.platform != "win32":
            # A duplicate descriptor: closing this object never closes the transport's socket.
            self._sock = socket.socket(family, socket.SOCK_DGRAM, fileno=os.dup(fd))
            self._sock.setblocking(False)
        self.blocked = False
        self.errors = 0
        self.syscalls = 0

    def close(self) -> None:
        """Stop using the descriptor (the transport owns and closes the socket)."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, items: list[tuple[bytes, tuple[Any, ...]]], start: int = 0) -> int:
        """Send ``items[start:]``; return the index of the first pair not sent."""
        if not 0 <= start <= len(items):
            raise ValueError(f"start {start} outside 0..{len(items)}")
        self.blocked = False
        if self._closed:
            self.blocked = True
            return start
        sock = self._sock  # None for a family without IP literals, and on Windows
        family = self.family
        for i in range(start, len(items)):
            item = items[i]
            if type(item) is not tuple or len(item) != 2:
                return i
            data, addr = item
            if type(data) is not bytes or type(addr) is not tuple or len(addr) < 2:
                return i
            target = _target(addr[0], addr[1], family)
            if target is None or sock is None:
                return i
            while True:
                self.syscalls += 1
                try:
                    sock.sendto(data, target)
                except InterruptedError:
                    continue
                except OSError as exc:
                    if exc.errno in _BLOCKED:
                        self.blocked = True
                        return i
                    self.errors += 1  # e.g. EMSGSIZE, EACCES: the transport would drop it too
                break
        return len(items)
