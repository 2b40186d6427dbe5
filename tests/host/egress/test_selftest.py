"""The session-start self-test: the guest script against the real gateway on loopback (the
guest's view is simulated by running the same script on the host), and the judging."""

from __future__ import annotations

import socket
import subprocess
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cowork.host.egress import selftest
from cowork.host.egress.grants import Grant

#: Probes that observe the machine itself (NICs, direct sockets): meaningful only in
#: the guest; tests/e2e/test_selftest.py runs them there.
GUEST_ONLY = {"nics", "socket"}


@dataclass
class Ran:
    ok: bool
    stdout: bytes
    timed_out: bool = False


class HostRunner:
    """Runs the guest command on the host, as the channel would in the guest."""

    def __init__(self) -> None:
        self.inputs: list[str] = []
        self.argv: list[list[str]] = []

    def run(self, cmd, *, timeout=None, input=None):
        assert isinstance(cmd, str)  # one script for the guest's bash, as the channel runs it
        argv = ["bash", "-c", cmd]
        self.argv.append(argv)
        self.inputs.append(input)
        p = subprocess.run(argv, input=input.encode(), capture_output=True, timeout=timeout)
        return Ran(p.returncode == 0, p.stdout)


def proxy_only(grants, port):
    return [p for p in selftest.build_plan(grants, port) if p.kind not in GUEST_ONLY]


def test_every_probe_behaves_against_the_real_gateway(env):
    runner = HostRunner()
    _, port = env.gateway.address
    report = selftest.check(
        runner, token=env.gateway.proxy_token, grants=env.grants, proxy_port=port, plan=proxy_only
    )
    assert report.ok and report.positive
    seen = {r.probe.name: r.observed for r in report.results}
    assert seen == {
        "ungranted-host": "403", "ip-literal": "403", "loopback-name": "403",
        "loopback-address": "403", "no-token": "407", "wrong-token": "407",
        "granted-host": "200",
    }  # fmt: skip
    # The accepted CONNECT never reached the upstream, nor even asked for its address.
    assert env.no_upstream_activity
    # The token travels on stdin only.
    assert env.gateway.proxy_token not in " ".join(" ".join(a) for a in runner.argv)


def test_a_probe_that_misbehaves_stops_the_session(env):
    def misbehaving(grants, port):
        probes = proxy_only(grants, port)
        granted = next(p for p in probes if p.name == "granted-host").target
        # "must be refused", but pointed at a granted host: the gateway accepts it.
        return [replace(p, target=granted) if p.name == "ungranted-host" else p for p in probes]

    _, port = env.gateway.address
    with pytest.raises(selftest.SelfTestFailed) as err:
        selftest.check(
            HostRunner(), token=env.gateway.proxy_token, grants=env.grants, proxy_port=port,
            plan=misbehaving,
        )  # fmt: skip
    text = str(err.value)
    assert "a host that no grant allows is refused (saw 200)" in text
    assert "stopped the session" in text and env.gateway.proxy_token not in text


def test_a_gateway_that_does_not_know_the_token_fails_the_positive_probe(env):
    _, port = env.gateway.address
    with pytest.raises(selftest.SelfTestFailed, match=r"is accepted \(saw 407\)"):
        selftest.check(HostRunner(), token="not-the-token", grants=env.grants, proxy_port=port,
                       plan=proxy_only)  # fmt: skip


def test_no_gateway_listening_fails_closed(env):
    with pytest.raises(selftest.SelfTestFailed, match="saw error:"):
        selftest.check(HostRunner(), token="x", grants=env.grants, proxy_port=1, plan=proxy_only)


@pytest.mark.parametrize(
    "ran",
    [Ran(False, b""), Ran(True, b"not a report"), Ran(True, b"end\n"), Ran(True, b""),
     Ran(True, b"interfaces\tlo\n"), Ran(True, b"interfaces\tlo\ninterfaces\tlo\nend\n"),
     Ran(True, b"intruder\tlo\nend\n"), Ran(True, b"\xff\xfe\nend\n"),
     Ran(False, b"", timed_out=True)],
)  # fmt: skip
def test_an_unreadable_or_failed_report_fails_closed(ran):
    class Canned:
        def run(self, cmd, *, timeout=None, input=None):
            return ran

    with pytest.raises(selftest.SelfTestFailed):
        selftest.check(Canned(), token="t", grants=[], proxy_port=3128)


def test_a_broken_channel_fails_closed_with_a_plain_message():
    class Broken:
        def run(self, cmd, *, timeout=None, input=None):
            raise OSError("channel gone")

    with pytest.raises(selftest.SelfTestFailed, match="could not check the VM's network"):
        selftest.check(Broken(), token="t", grants=[], proxy_port=3128)


def test_the_plan_follows_the_grants():
    names = lambda plan: {p.name for p in plan}  # noqa: E731
    assert "granted-host" not in names(selftest.build_plan([], 3128))
    plain = Grant(id="p", scheme="http", host="plain.example", port=80)
    assert "granted-host" not in names(selftest.build_plan([plain], 3128))
    wild = Grant(id="w", host="*.example.org")
    plan = {p.name: p for p in selftest.build_plan([plain, wild], 3128)}
    assert plan["granted-host"].target == "cowork-selftest.example.org:443"
    assert plan["wrong-token"].target == plan["granted-host"].target
    # Bypassing the gateway by name is tried on the granted host itself.
    assert (plan["noproxy"].kind, plan["noproxy"].target) == ("socket", plan["granted-host"].target)
    assert plan["ungranted-host"].target.endswith(".invalid:443")
    assert {p.kind for p in plan.values()} >= {"nics", "socket", "connect", "absolute"}


@pytest.mark.parametrize(
    ("expect", "observed", "ok"),
    [("403", "403", True), ("403", "200", False), ("fail", "fail:OSError", True),
     ("fail", "connected", False), ("fail", "succeeded", False), ("lo", "lo", True),
     ("lo", "eth0,lo", False), ("200", "error:TimeoutError", False)],
)  # fmt: skip
def test_judging(expect, observed, ok):
    assert selftest.judge(selftest.Probe("x", "connect", "", expect), observed) is ok


def test_a_probe_that_hangs_is_killed_and_counts_as_a_failure(monkeypatch):
    """A proxy that accepts and never answers: the watchdog ends the probe, which then has
    no report, and the host fails closed."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    monkeypatch.setattr(selftest, "WATCHDOG_S", 1)
    monkeypatch.setattr(selftest, "_READ_TIMEOUT_S", 30)
    port = silent.getsockname()[1]
    plan = [selftest.Probe("ungranted-host", "connect", "x.invalid:443", "403")]
    try:
        report = selftest.run_selftest(HostRunner(), token="t", grants=[], proxy_port=port,
                                       plan=lambda g, p: plan)  # fmt: skip
    finally:
        silent.close()
        for s in held:
            s.close()
    assert [(r.observed, r.ok) for r in report.results] == [("no-report", False)]
    assert report.seconds < 10


def test_the_token_is_in_no_process_argument_or_environment(env):
    """While the probes run (held open by a silent proxy), no process's argv or environment
    holds the proxy token: it exists only in the shell's memory, read from stdin."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    token = env.gateway.proxy_token
    encoded = selftest._basic(selftest.PROXY_USER, token)
    found: list[str] = []
    done = threading.Event()

    def scan() -> None:
        conns = []
        while not done.is_set():
            try:
                silent.settimeout(0.1)
                conns.append(silent.accept()[0])
            except OSError:
                pass
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                for what in ("cmdline", "environ"):
                    try:
                        data = (proc / what).read_bytes()
                    except OSError:
                        continue
                    if token.encode() in data or encoded.encode() in data:
                        found.append(f"{proc.name}/{what}")
        for c in conns:
            c.close()

    t = threading.Thread(target=scan, daemon=True)
    t.start()
    plan = [selftest.Probe("no-token", "connect", "x.invalid:443", "407", auth="token")]
    try:
        selftest.run_selftest(HostRunner(), token=token, grants=[], proxy_port=port,
                              plan=lambda g, p: plan)  # fmt: skip
    finally:
        done.set()
        t.join(5)
        silent.close()
    assert found == []
