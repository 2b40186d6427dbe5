from __future__ import annotations

import pytest
from pydantic import ValidationError

from cowork.host.egress.grants import Grant, grant_allows, host_matches, path_matches


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
