"""Socket-address strings as the seed protocol writes them: ``ip:port`` and ``[v6]:port``."""

from __future__ import annotations

import ipaddress

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id), as asyncio gives it


def parse_addr(text: str) -> tuple[str, int]:
    """Parse ``"1.2.3.4:80"`` or ``"[::1]:80"`` into ``(host, port)``; raise ValueError if invalid."""
    if not isinstance(text, str):
        raise ValueError("address must be a string")
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise ValueError(f"invalid address {text!r}")
        host, port_text = text[1:end], text[end + 2 :]
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
        host = str(ip) if "%" not in host else host
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {text!r}: expected ip:port")
        host = str(ipaddress.IPv4Address(host))
    if not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"invalid port in {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid port in {text!r}")
    return host, port


def format_addr(addr: Address) -> str:
    """Format an asyncio address tuple the way the seed protocol does."""
    host, port = addr[0], addr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
