"""Warm start end to end: sessions restored from one saved template guest (TCG).

One template is built for the run (the first restore-mode session builds it); two sessions
restored from it must share no secret and no random state, each sees only its own folder,
and a damaged template falls back to a cold boot and says so.

Boot IDs: the kernel makes ``/proc/sys/kernel/random/boot_id`` on its first read. Nothing in
the template guest reads it before the save, so each clone makes its own after its reseed;
the test below proves they differ.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowork.host import warm
from cowork.host.events import EventBus, Kind, Recorder
from tests.e2e.conftest import make_warm_paths, make_workspace
from tests.e2e.test_agent import NoSecrets

pytestmark = pytest.mark.e2e

PROBE = (
    "head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
    "cat /proc/sys/kernel/random/boot_id; "
    "printenv HTTPS_PROXY; "
    "ls /workspace; "
    "ls /sys/bus/acpi/drivers/vmgenid | grep : || echo no-vmgenid"
)


class Opened:
    def __init__(self, session, workspace: Path, recorder: Recorder, said: list[str]):
        self.session = session
        self.workspace = workspace
        self.recorder = recorder
        self.said = said

    def probe(self) -> list[str]:
        result = self.session.channel.run(PROBE)
        assert result.ok, result.stderr
        return result.stdout.splitlines()


def open_restored(root: Path, cache: Path, label: str, start_mode: str = "restore") -> Opened:
    from cowork.host.session import EgressSettings, Session, VMSettings

    paths = make_warm_paths(root / f"cowork-{label}", cache)
    ws = make_workspace(root, f"ws-{label}")
    (ws / f"only-{label}.txt").write_text(label)
    claude = root / f"claude-{label}"
    claude.mkdir()
    bus, rec, said = EventBus(), Recorder(), []
    bus.subscribe(rec)
    sess = Session.open(
        ws,
        paths=paths,
        events=bus,
        settings=VMSettings(claude_dir=claude, memory_mib=1024, start_mode=start_mode),
        egress=EgressSettings(grants_provider=lambda: (), secrets=NoSecrets()),
        progress=said.append,
    )
    return Opened(sess, ws, rec, said)


@pytest.fixture(scope="module")
def pair(image_ready, warm_cache, tmp_path_factory) -> Iterator[tuple[Opened, Opened]]:
    root = tmp_path_factory.mktemp("warm")
    first = open_restored(root, warm_cache, "a")
    try:
        second = open_restored(root, warm_cache, "b")
        try:
            yield first, second
        finally:
            second.session.close()
    finally:
        first.session.close()


def test_both_sessions_were_restored_from_one_template(pair):
    a, b = pair
    assert a.session.state.start_mode == b.session.state.start_mode == warm.RESTORE
    for opened in pair:
        ready = opened.recorder.of(Kind.VM_READY)[0]
        assert ready.fields["start_mode"] == warm.RESTORE
        assert [e.fields["phase"] for e in opened.recorder.of(Kind.VM_WARM)][-1] == "restored"
    templates = [e.fields["template"] for o in pair for e in o.recorder.of(Kind.VM_WARM)
                 if e.fields["phase"] == "restored"]  # fmt: skip
    assert len(set(templates)) == 1


def test_clones_share_no_keys_tokens_randomness_or_boot_id(pair):
    a, b = pair
    # The channel pinned each session's own host key: each guest proved it holds its own.
    assert a.session.state.host_public_key != b.session.state.host_public_key
    (rand_a, boot_a, proxy_a, *rest_a), (rand_b, boot_b, proxy_b, *rest_b) = a.probe(), b.probe()
    assert len(rand_a) == len(rand_b) == 128
    assert rand_a != rand_b
    assert boot_a != boot_b
    token_a, token_b = proxy_a.rsplit("@", 1)[0], proxy_b.rsplit("@", 1)[0]
    assert token_a != token_b
    # The generation ID device is there and the guest's driver is bound to it.
    assert rest_a[-1] != "no-vmgenid" and rest_b[-1] != "no-vmgenid"


def test_each_clone_sees_only_its_own_workspace(pair):
    a, b = pair
    for me, other in ((a, b), (b, a)):
        listing = me.session.channel.run("ls -A /workspace").stdout.split()
        assert f"only-{me.workspace.name[3:]}.txt" in listing
        assert f"only-{other.workspace.name[3:]}.txt" not in listing
        found = me.session.channel.run(f"find / -xdev -name 'only-{other.workspace.name[3:]}*'")
        assert found.stdout == ""


def test_a_restored_guest_is_sealed(pair):
    """Egress and the seal of a restored guest (tests/e2e/test_vm.py runs its isolation
    checks over cold and restored guests too)."""
    a, _ = pair
    run = a.session.channel.run
    assert run("ls /sys/class/net").stdout.split() == ["lo"]
    mounts = run("cat /proc/mounts").stdout
    assert sorted(ln.split()[1] for ln in mounts.splitlines() if " 9p " in ln) == sorted(
        ["/workspace", "/workspace/.claude", "/home/agent/.claude"]
    )
    probe = run("touch /workspace/.claude/planted 2>&1; echo rc=$?")
    assert "Read-only file system" in probe.stdout
    # Egress only through this session's gateway, which grants nothing here.
    denied = run(
        "python3 -c \"import urllib.request as u; u.urlopen('https://example.org', timeout=20)\""
        " 2>&1; echo rc=$?"
    )
    assert "rc=0" not in denied.stdout
    assert "403" in denied.stdout or "Forbidden" in denied.stdout, denied.stdout


def test_a_damaged_template_falls_back_to_a_cold_boot(pair, warm_cache, tmp_path_factory):
    """Runs last in the module: it damages the run's template (the next run rebuilds it)."""
    assert pair  # the template exists
    key_dirs = [d for d in (warm_cache / "templates").iterdir() if d.is_dir()]
    template_dirs = [d for d in key_dirs if (d / warm.STATE_FILE).is_file()]
    assert len(template_dirs) == 1
    state = template_dirs[0] / warm.STATE_FILE
    size = state.stat().st_size
    with open(state, "r+b") as f:
        f.truncate(size // 2)
    root = tmp_path_factory.mktemp("warm-broken")
    opened = open_restored(root, warm_cache, "c")
    try:
        assert opened.session.state.start_mode == warm.COLD
        fallbacks = [e for e in opened.recorder.of(Kind.VM_WARM) if e.fields["phase"] == "fallback"]
        assert len(fallbacks) == 1
        assert any(line.startswith("quick start unavailable") for line in opened.said)
        assert opened.session.channel.run("ls /workspace").stdout.split() == ["only-c.txt"]
        assert not template_dirs[0].exists(), "a broken template must be removed"
    finally:
        opened.session.close()
        shutil.rmtree(root, ignore_errors=True)
