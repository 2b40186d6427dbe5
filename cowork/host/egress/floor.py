"""The built-in floor of the egress gateway: checks no policy can loosen.

Pure functions, no I/O. The gateway applies them before any grant is consulted:

- a destination host MUST be a plain ASCII DNS name: no IP literal in any form (dotted,
  decimal ``2130706433``, hex/octal ``0x7f.1``, bracketed IPv6, IPv4-mapped IPv6), no trailing
  dot, no control characters, no non-ASCII look-alikes (IDNs travel in their ``xn--`` form);
- an address the gateway is about to connect to MUST be globally routable unicast: not
  loopback, private, shared (CGNAT), link-local, multicast, unspecified, reserved, documentation
  or a cloud metadata address, including when embedded in IPv6 (mapped, 6to4, Teredo, NAT64).

Nothing here reads configuration or the environment. Tests that need a loopback upstream
inject their own address check through the gateway's Python API.
"""

from __future__ import annotations

import ipaddress
import re

MAX_HOST_LENGTH = 253
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC_LABEL_RE = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")

#: Well-known instance metadata and platform service addresses (some are public addresses).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "168.63.129.16",  # Azure WireServer
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IPv6
    )
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")

#: Networks never connected to, whatever the standard library thinks of them this year
#: (its ``is_global`` changed between Python versions; site-local ``fec0::/10`` is "global" in
#: 3.11). Checked in addition to the ``ipaddress`` flags.
DENIED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (CGNAT)
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/96",  # unspecified, loopback and IPv4-compatible (deprecated) addresses
        "::ffff:0:0/96",  # IPv4-mapped: checked through the embedded address as well
        "64:ff9b:1::/48",  # local-use NAT64: the embedded address sits anywhere
        "100::/64",  # discard-only
        "2001::/32",  # Teredo (the embedded client address is obfuscated)
        "2001:db8::/32",  # documentation
        "2001:10::/28",  # ORCHID
        "2001:20::/28",  # ORCHIDv2
        "3fff::/20",  # documentation (2024)
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)


class FloorViolation(ValueError):
    """A destination the floor refuses. ``str()`` is a reason safe to show and log."""


def is_ip_literal(host: str) -> bool:
    """True for any spelling a resolver or ``inet_aton`` would treat as an address."""
    h = host.strip().lower()
    if h.startswith("[") or h.endswith("]"):
        return True
    h = h.rstrip(".")
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        pass
    if ":" in h:  # anything with a colon left in a host is IPv6-ish or malformed
        return True
    labels = h.split(".")
    # inet_aton accepts 1-4 numeric parts, each decimal, octal (leading 0) or hex (0x).
    return bool(labels) and all(_NUMERIC_LABEL_RE.match(label) for label in labels if label)


def normalize_host(raw: str) -> str:
    """The lower-case form of a destination host, or :class:`FloorViolation` saying why not."""
    if not isinstance(raw, str) or not raw:
        raise FloorViolation("empty host")
    if len(raw) > MAX_HOST_LENGTH:
        raise FloorViolation("host name too long")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        raise FloorViolation("control character or space in host")
    if not raw.isascii():
        raise FloorViolation("non-ASCII host (IDNs must use their xn-- form)")
    host = raw.lower()
    if is_ip_literal(host):
        raise FloorViolation("IP address literals are never allowed; use a DNS name")
    if host.endswith("."):
        raise FloorViolation("host with a trailing dot")
    for label in host.split("."):
        if not _LABEL_RE.match(label):
            raise FloorViolation("malformed host name")
    if "." not in host:
        raise FloorViolation("single-label host names are never allowed")
    return host


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _SIIT:  # ::ffff:0:a.b.c.d, the SIIT "translated" form
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_allowed(address: str) -> bool:
    """True only for a globally routable unicast address that is not a metadata service.

    Anything unparsable is refused. This is the default address check of the gateway.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and ip in _NAT64:
            # The well-known NAT64 prefix is how an IPv6-only host reaches the IPv4 internet;
            # the standard library calls the prefix itself non-global, so judge the inner one.
            candidates = [inner]
        elif inner is not None:
            candidates.append(inner)
    for c in candidates:
        if c in METADATA_ADDRESSES:
            return False
        if any(c.version == n.version and c in n for n in DENIED_NETWORKS):
            return False
        if not c.is_global or c.is_multicast or c.is_unspecified or c.is_reserved:
            return False
        if c.is_loopback or c.is_link_local or c.is_private:
            return False
    return True
