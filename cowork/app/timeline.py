"""A task's live timeline and state, built from events (no Qt).

Contract: :meth:`Timeline.apply` accepts any event (unknown kinds are ignored) and never
raises on odd fields; entries are plain words, the raw command stays in ``details``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from cowork.app import text as T
from cowork.app.service import SessionState
from cowork.host.events import Event, Kind

#: Seconds without any event before a working task is shown as stalled.
STALL_AFTER = 90.0
READ_TOOLS = frozenset({"read_file", "list_files", "grep"})
WRITE_TOOLS = frozenset({"write_file", "edit_file"})


class EntryKind(enum.StrEnum):
    SAY = "say"
    READ = "read"
    WRITE = "write"
    COMMAND = "command"
    WEB = "web"
    ASK = "ask"
    SYSTEM = "system"


@dataclass
class Entry:
    kind: EntryKind
    text: str
    time: float
    outcome: str | None = None
    details: str | None = None
    refused: bool = False


def tool_kind(tool: str) -> EntryKind:
    if tool in READ_TOOLS:
        return EntryKind.READ
    if tool in WRITE_TOOLS:
        return EntryKind.WRITE
    return EntryKind.COMMAND


def one_sentence(reason: Any) -> str:
    text = " ".join(str(reason or "").split())
    if not text:
        return T.RULES_DO_NOT_ALLOW
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


class Timeline:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.state = SessionState.STARTING
        self.started_at: float | None = None
        self.last_activity: float | None = None
        self.vm_ready_at: float | None = None

    def shown_state(self, now: float) -> SessionState:
        quiet = now - (self.last_activity or now)
        if self.state is SessionState.WORKING and quiet > STALL_AFTER:
            return SessionState.STALLED
        return self.state

    def _last(self, kind: EntryKind, *, open_only: str) -> Entry | None:
        for e in reversed(self.entries):
            if e.kind is kind and getattr(e, open_only) is None and not e.refused:
                return e
        return None

    def _add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        return entry

    def apply(self, event: Event) -> Entry | None:
        f = event.fields
        self.last_activity = event.time
        if self.started_at is None:
            self.started_at = event.time
        match event.kind:
            case Kind.SESSION_STARTED:
                self.state = SessionState.STARTING
                self.started_at = event.time
                return None
            case Kind.VM_READY:
                self.state = SessionState.WORKING
                self.vm_ready_at = event.time
                secs = f.get("boot_seconds")
                txt = T.VM_READY
                if isinstance(secs, int | float):
                    txt += f" ({T.duration(float(secs))})"
                return self._add(Entry(EntryKind.SYSTEM, txt, event.time))
            case Kind.AGENT_TEXT:
                if self.state is SessionState.STARTING:
                    self.state = SessionState.WORKING
                return self._add(Entry(EntryKind.SAY, str(f.get("text", "")), event.time))
            case Kind.ACTION_DECIDED:
                if self.state is SessionState.STARTING:
                    self.state = SessionState.WORKING
                kind = tool_kind(str(f.get("tool", "")))
                verdict = str(f.get("verdict", ""))
                entry = Entry(kind, str(f.get("action", "")), event.time)
                if verdict.startswith("refuse"):
                    entry.refused = True
                    entry.outcome = T.REFUSED_PREFIX.format(why=one_sentence(f.get("reason")))
                elif kind is not EntryKind.COMMAND:
                    entry.outcome = T.OUTCOME_DONE
                return self._add(entry)
            case Kind.COMMAND_STARTED:
                cmd = str(f.get("command", ""))
                last = self._last(EntryKind.COMMAND, open_only="details")
                if last is None:
                    last = self._add(Entry(EntryKind.COMMAND, T.RAN_A_COMMAND, event.time))
                last.details = cmd
                return last
            case Kind.COMMAND_FINISHED:
                last = self._last(EntryKind.COMMAND, open_only="outcome")
                if last is None:
                    return None
                if f.get("timed_out"):
                    last.outcome = T.OUTCOME_TIMED_OUT
                elif f.get("exited") in (0, None):
                    last.outcome = T.OUTCOME_DONE
                else:
                    last.outcome = T.OUTCOME_FAILED.format(code=f.get("exited"))
                return last
            case Kind.EGRESS_ALLOWED | Kind.EGRESS_DENIED:
                host = str(f.get("host", "?"))
                denied = event.kind is Kind.EGRESS_DENIED
                words = T.WEB_DENIED if denied else T.WEB_ALLOWED
                entry = Entry(EntryKind.WEB, words.format(host=host), event.time)
                entry.details = f"{f.get('method', '')} {host}{f.get('path', '')}".strip()
                if denied:
                    entry.refused = True
                    entry.outcome = T.REFUSED_PREFIX.format(why=one_sentence(f.get("reason")))
                else:
                    entry.outcome = T.OUTCOME_DONE
                return self._add(entry)
            case Kind.APPROVAL_ASKED:
                self.state = SessionState.WAITING
                words = T.ASKED_YOU.format(action=f.get("action", ""))
                return self._add(Entry(EntryKind.ASK, words, event.time))
            case Kind.APPROVAL_ANSWERED:
                self.state = SessionState.WORKING
                last = self._last(EntryKind.ASK, open_only="outcome")
                if last is not None:
                    last.outcome = T.ALLOW if f.get("approved") else T.DONT_ALLOW
                return last
            case Kind.AGENT_FINISHED:
                error = f.get("error")
                self.state = SessionState.FAILED if error else SessionState.FINISHED
                words = T.FINISHED_ERROR.format(error=error) if error else T.FINISHED_OK
                return self._add(Entry(EntryKind.SYSTEM, words, event.time))
            case Kind.SESSION_ENDED:
                if self.state not in (SessionState.FINISHED, SessionState.FAILED):
                    self.state = SessionState.STOPPED
                return None
        return None
