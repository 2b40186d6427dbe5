from __future__ import annotations

import pytest

from cowork.host.egress.floor import (
    FloorViolation,
    address_allowed,
    is_ip_literal,
    normalize_host,
)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "[::1]",
        "::1",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.0.0.1",
        "1.2.3.4.",
    ],
)
def test_ip_literals_in_every_form(host: str) -> None:
    assert is_ip_literal(host)
    with pytest.raises(FloorViolation):
        normalize_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "api.example.com.",
        "a\x00.example.com",
        "a\r\n.example.com",
        "a b.example.com",
        "\u0430pi.example.com",
        "-bad.example.com",
        "bad-.example.com",
        "a..example.com",
        "localhost",
        "",
        "x" * 300,
        "*.example.com",
        "a_b.example.com",
    ],
)
def test_malformed_hosts(host: str) -> None:
    with pytest.raises(FloorViolation):
        normalize_host(host)


def test_normalises_case() -> None:
    assert normalize_host("API.Example.COM") == "api.example.com"
    assert normalize_host("xn--80ak6aa92e.com") == "xn--80ak6aa92e.com"
    assert not is_ip_literal("1password.com")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.0.0.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "169.254.1.1",
        "224.0.0.1",
        "0.0.0.0",  # noqa: S104 - an address under test, not a bind
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "64:ff9b::7f00:1",
        "fd00:ec2::254",
        "168.63.129.16",
        "100.100.100.200",
        "not an address",
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert not address_allowed(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses(address: str) -> None:
    assert address_allowed(address)


# Every form of local, private or special-purpose space, one row each (issue 10: floor gaps).
FLOOR_TABLE = [
    # IPv4-mapped / compatible / translated forms of loopback and private space
    ("::ffff:127.0.0.1", "mapped loopback"),
    ("::ffff:7f00:1", "mapped loopback, hex"),
    ("0:0:0:0:0:ffff:7f00:1", "mapped loopback, long form"),
    ("::ffff:169.254.169.254", "mapped metadata"),
    ("::ffff:100.64.0.1", "mapped CGNAT"),
    ("::ffff:0:127.0.0.1", "SIIT translated loopback"),
    ("::ffff:0:10.0.0.1", "SIIT translated private"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::10.0.0.1", "IPv4-compatible private"),
    ("::8.8.8.8", "IPv4-compatible public (deprecated form)"),
    # 0.0.0.0/8
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test
    ("0.1.2.3", "this network"),
    # CGNAT
    ("100.64.0.1", "CGNAT low"),
    ("100.127.255.254", "CGNAT high"),
    # multicast
    ("224.0.0.251", "v4 multicast mDNS"),
    ("239.255.255.250", "v4 multicast SSDP"),
    ("ff02::fb", "v6 link multicast"),
    ("ff0e::1", "v6 global-scope multicast"),
    # link-local
    ("169.254.0.1", "v4 link-local"),
    ("fe80::1", "v6 link-local"),
    ("fe80::1%eth0", "v6 link-local with zone"),
    ("febf::1", "v6 link-local top"),
    # NAT64
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b::a00:1", "NAT64 private"),
    ("64:ff9b::c0a8:101", "NAT64 private 192.168"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("64:ff9b:1:ffff::1", "local-use NAT64 anywhere"),
    # benchmarking
    ("198.18.0.1", "benchmark low"),
    ("198.19.255.254", "benchmark high"),
    # documentation
    ("192.0.2.10", "TEST-NET-1"),
    ("198.51.100.10", "TEST-NET-2"),
    ("203.0.113.10", "TEST-NET-3"),
    ("2001:db8::1", "v6 documentation"),
    ("2001:db8:ffff::1", "v6 documentation high"),
    # 6to4 / Teredo embedding private v4
    ("2002:7f00:1::1", "6to4 loopback"),
    ("2002:a00:1::1", "6to4 private"),
    ("2002:a9fe:a9fe::1", "6to4 metadata"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:0:a00:1::1", "Teredo server private"),
    # site-local, unique-local
    ("fec0::1", "site-local"),
    ("feff::1", "site-local top"),
    ("fc00::1", "unique-local fc"),
    ("fd12:3456:789a::1", "unique-local fd"),
    # the rest of special space
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("100::1", "discard-only"),
    ("::", "v6 unspecified"),
    ("::1", "v6 loopback"),
]


@pytest.mark.parametrize(("address", "what"), FLOOR_TABLE, ids=[w for _, w in FLOOR_TABLE])
def test_floor_table(address: str, what: str) -> None:
    assert not address_allowed(address), what


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_including_embedded_public(address: str) -> None:
    assert address_allowed(address)
