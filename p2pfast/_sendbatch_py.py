"""Pure-Python batched output: the twin of the compiled ``_sendbatch`` (same API and behaviour).

Python has no ``sendmmsg``, so this one makes one ``sendto`` per datagram, or one ``sendmsg``
per run of equal-size datagrams sent with segmentation offload; what it shares with the
compiled module is the contract the endpoint relies on (see :class:`BatchSender`) and the
way it cuts runs (see :func:`_can_extend`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from typing import Any

#: Datagrams per system call in the compiled twin (without segmentation offload).
BATCH = 64
#: Most datagrams one segmentation-offload message carries: the kernel's UDP_MAX_SEGMENTS
#: (include/linux/udp.h: 64; 128 since Linux 6.10).
GSO_MAX_SEGMENTS = 64
#: Most payload bytes one segmentation-offload message carries: udp_sendmsg() refuses more
#: than 0xFFFF and __ip_append_data() more than IP_MAX_MTU (65,535) - 20 (IPv4 header) - 8
#: (UDP header) = 65,507 with EMSGSIZE. IPv6 allows 65,527, but an AF_INET6 socket sends to a
#: v4-mapped address through the IPv4 path, so 65,507 holds for both.
GSO_MAX_BYTES = 65507
#: Kernels before "udp: Fix UDP GSO segment count check" compared skb->len (IP and UDP
#: headers included: at most IPv6 40 + UDP 8) rather than the payload with
#: gso_size * UDP_MAX_SEGMENTS in udp_send_skb() / udp_v6_send_skb() (EINVAL beyond).
_GSO_HEADROOM = 48

#: Linux's setsockopt/getsockopt level and cmsg type for segmentation offload (Linux >= 4.18).
SOL_UDP = 17
UDP_SEGMENT = 103

_BLOCKED = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
#: The kernel refusing offload itself (no checksum offload on the device: EIO; UDP checksums
#: off or an old kernel's limits: EINVAL; no UDP_SEGMENT: ENOPROTOOPT, EOPNOTSUPP).
_GSO_UNSUPPORTED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
_LINUX = sys.platform.startswith("linux")


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


def _same_address(a: tuple[str, int], b: tuple[str, int], family: int) -> bool:
    """Whether two ``_target`` results are one socket address (as the compiled twin compares
    the resolved ``sockaddr``: ``::1`` and ``0:0:0:0:0:0:0:1`` are one)."""
    if a == b:
        return True
    return a[1] == b[1] and socket.inet_pton(family, a[0]) == socket.inet_pton(family, b[0])


def _can_extend(
    segment: int, count: int, total: int, closed: bool, size: int, max_segment: int
) -> bool:
    """Whether a datagram of ``size`` bytes (to the same address) may join a run of ``count``
    datagrams of ``segment`` bytes (``total`` in all; ``closed`` once a shorter one ended it)."""
    return (
        not closed
        and 0 < size <= segment <= max_segment
        and count < GSO_MAX_SEGMENTS
        and total + size <= GSO_MAX_BYTES
        and total + size + _GSO_HEADROOM <= segment * GSO_MAX_SEGMENTS
    )


def _gso_probe(sock: socket.socket) -> bool:
    """Whether this kernel knows UDP_SEGMENT on this socket (read, never set: a socket-wide
    gso_size would apply to the transport's own sends too)."""
    if not _LINUX:
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


class BatchSender:
    """Writes ``(data, (host, port))`` pairs to a non-blocking UDP socket's descriptor.

    ``send`` returns the index of the first pair it did not send, for the caller to hand to
    the transport: ``blocked`` is then true if the socket buffer was full (send the rest
    through the transport too, to keep their order), false if that pair's address is not an
    IP literal of the socket's family (the transport knows what to do with it). Datagrams the
    kernel refuses for any other reason are counted in ``errors`` and skipped, as the
    transport would report them to ``error_received`` and drop them.

    On Linux (``gso_enabled``: the socket knows ``UDP_SEGMENT``, and ``gso`` was not turned
    off), a run of consecutive datagrams to one address, all of one size but the last, which
    may be shorter, goes as one message with segmentation offload: the receiver still gets
    each datagram on its own, the sender enters the kernel's UDP stack once per run. A
    refusal of such a message costs nothing: its datagrams are sent again one by one (the
    kernel refusing offload itself, EIO/EINVAL/ENOPROTOOPT/EOPNOTSUPP, turns it off for this
    sender; EMSGSIZE, a segment too large for the route, lowers ``gso_max_segment``);
    ``gso_failures`` counts those refusals.
    """

    __slots__ = (
        "_closed",
        "_gso_enabled",
        "_gso_failures",
        "_gso_max_segment",
        "_gso_segments",
        "_gso_sends",
        "_sock",
        "blocked",
        "errors",
        "family",
        "syscalls",
    )

    def __init__(self, fd: int, family: int, gso: bool = True) -> None:
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
        if sys.platform == "win32":  # no UDP_SEGMENT (nor sendmsg) there
            self._gso_enabled = False
        else:
            self._gso_enabled = bool(gso) and self._sock is not None and _gso_probe(self._sock)
        self._gso_max_segment = GSO_MAX_BYTES
        self._gso_sends = 0
        self._gso_segments = 0
        self._gso_failures = 0

    @property
    def gso_enabled(self) -> bool:
        """Whether runs of equal-size datagrams go with segmentation offload."""
        return self._gso_enabled

    @property
    def gso_max_segment(self) -> int:
        """The largest segment size offload is tried with (lowered by EMSGSIZE refusals)."""
        return self._gso_max_segment

    @property
    def gso_sends(self) -> int:
        """Messages sent with segmentation offload."""
        return self._gso_sends

    @property
    def gso_segments(self) -> int:
        """Datagrams those messages carried."""
        return self._gso_segments

    @property
    def gso_failures(self) -> int:
        """Offload messages the kernel refused (their datagrams went again one by one)."""
        return self._gso_failures

    def close(self) -> None:
        """Stop using the descriptor (the transport owns and closes the socket)."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, items: list[tuple[bytes, tuple[Any, ...]]], start: int = 0) -> int:
        """Send ``items[start:]``; return the index of the first pair not sent."""
        n = len(items)
        if not 0 <= start <= n:
            raise ValueError(f"start {start} outside 0..{n}")
        self.blocked = False
        if self._closed:
            self.blocked = True
            return start
        sock = self._sock  # None for a family without IP literals, and on Windows
        family = self.family
        plain_until = start  # a refused run goes again one datagram at a time
        i = start
        while i < n:
            # The run at i: items[i:j], all to `target`.
            item = items[i]
            if type(item) is not tuple or len(item) != 2:
                return i
            data, addr = item
            if type(data) is not bytes or type(addr) is not tuple or len(addr) < 2:
                return i
            target = _target(addr[0], addr[1], family)
            if target is None or sock is None:
                return i
            run = [data]
            j = i + 1
            if self._gso_enabled and i + 1 >= plain_until:
                segment = total = len(data)
                closed = False
                max_segment = self._gso_max_segment
                while j < n:
                    nxt = items[j]
                    if type(nxt) is not tuple or len(nxt) != 2:
                        break
                    ndata, naddr = nxt
                    if type(ndata) is not bytes or type(naddr) is not tuple or len(naddr) < 2:
                        break
                    size = len(ndata)
                    if not _can_extend(segment, len(run), total, closed, size, max_segment):
                        break
                    ntarget = _target(naddr[0], naddr[1], family)
                    if ntarget is None or not _same_address(target, ntarget, family):
                        break
                    run.append(ndata)
                    total += size
                    closed = size < segment
                    j += 1
            self.syscalls += 1
            try:
                if len(run) == 1 or sys.platform == "win32":
                    sock.sendto(data, target)
                else:
                    sock.sendmsg(
                        run, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(data)))], 0, target
                    )
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in _BLOCKED:
                    self.blocked = True
                    return i
                if len(run) > 1:  # offload refused: this run again, one datagram at a time
                    self._gso_failures += 1
                    plain_until = j
                    if exc.errno == errno.EMSGSIZE:  # a segment beyond the route's MTU
                        self._gso_max_segment = min(self._gso_max_segment, len(data) - 1)
                    elif exc.errno in _GSO_UNSUPPORTED:
                        self._gso_enabled = False
                    continue
                self.errors += 1  # e.g. EMSGSIZE, EACCES: the transport would drop it too
                i += 1
                continue
            if len(run) > 1:
                self._gso_sends += 1
                self._gso_segments += len(run)
            i = j
        return n
