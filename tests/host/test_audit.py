"""The audit log's chain and anchors: every kind of tampering is found at its first bad line."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cowork.errors import UsageError
from cowork.host.audit import find_line, read_anchors, verify
from cowork.host.events import AuditLog, EventBus, Kind, verify_log


def _write_two_sessions(tmp_path: Path) -> tuple[Path, Path]:
    """Lines 1-4 are session a (4 = its end, anchored), 5-8 session b (8 anchored)."""
    log = tmp_path / "data" / "audit.jsonl"
    anchors = tmp_path / "state" / "audit-anchors.jsonl"
    for name in ("a", "b"):
        bus = EventBus(session=name)
        bus.subscribe(AuditLog(log, anchors=anchors))
        bus.emit(Kind.SESSION_STARTED)
        bus.emit(Kind.COMMAND_STARTED, argv=["ls"])
        bus.emit(Kind.COMMAND_FINISHED, exit_status=0)
        bus.emit(Kind.SESSION_ENDED, overlay_kept=False)
    return log, anchors


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines(keepends=True)


def _rehash(lines: list[str]) -> list[str]:
    """What a careful attacker does: recompute the whole chain after a change."""
    from cowork.host.events import GENESIS, _line_hash

    out, prev = [], GENESIS
    for n, raw in enumerate(lines, start=1):
        obj = json.loads(raw)
        obj.pop("hash", None)
        obj["prev"], obj["seq"] = prev, n
        obj["hash"] = prev = _line_hash(obj)
        out.append(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")
    return out


def test_an_untouched_log_verifies_with_its_anchors(tmp_path):
    log, anchors = _write_two_sessions(tmp_path)
    report = verify(log, anchors)
    assert report.ok and report.lines == 8 and report.anchors == 2
    assert [a.seq for a in read_anchors(anchors, log)] == [4, 8]
    assert stat.S_IMODE(anchors.stat().st_mode) == 0o600
    assert [json.loads(x)["seq"] for x in _lines(log)] == list(range(1, 9))
    assert verify_log(log) == []


def test_an_edited_line_is_found(tmp_path):
    log, anchors = _write_two_sessions(tmp_path)
    lines = _lines(log)
    lines[2] = lines[2].replace('"exit_status":0', '"exit_status":1')
    log.write_text("".join(lines))
    report = verify(log, anchors)
    assert report.problem is not None and report.problem.line == 3
    assert "edited" in report.problem.message
    assert report.lines == 2


def test_a_removed_line_is_found(tmp_path):
    log, anchors = _write_two_sessions(tmp_path)
    lines = _lines(log)
    del lines[1]
    log.write_text("".join(lines))
    report = verify(log, anchors)
    assert report.problem is not None and report.problem.line == 2
    assert "removed" in report.problem.message


def test_reordered_lines_are_found(tmp_path):
    log, anchors = _write_two_sessions(tmp_path)
    lines = _lines(log)
    lines[5], lines[6] = lines[6], lines[5]
    log.write_text("".join(lines))
    report = verify(log, anchors)
    assert report.problem is not None and report.problem.line == 6


def test_a_line_appended_to_an_ended_session_is_found_even_with_a_valid_chain(tmp_path):
    log, anchors = _write_two_sessions(tmp_path)
    bus = EventBus(session="a")  # a forged late event for session a, properly chained
    bus.subscribe(AuditLog(log))
    bus.emit(Kind.COMMAND_FINISHED, exit_status=0)
    report = verify(log, anchors)
    assert report.problem is not None and report.problem.line == 9
    assert "after the session ended" in report.problem.message
    # the chain alone cannot see it; the anchor can
    assert verify_log(log) == []


def test_a_rewritten_chain_is_caught_by_the_anchor(tmp_path):
    log, anchors = _write_two_sessions(tmp_path)
    lines = _lines(log)
    lines[1] = lines[1].replace('"ls"', '"true"')
    log.write_text("".join(_rehash(lines)))
    assert verify_log(log) == []
    report = verify(log, anchors)
    assert report.problem is not None and report.problem.line == 4
    assert "anchor" in report.problem.message


def test_lines_cut_from_the_end_are_found(tmp_path):
    log, anchors = _write_two_sessions(tmp_path)
    log.write_text("".join(_lines(log)[:6]))
    report = verify(log, anchors)
    assert report.problem is not None and report.problem.line == 7
    assert "cut from the end" in report.problem.message


def test_garbage_in_the_log_is_the_first_bad_line(tmp_path):
    log, anchors = _write_two_sessions(tmp_path)
    lines = _lines(log)
    lines.insert(3, "not json\n")
    log.write_text("".join(lines))
    report = verify(log, anchors)
    assert report.problem is not None and report.problem.line == 4


def test_find_line_and_missing_log(tmp_path):
    log, _ = _write_two_sessions(tmp_path)
    assert find_line(log, 2)["kind"] == "command.started"
    with pytest.raises(UsageError, match="event 99 is not in"):
        find_line(log, 99)
    with pytest.raises(UsageError, match="no audit log"):
        verify(tmp_path / "nope.jsonl")


def test_several_writers_keep_one_chain(tmp_path):
    log = tmp_path / "audit.jsonl"
    one, two = AuditLog(log), AuditLog(log)
    for i in range(5):
        (one if i % 2 else two).append(EventBus().emit(Kind.AGENT_TEXT, text=str(i)))
    assert verify(log).ok
