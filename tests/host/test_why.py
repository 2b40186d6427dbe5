"""``why`` and ``request-exception`` for each refusal kind, from real gate/approvals/policy
decisions; the snippet is valid policy and grants exactly the refused request."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from cowork.errors import UsageError
from cowork.host.agent.approvals import Approvals, RuleAssessor
from cowork.host.agent.loop import ToolCall
from cowork.host.agent.settings import ApprovalMode
from cowork.host.egress.gate import explain_url
from cowork.host.egress.grants import Grant
from cowork.host.events import AuditLog, EventBus, Kind, read_log
from cowork.host.policy import check_file, load_effective
from cowork.host.policy.schema import PolicyDocument
from cowork.host.trust import TrustStore
from cowork.host.why import explain, request_exception
from cowork.paths import Paths

EXISTING = Grant(id="docs", host="api.example.com", methods=("GET",), paths=("/v1/docs/*",))


@pytest.fixture
def bus_log(tmp_path: Path) -> tuple[EventBus, Path]:
    log = tmp_path / "audit.jsonl"
    bus = EventBus(session="s1")
    bus.subscribe(AuditLog(log, anchors=tmp_path / "anchors.jsonl"))
    return bus, log


def _deny(
    bus: EventBus, log: Path, method: str, url: str, grants: tuple[Grant, ...] = (EXISTING,)
) -> int:
    """Emit egress.denied as the gateway does, for the gate's real decision on ``url``."""
    from urllib.parse import urlsplit

    decision = explain_url(url, method, grants)
    assert not decision.allowed
    parts = urlsplit(url)
    connect = decision.reason.startswith("CONNECT refused: ")
    reason = decision.reason.removeprefix("CONNECT refused: ")
    scheme = parts.scheme
    bus.emit(
        Kind.EGRESS_DENIED,
        reason=reason,
        grant=decision.grant_id,
        method="CONNECT" if connect else method,
        scheme=scheme,
        host=parts.hostname,
        port=parts.port or (443 if scheme == "https" else 80),
        path="" if connect else parts.path,
    )
    return len(read_log(log))


def _snippet_grants(snippet: str, tmp_path: Path) -> tuple[Grant, ...]:
    f = tmp_path / "snippet.toml"
    f.write_text(snippet)
    assert check_file(f) == []  # what 'cowork policy check' runs
    return PolicyDocument.model_validate(tomllib.loads(snippet)).egress.grants


def test_a_denied_path_gets_a_grant_for_exactly_that_request(bus_log, tmp_path):
    bus, log = bus_log
    seq = _deny(bus, log, "POST", "https://api.example.com/v1/upload")
    ex = explain(log, seq)
    assert ex.category == "egress" and ex.snippet is not None
    assert "method or path not granted" in ex.reason
    assert "POST api.example.com:443/v1/upload" in ex.what
    grants = _snippet_grants(ex.snippet, tmp_path)
    assert len(grants) == 1
    assert explain_url("https://api.example.com/v1/upload", "POST", grants).allowed
    assert explain_url("https://api.example.com/v1/upload?x=1", "POST", grants).allowed
    for method, url in [
        ("GET", "https://api.example.com/v1/upload"),  # other method
        ("POST", "https://api.example.com/v1/upload2"),  # other path
        ("POST", "https://api.example.com/v1/upload/x"),
        ("POST", "https://api.example.com/v1"),
        ("POST", "https://other.example.com/v1/upload"),  # other host
        ("POST", "https://x.api.example.com/v1/upload"),
        ("POST", "https://api.example.com:8443/v1/upload"),  # other port
        ("POST", "http://api.example.com/v1/upload"),  # other scheme
    ]:
        assert not explain_url(url, method, grants).allowed, (method, url)


def test_a_denied_host_on_another_port_gets_a_port_exact_grant(bus_log, tmp_path):
    bus, log = bus_log
    seq = _deny(bus, log, "GET", "http://files.example.org:8080/a/b.txt", grants=())
    ex = explain(log, seq)
    assert ex.snippet is not None and "port = 8080" in ex.snippet
    grants = _snippet_grants(ex.snippet, tmp_path)
    assert explain_url("http://files.example.org:8080/a/b.txt", "GET", grants).allowed
    assert not explain_url("http://files.example.org/a/b.txt", "GET", grants).allowed
    assert not explain_url("http://files.example.org:8080/a/c.txt", "GET", grants).allowed
    assert not explain_url("https://files.example.org:8080/a/b.txt", "GET", grants).allowed


def test_a_refused_tunnel_gets_a_grant_for_that_destination_only(bus_log, tmp_path):
    bus, log = bus_log
    seq = _deny(bus, log, "GET", "https://pypi.org/simple/", grants=())
    ex = explain(log, seq)
    assert ex.snippet is not None and "HTTPS hides the request" in ex.snippet
    assert "connection to pypi.org:443 was refused" in ex.what
    grants = _snippet_grants(ex.snippet, tmp_path)
    assert explain_url("https://pypi.org/simple/", "GET", grants).allowed
    assert not explain_url("https://pypi.org/simple/", "POST", grants).allowed
    assert not explain_url("https://files.pypi.org/simple/", "GET", grants).allowed
    assert not explain_url("https://pypi.org:444/simple/", "GET", grants).allowed
    assert not explain_url("http://pypi.org/simple/", "GET", grants).allowed


def test_the_floor_has_no_snippet(bus_log):
    bus, log = bus_log
    seq = _deny(bus, log, "GET", "https://127.0.0.1/admin", grants=())
    ex = explain(log, seq)
    assert ex.category == "floor" and ex.snippet is None
    assert "no policy can loosen" in ex.allow
    bus.emit(
        Kind.EGRESS_DENIED,
        reason="name resolves to a loopback, private or reserved address",
        method="GET",
        host="internal.example.com",
        port=443,
        path="/",
    )
    assert explain(log, seq + 1).category == "floor"


def test_an_approvals_refusal(bus_log, tmp_path):
    bus, log = bus_log
    gate = Approvals(ApprovalMode.DENY_RISKY, RuleAssessor())
    call = ToolCall(id="t1", name="bash", input={"command": "rm -rf /workspace/*"})
    d = gate.decide(call)
    assert str(d.verdict) == "refuse" and d.risk == "risky"
    bus.emit(
        Kind.ACTION_DECIDED,
        call_id=call.id,
        tool=call.name,
        action="run rm -rf",
        verdict="refuse",
        risk=d.risk,
        rule=d.rule,
        reason=d.reason,
    )
    ex = explain(log, 1)
    assert ex.category == "approvals" and d.reason in ex.reason
    assert ex.snippet is not None
    f = tmp_path / "a.toml"
    f.write_text(ex.snippet)
    assert check_file(f) == []
    doc = PolicyDocument.model_validate(tomllib.loads(ex.snippet))
    assert doc.agent.approval_mode == "ask"
    forbidden = ToolCall(id="t2", name="read_file", input={"path": "/etc/shadow"})
    d2 = gate.decide(forbidden)
    assert d2.risk == "forbidden"
    bus.emit(
        Kind.ACTION_DECIDED, call_id="t2", tool="read_file", action="read /etc/shadow",
        verdict="refuse", risk=d2.risk, rule=d2.rule, reason=d2.reason,
    )  # fmt: skip
    ex2 = explain(log, 2)
    assert ex2.snippet is None and "never" in ex2.allow
    # an action that ran is not a refusal
    bus.emit(Kind.ACTION_DECIDED, call_id="t3", tool="bash", verdict="run", reason="ok")
    with pytest.raises(UsageError, match="not a refusal"):
        explain(log, 3)


def _admin(paths: Paths, text: str) -> None:
    paths.admin.mkdir(parents=True, exist_ok=True)
    paths.admin.chmod(0o755)
    paths.admin_policy_file.write_text(text)
    paths.admin_policy_file.chmod(0o644)


def test_a_locked_setting_and_an_untrusted_workspace(bus_log, tmp_path):
    bus, log = bus_log
    paths = Paths.under(tmp_path / "p")
    _admin(paths, 'locks = ["agent.model"]\n[agent]\nmodel = "claude-x"\n')
    paths.user_settings_file.parent.mkdir(parents=True)
    paths.user_settings_file.write_text('[agent]\nmodel = "mine"\n')
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".cowork.toml").write_text("[agent]\nmax_turns = 3\n")
    load_effective(paths, ws, TrustStore(paths.trust_store), bus)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    ignored = [x for x in lines if x["kind"] == "policy.ignored"]
    assert {x["fields"]["cause"] for x in ignored} == {"lock", "trust"}
    lock = next(x for x in ignored if x["fields"]["cause"] == "lock")
    ex = explain(log, lock["seq"])
    assert ex.category == "lock" and "agent.model" in ex.what and ex.snippet is not None
    f = tmp_path / "l.toml"
    f.write_text(ex.snippet)
    assert check_file(f) == []
    trust = next(x for x in ignored if x["fields"]["cause"] == "trust")
    ex = explain(log, trust["seq"])
    assert ex.category == "trust" and f"cowork trust {ws}" in ex.allow and ex.snippet is None


def test_a_rejected_admin_policy(bus_log, tmp_path):
    bus, log = bus_log
    paths = Paths.under(tmp_path / "p")
    _admin(paths, "[agent]\nmax_turns = -1\n")
    load_effective(paths, None, None, bus)
    seq = next(
        x["seq"]
        for x in map(json.loads, log.read_text().splitlines())
        if x["kind"] == "policy.rejected"
    )
    ex = explain(log, seq)
    assert ex.category == "policy" and "max_turns" in ex.reason


def test_request_exception_writes_the_snippet_into_the_inbox(bus_log, tmp_path):
    bus, log = bus_log
    seq = _deny(bus, log, "PUT", "https://api.example.com/v1/items/7")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    req = request_exception(log, seq, "I need to update item 7", inbox=inbox, bus=bus)
    assert req.path is not None and req.path.parent == inbox
    data = json.loads(req.path.read_text())
    assert data["note"] == "I need to update item 7"
    assert data["event"]["seq"] == seq and data["event"]["hash"]
    grants = _snippet_grants(data["snippet"], tmp_path)
    assert explain_url("https://api.example.com/v1/items/7", "PUT", grants).allowed
    assert not explain_url("https://api.example.com/v1/items/8", "PUT", grants).allowed
    last = read_log(log)[-1]
    assert last.kind == Kind.EXCEPTION_REQUESTED and last.fields["event"] == seq


def test_request_exception_refuses_bad_input(bus_log, tmp_path):
    bus, log = bus_log
    seq = _deny(bus, log, "GET", "https://pypi.org/", grants=())
    with pytest.raises(UsageError, match="exception_inbox"):
        request_exception(log, seq, "please", inbox=None)
    with pytest.raises(UsageError, match="is not a folder"):
        request_exception(log, seq, "please", inbox=tmp_path / "missing")
    with pytest.raises(UsageError, match="--note"):
        request_exception(log, seq, "  ", inbox=tmp_path)
    with pytest.raises(UsageError, match="is not in"):
        request_exception(log, 999, "please", inbox=tmp_path)
    # exporting only: no file, but the event is recorded
    req = request_exception(log, seq, "please", inbox=None, bus=bus, exporting=True)
    assert req.path is None and read_log(log)[-1].kind == Kind.EXCEPTION_REQUESTED
