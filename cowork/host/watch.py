"""Watching files and folders for changes: the one module that imports watchdog.

Contract:
- :class:`FileWatcher` calls ``on_change(paths)`` (from its own thread) after files it
  watches were created, modified, moved or deleted, coalescing bursts that arrive within
  ``settle_s`` into one call. A callback that raises is logged; watching continues.
- Watched files may not exist yet, nor may their folders: the nearest existing ancestor is
  watched and the watch moves down as folders appear.
- watchdog's errors are translated into :class:`cowork.errors.CoworkError` here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from cowork.errors import CoworkError

log = logging.getLogger(__name__)

OnChange = Callable[[frozenset[Path]], None]


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.is_dir():
        if p.parent == p:
            return p
        p = p.parent
    return p


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FileWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        names = [event.src_path, getattr(event, "dest_path", "")]
        self._watcher._saw([Path(os.fsdecode(n)) for n in names if n])


class FileWatcher:
    """Watch ``files`` (and every file directly inside ``folders``) for changes."""

    def __init__(
        self,
        files: Iterable[Path] = (),
        folders: Iterable[Path] = (),
        *,
        on_change: OnChange,
        settle_s: float = 0.1,
    ) -> None:
        self.files = frozenset(Path(os.path.abspath(f)) for f in files)
        self.folders = frozenset(Path(os.path.abspath(d)) for d in folders)
        self._on_change = on_change
        self._settle_s = settle_s
        self._observer: BaseObserver | None = None
        self._watches: dict[Path, ObservedWatch] = {}
        self._pending: set[Path] = set()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    # Which directories must be observed for the files and folders to be seen.
    def _wanted_dirs(self) -> set[Path]:
        wanted = {_existing_ancestor(f.parent) for f in self.files}
        for d in self.folders:
            wanted.add(_existing_ancestor(d))
            if d.is_dir():
                wanted.add(d)
        return wanted

    def _relevant(self, path: Path) -> bool:
        if path in self.files or path.parent in self.folders or path in self.folders:
            return True
        # A folder on the way to a watched file or folder appeared or vanished.
        return any(path in t.parents for t in (*self.files, *self.folders))

    def _reschedule(self) -> None:
        observer = self._observer
        if observer is None:
            return
        wanted = self._wanted_dirs()
        for d in list(self._watches):
            if d not in wanted:
                observer.unschedule(self._watches.pop(d))
        for d in wanted - set(self._watches):
            try:
                self._watches[d] = observer.schedule(_Handler(self), str(d), recursive=False)
            except OSError as exc:
                log.warning("cannot watch %s: %s", d, exc)

    def _saw(self, paths: list[Path]) -> None:
        relevant = [p for p in paths if self._relevant(p)]
        if not relevant:
            return
        with self._lock:
            self._pending.update(relevant)
            if self._timer is None:
                self._timer = threading.Timer(self._settle_s, self._fire)
                self._timer.daemon = True
                self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            pending, self._pending = frozenset(self._pending), set()
            self._timer = None
        try:
            self._reschedule()
        except Exception:
            log.exception("re-scheduling watches failed")
        try:
            self._on_change(pending)
        except Exception:
            log.exception("change handler failed for %s", sorted(map(str, pending)))

    def start(self) -> None:
        if self._observer is not None:
            return
        observer = Observer()
        observer.daemon = True
        self._observer = observer
        try:
            self._reschedule()
            observer.start()
        except Exception as exc:
            self._observer = None
            raise CoworkError(f"cannot watch configuration files for changes: {exc}") from exc

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
        self._watches.clear()

    def __enter__(self) -> FileWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
