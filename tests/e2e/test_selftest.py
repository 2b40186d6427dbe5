"""The gateway self-test in a real sealed guest: it passes at every start with a gateway,
and one misbehaving probe stops the session (the VM is destroyed, nothing is left)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cowork.host.egress import selftest
from cowork.host.egress.grants import Grant
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.session import EgressSettings, Session, VMSettings
from cowork.host.vm.backend import VMState
from cowork.host.vm.libvirt import LibvirtBackend
from cowork.paths import Paths
from tests.e2e.conftest import make_paths, make_workspace
from tests.host.egress.conftest import FakeResolver, test_address_check

pytestmark = pytest.mark.e2e

GRANTS = [
    Grant(id="docs", host="docs.allowed.test", port=8443, methods=("GET",)),
    Grant(id="wild", host="*.files.test"),
]


def _open(
    root: Path, resolver: FakeResolver, rec: Recorder | None = None
) -> tuple[Session, Paths, Recorder]:
    paths = make_paths(root / "cowork")
    ws = make_workspace(root)
    claude = root / "user-claude"
    claude.mkdir()
    bus = EventBus()
    rec = rec or Recorder()
    bus.subscribe(rec)
    egress = EgressSettings(
        grants_provider=lambda: GRANTS, resolver=resolver, address_check=test_address_check
    )
    try:
        sess = Session.open(
            ws, paths=paths, events=bus, egress=egress,
            settings=VMSettings(claude_dir=claude, memory_mib=1024),
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(paths.runtime, ignore_errors=True)
        raise
    return sess, paths, rec


@pytest.fixture(scope="module")
def started(image_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    resolver = FakeResolver({})
    sess, paths, rec = _open(tmp_path_factory.mktemp("selftest-ok"), resolver)
    try:
        yield sess, rec, resolver
    finally:
        sess.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)


def test_a_session_with_a_gateway_starts_only_after_the_self_test_passed(started) -> None:
    sess, rec, resolver = started
    [event] = rec.of(Kind.EGRESS_SELFTEST)
    assert event.fields["seconds"] > 0
    # Run it again on the live guest and look at every probe, guest-only ones included.
    report = selftest.run_selftest(
        sess.channel, token=sess.gateway.proxy_token, grants=GRANTS, proxy_port=3128
    )
    seen = {r.probe.name: r.observed for r in report.results}
    print(f"\nself-test in the guest: {report.seconds:.2f} s; {seen}")
    assert report.ok and report.positive, seen
    assert seen["interfaces"] == "lo"
    assert seen["granted-host"] == "200"
    assert seen["raw-socket"].startswith("fail:") and seen["noproxy"].startswith("fail:")
    # The accepted CONNECT contacted nothing: not even a name lookup on the host.
    assert resolver.queries == []
    # The token never appeared in an event (commands are recorded with their argv).
    assert all(sess.gateway.proxy_token not in repr(e.fields) for e in rec.events)


def test_the_probes_fail_when_pointed_where_they_must_not_go(started) -> None:
    """The negative probes are real: aimed at a granted host, 'must be refused' sees 200."""
    sess, _, _ = started

    def aimed_at_granted(grants, port):
        probes = selftest.build_plan(grants, port)
        granted = next(p for p in probes if p.name == "granted-host").target
        return [replace(p, target=granted) if p.name == "ungranted-host" else p for p in probes]

    report = selftest.run_selftest(
        sess.channel, token=sess.gateway.proxy_token, grants=GRANTS, proxy_port=3128,
        plan=aimed_at_granted,
    )  # fmt: skip
    assert [r.probe.name for r in report.failures()] == ["ungranted-host"]


def test_the_noproxy_probe_sees_what_curl_noproxy_sees(started) -> None:
    """The bypass probe (a name looked up and connected to from bash) against curl
    --noproxy '*' on the same targets in the same guest: both fail where nothing is reachable
    (a granted name, a host name, an unroutable address, the host's address) and both
    connect where something is (the gateway's forwarded port, by address and by name)."""
    sess, _, _ = started
    port = 3128
    targets = {
        "docs.allowed.test:8443": False, "cowork-x.f.test:443": False, "192.0.2.1:443": False,
        "10.0.2.2:22": False, f"127.0.0.1:{port}": True, f"localhost:{port}": True,
    }  # fmt: skip
    plan = [selftest.Probe(f"t{i}", "socket", t, "fail") for i, t in enumerate(targets)]
    report = selftest.run_selftest(
        sess.channel, token=sess.gateway.proxy_token, grants=GRANTS, proxy_port=port,
        plan=lambda g, p: plan,
    )  # fmt: skip
    bash_saw = {r.probe.target: r.observed for r in report.results}
    curl_saw = {}
    for target in targets:
        r = sess.channel.run(
            f"curl --noproxy '*' -sS -o /dev/null --max-time 5 http://{target}/", timeout=30
        )
        curl_saw[target] = r.exited
    print(f"\nbash: {bash_saw}\ncurl exit: {curl_saw}")
    for target, reachable in targets.items():
        assert (bash_saw[target] == "connected") is reachable, (target, bash_saw[target])
        assert (curl_saw[target] == 0) is reachable, (target, curl_saw[target])
        if not reachable:
            assert bash_saw[target].startswith("fail:")
            assert curl_saw[target] in (6, 7), (target, curl_saw[target])  # resolve / connect


def test_one_misbehaving_probe_stops_the_session_and_leaves_nothing(
    image_ready: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_plan = selftest.build_plan

    def misbehaving(grants, port):
        # "A direct socket must fail", aimed at the gateway's own forwarded port in the
        # guest: it connects, which the self-test must treat as a surprise.
        return [
            replace(p, target=f"127.0.0.1:{port}") if p.name == "raw-socket" else p
            for p in real_plan(grants, port)
        ]

    monkeypatch.setattr(selftest, "build_plan", misbehaving)
    rec = Recorder()
    with pytest.raises(selftest.SelfTestFailed) as err:
        _open(tmp_path, FakeResolver({}), rec)
    text = str(err.value)
    print("\nwhat the person sees:\n" + text)
    assert "a direct connection past the gateway fails (saw connected)" in text
    assert "stopped the session" in text
    # The VM this test started was destroyed and its files removed.
    [name] = {e.session or e.fields.get("name") for e in rec.of(Kind.VM_STARTED)}
    assert LibvirtBackend().status(name).state is VMState.MISSING
    sessions = Paths.under(tmp_path / "cowork").sessions
    assert not sessions.exists() or list(sessions.iterdir()) == []
    assert not rec.of(Kind.VM_READY)
