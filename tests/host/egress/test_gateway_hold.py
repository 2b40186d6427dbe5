"""The hold after outside content, in the real gateway (mitmproxy) with a real upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cowork.host.egress.taint import OutboundHold
from cowork.host.events import Kind

from .conftest import Env
from .test_gateway import api, client


@pytest.fixture
def hold(env: Env) -> Iterator[OutboundHold]:
    """A fresh hold for this test only (the gateway is shared by the whole test session)."""
    previous = env.gateway.outbound
    env.gateway.outbound = OutboundHold()
    try:
        yield env.gateway.outbound
    finally:
        env.gateway.outbound = previous


def _held(env: Env) -> list[dict[str, object]]:
    return [dict(e.fields) for e in env.recorder.events if e.kind is Kind.EGRESS_HELD]


def test_before_outside_content_a_post_goes_through_unasked(env: Env, hold: OutboundHold) -> None:
    asked: list[str] = []
    with hold.asking(lambda q, r: asked.append(q) or False), client(env) as c:
        r = c.post(api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"report")
    assert r.status_code == 200
    assert [s.body for s in env.upstream.requests] == [b"report"]
    assert asked == [] and _held(env) == []


def test_after_outside_content_a_post_is_asked_and_a_no_sends_nothing(
    env: Env, hold: OutboundHold
) -> None:
    asked: list[tuple[str, str]] = []
    hold.mark("web", "page.test")
    with hold.asking(lambda q, r: asked.append((q, r)) or False), client(env) as c:
        r = c.post(api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"x" * 3000)
        got = c.get(api(env, "/echo/reflect/clean", "echo.allowed.test"))
    assert r.status_code == 403 and "declined" in r.text
    assert got.status_code == 200  # reading stays unasked
    assert [s.method for s in env.upstream.requests] == ["GET"]
    (question, reason) = asked[0]
    assert "echo.allowed.test" in question and "2.9 KB" in question and "page.test" in reason
    (event,) = _held(env)
    assert event["allowed"] is False and event["asked"] is True and event["bytes_out"] == 3000


def test_after_outside_content_a_yes_sends(env: Env, hold: OutboundHold) -> None:
    hold.mark("mcp", "tracker/search")
    with hold.asking(lambda q, r: True), client(env) as c:
        r = c.post(api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"ok to send")
    assert r.status_code == 200
    assert [s.body for s in env.upstream.requests] == [b"ok to send"]
    assert _held(env)[0]["allowed"] is True


def test_with_nobody_to_ask_it_is_refused(env: Env, hold: OutboundHold) -> None:
    hold.mark("web", "page.test")
    with client(env) as c:
        r = c.post(api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"data")
    assert r.status_code == 403 and "nobody could be asked" in r.text
    assert env.upstream.requests == []


def test_deny_mode_refuses_without_asking(env: Env, hold: OutboundHold) -> None:
    env.gateway.outbound = deny = OutboundHold(mode=lambda: "deny")
    deny.mark("web", "page.test")
    asked: list[str] = []
    with deny.asking(lambda q, r: asked.append(q) or True), client(env) as c:
        r = c.post(api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"data")
    assert r.status_code == 403 and "agent.after_outside_content" in r.text
    assert asked == [] and env.upstream.requests == []
