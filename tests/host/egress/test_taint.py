"""The hold after outside content: what counts as data going out, and the decision."""

from __future__ import annotations

import pytest

from cowork.host.egress.taint import Outbound, OutboundHold, carries_data_out

POST = Outbound("POST", "api.allowed.test", 443, "/upload", 2048, "api")


@pytest.mark.parametrize(
    ("method", "path", "headers", "out"),
    [
        ("GET", "/page", (), False),
        ("HEAD", "/", (), False),
        ("options", "/", (), False),
        ("POST", "/x", (), True),
        ("PUT", "/x", (), True),
        ("PATCH", "/x", (), True),
        ("DELETE", "/x", (), True),
        ("PROPFIND", "/x", (), True),
        ("GET", "/repo.git/info/refs?service=git-receive-pack", (), True),
        ("GET", "/ws", (("Upgrade", "websocket"),), True),
    ],
)
def test_what_can_carry_data_out(
    method: str, path: str, headers: tuple[tuple[str, str], ...], out: bool
) -> None:
    assert carries_data_out(method, path, headers) is out


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_read_with_a_body_carries_it_out(method: str) -> None:
    assert carries_data_out(method, "/search", (), nbytes=1) is True
    assert carries_data_out(method, "/search", (), nbytes=0) is False


def test_before_a_mark_everything_passes_unasked() -> None:
    asked: list[str] = []
    hold = OutboundHold(mode=lambda: "deny")
    with hold.asking(lambda q, r: asked.append(q) or False):
        assert hold.decide(POST).allowed
    assert asked == []


def test_after_a_mark_ask_names_destination_and_size() -> None:
    asked: list[tuple[str, str]] = []
    hold = OutboundHold()
    assert hold.mark("web", "page.test") is True
    assert hold.mark("web", "other.test") is False
    with hold.asking(lambda q, r: asked.append((q, r)) or True):
        verdict = hold.decide(POST)
    assert verdict.allowed and verdict.asked
    question, reason = asked[0]
    assert "api.allowed.test" in question and "2.0 KB" in question
    assert "page.test" in reason


def test_a_no_refuses_with_a_plain_reason() -> None:
    hold = OutboundHold()
    hold.mark("web", "page.test")
    with hold.asking(lambda q, r: False):
        verdict = hold.decide(POST)
    assert not verdict.allowed and "declined" in verdict.reason


@pytest.mark.parametrize("answer", [None, "yes", 1])
def test_only_a_real_yes_allows(answer: object) -> None:
    hold = OutboundHold()
    hold.mark("web", "page.test")
    with hold.asking(lambda q, r: answer):  # type: ignore[arg-type,return-value]
        assert not hold.decide(POST).allowed


def test_nobody_to_ask_refuses() -> None:
    hold = OutboundHold()
    hold.mark("mcp", "tracker/search")
    with hold.asking(lambda q, r: True):
        pass
    verdict = hold.decide(POST)
    assert not verdict.allowed and "nobody could be asked" in verdict.reason


def test_a_failing_asker_refuses() -> None:
    def broken(q: str, r: str) -> bool:
        raise RuntimeError("window closed")

    hold = OutboundHold()
    hold.mark("web", "page.test")
    with hold.asking(broken):
        assert not hold.decide(POST).allowed


def test_deny_and_off_modes_and_a_broken_setting() -> None:
    for mode, allowed in (("deny", False), ("off", True), ("bogus", False)):
        hold = OutboundHold(mode=lambda m=mode: m)  # type: ignore[misc]
        hold.mark("web", "page.test")
        with hold.asking(lambda q, r: True):
            verdict = hold.decide(POST)
        assert verdict.allowed is allowed, mode
    hold = OutboundHold(mode=lambda: "deny")
    hold.mark("web", "page.test")
    assert "agent.after_outside_content" in hold.decide(POST).reason


def test_git_push_is_named() -> None:
    push = Outbound("POST", "git.test", 443, "/r.git/git-receive-pack", 10, "git")
    assert "git push" in push.plain()


def test_responses_mark_only_once_an_agent_task_attached_and_for_good() -> None:
    hold = OutboundHold()
    assert hold.mark_delivered("page.test") is None  # a person's own command: not recorded
    assert not hold.marked and not hold.armed and hold.decide(POST).allowed
    asked: list[str] = []
    with hold.asking(lambda q, r: asked.append(r) is not None):
        assert hold.decide(POST).allowed  # armed, but nothing delivered yet
        assert hold.mark_delivered("page.test") is True
        assert hold.mark_delivered("page.test") is False  # one mark (and event) per host
        assert hold.mark_delivered("cdn.test") is True
        verdict = hold.decide(POST)
    assert not verdict.allowed and verdict.asked and "page.test" in asked[0]
    assert hold.armed  # the agent may have left processes running
    assert hold.mark_delivered("late.test") is True
    assert [(m.origin, m.source) for m in hold.marks] == [
        ("network", "page.test"), ("network", "cdn.test"), ("network", "late.test"),
    ]  # fmt: skip
