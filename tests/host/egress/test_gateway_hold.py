"""The hold after outside content, in the real gateway (mitmproxy) with a real upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cowork.host.egress.taint import OutboundHold
from cowork.host.events import Kind

from .conftest import Env
from .test_gateway import api, client, curl


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


def _marked(env: Env) -> list[dict[str, object]]:
    return [dict(e.fields) for e in env.recorder.events if e.kind is Kind.SESSION_MARKED]


def test_a_response_read_during_a_task_marks_and_the_next_send_is_held(
    env: Env, hold: OutboundHold
) -> None:
    """``curl`` of a page, then a POST: the gateway itself saw the page go to the guest."""
    asked: list[tuple[str, str]] = []
    with hold.asking(lambda q, r: asked.append((q, r)) or False):
        page = curl(env, api(env, "/echo/reflect/clean", "echo.allowed.test"), "-i")
        sent = curl(env, api(env, "/echo/reflect/clean", "echo.allowed.test"), "-d", "figures")
    assert page.returncode == 0 and "200" in page.stdout
    assert "403" in sent.stdout or "declined" in sent.stdout
    assert [s.method for s in env.upstream.requests] == ["GET"]
    (question, reason) = asked[0]
    assert "echo.allowed.test" in question and "from echo.allowed.test" in reason
    (mark,) = _marked(env)
    assert mark["origin"] == "network" and mark["source"] == "echo.allowed.test"
    assert "held and asked about first" in str(mark["message"])
    assert [e["allowed"] for e in _held(env)] == [False]


def test_the_response_to_an_allowed_send_marks_too(env: Env, hold: OutboundHold) -> None:
    asked: list[str] = []
    with hold.asking(lambda q, r: asked.append(q) or False), client(env) as c:
        first = c.post(api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"one")
        second = c.post(api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"two")
    assert first.status_code == 200 and second.status_code == 403
    assert [s.body for s in env.upstream.requests] == [b"one"]
    assert len(asked) == 1


def test_without_an_agent_task_responses_do_not_mark(env: Env, hold: OutboundHold) -> None:
    """``cowork exec`` / ``cowork shell`` in a session where no task ran: never held."""
    with client(env) as c:
        got = c.get(api(env, "/echo/reflect/clean", "echo.allowed.test"))
        sent = c.post(api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"mine")
    assert got.status_code == 200 and sent.status_code == 200
    assert [s.method for s in env.upstream.requests] == ["GET", "POST"]
    assert not hold.marked and _marked(env) == [] and _held(env) == []


def test_refusals_written_by_the_gateway_do_not_mark(env: Env, hold: OutboundHold) -> None:
    with hold.asking(lambda q, r: False), client(env) as c:
        refused = c.get(api(env, "/not-granted", "echo.allowed.test"))
    assert refused.status_code == 403 and "denied" in refused.text
    assert env.upstream.requests == [] and not hold.marked


class _BrokenHold(OutboundHold):
    def mark_delivered(self, source: str) -> bool | None:
        raise RuntimeError("the audit log is gone")


def test_a_response_that_cannot_be_recorded_never_reaches_the_guest(env: Env) -> None:
    previous = env.gateway.outbound
    env.gateway.outbound = broken = _BrokenHold()
    try:
        with broken.asking(lambda q, r: True), client(env) as c:
            r = c.get(api(env, "/echo/reflect/clean", "echo.allowed.test"))
    finally:
        env.gateway.outbound = previous
    assert r.status_code == 502 and "recorded as outside content" in r.text
    assert [s.method for s in env.upstream.requests] == ["GET"]


def test_after_outside_content_a_get_with_a_body_is_held(env: Env, hold: OutboundHold) -> None:
    hold.mark("web", "page.test")
    asked: list[str] = []
    with hold.asking(lambda q, r: asked.append(q) or False), client(env) as c:
        r = c.request(
            "GET", api(env, "/echo/reflect/clean", "echo.allowed.test"), content=b"figures"
        )
    assert r.status_code == 403 and env.upstream.requests == []
    assert len(asked) == 1 and "GET request" in asked[0] and "7 bytes" in asked[0]
