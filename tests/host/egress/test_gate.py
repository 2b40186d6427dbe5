from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from cowork.host.egress.gate import (
    RequestFacts,
    decide_connect,
    decide_request,
    foreign_credentials,
    redact_path,
)
from cowork.host.egress.grants import Grant

GRANTS = [
    Grant(
        id="msgs",
        host="api.example.com",
        methods=("POST",),
        paths=("/v1/messages",),
        credential="anthropic",
        inject_header="x-api-key",
        inject_format="{credential}",
    ),
    Grant(id="ws", host="ws.example.com", paths=("/socket",), websocket=True),
    Grant(id="alt", host="alt.example.com", port=8443),
]


def facts(**kw: object) -> RequestFacts:
    base: dict[str, object] = {
        "scheme": "https",
        "host": "api.example.com",
        "port": 443,
        "method": "POST",
        "path": "/v1/messages",
        "headers": (("host", "api.example.com"),),
        "host_header": "api.example.com",
        "tunnel": ("api.example.com", 443),
        "sni": "api.example.com",
    }
    base.update(kw)
    return RequestFacts(**base)  # type: ignore[arg-type]


def test_granted_request() -> None:
    d = decide_request(facts(), GRANTS)
    assert d.allowed and d.grant_id == "msgs"


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"method": "GET"}, "method or path"),
        ({"path": "/v1/files"}, "method or path"),
        ({"sni": "evil.test"}, "SNI"),
        ({"sni": None}, "SNI"),
        ({"host": "evil.test", "host_header": "evil.test"}, "CONNECT target"),
        ({"host_header": "evil.test"}, "Host header"),
        ({"host_header": None}, "missing Host"),
        ({"tunnel": None}, "HTTPS must use CONNECT"),
        ({"headers": (("x-api-key", "sk-attacker"),)}, "did not issue"),
        ({"headers": (("cookie", "s=1"),)}, "did not issue"),
        ({"headers": (("x-custom-token", "abc"),)}, "did not issue"),
        ({"path": "/v1/messages?access_token=abc"}, "did not issue"),
        ({"headers": (("upgrade", "h2c"), ("connection", "Upgrade"))}, "upgrade refused"),
        ({"headers": (("upgrade", "websocket"),)}, "websocket not granted"),
        ({"host": "127.0.0.1", "host_header": "127.0.0.1"}, "IP address"),
    ],
)
def test_denials(kw: dict[str, object], reason: str) -> None:
    d = decide_request(facts(**kw), GRANTS)
    assert not d.allowed
    assert reason in d.reason


def test_placeholders_are_not_foreign() -> None:
    headers = (("authorization", "Bearer cowork-managed"), ("x-api-key", "cowork-managed"))
    assert foreign_credentials(headers, "key=cowork-managed") == []
    assert decide_request(facts(headers=headers), GRANTS).allowed


def test_websocket_needs_grant_and_setting() -> None:
    ws = facts(
        host="ws.example.com",
        host_header="ws.example.com",
        tunnel=("ws.example.com", 443),
        sni="ws.example.com",
        method="GET",
        path="/socket",
        headers=(("upgrade", "websocket"), ("sec-websocket-key", "abc")),
    )
    assert not decide_request(ws, GRANTS).allowed
    assert decide_request(
        RequestFacts(**{**ws.__dict__, "websockets_enabled": True}), GRANTS
    ).allowed


def test_connect_ports() -> None:
    assert decide_connect("api.example.com", 443, GRANTS).allowed
    assert not decide_connect("api.example.com", 22, GRANTS).allowed
    assert decide_connect("alt.example.com", 8443, GRANTS).allowed
    assert not decide_connect("alt.example.com", 443, GRANTS).allowed
    assert not decide_connect("evil.test", 443, GRANTS).allowed
    assert not decide_connect("0x7f.1", 443, GRANTS).allowed


class Exploding(Sequence[Grant]):
    def __getitem__(self, i: int) -> Grant:  # type: ignore[override]
        raise RuntimeError("injected fault")

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Grant]:
        raise RuntimeError("injected fault")


def test_any_exception_in_the_gate_denies() -> None:
    d = decide_request(facts(), Exploding())
    assert not d.allowed and "internal error" in d.reason
    d = decide_connect("api.example.com", 443, Exploding())
    assert not d.allowed and "internal error" in d.reason


def test_redact_path_keeps_names_only() -> None:
    assert redact_path("/a?key=SECRET&x=1") == "/a?key=&x="
    assert redact_path("/a") == "/a"


def test_explain_url() -> None:
    from cowork.host.egress.gate import explain_url

    assert explain_url("https://api.example.com/v1/messages", "POST", GRANTS).grant_id == "msgs"
    d = explain_url("https://api.example.com/v1/files", "POST", GRANTS)
    assert not d.allowed and "method or path" in d.reason
    assert not explain_url("https://[::1]/", "GET", GRANTS).allowed
    assert not explain_url("ftp://api.example.com/", "GET", GRANTS).allowed
    assert explain_url("https://alt.example.com:8443/x", "GET", GRANTS).allowed


def test_pipeline_is_a_sequence_of_small_checks() -> None:
    from cowork.host.egress.gate import REQUEST_CHECKS

    names = [c.__name__ for c in REQUEST_CHECKS]
    assert names[:4] == ["check_host", "check_one_name", "check_path", "check_grant"]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"path": "/v1/messages;x"}, "canonical"),
        ({"path": "/v1/%6dessages"}, "canonical"),
        ({"headers": (("x-http-method-override", "DELETE"),)}, "method override"),
        ({"path": "/v1/messages?_method=DELETE"}, "method override"),
        ({"path": "/v1/messages?x=1;key=abc"}, "did not issue"),
        ({"path": "/v1/messages?k%00=abc"}, "did not issue"),
        (
            {
                "body": b'{"api_key": "abc"}',
                "headers": (("content-type", "application/json"),),
            },
            "body carries a credential",
        ),
        (
            {"body": b"\x00", "headers": (("content-type", "application/zip"),)},
            "body_types",
        ),
        ({"body_undecodable": True}, "content encoding"),
        ({"trailers": (("x-anything", "1"),)}, "trailers are not accepted"),
        (
            {
                "trailers": (("authorization", "Bearer x"),),
                "host": "alt.example.com",
                "port": 8443,
                "host_header": "alt.example.com:8443",
                "tunnel": ("alt.example.com", 8443),
                "sni": "alt.example.com",
                "method": "GET",
                "path": "/",
            },
            "trailer carries a credential",
        ),
    ],
)
def test_second_round_denials(kw: dict[str, object], reason: str) -> None:
    d = decide_request(facts(**kw), GRANTS)
    assert not d.allowed
    assert reason in d.reason


def test_headers_to_forward() -> None:
    from cowork.host.egress.gate import headers_to_forward

    sent = [
        ("Host", "x"),
        ("Signature", "s"),
        ("X-Api-Key", "k"),
        ("Content-Type", "application/json"),
        ("X-Custom", "c"),
    ]
    bound = headers_to_forward(GRANTS[0], sent)
    assert [k for k, _ in bound] == ["Host", "Content-Type"]
    free = headers_to_forward(GRANTS[2], sent)
    assert [k for k, _ in free] == ["Host", "Signature", "Content-Type", "X-Custom"]
