"""Socket addresses: ``ip:port`` and ``[v6]:port`` strings as the seed protocol writes them,
``(host, port)`` tuples as asyncio uses them, and host names resolved without blocking.

Every malformed address raises :class:`~p2pfast.errors.AddressError` (a ``ValueError``) with
one line saying how to write it, e.g. ``write [::1]:9301`` for ``::1:9301``; the CLI and the
library show the same line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from .errors import AddressError

#: ``(host, port)``: host an IP address in its canonical text form, port 0..65535.
Address = tuple[str, int]


def _port(text: str, whole: str) -> int:
    try:
        port = int(text) if text.isdigit() and len(text) <= 5 else -1
    except ValueError:  # digits int() does not take
        port = -1
    if not 0 <= port <= 65535:
        raise AddressError(f"invalid address {whole!r}: the port must be a number 0..65535")
    return port


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` / ``"[v6]:port"`` into ``(host, port)``; ``host`` may be an IP
    address or a host name (not resolved here). Raise AddressError with a hint if malformed."""
    if not isinstance(text, str):
        raise AddressError(f"invalid address {text!r}: expected a string 'ip:port'")
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise AddressError(f"invalid address {text!r}: expected [ipv6]:port, e.g. [::1]:9301")
        host = text[1:end]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise AddressError(
                f"invalid address {text!r}: {host!r} is not an IPv6 address"
            ) from None
        return host, _port(text[end + 2 :], text)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise AddressError(f"invalid address {text!r}: expected ip:port, e.g. 127.0.0.1:9300")
    if ":" in host:
        # "::1:9301": an IPv6 address needs brackets to tell its colons from the port's.
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
            hint = f"[{host}]:{port_text}"
        except ValueError:
            hint = f"[{text}]:PORT" if _is_ipv6(text) else "[ipv6]:port"
        raise AddressError(
            f"invalid address {text!r}: an IPv6 address with a port is written {hint}"
        )
    return host, _port(port_text, text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _canonical_ip(host: str) -> str | None:
    """The canonical text of an IP address, or None for a host name."""
    try:
        if "%" in host:  # scoped IPv6 (fe80::1%eth0): keep the scope as written
            ipaddress.IPv6Address(host.split("%", 1)[0])
            return host
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def parse_addr(text: str) -> Address:
    """Parse ``"1.2.3.4:80"`` or ``"[::1]:80"`` into ``(host, port)``; host names are refused
    (use :func:`resolve` where one is allowed). Raise AddressError (a ValueError) if invalid."""
    host, port = split_host_port(text)
    ip = _canonical_ip(host)
    if ip is None:
        if _looks_like_ipv4(host):
            raise AddressError(f"invalid address {text!r}: {host!r} is not an IPv4 address")
        raise AddressError(
            f"invalid address {text!r}: {host!r} is a host name, an IP address is needed here "
            f"(e.g. 127.0.0.1:{port} or [::1]:{port})"
        )
    return ip, port


def _looks_like_ipv4(host: str) -> bool:
    return all(part.isdigit() for part in host.split(".")) and "." in host


def check_addr(addr: object) -> tuple[str, int]:
    """Validate an address given as a string or a ``(host, port)`` tuple; return
    ``(host, port)`` with the host an IP (canonical) or a host name still to be resolved."""
    if isinstance(addr, str):
        return split_host_port(addr)
    if isinstance(addr, (tuple, list)):
        if len(addr) < 2:
            raise AddressError(f"invalid address {addr!r}: expected (host, port)")
        host, port = addr[0], addr[1]
        if not isinstance(host, str) or not host:
            raise AddressError(f"invalid address {addr!r}: the host must be a non-empty string")
        if type(port) is not int or not 0 < port <= 65535:
            raise AddressError(f"invalid address {addr!r}: the port must be an int 1..65535")
        ip = _canonical_ip(host)
        return (ip if ip is not None else host), port
    raise AddressError(f"invalid address {addr!r}: expected 'ip:port' or (host, port)")


def is_ipv6(host: str) -> bool:
    """Whether ``host`` (an IP address text) is IPv6."""
    return ":" in host


async def resolve(
    addr: object, family: int, loop: asyncio.AbstractEventLoop | None = None
) -> Address:
    """Validate ``addr`` and resolve a host name in it (``loop.getaddrinfo``, never blocking
    the loop) to an address of ``family`` (``socket.AF_INET`` or ``AF_INET6``).

    Raises AddressError: ``bad_address`` (malformed), ``unresolved`` (the name does not
    resolve), ``family`` (it resolves only to the other IP version).
    """
    host, port = check_addr(addr)
    if port == 0:
        raise AddressError(f"invalid address {addr!r}: port 0 cannot be connected to")
    if _canonical_ip(host) is not None:
        return host, port
    loop = loop or asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressError(f"cannot resolve {host!r}: {exc}", "unresolved") from None
    for fam, _type, _proto, _name, sockaddr in infos:
        if fam == family:
            return str(sockaddr[0]), int(sockaddr[1])
    if infos:
        want = "IPv6" if family == socket.AF_INET6 else "IPv4"
        raise AddressError(
            f"{host!r} resolves only to {'IPv4' if want == 'IPv6' else 'IPv6'} addresses and "
            f"this node uses {want}",
            "family",
        )
    raise AddressError(f"cannot resolve {host!r}: no address", "unresolved")


def format_addr(addr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """Format an asyncio address tuple the way the seed protocol does."""
    host, port = addr[0], addr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
