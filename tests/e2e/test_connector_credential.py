"""A connector that needs a credential, in a real sealed VM: the gateway adds it; the server
never has it.

One VM for the module. The connector (``tests/data/mcp/tracker_server.py``) is named in user
settings (``mcp.servers``), lives in the user's ``.claude`` folder and files issues with a web
API: a real TLS upstream on the host loopback that records every request. Its grant is bound
to a credential stored in the real Secret Service (gnome-keyring, in the D-Bus session the
test runner provides); the server's own environment holds only the placeholder. The secret is
fresh per run, so a match can only come from this run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex

import pytest

from cowork.host.agent.loop import StopReason
from cowork.host.agent.mcp import ServerSpec, configured_servers, start_servers
from cowork.host.agent.settings import AgentSettings
from cowork.host.agent.task import run_task
from cowork.host.egress.gate import PLACEHOLDER
from cowork.host.egress.grants import Grant
from cowork.host.egress.taint import OutboundHold
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.policy.effective import read_user
from cowork.host.policy.load import Layer
from cowork.host.policy.merge import merge
from cowork.host.secrets import KeyringSecrets, secret_service_backend
from cowork.host.session import Session
from cowork.paths import Paths
from tests.e2e.conftest import gateway_session, make_paths, make_workspace, tls_upstream
from tests.e2e.test_egress_guest import GREP_TIMEOUT_S, _unliteral
from tests.e2e.test_outside import ObedientModel, Person
from tests.host.egress.conftest import (
    UPSTREAM_IP,
    FakeResolver,
    Upstream,
)

pytestmark = pytest.mark.e2e

SECRET = "tracker-e2e-" + token_hex(20)
CREDENTIAL_ID = "e2e-tracker-" + token_hex(4)
CONTROL = "COWORK-CONNECTOR-CONTROL-" + token_hex(8)
API_HOST = "api.allowed.test"  # a name the test certificate covers
SERVER = Path(__file__).parents[1] / "data" / "mcp" / "tracker_server.py"
SERVER_IN_GUEST = "/home/agent/.claude/connectors/tracker_server.py"


@dataclass
class Env:
    session: Session
    upstream: Upstream
    workspace: Path
    root: Path
    paths: Paths
    bus: EventBus
    recorder: Recorder
    servers: list[ServerSpec]

    def hold(self) -> None:
        assert self.session.gateway is not None
        self.session.gateway.outbound = OutboundHold()  # no outside content yet

    def issues(self) -> list[tuple[str, list[tuple[str, str]], bytes]]:
        return [
            (s.method, s.headers, s.body)
            for s in self.upstream.requests
            if s.target.startswith("/tracker/")
        ]


@pytest.fixture(scope="module")
def env(image_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("connector")
    try:
        store = KeyringSecrets(backend=secret_service_backend())
        store.set(CREDENTIAL_ID, SECRET)
    except Exception as exc:  # the runner gives every test a Secret Service
        pytest.fail(f"the Secret Service is not usable here: {type(exc).__name__}")
    upstream, pki = tls_upstream(root, Upstream)
    grants = [
        Grant(
            id="tracker",
            host=API_HOST,
            port=upstream.port,
            methods=("POST",),
            paths=("/tracker/**",),
            credential=CREDENTIAL_ID,
        )
    ]
    paths = make_paths(root / "cowork")
    ws = make_workspace(root)
    (ws / "control.txt").write_text(CONTROL + "\n")
    claude = root / "user-claude"
    (claude / "connectors").mkdir(parents=True)
    shutil.copy(SERVER, claude / "connectors" / "tracker_server.py")
    if os.getuid() == 0:
        from tests.e2e.conftest import expected_owner

        os.chown(ws / "control.txt", *expected_owner())
    # The connector, as a person names it in their settings file.
    paths.user_settings_file.parent.mkdir(parents=True, exist_ok=True)
    paths.user_settings_file.write_text(
        "[mcp.servers.tracker]\n"
        'command = "python3"\n'
        f'args = ["{SERVER_IN_GUEST}"]\n'
        f'env = {{ TRACKER_URL = "https://{API_HOST}:{upstream.port}", '
        f'TRACKER_TOKEN = "{PLACEHOLDER}" }}\n'
    )
    policy = merge(Layer.empty("admin"), read_user(paths), workspace_root=ws)
    servers = configured_servers(policy, ws, trusted=False)
    try:
        with gateway_session(
            ws,
            paths,
            claude,
            upstream,
            pki,
            grants=grants,
            secrets=store,
            resolver=FakeResolver({API_HOST: [UPSTREAM_IP]}),
        ) as (sess, bus, rec):
            yield Env(sess, upstream, ws, root, paths, bus, rec, servers)
    finally:
        store.delete(CREDENTIAL_ID)


def _ps_host() -> str:
    return subprocess.run(["ps", "-eo", "user,args"], capture_output=True, text=True).stdout


def test_the_connector_is_the_one_named_in_user_settings(env: Env) -> None:
    (spec,) = env.servers
    assert (spec.name, spec.command, spec.args) == ("tracker", "python3", (SERVER_IN_GUEST,))
    assert spec.source == "user settings: mcp.servers.tracker"
    assert SECRET not in json.dumps(dict(spec.env))


def test_an_agent_task_files_an_issue_and_the_gateway_adds_the_credential(
    env: Env, capfd: pytest.CaptureFixture[str]
) -> None:
    env.hold()
    env.upstream.reset()
    env.recorder.events.clear()
    person = Person()
    model = ObedientModel([("mcp__tracker__file_issue", {"title": "Printer on 2 is broken"})])
    summary = run_task(
        env.session.channel,
        "file it",
        settings=AgentSettings(max_turns=5),
        events=env.bus,
        approver=person,
        model=model,
        mode="auto",
        outbound=env.session.outbound,
        mcp_servers=env.servers,
    )
    assert summary.reason is StopReason.COMPLETED
    assert person.tools and "connector tool file_issue of tracker" in person.tools[0]
    # The upstream got the issue with the real credential, put in by the gateway.
    ((method, headers, body),) = env.issues()
    assert method == "POST" and json.loads(body) == {"title": "Printer on 2 is broken"}
    assert [v for k, v in headers if k == "authorization"] == [f"Bearer {SECRET}"]
    assert "filed: 200" in model.seen[0]
    # ... and nothing the model, the events or the output show holds it.
    assert all(SECRET not in text for text in model.seen)
    assert SECRET not in json.dumps([e.to_json() for e in env.recorder.events])
    allowed = [e.fields for e in env.recorder.events if e.kind is Kind.EGRESS_ALLOWED]
    assert any(f.get("grant") == "tracker" for f in allowed)
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err


def test_the_server_runs_in_the_vm_and_the_secret_is_nowhere_in_the_guest(env: Env) -> None:
    env.hold()
    hub = start_servers(env.session.channel, env.servers)
    try:
        assert hub.call("mcp__tracker__file_issue", {"title": "second"}).text.startswith(
            "filed: 200"
        )
        ch = env.session.channel
        # In the VM, as the agent user; not on the host.
        guest_ps = ch.run("ps -eo user,pid,args", timeout=60).stdout
        mine = [ln.split() for ln in guest_ps.splitlines() if "tracker_server.py" in ln]
        assert mine and all(parts[0] == "agent" for parts in mine), guest_ps
        assert "tracker_server.py" not in _ps_host()
        # Its own environment holds the placeholder (so reading it works), never the secret.
        (pid,) = [parts[1] for parts in mine if parts[2].rsplit("/", 1)[-1] == "python3"]
        own = ch.run(f"tr '\\0' '\\n' < /proc/{pid}/environ", timeout=60).stdout
        assert f"TRACKER_TOKEN={PLACEHOLDER}" in own and "HTTPS_PROXY=" in own
        everyone = ch.run("cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'", timeout=60).stdout
        assert f"TRACKER_TOKEN={PLACEHOLDER}" in everyone
        assert SECRET not in own and SECRET not in everyone
        assert SECRET not in ch.run("env", timeout=60).stdout
        # Every file the agent can read (the control file proves the search finds things).
        found = ch.run(
            "grep -r -l -s -f - / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev",
            input=f"{_unliteral(SECRET)}\n{_unliteral(CONTROL)}\n",
            timeout=GREP_TIMEOUT_S,
        )
        assert not found.timed_out
        assert found.stdout.splitlines() == ["/workspace/control.txt"], found.stdout
    finally:
        hub.close()
    assert "tracker_server.py" not in env.session.channel.run("ps -eo args", timeout=60).stdout
    assert len(env.issues()) >= 1


def test_no_host_side_record_holds_the_secret(env: Env) -> None:
    """The session's folders (state, logs, the console log, the transcript folder) and every
    event of the module. Runs last: after the connector used the credential."""
    assert env.issues(), "the connector never reached the upstream"
    hits = []
    for path in env.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if SECRET.encode() in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    assert hits == []
    assert SECRET not in json.dumps([e.to_json() for e in env.recorder.events])
