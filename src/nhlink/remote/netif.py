"""Which network interface a connection uses (PROTOCOL.md §6.9), from the socket's local
address: the IPv4 address of each interface (``SIOCGIFADDR``) or ``/proc/net/if_inet6``.
Linux only; elsewhere (or when nothing matches) the answer is None."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct

__all__ = ["interface_for_address"]

_SIOCGIFADDR = 0x8915


def _ipv4_of(sock: socket.socket, name: str) -> str | None:
    request = struct.pack("256s", name.encode()[:15])
    try:
        reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
    except OSError:  # no IPv4 address on this interface
        return None
    return socket.inet_ntoa(reply[20:24])


def _ipv6_interfaces(path: str = "/proc/net/if_inet6") -> dict[str, str]:
    found: dict[str, str] = {}
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 6 and len(fields[0]) == 32:
                address = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
                found.setdefault(address, fields[5])
    return found


def interface_for_address(address: str) -> str | None:
    """The name of the interface holding local ``address`` (``"eth0"``, ``"lo"``...), or None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address):
        return _ipv6_interfaces().get(str(ip))
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            if _ipv4_of(sock, name) == str(ip):
                return name
    return None
