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
        return self.udp(family, (V4 if family == socket.AF_INET else V6, 0), rcvbuf=1 << 20, **kw)

    def sender_socket(self, family: int = socket.AF_INET, **kw) -> socket.socket:
        """A non-blocking UDP socket bound to loopback (as the endpoint's transport socket)."""
        kw.setdefault("bind", (V4 if family == socket.AF_INET else V6, 0))
        return self.udp(family, blocking=False, **kw)

    def batch(self, mod, sock: socket.socket):
        sender = mod.BatchSender(sock.fileno(), sock.family)
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
        assert sender.syscalls == 5

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
        assert sender.syscalls == where

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
    items = [(b"m-%03d" % k, (V4, p4)) for k in range(150)]
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
