"""The cowork service with real VMs: sessions outlive the command that started them, keep
their gateway, and faults (the service or QEMU killed mid-command) leave nothing behind.

The service runs in this process (a thread) where tests need test-only egress settings
(a fake resolver and an address check admitting the loopback upstream), and as its own
process where a test kills it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from cowork.daemon import protocol as p
from cowork.daemon.client import Client, DaemonError, DaemonGone, DaemonUnavailable
from cowork.daemon.server import Daemon, _qemu_pid
from cowork.host.session import open_session
from cowork.host.vm.libvirt import LibvirtBackend
from cowork.paths import Paths
from tests.e2e.conftest import make_paths, make_workspace, tls_upstream
from tests.host.egress.conftest import (
    UPSTREAM_IP,
    FakeResolver,
    Upstream,
    test_address_check,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@dataclass
class World:
    root: Path
    paths: Paths
    workspace: Path
    upstream: Upstream
    overrides: dict[str, Any]

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.upstream.port}{path}"


@pytest.fixture(scope="module")
def world(image_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("daemon-e2e")
    upstream, pki = tls_upstream(root, Upstream)
    paths = make_paths(root / "cowork")
    ws = make_workspace(root)
    (ws / "keep.txt").write_text("the person's file\n")
    claude = root / "user-claude"
    claude.mkdir()
    paths.config.mkdir(parents=True)
    paths.user_settings_file.write_text(
        "version = 1\n"
        "[vm]\nmemory_mib = 1024\n"
        f'[mounts]\nclaude_dir = "{claude}"\n'
        "[[egress.grants]]\n"
        'id = "echo"\nhost = "echo.allowed.test"\n'
        f'port = {upstream.port}\nmethods = ["GET"]\npaths = ["/echo/**"]\n'
    )
    overrides = {
        "resolver": FakeResolver(
            {"echo.allowed.test": [UPSTREAM_IP], "other.denied.test": [UPSTREAM_IP]}
        ),
        "address_check": test_address_check,
        "upstream_ca_file": pki.ca_file,
    }
    try:
        yield World(root, paths, ws, upstream, overrides)
    finally:
        upstream.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)


@contextlib.contextmanager
def service_thread(world: World) -> Iterator[Daemon]:
    """The service in this process, booting sessions with the test's egress settings."""
    opener = functools.partial(open_session, egress_overrides=world.overrides)
    daemon = Daemon(world.paths, opener=opener, approval_timeout_s=60)
    daemon.bind()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(timeout=300)


def service_process(paths: Paths) -> subprocess.Popen[bytes]:
    """The service as its own process (as `cowork daemon run` starts it), over ``paths``."""
    spec = json.dumps({k: str(v) for k, v in asdict(paths).items()})
    code = (
        "import json, sys; from pathlib import Path; from cowork.paths import Paths; "
        "from cowork.daemon.server import serve; "
        "serve(Paths(**{k: Path(v) for k, v in json.loads(sys.argv[1]).items()}))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code, spec], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            Client.connect(paths.daemon_socket).close()
            return proc
        except DaemonUnavailable:
            assert proc.poll() is None, "the service exited during start-up"
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the service did not start listening")


def domain_state(name: str) -> str:
    return LibvirtBackend().status(name).state.value


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_vm_up_keeps_its_gateway_and_a_later_exec_reaches_a_granted_upstream(world: World):
    with service_thread(world):
        with Client.connect(world.paths.daemon_socket) as starter:
            up = starter.call(p.VmUp(workspace=str(world.workspace)))
        name = up.session.name
        assert up.started and up.session.gateway_pid

        def curl(host: str, path: str) -> str:
            return f"curl -sS --max-time 120 {world.url(host, path)}"

        # The starting command has gone; the session and its gateway are still there.
        out: list[bytes] = []
        with Client.connect(world.paths.daemon_socket) as later:
            res = later.exec(
                p.Exec(
                    workspace=str(world.workspace),
                    command=curl("echo.allowed.test", "/echo/daemon"),
                ),
                on_stdout=out.append,
                on_stderr=out.append,
            )
            assert res.exit_code == 0, b"".join(out)
            assert any(r.target == "/echo/daemon" for r in world.upstream.requests)
            denied: list[bytes] = []
            res = later.exec(
                p.Exec(
                    workspace=str(world.workspace), command=curl("other.denied.test", "/echo/x")
                ),
                on_stdout=denied.append,
                on_stderr=denied.append,
            )
            assert res.exit_code != 0
            assert not any(r.target == "/echo/x" for r in world.upstream.requests)
            [info] = later.call(p.ListSessions()).sessions
            assert info.name == name and info.kept and info.qemu_rss_kib
            later.call(p.VmDown(name=name))
        assert domain_state(name) == "missing"
        assert not world.paths.session_dir(name).exists()
        assert not list(world.paths.daemon_records.glob("*.json"))


def test_sigkill_of_the_service_mid_command_leaves_nothing_behind(world: World):
    proc = service_process(world.paths)
    log = world.workspace / "progress.txt"
    try:
        with Client.connect(world.paths.daemon_socket) as c:
            name = c.call(p.VmUp(workspace=str(world.workspace))).session.name
            gateway = c.call(p.DaemonStatus()).sessions[0].gateway_pid
            result: dict[str, BaseException] = {}

            def run() -> None:
                try:
                    c.exec(
                        p.Exec(
                            workspace=str(world.workspace),
                            command="i=0; while [ $i -lt 100000 ]; do "
                            "echo line-$i >> /workspace/progress.txt; "
                            "i=$((i+1)); sleep 0.05; done",
                        ),
                        on_stdout=lambda _b: None,
                        on_stderr=lambda _b: None,
                    )
                except BaseException as exc:
                    result["error"] = exc

            t = threading.Thread(target=run)
            t.start()
            assert wait_until(lambda: log.exists() and log.stat().st_size > 40, 300)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            t.join(60)
        err = result.get("error")
        assert isinstance(err, DaemonGone) and "stopped unexpectedly" in str(err)
        # The VM outlived the service (libvirt runs it); the gateway did not.
        assert domain_state(name) == "running"
        assert wait_until(lambda: not pid_alive(gateway), 30)
        # The next start removes what the dead service left, with no manual cleanup.
        proc = service_process(world.paths)
        assert domain_state(name) == "missing"
        assert not world.paths.session_dir(name).exists()
        assert not list(world.paths.daemon_records.glob("*.json"))
        with Client.connect(world.paths.daemon_socket) as c:
            assert c.call(p.ListSessions()).sessions == []
        # The workspace is untouched but for whole lines the command wrote.
        assert (world.workspace / "keep.txt").read_text() == "the person's file\n"
        lines = log.read_text().splitlines()
        assert lines and all(re.fullmatch(r"line-\d+", x) for x in lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(300)
        log.unlink(missing_ok=True)


def test_sigkill_of_qemu_mid_command_ends_with_a_clear_message(world: World):
    with service_thread(world) as daemon:
        with Client.connect(world.paths.daemon_socket) as c:
            name = c.call(p.VmUp(workspace=str(world.workspace))).session.name
            qemu = _qemu_pid(name)
            assert qemu is not None
            result: dict[str, BaseException] = {}

            def run() -> None:
                try:
                    c.exec(
                        p.Exec(workspace=str(world.workspace), command="sleep 600"),
                        on_stdout=lambda _b: None,
                        on_stderr=lambda _b: None,
                    )
                except BaseException as exc:
                    result["error"] = exc

            t = threading.Thread(target=run)
            t.start()
            assert wait_until(lambda: c.call(p.ListSessions()).sessions[0].busy, 60)
            os.kill(qemu, signal.SIGKILL)
            t.join(300)
            assert not t.is_alive()
            err = result.get("error")
            assert isinstance(err, DaemonError) and "stopped unexpectedly" in str(err), err
            assert c.call(p.ListSessions()).sessions == []
        # Two owners notice the dead QEMU (the service and the activity monitor's watchdog);
        # whichever removes the domain, it is gone shortly after the face was told.
        assert wait_until(lambda: domain_state(name) == "missing", 60), domain_state(name)
        # The session's folder and record go after the domain, by whichever owner closes it.
        assert wait_until(lambda: not world.paths.session_dir(name).exists(), 60)
        assert wait_until(lambda: not list(world.paths.daemon_records.glob("*.json")), 60)
        assert daemon.paths == world.paths
    assert (world.workspace / "keep.txt").read_text() == "the person's file\n"


def test_two_faces_see_one_sequence_and_either_answers_an_approval(world: World):
    """A task in a real VM: the faces watching see the same numbered events; the approval
    answered from one face releases the task and the asking face sees it answered."""
    notes = world.workspace / "cowork-demo-notes.md"
    with service_thread(world):
        sock = world.paths.daemon_socket
        with (
            Client.connect(sock) as task_face,
            Client.connect(sock) as a,
            Client.connect(sock) as b,
        ):
            seen: dict[str, list[p.Event]] = {"a": [], "b": []}
            a.subscribe(None, seen["a"].append)

            def on_b(ev: p.Event) -> None:
                seen["b"].append(ev)
                if isinstance(ev, p.ApprovalAsked):
                    threading.Thread(
                        target=lambda: b.call(p.AnswerApproval(approval=ev.approval, allow=True))
                    ).start()

            b.subscribe(None, on_b)
            asked: list[str] = []
            events: list[p.Event] = []

            def terminal(ev: p.ApprovalAsked) -> bool:
                asked.append(ev.approval)
                time.sleep(5)  # the person at this terminal is slower
                return False

            result = task_face.run_task(
                p.RunTask(workspace=str(world.workspace), task="summarise", mode="ask", demo=True),
                on_event=events.append,
                on_approval=terminal,
            )
            assert result.reason == "completed", result
            assert result.asked >= 1 and result.refused == 0
            # Staged by default: the notes wait in the service's change set until kept.
            assert not notes.exists()
            (info,) = a.call(p.ListChanges(session=result.session)).sets
            assert info.state == "pending" and info.workspace == str(world.workspace)
            _set, entries = b.show_changes(result.session)
            entry = next(e for e in entries if e.path == "cowork-demo-notes.md")
            assert entry.kind == "added" and entry.is_diff
            assert "+# Notes on this folder" in entry.preview
            kept = a.call(p.ApplyChanges(session=result.session, paths=[entry.path]))
            assert kept.applied == [entry.path] and kept.record
            assert notes.read_text().startswith("# Notes on this folder")
            undone = b.call(p.UndoChanges(record=kept.record))
            assert undone.restored == [entry.path] and not notes.exists()
            a.call(p.DiscardChanges(session=result.session))
            assert not notes.exists()
            answered = [e for e in events if isinstance(e, p.ApprovalAnswered)]
            assert len(answered) == len(asked) >= 1 and all(e.allow for e in answered)
            assert wait_until(lambda: seen["a"] and len(seen["a"]) == len(seen["b"]), 30)
            assert [e.model_dump() for e in seen["a"]] == [e.model_dump() for e in seen["b"]]
            kinds = {e.type for e in seen["a"]}
            assert {"approval.asked", "approval.answered", "task.text", "task.finished"} <= kinds
    notes.unlink(missing_ok=True)
    assert (world.workspace / "keep.txt").read_text() == "the person's file\n"


def test_the_cli_starts_the_service_and_a_vm_up_session_outlives_its_command(
    image_ready: None, tmp_path: Path
):
    from tests.cli.conftest import CLI

    cli = CLI(tmp_path / "home")
    ws = make_workspace(tmp_path)
    (ws / "keep.txt").write_text("cli file\n")
    claude = tmp_path / "claude"
    claude.mkdir()
    settings = tmp_path / "home" / "config" / "cowork" / "settings.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text(
        f'version = 1\n[vm]\nmemory_mib = 1024\n[mounts]\nclaude_dir = "{claude}"\n'
    )
    try:
        up = cli("vm", "up", "--workspace", str(ws))
        assert up.returncode == 0, up.stderr
        assert "started the cowork service in the background" in up.stderr
        name = up.stdout.split("\t")[0]
        listed = cli("vm", "list")
        assert listed.returncode == 0 and name in listed.stdout
        ex = cli("exec", "--workspace", str(ws), "--", "cat /workspace/keep.txt; hostname")
        assert ex.returncode == 0, ex.stderr
        assert ex.stdout.startswith("cli file\n")
        assert "started the cowork service" not in ex.stderr  # the same service, the same VM
        status = cli("daemon", "status")
        assert name in status.stdout and "MiB" in status.stdout
        down = cli("vm", "down", name)
        assert down.returncode == 0, down.stderr
        assert domain_state(name) == "missing"
    finally:
        cli("daemon", "stop", timeout=300)
        shutil.rmtree(cli.runtime, ignore_errors=True)


def fill_up(path: Path) -> None:
    """Fill the filesystem holding ``path`` but for about 1 MiB."""
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while True:
            st = os.statvfs(path)
            if st.f_bavail * st.f_frsize <= 2 << 20:
                return
            try:
                f.write(chunk)
                f.flush()
            except OSError:
                return


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a small filesystem needs root")
def test_a_full_disk_under_the_session_folder_ends_with_a_clear_message(
    world: World, tmp_path: Path
):
    paths = make_paths(tmp_path / "cowork")
    paths.state.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400m,mode=0700", "tmpfs", str(paths.state)], check=True
    )
    small = World(tmp_path, paths, world.workspace, world.upstream, world.overrides)
    paths.config.mkdir(parents=True)
    shutil.copyfile(world.paths.user_settings_file, paths.user_settings_file)
    filler = paths.state / "filler"
    try:
        with service_thread(small), Client.connect(paths.daemon_socket) as c:
            name = c.call(p.VmUp(workspace=str(world.workspace))).session.name
            # Something else on this computer fills the disk up.
            fill_up(filler)
            with pytest.raises(DaemonError) as err:
                c.exec(
                    p.Exec(
                        workspace=str(world.workspace),
                        command="dd if=/dev/zero of=/var/tmp/fill bs=1M count=300 "
                        "conv=fsync 2>&1; echo written",
                    ),
                    on_stdout=lambda _b: None,
                    on_stderr=lambda _b: None,
                )
            assert "is full" in str(err.value) and "free some space" in str(err.value)
            assert c.call(p.ListSessions()).sessions == []
            assert domain_state(name) == "missing"
            assert not paths.session_dir(name).exists()
            # With space again, the next session starts without any cleanup by hand.
            filler.unlink()
            again = c.call(p.VmUp(workspace=str(world.workspace))).session.name
            c.call(p.VmDown(name=again))
        assert (world.workspace / "keep.txt").read_text() == "the person's file\n"
        assert not list(paths.daemon_records.glob("*.json"))
    finally:
        filler.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(paths.state)], check=False)
        shutil.rmtree(paths.runtime, ignore_errors=True)
