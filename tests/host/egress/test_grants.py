from __future__ import annotations

import pytest
from pydantic import ValidationError

from cowork.host.egress.grants import (
    Grant,
    grant_allows,
    host_matches,
    path_matches,
    path_problem,
)


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("api.example.com", "api.example.com", True),
        ("api.example.com", "api.example.com.evil.test", False),
        ("api.example.com", "evil-api.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "aexample.com", False),
        ("*.example.com", "evil-example.com", False),
    ],
)
def test_host_matches(pattern: str, host: str, ok: bool) -> None:
    assert host_matches(pattern, host) is ok


@pytest.mark.parametrize(
    ("pattern", "path", "ok"),
    [
        ("/v1/messages", "/v1/messages", True),
        ("/v1/messages", "/v1/messages/", False),
        ("/v1/messages", "/v1/files", False),
        ("/v1/messages/*", "/v1/messages/abc", True),
        ("/v1/messages/*", "/v1/messages/a/b", False),
        ("/v1/**", "/v1/a/b/c", True),
        ("/v1/**", "/v1/../etc", False),
        ("/v1/**", "/v1/%2e%2e/x", False),
        ("/v1/**", "/v1/a%2Fb", False),
        ("/v1/**", "/v1//x", False),
        ("/v1/**", "/v1/a\\b", False),
        ("/**", "/v1/./x", False),
    ],
)
def test_path_matches(pattern: str, path: str, ok: bool) -> None:
    assert path_matches(pattern, path) is ok


def test_grant_allows_method_and_path() -> None:
    g = Grant(id="g", host="api.example.com", methods=("POST",), paths=("/v1/messages",))
    assert grant_allows(g, "POST", "/v1/messages")
    assert not grant_allows(g, "POST", "/v1/files")
    assert not grant_allows(g, "GET", "/v1/messages")


@pytest.mark.parametrize("host", ["*", "*.com", "127.0.0.1", "0x7f.1", "a.b.", "*.*.com"])
def test_bad_grant_hosts(host: str) -> None:
    with pytest.raises(ValidationError):
        Grant(id="g", host=host)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/..;/x",
        "/v1/x;a=b",
        "/v1/%252e",
        "/v1/%c0%ae",
        "/v1/%e0%80%af",
        "/v1/%2f",
        "/v1/%2F",
        "/v1/%5c",
        "/v1/%2e%2e",
        "/v1/%00",
        "/v1/%0a",
        "/v1/%20x",
        "/v1/%61",
        "/v1/%7e",
        "/v1/%ef%bc%8f",
        "/v1/%e2%88%95",
        "/v1/%ef%bc%8e%ef%bc%8e",
        "/v1/%ed%a0%80",
        "/v1/%e2%80%8b",
        "/v1/%c2%a0",
        "/v1/%ef%ac%81",  # ligature: NFKC changes it
        "/v1/x.",
        "/v1/...",
        "/v1/%",
        "/v1/%g1",
        "/v1/#x",
        "/v1/a b",
        "/v1/\u00e9",
        "v1/x",
        "/v1/" + "a" * 9000,
    ],
)
def test_non_canonical_paths(path: str) -> None:
    assert path_problem(path) is not None
    assert not path_matches("/**", path)


@pytest.mark.parametrize(
    "path",
    ["/", "/v1/messages", "/v1/a-b_c.d~e", "/v1/%E2%82%AC", "/v1/%e2%82%ac", "/v1/a:b@c", "/a+b"],
)
def test_canonical_paths(path: str) -> None:
    assert path_problem(path) is None


def test_credential_grant_limits() -> None:
    with pytest.raises(ValidationError, match="exact host"):
        Grant(id="g", host="*.example.com", credential="c")
    with pytest.raises(ValidationError, match="in clear"):
        Grant(id="g", scheme="http", host="a.example.com", credential="c")
    Grant(id="g", host="*.example.com")  # no credential: a wildcard is fine
    Grant(id="g", scheme="http", host="a.example.com")


def test_effective_body_policy_and_header_patterns() -> None:
    model = Grant(id="m", host="api.anthropic.com", credential="c")
    assert model.effective_body_policy == "anthropic-messages"
    assert "anthropic-version" in model.forwarded_header_patterns
    other = Grant(id="o", host="api.example.com", credential="c", forward_headers=("X-A-*",))
    assert other.effective_body_policy == "none"
    assert "x-a-*" in other.forwarded_header_patterns
    assert "anthropic-version" not in other.forwarded_header_patterns
