"""Egress from inside a real sealed guest: the gateway is the only way out.

One VM for the whole module (booting under TCG is slow). Its session runs a real gateway
with two credential-bound grants to a real TLS upstream on the host (127.0.0.10, its own CA,
reached through a fake resolver and an address check that admits exactly the test upstream
addresses). The credential lives in an in-memory keyring on the host and is handed to the
session through the Python API only; the guest gets the proxy variables and trusts the
session CA through its system bundle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import Any

import pytest

from cowork.host.egress.ca import ENGINE_CA_FILE
from cowork.host.egress.grants import Grant
from cowork.host.events import Kind, Recorder
from cowork.host.secrets import KeyringSecrets, MemoryKeyring
from cowork.host.session import Session
from tests.e2e.conftest import gateway_session, make_paths, make_workspace, tls_upstream
from tests.host.egress.conftest import (
    UPSTREAM_IP,
    FakeResolver,
    Upstream,
)

pytestmark = pytest.mark.e2e

#: A fresh credential per run, so a match can only come from this run's injection.
SECRET = "sk-guest-e2e-" + token_hex(16)
CREDENTIAL_ID = "e2e-upstream"
CANARY = "COWORK-GREP-CANARY-" + token_hex(8)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
#: Generous: a recursive grep of the whole guest root under software emulation.
GREP_TIMEOUT_S = 1200


@dataclass
class Guest:
    session: Session
    upstream: Upstream
    resolver: FakeResolver
    recorder: Recorder
    workspace: Path
    ca_key_pem: bytes

    def run(self, cmd: str, **kw: Any) -> Any:
        return self.session.channel.run(cmd, **kw)

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.upstream.port}{path}"


def _grants(port: int) -> list[Grant]:
    return [
        Grant(
            id="echo",
            host="echo.allowed.test",
            port=port,
            methods=("GET",),
            paths=("/echo", "/echo/**"),
            credential=CREDENTIAL_ID,
        ),
        Grant(
            id="api",
            host="api.allowed.test",
            port=port,
            methods=("POST",),
            paths=("/echo/messages",),
            credential=CREDENTIAL_ID,
            inject_header="x-api-key",
            inject_format="{credential}",
        ),
    ]


@pytest.fixture(scope="module")
def guest(image_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    root = tmp_path_factory.mktemp("egress-guest")
    upstream, pki = tls_upstream(root, Upstream)
    resolver = FakeResolver({"echo.allowed.test": [UPSTREAM_IP], "api.allowed.test": [UPSTREAM_IP]})
    store = KeyringSecrets(backend=MemoryKeyring())
    store.set(CREDENTIAL_ID, SECRET)
    grants = _grants(upstream.port)

    paths = make_paths(root / "cowork")
    ws = make_workspace(root)
    (ws / "canary.txt").write_text(CANARY + "\n")
    claude = root / "user-claude"
    claude.mkdir()
    with gateway_session(
        ws, paths, claude, upstream, pki, grants=grants, secrets=store, resolver=resolver
    ) as (sess, _bus, rec):
        # The gateway's CA key, read on the host while the gateway runs.
        keys = [
            p.read_bytes()
            for p in sess.dir.glob(f"cowork-egress-*/ca/{ENGINE_CA_FILE}")
            if b"PRIVATE KEY" in p.read_bytes()
        ]
        assert len(keys) == 1, f"expected one gateway CA key under {sess.dir}"
        yield Guest(sess, upstream, resolver, rec, ws, keys[0])


@pytest.fixture
def g(guest: Guest) -> Guest:
    guest.upstream.reset()
    guest.resolver.queries.clear()
    guest.recorder.events.clear()
    return guest


def _header(seen_headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in seen_headers if k == name]


def _key_body_lines(pem: bytes) -> list[str]:
    """The base64 lines of the PRIVATE KEY block (not the certificate that follows it)."""
    text = pem.decode()
    start = text.index("-----BEGIN PRIVATE KEY-----")
    end = text.index("-----END PRIVATE KEY-----")
    lines = [ln.strip() for ln in text[start:end].splitlines()[1:] if ln.strip()]
    assert lines, "the gateway's CA key has no body"
    return lines


def _unliteral(text: str) -> str:
    """A basic regex matching ``text`` that does not itself contain ``text``.

    So a search pattern can never match a copy of itself (in the command, a pipe buffer
    or a temporary file). Meant for base64 and token text: no character after the first is
    special in a basic regex.
    """
    assert re.fullmatch(r"[A-Za-z0-9+/][A-Za-z0-9+/=_-]*", text), text
    return f"[{text[0]}]{text[1:]}"


# --- 1. granted requests ----------------------------------------------------------------------
def test_curl_reaches_a_granted_upstream_with_the_credential_injected(g: Guest) -> None:
    result = g.run(f"curl -sS --max-time 60 {g.url('echo.allowed.test', '/echo/reflect/clean')}")
    assert result.ok, result.stderr
    assert json.loads(result.stdout) == {"note": "nothing to see"}
    [seen] = g.upstream.requests
    assert (seen.method, seen.target, seen.sni) == (
        "GET",
        "/echo/reflect/clean",
        "echo.allowed.test",
    )
    assert _header(seen.headers, "authorization") == [f"Bearer {SECRET}"]
    assert _header(seen.headers, "proxy-authorization") == []
    [raw] = g.upstream.raw
    assert raw.count(SECRET.encode()) == 1
    assert g.resolver.queries == ["echo.allowed.test"]
    # The upstream reflects every header, the injected one included: the gateway refuses
    # the whole response rather than hand any of it to the guest.
    result = g.run(f"curl -sS --max-time 60 {g.url('echo.allowed.test', '/echo/curl')}")
    assert result.ok, result.stderr
    assert SECRET not in result.stdout
    assert "reflected the injected credential" in result.stdout
    assert [s.target for s in g.upstream.requests] == ["/echo/reflect/clean", "/echo/curl"]


def test_python_urllib_posts_through_the_gateway(g: Guest) -> None:
    script = f"""
import json, urllib.error, urllib.request
req = urllib.request.Request(
    {g.url("api.allowed.test", "/echo/messages")!r},
    data=b'{{"hello": "from the guest"}}',
    headers={{"content-type": "application/json"}},
    method="POST",
)
try:
    with urllib.request.urlopen(req, timeout=60) as resp:
        print(resp.status)
        print(resp.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code)
    print(exc.read().decode())
"""
    result = g.run("python3 -", input=script, timeout=120)
    assert result.ok, result.stderr
    assert SECRET not in result.stdout
    status, body = result.stdout.split("\n", 1)
    # /echo reflects the injected x-api-key: the response is refused whole.
    assert status == "502"
    assert "reflected the injected credential" in body
    [seen] = g.upstream.requests
    assert (seen.method, seen.target) == ("POST", "/echo/messages")
    assert seen.body == b'{"hello": "from the guest"}'
    assert _header(seen.headers, "x-api-key") == [SECRET]
    [raw] = g.upstream.raw
    assert raw.count(SECRET.encode()) == 1


def test_the_guest_verifies_the_gateway_certificate(g: Guest) -> None:
    # Without the session CA in its trust store the guest refuses the gateway's certificate,
    # so the successes above mean verification succeeded, not that it was skipped.
    result = g.run(
        "curl -sS --max-time 60 --cacert /dev/null --capath /nonexistent "
        f"{g.url('echo.allowed.test', '/echo/untrusted')} 2>&1; echo rc=$?"
    )
    assert "rc=0" not in result.stdout
    assert "certificate" in result.stdout.lower(), result.stdout
    assert g.upstream.requests == []


# --- 3. denied requests -----------------------------------------------------------------------
def test_a_host_without_a_grant_is_denied_and_audited(g: Guest) -> None:
    url = f"https://evil.test:{g.upstream.port}/echo"
    result = g.run(f"curl -sS --max-time 60 {url} 2>&1; echo rc=$?")
    assert "rc=0" not in result.stdout
    assert "403" in result.stdout, result.stdout
    denied = g.recorder.of(Kind.EGRESS_DENIED)
    assert [e.fields.get("host") for e in denied] == ["evil.test"]
    assert g.upstream.connections == []
    assert g.resolver.queries == []


def test_a_path_outside_the_grant_is_denied_and_audited(g: Guest) -> None:
    url = g.url("echo.allowed.test", "/admin")
    result = g.run(f"curl -sS --max-time 60 -o /dev/null -w '%{{http_code}}' {url}")
    assert result.stdout == "403"
    denied = g.recorder.of(Kind.EGRESS_DENIED)
    assert [(e.fields.get("host"), e.fields.get("path")) for e in denied] == [
        ("echo.allowed.test", "/admin")
    ]
    assert g.upstream.requests == []
    assert all(SECRET not in json.dumps(e.to_json(), default=str) for e in g.recorder.events)


# --- 4. and 5. no other way out ---------------------------------------------------------------
def test_raw_sockets_reach_nothing(g: Guest) -> None:
    script = f"""
import socket
for target in [("93.184.216.34", 80), ("10.0.2.2", 80), ({UPSTREAM_IP!r}, {g.upstream.port})]:
    try:
        socket.create_connection(target, timeout=10).close()
        print(target[0], "CONNECTED")
    except OSError as exc:
        print(target[0], "failed", type(exc).__name__, exc.errno)
"""
    result = g.run("python3 -", input=script, timeout=120)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert all(" failed " in line for line in lines), result.stdout
    # 127.0.0.10 in the guest is the guest's own loopback, not the host's.
    assert g.upstream.connections == []


def test_without_the_proxy_variables_there_is_no_connectivity(g: Guest) -> None:
    unset = "env " + " ".join(f"-u {v}" for v in PROXY_VARS)
    targets = [
        g.url("echo.allowed.test", "/echo"),
        f"https://{UPSTREAM_IP}:{g.upstream.port}/echo",
        "http://93.184.216.34/",
        "http://10.0.2.2/",
    ]
    for url in targets:
        result = g.run(f"{unset} curl -sS --max-time 20 {url} 2>&1; echo rc=$?", timeout=120)
        rc = result.stdout.rstrip().rsplit("rc=", 1)[-1]
        # 6: no name resolution, 7: no route / refused, 28: timed out. 0 would be an answer.
        assert rc in ("6", "7", "28"), f"{url}: {result.stdout}"
    assert g.upstream.connections == []
    assert g.resolver.queries == []
    assert g.recorder.of(Kind.EGRESS_ALLOWED) == []


# --- 2. nothing secret inside the guest -------------------------------------------------------
def test_the_environment_holds_the_proxy_but_not_the_secret(g: Guest) -> None:
    env = g.run("env")
    assert "HTTPS_PROXY=http://cowork:" in env.stdout
    environs = g.run("cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'")
    assert "HTTPS_PROXY=" in environs.stdout  # the check saw real process environments
    key_lines = _key_body_lines(g.ca_key_pem)
    for text in (env.stdout, environs.stdout):
        assert SECRET not in text
        assert "PRIVATE KEY" not in text
        assert not any(line in text for line in key_lines)


@pytest.mark.timeout(GREP_TIMEOUT_S + 120)
def test_no_file_the_agent_can_read_holds_the_secret_or_the_ca_key(g: Guest) -> None:
    """Everything the agent can read, but /proc, /sys and /dev, searched for the secret and
    for every base64 line of the gateway CA's private key. The canary in the workspace proves
    the search ran over real files.

    Files only root can read (the guest's own SSH host key in /run/cowork/ssh) are not
    searched: the agent cannot read them either. The patterns travel on stdin and are
    written so that they never match themselves.
    """
    patterns = [SECRET, CANARY, *_key_body_lines(g.ca_key_pem)]
    result = g.run(
        "grep -r -l -s -f - / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev",
        input="\n".join(_unliteral(p) for p in patterns) + "\n",
        timeout=GREP_TIMEOUT_S,
    )
    assert not result.timed_out
    assert result.stdout.splitlines() == ["/workspace/canary.txt"], result.stdout
