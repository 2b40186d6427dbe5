"""FileWatcher: real inotify (watchdog) events for files and folders, even ones created later."""

from __future__ import annotations

import threading
from pathlib import Path

from cowork.host.watch import FileWatcher

WAIT_S = 10  # generous upper bound for a notification; no assertion on how fast it came


class Seen:
    def __init__(self) -> None:
        self.batches: list[frozenset[Path]] = []
        self.event = threading.Event()

    def __call__(self, paths: frozenset[Path]) -> None:
        self.batches.append(paths)
        self.event.set()

    def wait(self) -> frozenset[Path]:
        assert self.event.wait(WAIT_S), "no change was reported"
        self.event.clear()
        return self.batches[-1]


def test_reports_changes_to_a_watched_file_only(tmp_path):
    target = tmp_path / "settings.toml"
    other = tmp_path / "other.toml"
    seen = Seen()
    with FileWatcher([target], on_change=seen):
        other.write_text("x")
        target.write_text("a")
        assert target in seen.wait()
    assert all(other not in batch for batch in seen.batches)


def test_file_in_a_folder_that_does_not_exist_yet(tmp_path):
    target = tmp_path / "etc" / "cowork" / "policy.toml"
    seen = Seen()
    with FileWatcher([target], on_change=seen):
        target.parent.mkdir(parents=True)
        seen.wait()
        target.write_text("version = 1\n")
        while target not in seen.wait():
            pass


def test_files_inside_a_watched_folder_and_a_failing_callback(tmp_path):
    folder = tmp_path / "policy.d"
    folder.mkdir()
    seen = Seen()
    calls = []

    def flaky(paths):
        calls.append(paths)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        seen(paths)

    with FileWatcher(folders=[folder], on_change=flaky, settle_s=0.05) as watcher:
        (folder / "10-a.toml").write_text("a")
        assert threading.Event().wait(0.5) is False
        (folder / "20-b.toml").write_text("b")
        assert folder / "20-b.toml" in seen.wait()
    assert watcher._observer is None
