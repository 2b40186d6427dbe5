"""The service over its real socket, with fake sessions: requests, events, approvals, faults
of input, and the peer check."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import threading
import time

import pytest

from cowork.daemon import protocol as p
from cowork.daemon.client import DaemonError
from tests.waiting import wait_until


def test_socket_is_private(service):
    st = os.stat(service.paths.daemon_socket)
    assert st.st_mode & 0o777 == 0o600
    assert os.stat(service.paths.runtime).st_mode & 0o777 == 0o700


def test_session_requests_round_trip(service):
    with service.client() as c:
        assert c.call(p.ListSessions()).sessions == []
        up = c.call(p.VmUp(workspace=str(service.workspace)))
        assert up.started and up.session.state == "running" and up.session.kept
        again = c.call(p.VmUp(workspace=str(service.workspace)))
        assert not again.started and again.session.name == up.session.name
        name = up.session.name
        assert [s.name for s in c.call(p.ListSessions()).sessions] == [name]
        assert c.call(p.VmStatus(name=name)).session.workspace == str(service.workspace)
        pol = c.call(p.PolicyView(session=name))
        assert pol.policy["agent"]["approval_mode"]
        info = c.call(p.DaemonStatus())
        assert info.pid == os.getpid() and info.rss_kib > 0 and len(info.sessions) == 1
        # The service recorded the session before its VM was defined.
        assert (service.paths.daemon_records / f"{name}.json").is_file()
        c.call(p.VmDown(name=name))
        assert service.opened[0].closed
        assert not (service.paths.daemon_records / f"{name}.json").exists()
        with pytest.raises(DaemonError) as err:
            c.call(p.VmStatus(name=name))
        assert err.value.code == "not_found"


def test_exec_streams_output_and_removes_a_session_it_booted(service):
    out, err = [], []
    with service.client() as c:
        res = c.exec(
            p.Exec(
                workspace=str(service.workspace), command="cat notes.txt; echo oops >&2; exit 3"
            ),
            on_stdout=out.append,
            on_stderr=err.append,
        )
        assert res.exit_code == 3
        assert b"".join(out) == b"first line\n" and b"".join(err) == b"oops\n"
        assert c.call(p.ListSessions()).sessions == []
    assert service.opened[0].closed


def test_bad_input_is_refused_and_the_service_keeps_serving(service):
    with service.client() as bad, service.client() as good:
        for line in [b"garbage\n", b'{"v": 1, "type": "vm.up", "id": 9}\n',
                     b"y" * (p.MAX_LINE + 10) + b"\n"]:  # fmt: skip
            bad.send_raw(line)
        # The same connection still answers a good request after the bad ones.
        assert bad.call(p.ListSessions()).sessions == []
        assert good.call(p.ListSessions()).sessions == []

    # Error replies carry codes (read raw, since the client drops replies nobody waits for).
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(service.paths.daemon_socket))
    f = sock.makefile("rwb")
    f.write(b"garbage\n" + b"z" * (p.MAX_LINE + 5) + b"\n" + p.ListSessions(id=3).to_line())
    f.flush()
    replies = [p.parse_incoming(f.readline()) for _ in range(3)]
    sock.close()
    assert [getattr(r, "code", r.type) for r in replies] == ["bad_line", "too_long", "sessions"]


def test_two_faces_see_the_same_events_and_an_approval_answered_by_either(service):
    seen: dict[str, list[p.Event]] = {"a": [], "b": []}
    with service.client() as task_face, service.client() as a, service.client() as b:
        a.subscribe(None, seen["a"].append)

        def answer_from_b(ev: p.Event) -> None:
            seen["b"].append(ev)
            if isinstance(ev, p.ApprovalAsked):
                threading.Thread(
                    target=lambda: b.call(p.AnswerApproval(approval=ev.approval, allow=True))
                ).start()

        b.subscribe(None, answer_from_b)
        asked_on_task_face: list[str] = []
        release = threading.Event()

        def slow_terminal(ev: p.ApprovalAsked) -> bool:
            asked_on_task_face.append(ev.approval)
            release.wait(10)  # the person at the terminal has not answered yet
            return False

        task_events: list[p.Event] = []
        result = task_face.run_task(
            p.RunTask(workspace=str(service.workspace), task="summarise", mode="ask"),
            on_event=task_events.append,
            on_approval=slow_terminal,
        )
        release.set()
        assert result.reason == "completed", result
        assert result.asked >= 1 and result.ran >= 1
        assert (service.workspace / "cowork-demo-notes.md").is_file()
        answered = [e for e in task_events if isinstance(e, p.ApprovalAnswered)]
        assert answered and all(e.allow and e.by.startswith("face-") for e in answered)
        assert len(asked_on_task_face) == len(answered)
        # Every face saw the same numbered sequence.
        assert wait_until(lambda: len(seen["a"]) == len(seen["b"]) and seen["a"])
        assert [e.seq for e in seen["a"]] == [e.seq for e in seen["b"]]
        assert [e.model_dump() for e in seen["a"]] == [e.model_dump() for e in seen["b"]]
        kinds = [e.type for e in seen["a"]]
        assert "approval.asked" in kinds and "approval.answered" in kinds
        assert "task.finished" in kinds and "task.text" in kinds
        # A late answer from the terminal is not accepted.
        late = task_face.call(p.AnswerApproval(approval=answered[0].approval, allow=False))
        assert not late.accepted


def test_an_unanswered_approval_times_out_as_no(service):
    service.daemon.approvals._timeout = 0.3
    with service.client() as c:
        result = c.run_task(
            p.RunTask(workspace=str(service.workspace), task="summarise", mode="ask"),
            on_event=lambda _e: None,
            on_approval=lambda _e: (time.sleep(3), True)[1],
        )
    assert result.reason == "completed" and result.asked >= 1 and result.refused == result.asked
    assert not (service.workspace / "cowork-demo-notes.md").exists()


def test_stop_task_from_another_face(service):
    with service.client() as task_face, service.client() as other:
        holder: dict[str, p.TaskResult] = {}
        asked = threading.Event()

        def run() -> None:
            holder["r"] = task_face.run_task(
                p.RunTask(workspace=str(service.workspace), task="summarise", mode="ask"),
                on_event=lambda _e: None,
                on_approval=lambda _e: (asked.set(), time.sleep(30), True)[2],
            )

        t = threading.Thread(target=run)
        t.start()
        assert asked.wait(10)
        [s] = other.call(p.ListSessions()).sessions
        assert s.busy
        other.call(p.StopTask(session=s.name))
        t.join(10)
        assert holder["r"].reason == "interrupted"
        assert service.opened[0].closed


def _long_command(service, face, started: threading.Event, holder: dict) -> threading.Thread:
    """``exec`` a command that says it started, then would write a file a minute later."""

    def run() -> None:
        with contextlib.suppress(DaemonError):
            holder["r"] = face.exec(
                p.Exec(workspace=str(service.workspace),
                       command="echo started; sleep 60; echo late > late.txt"),
                on_stdout=lambda b: b"started" in b and started.set(),
                on_stderr=lambda _b: None,
            )  # fmt: skip

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_face_that_goes_away_stops_its_command(service):
    started = threading.Event()
    face = service.client()
    _long_command(service, face, started, {})
    assert started.wait(10)
    face.close()
    # The command's processes are killed (not left to finish), and the VM it started goes.
    assert wait_until(lambda: service.opened and service.opened[0].closed)
    with service.client() as other:
        assert other.call(p.ListSessions()).sessions == []
    time.sleep(0.5)
    assert not (service.workspace / "late.txt").exists()


def test_stop_from_another_face_stops_a_command(service):
    started = threading.Event()
    holder: dict[str, p.ExecResult] = {}
    with service.client() as face, service.client() as other:
        t = _long_command(service, face, started, holder)
        assert started.wait(10)
        [s] = other.call(p.ListSessions()).sessions
        assert s.busy
        other.call(p.StopTask(session=s.name))
        t.join(10)
        assert holder["r"].exit_code == 130
        assert service.opened[0].closed
    assert not (service.workspace / "late.txt").exists()


def test_a_command_in_a_vm_that_dies_ends_with_why_not_as_stopped(service):
    started = threading.Event()
    holder: dict[str, p.ExecResult] = {}
    with service.client() as face:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                holder["r"] = face.exec(
                    p.Exec(workspace=str(service.workspace), command="echo started; sleep 60"),
                    on_stdout=lambda b: b"started" in b and started.set(),
                    on_stderr=lambda _b: None,
                )
            except DaemonError as exc:
                errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        assert started.wait(10)
        service.backend.running.clear()  # the VM is gone; the service's watchdog notices
        t.join(30)
        assert not holder and len(errors) == 1 and "stopped unexpectedly" in str(errors[0])


def test_a_bad_mode_is_refused_before_anything_runs(service):
    with service.client() as c, pytest.raises(DaemonError, match="unknown approval mode"):
        c.run_task(
            p.RunTask(workspace=str(service.workspace), task="x", mode="bogus"),
            on_event=lambda _e: None,
            on_approval=lambda _e: True,
        )
    assert service.opened[0].channel.commands == []


def _connect_as(uid: int, gid: int, path: str) -> str:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to the other user and try the socket
        os.close(r)
        msg = b"?"
        try:
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.settimeout(5)
                s.connect(path)
                # The service answers a refused peer at once, before reading anything.
                msg = s.makefile("rb").readline() or b"closed"
            except OSError as exc:
                msg = f"oserror {exc.errno}".encode()
        finally:
            os.write(w, msg)
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as a second user")
def test_a_client_of_another_uid_is_refused(service):
    nobody = pwd.getpwnam("nobody")
    path = str(service.paths.daemon_socket)
    # The socket's mode keeps other users out...
    assert _connect_as(nobody.pw_uid, nobody.pw_gid, path).startswith("oserror")
    # ...and if its mode were ever loosened, the peer check still refuses them.
    os.chmod(service.paths.runtime, 0o755)  # noqa: S103 - deliberately loosened
    os.chmod(path, 0o666)  # noqa: S103 - deliberately loosened
    reply = p.parse_incoming(_connect_as(nobody.pw_uid, nobody.pw_gid, path).encode())
    assert isinstance(reply, p.ErrorReply) and reply.code == "refused"
    with service.client() as c:  # the owner is still served
        assert c.call(p.ListSessions()).sessions == []


def test_a_face_that_goes_away_stops_its_task(service):
    asked = threading.Event()
    face = service.client()

    def run() -> None:
        with contextlib.suppress(DaemonError):
            face.run_task(
                p.RunTask(workspace=str(service.workspace), task="summarise", mode="ask"),
                on_event=lambda _e: None,
                on_approval=lambda _e: (asked.set(), time.sleep(30), True)[2],
            )

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert asked.wait(10)
    face.close()
    assert wait_until(lambda: service.opened and service.opened[0].closed)
    with service.client() as other:
        assert other.call(p.ListSessions()).sessions == []
    assert not (service.workspace / "cowork-demo-notes.md").exists()


# --- staged changes ---------------------------------------------------------------------------


def _stage(paths, ws, session="cowork-ws-1"):
    """A stored change set made through the library, as the end of a staged task leaves it:
    notes.txt edited, new.txt added, a binary file added."""
    from cowork.host.changes import store
    from tests.host.changes.test_gate import entry, stream

    store.begin(paths, session, ws)
    blob = bytes(range(256))
    store.store_stream(
        paths, session,
        stream(
            [entry(b"notes.txt", size=16), entry(b"new.txt", size=4),
             entry(b"pic.bin", size=len(blob))],
            [b"first line\nmore\n", b"new\n", blob],
        ),
        1 << 20,
    )  # fmt: skip
    return session


def test_staged_changes_list_show_apply_undo(service):
    ws = service.workspace
    name = _stage(service.paths, ws)
    with service.client() as c:
        sets = c.call(p.ListChanges())
        assert [s.session for s in sets.sets] == [name]
        info = sets.sets[0]
        assert info.state == "pending" and info.workspace == str(ws) and info.pending == 3
        assert info.summary == "edited 1 file, added 2"
        assert sets.undo == []
        assert c.call(p.ListChanges(session=name)).sets[0].session == name

        shown = c.call(p.ShowChanges(session=name))
        assert shown.total == 3 and shown.next_offset is None
        by = {e.path: e for e in shown.entries}
        assert by["notes.txt"].kind == "modified" and by["notes.txt"].is_diff
        assert "+more" in by["notes.txt"].preview
        assert by["new.txt"].kind == "added" and "+new" in by["new.txt"].preview
        assert not by["pic.bin"].is_diff and by["pic.bin"].preview
        assert by["pic.bin"].size == 256 and by["notes.txt"].conflict is None

        applied = c.call(p.ApplyChanges(session=name, paths=["new.txt"]))
        assert applied.applied == ["new.txt"] and applied.record
        assert (ws / "new.txt").read_text() == "new\n"
        assert (ws / "notes.txt").read_text() == "first line\n"  # not selected: untouched
        assert not (ws / "pic.bin").exists()
        left = c.call(p.ShowChanges(session=name))
        assert {e.path for e in left.entries} == {"notes.txt", "pic.bin"}
        assert c.call(p.ListChanges()).undo == [applied.record]

        undone = c.call(p.UndoChanges())
        assert undone.record == applied.record and undone.restored == ["new.txt"]
        assert undone.refused == []
        assert not (ws / "new.txt").exists()
        assert c.call(p.ShowChanges(session=name)).total == 3  # pending again


def test_staged_changes_conflicts_need_overwrite_and_undo_refuses_changed_files(service):
    ws = service.workspace
    name = _stage(service.paths, ws)
    (ws / "notes.txt").write_text("edited by the person meanwhile\n")
    with service.client() as c:
        entry = next(
            e for e in c.call(p.ShowChanges(session=name)).entries if e.path == "notes.txt"
        )
        assert entry.conflict
        kept = c.call(p.ApplyChanges(session=name, paths=["notes.txt", "new.txt"]))
        assert kept.applied == ["new.txt"]
        assert [e.path for e in kept.conflicts] == ["notes.txt"] and kept.conflicts[0].conflict
        assert (ws / "notes.txt").read_text() == "edited by the person meanwhile\n"
        forced = c.call(p.ApplyChanges(session=name, paths=["notes.txt"], overwrite=True))
        assert forced.applied == ["notes.txt"]
        assert (ws / "notes.txt").read_text() == "first line\nmore\n"
        # new.txt changes after it was kept: undoing that apply refuses it, with the reason.
        (ws / "new.txt").write_text("the person's own words\n")
        undone = c.call(p.UndoChanges(record=kept.record))
        assert undone.restored == [] and [r.path for r in undone.refused] == ["new.txt"]
        assert (ws / "new.txt").read_text() == "the person's own words\n"


def test_staged_changes_discard_leaves_the_folder_alone(service):
    ws = service.workspace
    name = _stage(service.paths, ws)
    with service.client() as c:
        c.call(p.DiscardChanges(session=name))
        assert c.call(p.ListChanges()).sets[0].state == "discarded"
        assert c.call(p.ListChanges(pending_only=True)).sets == []
        with pytest.raises(DaemonError) as err:
            c.call(p.ApplyChanges(session=name))
        assert err.value.code == "failed" and "already discarded" in str(err.value)
    assert sorted(x.name for x in ws.iterdir()) == ["notes.txt"]
    assert (ws / "notes.txt").read_text() == "first line\n"


def test_staged_changes_bad_requests_are_clear_errors(service):
    with service.client() as c:
        for req in (
            p.ShowChanges(session="nope"),
            p.ApplyChanges(session="nope"),
            p.DiscardChanges(session="nope"),
            p.ListChanges(session="nope"),
            p.UndoChanges(record="nope"),
        ):
            with pytest.raises(DaemonError) as err:
                c.call(req)
            assert err.value.code == "not_found" and "nope" in str(err.value)
        with pytest.raises(DaemonError) as err:
            c.call(p.ShowChanges(session="../etc"))
        assert err.value.code in ("bad_request", "not_found") and "../etc" in str(err.value)
        with pytest.raises(DaemonError) as err:
            c.call(p.UndoChanges())
        assert err.value.code == "failed" and "nothing to undo" in str(err.value)
        # The service keeps serving after each error.
        assert c.call(p.ListChanges()).sets == []


def test_a_large_change_set_is_shown_in_pages_under_the_line_limit(service, monkeypatch):
    from cowork.daemon import server

    monkeypatch.setattr(server, "CHANGES_PAGE_BYTES", 600)
    name = _stage(service.paths, service.workspace)
    with service.client() as c:
        seen, offset, pages = [], 0, 0
        while offset is not None:
            page = c.call(p.ShowChanges(session=name, offset=offset))
            seen += [e.path for e in page.entries]
            offset, pages = page.next_offset, pages + 1
        assert sorted(seen) == ["new.txt", "notes.txt", "pic.bin"] and pages > 1
        info, entries = c.show_changes(name)
        assert info.session == name and [e.path for e in entries] == seen


def test_the_service_anchors_and_exports_what_its_sessions_record(service):
    """Sessions the service runs go to the same audit log as the CLI's: with an anchor when
    a session ends, and to the organisation's collector when one is set."""
    from cowork.host.audit import read_anchors
    from cowork.host.events import Kind
    from tests.host.test_export import HttpReceiver, _free_port

    receiver = HttpReceiver(_free_port())
    receiver.protocol = "http/protobuf"  # type: ignore[attr-defined]
    receiver.start()
    try:
        service.paths.admin.mkdir(parents=True, exist_ok=True)
        service.paths.admin_policy_file.write_text(
            f'[audit]\notel_endpoint = "{receiver.endpoint}"\n'
        )
        bus = service.daemon._bus()
        bus.emit(Kind.SESSION_STARTED, session="svc-1")
        bus.emit(Kind.AGENT_STARTED, session="svc-1", task_id="t1")
        bus.emit(Kind.AGENT_FINISHED, session="svc-1", task_id="t1", reason="completed")
        bus.emit(Kind.SESSION_ENDED, session="svc-1")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            len(receiver.received.records) < 4 or not receiver.received.spans
        ):
            time.sleep(0.05)
        kinds = [r["event_name"] for r in receiver.received.records]
        assert kinds == ["session.started", "agent.started", "agent.finished", "session.ended"]
        assert [s["name"] for s in receiver.received.spans] == ["cowork.task"]
        (anchor,) = read_anchors(service.paths.audit_anchors, service.paths.audit_log)
        assert anchor.session == "svc-1"
    finally:
        from cowork.cli import common

        exporter = common._EXPORTERS.pop(service.paths.export_queue, None)
        if exporter is not None:
            exporter.close(1.0)
        receiver.stop()
