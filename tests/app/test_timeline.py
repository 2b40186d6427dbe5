from cowork.app import text as T
from cowork.app.service import SessionState
from cowork.app.timeline import STALL_AFTER, EntryKind, Timeline, one_sentence
from cowork.host.events import Event, Kind


def ev(kind, t=0.0, **fields):
    return Event(kind=kind, fields=fields, session="s1", time=t)


def test_full_run_in_plain_words():
    tl = Timeline()
    tl.apply(ev(Kind.SESSION_STARTED, 0))
    assert tl.state is SessionState.STARTING
    tl.apply(ev(Kind.VM_READY, 12, boot_seconds=12.2))
    assert tl.state is SessionState.WORKING
    tl.apply(ev(Kind.AGENT_TEXT, 13, text="Let me look."))
    tl.apply(ev(Kind.ACTION_DECIDED, 14, tool="read_file", action="Read the file a.txt",
                verdict="run"))  # fmt: skip
    tl.apply(ev(Kind.ACTION_DECIDED, 15, tool="bash", action="Run a command: ls", verdict="run"))
    tl.apply(ev(Kind.COMMAND_STARTED, 15, command="ls -la /workspace"))
    tl.apply(ev(Kind.COMMAND_FINISHED, 16, exited=2, timed_out=False))
    tl.apply(ev(Kind.ACTION_DECIDED, 17, tool="write_file", action="Write the file b.txt (3 bytes)",
                verdict="run-approved"))  # fmt: skip
    tl.apply(ev(Kind.EGRESS_DENIED, 18, host="evil.example", method="POST", path="/x",
                reason="no grant matches. More text here."))  # fmt: skip
    tl.apply(ev(Kind.ACTION_DECIDED, 19, tool="bash", action="Run a command: cat ~/.ssh/id_rsa",
                verdict="refuse", reason="Reads a credential file. Rule 7."))  # fmt: skip
    tl.apply(ev(Kind.AGENT_FINISHED, 20, error=None))
    kinds = [e.kind for e in tl.entries]
    K = EntryKind
    assert kinds == [K.SYSTEM, K.SAY, K.READ, K.COMMAND, K.WRITE, K.WEB, K.COMMAND, K.SYSTEM]
    ready, _, read, cmd, write, web, refused, done = tl.entries
    assert ready.text == "The sealed machine is ready (12 s)"
    assert read.outcome == T.OUTCOME_DONE
    assert cmd.details == "ls -la /workspace" and cmd.outcome == "failed (exit code 2)"
    assert "ls -la" not in cmd.text  # the raw command only behind Details
    assert write.outcome == T.OUTCOME_DONE
    assert web.refused and web.outcome == "Not allowed: no grant matches."
    assert web.details == "POST evil.example/x"
    assert refused.refused and refused.outcome == "Not allowed: Reads a credential file."
    assert refused.details is None
    assert done.text == T.FINISHED_OK and tl.state is SessionState.FINISHED


def test_waiting_then_answered():
    tl = Timeline()
    tl.apply(ev(Kind.VM_READY, 1))
    tl.apply(ev(Kind.APPROVAL_ASKED, 2, call_id="c1", action="Delete 3 files"))
    assert tl.state is SessionState.WAITING
    tl.apply(ev(Kind.APPROVAL_ANSWERED, 3, call_id="c1", approved=False))
    assert tl.state is SessionState.WORKING
    assert tl.entries[-1].text == "Asked you: Delete 3 files"
    assert tl.entries[-1].outcome == T.DONT_ALLOW


def test_stalled_only_when_working_and_quiet():
    tl = Timeline()
    tl.apply(ev(Kind.VM_READY, 100))
    assert tl.shown_state(100 + STALL_AFTER - 1) is SessionState.WORKING
    assert tl.shown_state(100 + STALL_AFTER + 1) is SessionState.STALLED
    tl.apply(ev(Kind.APPROVAL_ASKED, 100, call_id="c", action="x"))
    assert tl.shown_state(100 + 10 * STALL_AFTER) is SessionState.WAITING


def test_failure_and_stop():
    tl = Timeline()
    tl.apply(ev(Kind.AGENT_FINISHED, 1, error="the model refused the key"))
    assert tl.state is SessionState.FAILED
    assert "the model refused the key" in tl.entries[-1].text
    tl.apply(ev(Kind.SESSION_ENDED, 2))
    assert tl.state is SessionState.FAILED
    other = Timeline()
    other.apply(ev(Kind.VM_READY, 1))
    other.apply(ev(Kind.SESSION_ENDED, 2))
    assert other.state is SessionState.STOPPED


def test_odd_events_are_ignored_or_survived():
    tl = Timeline()
    assert tl.apply(ev(Kind.POLICY_LOADED, 1)) is None
    assert tl.apply(ev(Kind.COMMAND_FINISHED, 1, exited=0)) is None
    entry = tl.apply(ev(Kind.COMMAND_STARTED, 2, command="make"))
    assert entry is not None and entry.details == "make"
    tl.apply(ev(Kind.ACTION_DECIDED, 3))  # no fields at all
    assert tl.entries[-1].kind is EntryKind.COMMAND


def test_one_sentence():
    assert one_sentence("A. B.") == "A."
    assert one_sentence("") == "cowork's rules do not allow this."
    assert one_sentence("  spaced\n out ") == "spaced out"
