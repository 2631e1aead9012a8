"""Batched UDP output: ``BatchSender``, compiled ([c], ``sendmmsg``) and pure ([py], ``sendto``).

Every test sends real datagrams on loopback only (127.0.0.1 / ::1) to real receiving sockets,
and checks what arrives against the contract in the modules' docstrings: ``send(items, start)``
returns the index of the first pair it did not send; it stops with ``blocked`` false at a
pair that is malformed or whose host is not an IP literal of the socket's family, with
``blocked`` true when the socket buffer is full or after ``close()``; kernel refusals for other
reasons (EMSGSIZE, ...) are counted in ``errors`` and skipped.

"Nothing more was sent" is checked with a sentinel: after a ``send``, the test writes a
sentinel datagram on the same sender socket to the same receiver; loopback keeps one
socket's datagrams to one destination in order, so everything read before the sentinel is
exactly what ``send`` wrote. No timing assertions; every receive is bounded by a 2 s timeout.
"""

from __future__ import annotations

import ipaddress
import math
import random
import socket
import sys
from collections import namedtuple

import pytest

from .conftest import NO_EXTENSIONS, _load

RECV_TIMEOUT = 2.0
SENTINEL = b"--sentinel--"
V4 = "127.0.0.1"
V6 = "::1"
#: On Windows both twins hand every pair to the transport (see the last test).
WINDOWS = sys.platform == "win32"
LINUX = sys.platform.startswith("linux")


@pytest.fixture(params=["c", "py"])
def sendbatch(request):
    """The sendbatch module, compiled ([c]) and pure ([py])."""
    return _load("_sendbatch", request.param)


def _compiled(mod) -> bool:
    return mod.__name__ == "p2pfast._sendbatch"


# --------------------------------------------------------------------------- socket fixtures


class Sockets:
    """Opens sockets and BatchSenders for one test; ``close_all`` closes every one of them."""

    def __init__(self) -> None:
        self._socks: list[socket.socket] = []
        self._senders: list = []

    def udp(
        self,
        family: int = socket.AF_INET,
        bind: tuple | None = None,
        *,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
        v6only: int | None = None,
        blocking: bool = True,
    ) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self._socks.append(sock)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if bind is not None:
            sock.bind(bind)
        if blocking:
            sock.settimeout(RECV_TIMEOUT)
        else:
            sock.setblocking(False)
        return sock

    def receiver(self, family: int = socket.AF_INET, **kw) -> socket.socket:
        kw.setdefault("rcvbuf", 1 << 20)
        return self.udp(family, (V4 if family == socket.AF_INET else V6, 0), **kw)

    def sender_socket(self, family: int = socket.AF_INET, **kw) -> socket.socket:
        """A non-blocking UDP socket bound to loopback (as the endpoint's transport socket)."""
        kw.setdefault("bind", (V4 if family == socket.AF_INET else V6, 0))
        return self.udp(family, blocking=False, **kw)

    def batch(self, mod, sock: socket.socket, **kw):
        sender = mod.BatchSender(sock.fileno(), sock.family, **kw)
        self._senders.append(sender)
        return sender

    def close_all(self) -> None:
        for sender in self._senders:
            sender.close()
        for sock in self._socks:
            sock.close()


@pytest.fixture
def socks():
    if WINDOWS:
        pytest.skip("Windows: BatchSender sends nothing itself (the transport does)")
    s = Sockets()
    try:
        yield s
    finally:
        s.close_all()


@pytest.fixture
def ipv6(socks):
    """Skip unless this host can bind ::1."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    try:
        socks.udp(socket.AF_INET6, (V6, 0))
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")


# --------------------------------------------------------------------------- helpers


def recv_n(sock: socket.socket, n: int) -> list[bytes]:
    """Exactly ``n`` datagrams (each read bounded by the socket's 2 s timeout)."""
    out = []
    for _ in range(n):
        try:
            out.append(sock.recv(70_000))
        except TimeoutError:
            pytest.fail(f"only {len(out)} of {n} datagrams arrived: {out[-5:]!r}")
    return out


def until_sentinel(
    sender: socket.socket, receiver: socket.socket, limit: int = 10_000
) -> list[bytes]:
    """Everything ``receiver`` got from ``sender`` so far: write a sentinel on ``sender`` and
    read up to it (loopback keeps one socket's datagrams to one destination in order)."""
    sender.sendto(SENTINEL, receiver.getsockname()[:2])
    out = []
    for _ in range(limit + 1):
        try:
            data = receiver.recv(70_000)
        except TimeoutError:
            pytest.fail(f"sentinel did not arrive after {len(out)} datagrams")
        if data == SENTINEL:
            return out
        out.append(data)
    pytest.fail(f"more than {limit} datagrams before the sentinel")


def payloads(items, indices) -> list[bytes]:
    return [items[i][0] for i in indices]


def gso_runs(items, max_segment: int = 65507) -> list[int]:
    """How many datagrams each message carries when ``items`` (all sendable) go with
    segmentation offload: a run is consecutive datagrams to one address, all of the first's
    size but the last, which may be shorter (not empty); at most 64 of them, 65,507 bytes in
    all, and total + 48 <= 64 * size (older kernels count IPv6 + UDP headers in that limit)."""
    runs: list[list] = []  # [key, size, count, total, closed]
    for data, addr in items:
        key = (ipaddress.ip_address(addr[0]), addr[1])
        n = len(data)
        if runs:
            r = runs[-1]
            total = r[3] + n
            if (
                r[0] == key
                and not r[4]
                and 0 < n <= r[1] <= max_segment
                and r[2] < 64
                and total <= 65507
                and total + 48 <= 64 * r[1]
            ):
                r[2] += 1
                r[3] = total
                r[4] = n < r[1]
                continue
        runs.append([key, n, 1, n, False])
    return [r[2] for r in runs]


def py_syscalls(sender, items) -> int:
    """``sendto``/``sendmsg`` calls the pure twin makes for ``items`` (all sendable)."""
    return len(gso_runs(items)) if sender.gso_enabled else len(items)


def drive(sender, items) -> list[tuple[int, bool]]:
    """Drive ``sender`` over all of ``items`` as an endpoint would, skipping each pair it stops
    at for a reason other than a full buffer; the (index, blocked) after every call."""
    n = len(items)
    records = []
    i = 0
    for _ in range(2 * n + 10):
        if i >= n:
            return records
        i = sender.send(items, i)
        records.append((i, sender.blocked))
        if i < n and not sender.blocked:
            i += 1
    pytest.fail(f"drive did not finish: {records[-10:]!r}")


# --------------------------------------------------------------------------- module surface


def test_module_surface(sendbatch, socks):
    assert sendbatch.BATCH == 64
    sender = socks.batch(sendbatch, socks.sender_socket())
    assert sender.blocked is False
    assert sender.errors == 0 and sender.syscalls == 0
    assert type(sender.errors) is int and type(sender.syscalls) is int
    assert sendbatch.GSO_MAX_SEGMENTS == 64 and sendbatch.GSO_MAX_BYTES == 65507
    assert type(sender.gso_enabled) is bool
    assert sender.gso_enabled is LINUX  # this suite runs on a kernel >= 4.18 when on Linux
    assert sender.gso_max_segment == 65507
    for counter in ("gso_sends", "gso_segments", "gso_failures"):
        assert getattr(sender, counter) == 0 and type(getattr(sender, counter)) is int
    assert socks.batch(sendbatch, socks.sender_socket(), gso=False).gso_enabled is False


# --------------------------------------------------------------------------- 1. batches


def test_many_datagrams_to_three_receivers(sendbatch, socks):
    receivers = [socks.receiver() for _ in range(3)]
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock)
    items = [(b"dg-%03d" % k, receivers[k % 3].getsockname()) for k in range(200)]

    assert sender.send(items) == 200
    assert sender.blocked is False
    assert sender.errors == 0
    if _compiled(sendbatch):
        assert sender.syscalls <= 4  # ceil(200 / BATCH): sendmmsg, 64 datagrams a call
        assert sender.syscalls >= math.ceil(200 / sendbatch.BATCH)
    else:
        assert sender.syscalls == 200  # one sendto per datagram

    for r, receiver in enumerate(receivers):
        expected = payloads(items, range(r, 200, 3))
        assert recv_n(receiver, len(expected)) == expected  # complete, in order
        assert until_sentinel(sock, receiver) == []  # and nothing else


def test_empty_list(sendbatch, socks):
    sender = socks.batch(sendbatch, socks.sender_socket())
    assert sender.send([]) == 0
    assert sender.blocked is False
    assert sender.syscalls == 0


# --------------------------------------------------------------------------- 2. start


def test_start_sends_only_the_tail(sendbatch, socks):
    receiver = socks.receiver()
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock)
    items = [(b"s%d" % k, receiver.getsockname()) for k in range(10)]

    assert sender.send(items, 5) == len(items)
    assert sender.blocked is False
    assert until_sentinel(sock, receiver) == payloads(items, range(5, 10))
    if not _compiled(sendbatch):
        assert sender.syscalls == py_syscalls(sender, items[5:])

    assert sender.send(items, len(items)) == len(items)  # nothing left: no-op
    assert until_sentinel(sock, receiver) == []


# --------------------------------------------------------------------------- 3. stop at a pair


class _Str(str):
    pass


class _Bytes(bytes):
    pass


_Pair = namedtuple("_Pair", "data addr")

# Each builds a pair that send() must stop at, from the receiver's port.
BAD_ITEMS = {
    "hostname": lambda p: (b"BAD", ("localhost", p)),
    "not-a-tuple": lambda p: [b"BAD", (V4, p)],
    "none": lambda p: None,
    "tuple-of-3": lambda p: (b"BAD", (V4, p), None),
    "tuple-of-1": lambda p: (b"BAD",),
    "tuple-subclass": lambda p: _Pair(b"BAD", (V4, p)),
    "data-bytearray": lambda p: (bytearray(b"BAD"), (V4, p)),
    "data-memoryview": lambda p: (memoryview(b"BAD"), (V4, p)),
    "data-str": lambda p: ("BAD", (V4, p)),
    "data-bytes-subclass": lambda p: (_Bytes(b"BAD"), (V4, p)),
    "addr-list": lambda p: (b"BAD", [V4, p]),
    "addr-too-short": lambda p: (b"BAD", (V4,)),
    "addr-str": lambda p: (b"BAD", V4),
    "port-65536": lambda p: (b"BAD", (V4, 65536)),
    "port-negative": lambda p: (b"BAD", (V4, -1)),
    "port-huge": lambda p: (b"BAD", (V4, 2**64 + p)),
    "port-bool": lambda p: (b"BAD", (V4, True)),
    "port-float": lambda p: (b"BAD", (V4, float(p))),
    "port-str": lambda p: (b"BAD", (V4, str(p))),
    "host-bytes": lambda p: (b"BAD", (V4.encode(), p)),
    "host-str-subclass": lambda p: (b"BAD", (_Str(V4), p)),
    "host-nul": lambda p: (b"BAD", ("127.0.0.1\x00x", p)),
    "host-non-ascii": lambda p: (b"BAD", ("127.0.0.1\u00e9", p)),
    "host-non-ascii-digits": lambda p: (b"BAD", ("\u0661\u0662\u0667.0.0.1", p)),
    "host-surrogate": lambda p: (b"BAD", ("\udc80", p)),
    "host-empty": lambda p: (b"BAD", ("", p)),
    "host-shorthand": lambda p: (b"BAD", ("127.1", p)),
    "host-spaces": lambda p: (b"BAD", (" 127.0.0.1", p)),
    "host-long": lambda p: (b"BAD", ("1" * 100, p)),
    "host-v6-on-v4": lambda p: (b"BAD", (V6, p)),
    "host-v4-mapped-on-v4": lambda p: (b"BAD", ("::ffff:127.0.0.1", p)),
}


@pytest.mark.parametrize("where", [0, 64, 70], ids=lambda w: f"at{w}")
@pytest.mark.parametrize("bad", list(BAD_ITEMS))
def test_stops_at_unsendable_pair(sendbatch, socks, bad, where):
    receiver = socks.receiver()
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock)
    port = receiver.getsockname()[1]
    n = 80
    items = [(b"ok-%02d" % k, (V4, port)) for k in range(n)]
    items[where] = BAD_ITEMS[bad](port)

    assert sender.send(items) == where
    assert sender.blocked is False
    assert sender.errors == 0
    assert until_sentinel(sock, receiver) == payloads(items, range(where))  # before it, not after
    if not _compiled(sendbatch):
        assert sender.syscalls == py_syscalls(sender, items[:where])

    assert sender.send(items, where) == where  # again: still stops there, sends nothing
    assert sender.blocked is False
    assert until_sentinel(sock, receiver) == []

    assert sender.send(items, where + 1) == n  # the caller skips it: the rest goes out
    assert sender.blocked is False
    assert sender.errors == 0
    assert until_sentinel(sock, receiver) == payloads(items, range(where + 1, n))


# --------------------------------------------------------------------------- 4. kernel refusals


@pytest.mark.parametrize(
    "big",
    [(2,), (0,), (4,), (1, 2), (63,), (64,), (63, 64, 65)],
    ids=lambda b: "big" + "-".join(map(str, b)),
)
def test_oversize_datagram_counted_and_skipped(sendbatch, socks, big):
    receiver = socks.receiver()
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock)
    n = 5 if max(big) < 5 else 100
    items = [(b"ok-%02d" % k, receiver.getsockname()) for k in range(n)]
    for k in big:
        items[k] = (b"B" * 70_000, receiver.getsockname())  # > 65507: EMSGSIZE on IPv4

    assert sender.send(items) == n
    assert sender.blocked is False
    assert sender.errors == len(big)
    assert until_sentinel(sock, receiver) == payloads(items, [k for k in range(n) if k not in big])


# --------------------------------------------------------------------------- 5. address families


def test_ipv6_destinations(sendbatch, socks, ipv6):
    receiver = socks.receiver(socket.AF_INET6)
    sock = socks.sender_socket(socket.AF_INET6)
    sender = socks.batch(sendbatch, sock)
    port = receiver.getsockname()[1]
    items = [(b"v6-%03d" % k, (V6, port)) for k in range(100)]
    items[50] = (b"v6-long-form", ("0:0:0:0:0:0:0:1", port))
    items[51] = (b"v6-addr-of-4", (V6, port, 0, 0))

    assert sender.send(items) == len(items)
    assert sender.blocked is False and sender.errors == 0
    assert until_sentinel(sock, receiver) == payloads(items, range(len(items)))


def test_ipv4_literal_on_ipv6_socket_is_sent_v4_mapped(sendbatch, socks, ipv6):
    try:
        sock = socks.udp(socket.AF_INET6, ("::", 0), v6only=0, blocking=False)
    except OSError as exc:
        pytest.skip(f"no dual-stack AF_INET6 socket: {exc}")
    if sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0:
        pytest.skip("IPV6_V6ONLY could not be disabled")
    r4 = socks.receiver(socket.AF_INET)
    r6 = socks.receiver(socket.AF_INET6)
    p4, p6 = r4.getsockname()[1], r6.getsockname()[1]
    sender = socks.batch(sendbatch, sock)
    items = [
        (b"a-v4", (V4, p4)),
        (b"b-v6", (V6, p6)),
        (b"c-v4", (V4, p4)),
        (b"d-mapped", ("::ffff:127.0.0.1", p4)),
        (b"e-v6", (V6, p6)),
    ]

    assert sender.send(items) == len(items)
    assert sender.blocked is False and sender.errors == 0
    got = []
    for _ in range(3):
        data, source = r4.recvfrom(100)
        assert source[0] == V4  # an IPv4 datagram, from the v4-mapped loopback
        got.append(data)
    assert got == [b"a-v4", b"c-v4", b"d-mapped"]
    assert recv_n(r6, 2) == [b"b-v6", b"e-v6"]


def test_ipv6_literal_on_ipv4_socket_stops(sendbatch, socks):
    receiver = socks.receiver()
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock)
    port = receiver.getsockname()[1]
    items = [(b"v4-0", (V4, port)), (b"BAD", (V6, port)), (b"v4-2", (V4, port))]

    assert sender.send(items) == 1
    assert sender.blocked is False and sender.errors == 0
    assert until_sentinel(sock, receiver) == [b"v4-0"]
    assert sender.send(items, 2) == 3
    assert sender.blocked is False
    assert until_sentinel(sock, receiver) == [b"v4-2"]


@pytest.mark.parametrize("impl", ["c", "py"])
def test_non_ip_family_is_not_blocked(impl, socks):
    mod = _load("_sendbatch", impl)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # unbound: nothing can be sent
    try:
        sender = socks.batch(mod, unix)
        items = [(b"x", (V4, 9))]
        assert sender.send(items) == 0
        assert sender.blocked is False
        assert sender.errors == 0
    finally:
        unix.close()


# --------------------------------------------------------------------------- 6. close


def test_send_after_close_is_blocked(sendbatch, socks):
    receiver = socks.receiver()
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock)
    items = [(b"c%d" % k, receiver.getsockname()) for k in range(5)]
    assert sender.send(items, 4) == 5
    assert until_sentinel(sock, receiver) == [b"c4"]
    syscalls = sender.syscalls

    sender.close()
    assert sender.send(items) == 0
    assert sender.blocked is True
    assert sender.send(items, 3) == 3
    assert sender.blocked is True
    assert sender.syscalls == syscalls and sender.errors == 0
    assert until_sentinel(sock, receiver) == []  # nothing went out
    sender.close()  # twice: harmless
    assert sender.send(items, 2) == 2 and sender.blocked is True


def test_close_leaves_the_socket_open(sendbatch, socks):
    receiver = socks.receiver()
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock)
    fd = sock.fileno()
    sender.close()
    assert sock.fileno() == fd
    assert sock.sendto(b"still-open", receiver.getsockname()) == len(b"still-open")
    assert recv_n(receiver, 1) == [b"still-open"]


# --------------------------------------------------------------------------- 7. full buffer


def test_full_socket_buffer_contract(sendbatch, socks):
    receiver = socks.udp(socket.AF_INET, (V4, 0), rcvbuf=2048)  # never read
    sock = socks.sender_socket(sndbuf=1024)
    sender = socks.batch(sendbatch, sock)
    items = [(bytes(1000), receiver.getsockname())] * 5000

    r = sender.send(items)
    # Loopback rarely reports EAGAIN/ENOBUFS (datagrams beyond the receive buffer are dropped),
    # so only what holds either way.
    assert 0 <= r <= len(items)
    if r < len(items):
        assert sender.blocked is True
    else:
        assert sender.blocked is False
    assert sender.errors == 0


# --------------------------------------------------------------------------- 8. c/py agreement


def _mixed_items(p4: int) -> list:
    items: list = [(b"m-%03d" % k, (V4, p4)) for k in range(150)]
    bad = {
        0: (b"BAD", ("localhost", p4)),
        1: (b"BAD", (V6, p4)),
        5: (bytearray(b"BAD"), (V4, p4)),
        6: (b"B" * 70_000, (V4, p4)),  # kernel refusal: counted, skipped
        7: (b"BAD", (V4, True)),
        30: (b"BAD", ("127.0.0.1\x00x", p4)),
        63: (b"B" * 70_000, (V4, p4)),
        64: (b"BAD", (V4, 65536)),
        65: [b"BAD", (V4, p4)],
        66: (b"BAD", ("127.0.0.1\u00e9", p4)),
        100: (b"B" * 70_000, (V4, p4)),
        101: (b"B" * 70_000, (V4, p4)),
        102: None,
        149: (b"BAD", ("127.1", p4)),
    }
    for k, item in bad.items():
        items[k] = item
    return items


def _run_twin(mod, socks, receiver, items):
    sock = socks.sender_socket()
    sender = socks.batch(mod, sock)
    records = drive(sender, items)
    return records, sender.errors, until_sentinel(sock, receiver)


def test_twins_agree_on_mixed_items(socks):
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    receiver = socks.receiver()
    items = _mixed_items(receiver.getsockname()[1])
    c = _run_twin(_load("_sendbatch", "c"), socks, receiver, items)
    py = _run_twin(_load("_sendbatch", "py"), socks, receiver, items)
    assert c == py
    records, errors, received = py
    # Stops at each unsendable pair (not at the four oversize ones: counted in errors, skipped);
    # the last pair is unsendable, so the last call stops at it and nothing is left after.
    assert records == [(k, False) for k in (0, 1, 5, 7, 30, 64, 65, 66, 102, 149)]
    assert errors == 4
    assert received == [it[0] for it in items if type(it) is tuple and it[0][:1] == b"m"]


def test_twins_agree_on_random_mixes(socks):
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    receiver = socks.receiver()
    port = receiver.getsockname()[1]
    makers = [*BAD_ITEMS.values(), lambda p: (b"B" * 70_000, (V4, p))]
    c_mod, py_mod = _load("_sendbatch", "c"), _load("_sendbatch", "py")
    for seed in range(5):
        rng = random.Random(seed)
        items = [
            rng.choice(makers)(port) if rng.random() < 0.15 else (b"r%d-%d" % (seed, k), (V4, port))
            for k in range(rng.randrange(1, 300))
        ]
        c = _run_twin(c_mod, socks, receiver, items)
        py = _run_twin(py_mod, socks, receiver, items)
        assert c == py, f"seed {seed}"
        assert b"BAD" not in py[2]


@pytest.mark.parametrize("start", [-1, -3, 3])
def test_start_outside_the_list_is_refused(sendbatch, socks, start):
    """``items[start:]`` for a start outside 0..len(items) is a caller bug: ValueError, nothing
    sent."""
    sock, receiver = socks.sender_socket(), socks.receiver()
    sender = socks.batch(sendbatch, sock)
    items = [(b"a", receiver.getsockname()), (b"b", receiver.getsockname())]
    with pytest.raises(ValueError):
        sender.send(items, start)
    assert sender.syscalls == 0


@pytest.mark.skipif(not WINDOWS, reason="the Windows hand-over only")
def test_windows_hands_every_pair_to_the_transport(sendbatch):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((V4, 0))
        sender = sendbatch.BatchSender(sock.fileno(), sock.family)
        items = [(b"x", (V4, 9)), (b"y", (V4, 9))]
        assert sender.send(items) == 0 and sender.blocked is False
        assert sender.send(items, 1) == 1 and sender.blocked is False
        assert sender.syscalls == 0 and sender.errors == 0
        sender.close()


# ------------------------------------------------------------------------- 9. segmentation offload
#
# On Linux a run of equal-size datagrams to one address goes as one message with UDP_SEGMENT;
# the receiving sockets below have no UDP_GRO, so the kernel hands them each datagram on its
# own, and every test checks exactly what arrived, byte for byte and in order.

needs_gso = pytest.mark.skipif(not LINUX, reason="UDP_SEGMENT is Linux's")

SOL_UDP = 17
UDP_NO_CHECK6_TX = 101
UDP_NO_CHECK6_RX = 102
SO_NO_CHECK = 11  # Linux
IPV6_MTU = 24  # Linux


def _datagrams(count: int, size: int, tag: int = 0) -> list[bytes]:
    """``count`` distinct datagrams of ``size`` bytes (each one's index and tag inside)."""
    out = []
    for k in range(count):
        head = b"%d:%d:" % (tag, k)
        out.append((head * (size // len(head) + 1))[:size])
    return out


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
def family(request, socks) -> int:
    """IPv4 and IPv6 (skipped unless ::1 can be bound)."""
    if request.param == socket.AF_INET6:
        request.getfixturevalue("ipv6")
    return request.param


def _gso_counts(sender, runs: list[int]) -> None:
    """``sender`` sent exactly ``runs`` (datagrams per message) with offload where it could."""
    multi = [r for r in runs if r > 1]
    assert (sender.gso_sends, sender.gso_segments) == (len(multi), sum(multi))


@needs_gso
@pytest.mark.parametrize(
    ("count", "size", "last"),
    [
        (10, 1200, 1),
        (10, 1200, 1199),
        (10, 1200, 1200),
        (2, 1, 1),
        (53, 1200, 1200),  # 54 * 1,200 = 64,800 bytes
        (1, 8000, 3),
        (63, 1000, 952),  # 64 segments, 63,952 + 48 = 64 * 1,000 bytes: the most there is
    ],
    ids=lambda v: str(v),
)
def test_run_arrives_as_its_datagrams(sendbatch, socks, family, count, size, last):
    receiver = socks.receiver(family)
    sock = socks.sender_socket(family)
    sender = socks.batch(sendbatch, sock)
    addr = receiver.getsockname()[:2]
    items = [(d, addr) for d in _datagrams(count, size)] + [(b"L" * last, addr)]

    assert sender.send(items) == len(items)
    assert sender.blocked is False and sender.errors == 0 and sender.gso_failures == 0
    assert sender.gso_enabled is True
    assert (sender.gso_sends, sender.gso_segments) == (1, count + 1)  # one message for all
    assert sender.syscalls == 1
    assert recv_n(receiver, len(items)) == [d for d, _ in items]
    assert until_sentinel(sock, receiver) == []


@needs_gso
def test_mixed_batch_addresses_and_sizes(sendbatch, socks, family):
    receivers = [socks.receiver(family) for _ in range(3)]
    a, b, c = (r.getsockname()[:2] for r in receivers)
    sock = socks.sender_socket(family)
    sender = socks.batch(sendbatch, sock)
    d = _datagrams(40, 1200, tag=1)
    e = _datagrams(40, 700, tag=2)
    plan = (
        [(x, a) for x in d[:5]]  # a run of 5
        + [(d[5], b), (d[6], a), (d[7], b)]  # interleaved: no runs
        + [(x, c) for x in e[:4]]  # a run of 4 of another size ...
        + [(d[8], c)]  # ... a larger one ends it (and is alone: 700 < 1200 then b)
        + [(e[4], b), (e[5], b), (b"short", b), (e[6], b)]  # a shorter one ends a run
        + [(b"", a), (b"", a)]  # empty datagrams never join a run (nor start one)
        + [(x, a) for x in d[9:20]]  # then a run of 11
        + [(x, b) for x in e[10:30]]  # and one of 20
    )
    runs = [5, 1, 1, 1, 4, 1, 3, 1, 1, 1, 11, 20]
    assert gso_runs(plan) == runs  # the model agrees with the intent spelled above

    assert sender.send(plan) == len(plan)
    assert sender.blocked is False and sender.errors == 0
    _gso_counts(sender, runs)
    if not _compiled(sendbatch):
        assert sender.syscalls == len(runs)
    for receiver in receivers:
        expected = [x for x, to in plan if to == receiver.getsockname()[:2]]
        assert recv_n(receiver, len(expected)) == expected
        assert until_sentinel(sock, receiver) == []


@needs_gso
@pytest.mark.parametrize(
    ("count", "size", "runs"),
    [
        # 64 segments of 100 would be 6,400 bytes: older kernels count 48 bytes of headers
        # in 64 * 100, so 63 per message.
        (200, 100, [63, 63, 63, 11]),
        (16, 1, [16]),
        (17, 1, [16, 1]),
        (200, 1200, [54, 54, 54, 38]),  # 54 * 1,200 = 64,800 <= 65,507 < 55 * 1,200
        (5, 30_000, [2, 2, 1]),
        (3, 40_000, [1, 1, 1]),  # two would exceed 65,507: each alone
        (2, 32_753, [2]),  # 65,506 bytes
        (2, 32_754, [1, 1]),  # 65,508 bytes
        (130, 1000, [63, 63, 4]),  # 64 would be 64,000 bytes + 48 > 64 * 1,000
    ],
    ids=lambda v: str(v),
)
def test_long_runs_are_split_at_the_kernel_limits(sendbatch, socks, family, count, size, runs):
    receiver = socks.receiver(family, rcvbuf=1 << 22)
    sock = socks.sender_socket(family)
    sender = socks.batch(sendbatch, sock)
    addr = receiver.getsockname()[:2]
    items = [(x, addr) for x in _datagrams(count, size)]
    assert gso_runs(items) == runs

    assert sender.send(items) == len(items)
    assert sender.blocked is False and sender.errors == 0 and sender.gso_failures == 0
    _gso_counts(sender, runs)
    if not _compiled(sendbatch):
        assert sender.syscalls == len(runs)
    assert recv_n(receiver, len(items)) == [x for x, _ in items]
    assert until_sentinel(sock, receiver) == []


@needs_gso
def test_runs_across_batches_of_messages(sendbatch, socks):
    """More messages than one sendmmsg takes (64): the compiled twin needs several calls, and
    a run is never cut by a call boundary."""
    r1, r2 = socks.receiver(), socks.receiver()
    a, b = r1.getsockname(), r2.getsockname()
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock)
    items = []
    for k in range(100):
        items += [(x, a if k % 2 else b) for x in _datagrams(1 + k % 4, 300, tag=k)]
    runs = gso_runs(items)
    assert len(runs) == 100

    assert sender.send(items) == len(items)
    assert sender.errors == 0
    _gso_counts(sender, runs)
    if _compiled(sendbatch):
        assert sender.syscalls == 2  # 100 messages: 64 + 36
    for receiver in (r1, r2):
        expected = [x for x, to in items if to == receiver.getsockname()]
        assert recv_n(receiver, len(expected)) == expected
        assert until_sentinel(sock, receiver) == []


@needs_gso
def test_gso_off_sends_each_datagram(sendbatch, socks):
    receiver = socks.receiver()
    sock = socks.sender_socket()
    sender = socks.batch(sendbatch, sock, gso=False)
    items = [(x, receiver.getsockname()) for x in _datagrams(100, 1200)]
    assert sender.gso_enabled is False
    assert sender.send(items) == len(items)
    assert (sender.gso_sends, sender.gso_segments, sender.gso_failures) == (0, 0, 0)
    assert sender.syscalls == (2 if _compiled(sendbatch) else 100)
    assert recv_n(receiver, len(items)) == [x for x, _ in items]


def _no_checksum(sock: socket.socket) -> None:
    """UDP checksums off on the sender: the kernel then refuses offload (EINVAL in
    udp_send_skb / udp_v6_send_skb) and still sends plain datagrams."""
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    else:
        sock.setsockopt(SOL_UDP, UDP_NO_CHECK6_TX, 1)


@needs_gso
def test_kernel_refusing_offload_turns_it_off_and_loses_nothing(sendbatch, socks, family):
    receiver = socks.receiver(family)
    if family == socket.AF_INET6:
        receiver.setsockopt(SOL_UDP, UDP_NO_CHECK6_RX, 1)  # IPv6 needs it to take them
    sock = socks.sender_socket(family)
    _no_checksum(sock)
    sender = socks.batch(sendbatch, sock)
    assert sender.gso_enabled is True  # the probe cannot know: the first run finds out
    addr = receiver.getsockname()[:2]
    items = [(x, addr) for x in [b"one", *_datagrams(30, 1200, tag=1), b"tail"]]

    assert sender.send(items) == len(items)
    assert sender.gso_enabled is False
    assert sender.gso_failures == 1
    assert (sender.gso_sends, sender.gso_segments) == (0, 0)
    assert sender.errors == 0 and sender.blocked is False
    assert recv_n(receiver, len(items)) == [x for x, _ in items]

    more = [(x, addr) for x in _datagrams(10, 1200, tag=2)]
    calls = sender.syscalls
    assert sender.send(more) == len(more)
    assert sender.gso_failures == 1  # not tried again
    if not _compiled(sendbatch):
        assert sender.syscalls - calls == 10
    assert recv_n(receiver, len(more)) == [x for x, _ in more]
    assert until_sentinel(sock, receiver) == []


@needs_gso
@pytest.mark.usefixtures("ipv6")
def test_segment_beyond_the_route_mtu_goes_plain_and_lowers_the_ceiling(sendbatch, socks):
    """IPV6_MTU caps the sender's path MTU at 1,280: a 1,400-byte segment does not fit
    (EMSGSIZE), the same datagrams sent alone are fragmented by IPv6 and arrive; smaller
    segments keep going with offload."""
    receiver = socks.receiver(socket.AF_INET6)
    sock = socks.sender_socket(socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU, 1280)
    sender = socks.batch(sendbatch, sock)
    addr = receiver.getsockname()[:2]
    big = [(x, addr) for x in _datagrams(10, 1400, tag=1)]
    small = [(x, addr) for x in _datagrams(8, 1200, tag=2)]
    items = big + small

    assert sender.send(items) == len(items)
    assert sender.errors == 0 and sender.blocked is False
    assert sender.gso_failures == 1
    assert sender.gso_enabled is True
    assert sender.gso_max_segment == 1399
    assert (sender.gso_sends, sender.gso_segments) == (1, 8)
    assert recv_n(receiver, len(items)) == [x for x, _ in items]

    assert sender.send(big) == len(big)  # above the ceiling: plain at once, no new refusal
    assert sender.gso_failures == 1 and (sender.gso_sends, sender.gso_segments) == (1, 8)
    assert recv_n(receiver, len(big)) == [x for x, _ in big]
    assert until_sentinel(sock, receiver) == []


@needs_gso
@pytest.mark.usefixtures("ipv6")
def test_runs_to_v4_mapped_addresses(sendbatch, socks):
    """A dual-stack socket sends IPv4 destinations through the IPv4 path, offload included;
    ``127.0.0.1`` and ``::ffff:127.0.0.1`` are one address, so they make one run."""
    try:
        sock = socks.udp(socket.AF_INET6, ("::", 0), v6only=0, blocking=False)
    except OSError as exc:
        pytest.skip(f"no dual-stack AF_INET6 socket: {exc}")
    if sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0:
        pytest.skip("IPV6_V6ONLY could not be disabled")
    receiver = socks.receiver(socket.AF_INET)
    port = receiver.getsockname()[1]
    sender = socks.batch(sendbatch, sock)
    data = _datagrams(6, 1000)
    items = [(x, (V4 if k % 2 else "::ffff:127.0.0.1", port)) for k, x in enumerate(data)]

    assert sender.send(items) == len(items)
    assert sender.errors == 0
    assert (sender.gso_sends, sender.gso_segments) == (1, 6)
    assert recv_n(receiver, 6) == data


@needs_gso
def test_full_buffer_stops_at_a_run_start(sendbatch, socks):
    """A refused run (socket buffer full) is not half sent: ``send`` returns its first index,
    and sending on from there delivers every datagram once, in order."""
    receiver = socks.receiver(rcvbuf=1 << 22)
    sock = socks.sender_socket(sndbuf=4096)
    sender = socks.batch(sendbatch, sock)
    addr = receiver.getsockname()
    items = [(x, addr) for x in _datagrams(400, 1200)]
    runs = gso_runs(items)
    starts = {sum(runs[:k]) for k in range(len(runs) + 1)}
    got: list[bytes] = []
    i = 0
    for _ in range(10_000):
        i = sender.send(items, i)
        assert i in starts
        if i == len(items):
            break
        assert sender.blocked is True
        while True:  # drain what arrived, so that the next call can go on
            try:
                got.append(receiver.recv(70_000, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
    got += until_sentinel(sock, receiver)
    assert got == [x for x, _ in items]


# ------------------------------------------------------------------------- 10. twins, random


def _random_batch(rng: random.Random, addrs: list[tuple]) -> list:
    """Up to ~400 datagrams and ~1 MB (well within the receivers' buffers): runs of random
    sizes (empty, tiny, the default 1,200, too large to pair) to random receivers, some
    ended by a shorter one."""
    sizes = [0, 1, 2, 100, 1199, 1200, 1200, 1200, 8000, 30_000, 40_000]
    items: list = []
    length, total = rng.randrange(1, 400), 0
    while len(items) < length and total < 1_000_000:
        to = rng.choice(addrs)
        size = rng.choice(sizes)
        for x in _datagrams(rng.choice([1, 1, 2, 5, 60, 70]), size, tag=len(items)):
            items.append((x, to))
            total += size
        if rng.random() < 0.3:
            items.append((b"s" * rng.randrange(1, size + 2), to))
    return items


@needs_gso
def test_twins_agree_on_random_runs(socks):
    """Compiled and pure twins, with and without offload, deliver the same datagrams for
    random batches of runs, cut them into the same messages, and lose nothing."""
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    receivers = [socks.receiver(rcvbuf=1 << 23) for _ in range(2)]
    addrs = [r.getsockname() for r in receivers]
    mods = [_load("_sendbatch", "c"), _load("_sendbatch", "py")]

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
    @hypothesis.given(st.integers(0, 2**32 - 1))
    def check(seed):
        items = _random_batch(random.Random(seed), addrs)
        results = []
        for mod in mods:
            for gso in (True, False):
                sock = socks.sender_socket()
                sender = socks.batch(mod, sock, gso=gso)
                assert sender.send(items) == len(items)
                assert sender.errors == 0 and sender.gso_failures == 0
                got = [until_sentinel(sock, r) for r in receivers]
                results.append((got, sender.gso_sends, sender.gso_segments))
                sock.close()
        expected = [[x for x, to in items if to == a] for a in addrs]
        runs = [r for r in gso_runs(items) if r > 1]
        assert results[0] == (expected, len(runs), sum(runs))  # c, offload
        assert results[1] == (expected, 0, 0)  # c, plain
        assert results[2] == results[0]  # py, offload
        assert results[3] == results[1]  # py, plain

    check()
