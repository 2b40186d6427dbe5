"""The wire protocol: every message type round-trips; bad lines are refused with a code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cowork.daemon import protocol as p

SAMPLES: dict[str, dict[str, object]] = {
    "sessions.list": {},
    "vm.up": {"workspace": "/w"},
    "vm.down": {"name": "n"},
    "vm.status": {"name": "n"},
    "exec": {"workspace": "/w", "command": "ls", "timeout": 3.0, "keep": True},
    "shell": {"workspace": "/w", "term": "xterm", "cols": 100, "rows": 30, "keep": False},
    "pty.input": {"shell": 3, "data": "ls\r", "eof": False},
    "pty.resize": {"shell": 3, "cols": 120, "rows": 40},
    "task.run": {"workspace": "/w", "task": "t", "mode": "ask", "demo": True},
    "task.stop": {"session": "n"},
    "subscribe": {"session": None},
    "approval.answer": {"approval": "a1", "allow": True},
    "policy.view": {"session": "n"},
    "daemon.status": {},
    "daemon.stop": {},
    "changes.list": {"session": "n", "pending_only": True},
    "changes.show": {"session": "n", "offset": 5, "previews": False},
    "changes.apply": {"session": "n", "paths": ["a.txt", "d/b"], "overwrite": True},
    "changes.discard": {"session": "n"},
    "changes.undo": {"record": "r1"},
}


def test_every_request_type_has_a_sample_and_round_trips():
    assert set(SAMPLES) == set(p.REQUESTS)
    for kind, fields in SAMPLES.items():
        msg = p.REQUESTS[kind](id=7, **fields)
        back = p.parse_request(msg.to_line())
        assert back == msg and type(back) is p.REQUESTS[kind]
        assert issubclass(type(back).answer, p.Reply)


def test_replies_and_events_round_trip():
    info = p.SessionInfo(name="n", workspace="/w", state="running")
    refusal = p.ChangeRefusal(path="../x", reason="outside the folder")
    changes_info = p.ChangeSetInfo(
        session="n", workspace="/w", state="pending", created_at=1.0, summary="added 1",
        pending=1, applied=["b"], refused=[refusal],
    )  # fmt: skip
    entry = p.ChangeEntry(
        path="a.txt", kind="modified", type="file", size=4, old_size=3,
        conflict="changed on your side", preview="--- a/a.txt\n", is_diff=True,
    )  # fmt: skip
    samples: list[p.Reply | p.Event] = [
        p.ErrorReply(id=1, code="failed", message="m"),
        p.Ok(id=2),
        p.Sessions(id=3, sessions=[info]),
        p.SessionReply(id=4, session=info, started=True),
        p.ExecResult(id=5, exit_code=3, timed_out=False),
        p.TaskResult(id=6, session="n", reason="completed", ran=2),
        p.ApprovalAnswerReply(id=7, accepted=True, allow=False),
        p.PolicyReply(id=8, session="n", policy={"a": 1}),
        p.DaemonInfo(id=9, pid=1, uptime_s=1.0, rss_kib=10, sessions=[info]),
        p.DaemonInfo(
            id=9,
            pid=1,
            uptime_s=1.0,
            rss_kib=10,
            pool_size=1,
            pools=[
                p.PoolInfo(
                    workspace="/w",
                    changes="direct",
                    size=1,
                    waiting=1,
                    guests=["cowork-w-1"],
                    failures=2,
                    retry_in_s=30.0,
                    last_error="no VM",
                )
            ],
        ),
        p.ChangeSets(id=10, sets=[changes_info], undo=["r1"]),
        p.ChangeSetReply(id=11, set=changes_info, entries=[entry], total=3, next_offset=1),
        p.ChangesApplied(id=12, record="r1", applied=["a"], conflicts=[entry], refused=[refusal]),
        p.ChangesUndone(id=13, record="r1", restored=["a"], refused=[refusal]),
        p.Notice(ref=1, seq=2, message="hi"),
        p.BusEvent(seq=3, kind="vm.ready", time=1.0, fields={"x": 1}),
        p.TaskText(ref=1, seq=4, session="n", text="t"),
        p.TaskAction(seq=5, kind="run", description="d", verdict="allow", reason="r"),
        p.ApprovalAsked(seq=6, approval="a", description="d", reason="r", timeout_s=1),
        p.ApprovalAnswered(seq=7, approval="a", allow=True, by="face"),
        p.ExecOutput(seq=8, stream="stdout", data=bytes(range(256)).decode("latin-1")),
        p.TaskFinished(seq=9, reason="completed"),
    ]
    assert {type(m) for m in samples} == set(p.REPLIES.values()) | set(p.EVENTS.values())
    for msg in samples:
        assert p.parse_incoming(msg.to_line()) == msg


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json\n", "bad_line"),
        (b"[1, 2]\n", "bad_line"),
        (b'{"v": 99, "type": "sessions.list", "id": 4}\n', "bad_version"),
        (b'{"v": 1, "type": "nope", "id": 4}\n', "unknown_type"),
        (b'{"v": 1, "type": "vm.up", "id": 4}\n', "bad_request"),
        (b'{"v": 1, "type": "vm.up", "id": 4, "workspace": "/w", "extra": 1}\n', "bad_request"),
        (b"x" * (p.MAX_LINE + 1), "too_long"),
    ],
)
def test_bad_lines_are_refused_with_a_code(line, code):
    with pytest.raises(p.ProtocolError) as err:
        p.parse_request(line)
    assert err.value.code == code
    if code not in {"bad_line", "too_long"}:
        assert err.value.ref == 4


def test_the_client_imports_nothing_heavy():
    code = "import sys, json; import cowork.daemon.client; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = {"libvirt", "paramiko", "mitmproxy", "anthropic", "cryptography", "cowork.host"}
    assert not {m for m in loaded if m.split(".")[0] in heavy or m in heavy}
