from __future__ import annotations

import json

import pytest

from cowork.host.egress import bodies


def test_query_pairs_split_on_semicolon_and_decode_names_repeatedly() -> None:
    assert bodies.query_pairs("a=1;b=2&c") == [("a", "1"), ("b", "2"), ("c", "")]
    assert bodies.query_pairs("%256Bey=x") == [("key", "x")]
    assert bodies.query_pairs("api%5Fkey=x") == [("api_key", "x")]
    with pytest.raises(ValueError, match="control character"):
        bodies.query_pairs("key%00=x")
    with pytest.raises(ValueError, match="more than three"):
        bodies.query_pairs("%2525252541=x")


def test_method_overrides() -> None:
    found = bodies.method_overrides(
        [("X-HTTP-Method-Override", "delete"), ("accept", "x")],
        [("_method", "put"), ("method", "eth_call"), ("x", "DELETE")],
    )
    assert found == [("x-http-method-override", "DELETE"), ("?_method", "PUT")]


@pytest.mark.parametrize(
    ("mtype", "body", "names"),
    [
        ("application/json", {"api_key": "a"}, ["body:api_key"]),
        ("application/json", {"clientSecret": "a"}, ["body:clientSecret"]),
        ("application/json", {"outer": {"Access-Token": "a"}}, ["body:Access-Token"]),
        ("application/json", {"q": "ghp_" + "a" * 36}, ["body:q"]),
        ("application/json", {"api_key": "cowork-managed"}, []),
        ("application/json", {"max_tokens": 5, "messages": [{"token": "x"}]}, []),
        ("application/json", {"model": "m", "system": "be brief"}, []),
    ],
)
def test_body_credentials_json(mtype: str, body: object, names: list[str]) -> None:
    raw = json.dumps(body).encode()
    fields, parsed = bodies.body_fields(raw, mtype)
    assert bodies.body_credentials(raw, fields, parsed, "cowork-managed") == names


def test_body_credentials_other_types() -> None:
    raw = b"a=1&client_secret=s"
    fields, parsed = bodies.body_fields(raw, "application/x-www-form-urlencoded")
    assert bodies.body_credentials(raw, fields, parsed, "p") == ["body:client_secret"]
    raw = b"AKIAABCDEFGHIJKLMNOP here"
    fields, parsed = bodies.body_fields(raw, "text/plain")
    assert bodies.body_credentials(raw, fields, parsed, "p") == ["body: a token-shaped string"]
    raw = b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\nx\r\n--b--'
    fields, parsed = bodies.body_fields(raw, "multipart/form-data")
    assert bodies.body_credentials(raw, fields, parsed, "p") == ["body:password"]


def test_json_ambiguity_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        bodies.parse_json(b'{"a": 1, "a": 2}')
    with pytest.raises(ValueError, match="deeply"):
        bodies.parse_json(b"[" * 100 + b"]" * 100)


def test_types() -> None:
    assert bodies.type_allowed("application/json", ["application/json"])
    assert bodies.type_allowed("text/csv", ["text/*"])
    assert bodies.type_allowed("image/png", ["*/*"])
    assert not bodies.type_allowed("application/octet-stream", ["application/json"])
    assert bodies.media_type("Application/JSON; charset=utf-8") == "application/json"


BASE = {"model": "m", "max_tokens": 1, "messages": []}


@pytest.mark.parametrize(
    ("body", "allow", "ok"),
    [
        (BASE, (), True),
        ({**BASE, "tools": [{"name": "t", "input_schema": {}}]}, (), True),
        ({**BASE, "tools": [{"type": "custom", "name": "t"}]}, (), True),
        ({**BASE, "tools": [{"type": "text_editor_20250728"}]}, (), True),
        ({**BASE, "tools": [{"type": "computer_20250124"}]}, (), True),
        ({**BASE, "tools": [{"type": "web_fetch_20250910"}]}, (), False),
        ({**BASE, "tools": [{"type": "web_fetch_20250910"}]}, ("web_fetch",), True),
        ({**BASE, "tools": [{"type": "web_search_20250305"}]}, ("web_fetch",), False),
        ({**BASE, "tools": [{"type": "code_execution_20250825"}]}, (), False),
        ({**BASE, "tools": [{"type": 7}]}, (), False),
        ({**BASE, "tools": {"type": "web_fetch"}}, (), False),
        ({**BASE, "mcp_servers": [{"url": "https://x"}]}, (), False),
        ({**BASE, "mcp_servers": [{"url": "https://x"}]}, ("mcp_servers",), True),
        ({**BASE, "mcp_servers": []}, (), True),
        ({**BASE, "container": "c"}, (), False),
        ({"requests": [{"params": {**BASE, "tools": [{"type": "web_fetch_1"}]}}]}, (), False),
        ({"requests": [{"params": "x"}]}, (), False),
        ([BASE], (), False),
    ],
)
def test_anthropic_messages_policy(body: object, allow: tuple[str, ...], ok: bool) -> None:
    problem = bodies.anthropic_messages_problem(json.dumps(body).encode(), allow)
    assert (problem is None) is ok, problem


def test_anthropic_messages_policy_refuses_unparsable() -> None:
    assert bodies.anthropic_messages_problem(b"not json", ()) is not None
    assert bodies.anthropic_messages_problem(b"", ()) is None
