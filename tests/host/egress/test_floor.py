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
