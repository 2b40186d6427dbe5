"""Export of the audit trail to the organisation's OpenTelemetry collector, from the host.

Export runs on the host, never in the guest, where an egress rule could silently drop it.
Every line the audit log writes (:meth:`cowork.host.events.AuditLog.add_listener`) becomes
one OTLP log record, in log order, over OTLP/HTTP (protobuf) or OTLP/gRPC, using the
OpenTelemetry SDK's exporters for the wire format and transport.

Delivery:
- Each line is first appended to a bounded on-disk queue (``Paths.export_queue``: a JSON-lines
  file plus a cursor), so nothing is lost while the collector is down or cowork restarts. A
  background thread sends batches (``batch_size`` records, or whatever is queued after
  ``flush_interval`` seconds) and advances the cursor only after the collector accepted the
  batch; a failed batch is retried, unchanged, with exponential backoff (``backoff_initial``
  doubling up to ``backoff_max``). Delivery is at-least-once; each record carries the audit
  line's ``cowork.audit.seq`` and ``cowork.audit.hash``, so a collector can drop a repeat.
- The queue holds at most ``max_bytes`` of unsent records. A line that does not fit is
  dropped from the export (it stays in the local audit log); when space frees up, a
  ``export.dropped`` record with the count and the first and last dropped ``seq`` is queued
  first, and ``on_dropped`` is called (the CLI turns it into an ``export.dropped`` event).
- Only one process sends from a queue at a time (an exclusive lock file); others append.

Content: resource attributes are ``service.name``, ``service.version`` (cowork's version),
``user.name``, ``host.name``, ``cowork.session`` and ``cowork.workspace.hash`` (sha256 of the
workspace path, never the path). Event fields become ``cowork.<name>`` attributes; fields that
can hold file content or model output (``text``, ``output``, ``content``...) are replaced by
their length, long strings are cut, and secret-looking values are masked. Events never carry
secrets in the first place (see :mod:`cowork.host.events`); this is a second line.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from cowork import __version__

log = logging.getLogger(__name__)

Protocol_ = Literal["http/protobuf", "grpc"]

QUEUE_FILE = "queue.jsonl"
CURSOR_FILE = "cursor"
SENDER_LOCK_FILE = "sender.lock"

#: Event fields that can hold file content, model output or a person's typing.
CONTENT_FIELDS = frozenset(
    {"text", "output", "content", "stdout", "stderr", "body", "diff", "data", "input", "prompt"}
)
MAX_STRING = 1024
_SECRET_RE = re.compile(
    r"(?i)(?:api[_-]?key|access[_-]?key|token|secret|passw(?:or)?d|authorization|auth|cookie"
    r"|credential)s?[\"']?\s*[=:]\s*[\"']?(?:(?:bearer|basic|token)\s+)?([^\s\"',;&]+)"
    r"|(?i:bearer|basic)\s+([^\s\"',;&]+)"
    r"|\b(sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|xox[abpr]-\S{10,})"
)

_REFUSALS = frozenset({"egress.denied", "policy.ignored", "policy.rejected", "monitor.lost"})


def mask_secrets(value: str) -> str:
    """``value`` with anything that looks like a credential replaced by ``***``."""

    def repl(m: re.Match[str]) -> str:
        whole = m.group(0)
        secret = m.group(1) or m.group(2) or m.group(3) or ""
        return whole.replace(secret, "***") if secret else whole

    return _SECRET_RE.sub(repl, value)


def workspace_hash(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(str(Path(path).expanduser().resolve()).encode()).hexdigest()


def _attr_value(value: Any) -> Any:
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return mask_secrets(value[:MAX_STRING])
    if value is None:
        return ""
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [mask_secrets(str(v)[:MAX_STRING]) for v in value][:64]
    return mask_secrets(json.dumps(value, sort_keys=True, default=str)[:MAX_STRING])


def record_attributes(line: Mapping[str, Any]) -> dict[str, Any]:
    """The OTLP attributes of one audit line: identity, chain, and sanitised fields."""
    attrs: dict[str, Any] = {
        "cowork.kind": str(line.get("kind")),
        "cowork.audit.seq": int(line.get("seq") or 0),
        "cowork.audit.hash": str(line.get("hash") or ""),
        "cowork.audit.prev": str(line.get("prev") or ""),
    }
    fields = line.get("fields") or {}
    for name, value in sorted(fields.items()):
        key = f"cowork.{name}"
        if key in attrs:
            continue
        if name in CONTENT_FIELDS:
            attrs[f"{key}.length"] = len(value) if isinstance(value, str | list) else 0
            continue
        attrs[key] = _attr_value(value)
    return attrs


class LogSender(Protocol):
    """What the exporter needs from an OTLP log exporter (the SDK's, or a test's)."""

    def export(self, batch: Sequence[Any]) -> Any: ...

    def shutdown(self) -> None: ...


def make_sender(endpoint: str, protocol: Protocol_, timeout: float) -> LogSender:
    """The SDK's OTLP log exporter for ``endpoint`` (an http(s) URL) and ``protocol``."""
    parts = urlsplit(endpoint)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
            OTLPLogExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=f"{parts.hostname}:{parts.port or 4317}",
            insecure=parts.scheme == "http",
            timeout=timeout,
        )
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpExporter,
    )

    url = endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + "/v1/logs"
    return HttpExporter(endpoint=url, timeout=timeout)


@dataclass(frozen=True)
class ExportSettings:
    endpoint: str
    protocol: Protocol_ = "http/protobuf"
    queue_dir: Path = Path()
    max_bytes: int = 64 * 1024 * 1024
    batch_size: int = 256
    flush_interval: float = 1.0
    timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


class Exporter:
    """Bounded on-disk queue + sender thread; use :meth:`enqueue` as an audit log listener."""

    def __init__(
        self,
        settings: ExportSettings,
        *,
        workspace_of: Callable[[str], str | None] = lambda _s: None,
        on_dropped: Callable[[int, int, int], None] = lambda _n, _a, _b: None,
        sender: LogSender | None = None,
    ) -> None:
        self.settings = settings
        self.queue_dir = settings.queue_dir
        self.queue_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._queue = self.queue_dir / QUEUE_FILE
        self._cursor = self.queue_dir / CURSOR_FILE
        self._workspace_of = workspace_of
        self._on_dropped = on_dropped
        self._sender = sender or make_sender(settings.endpoint, settings.protocol, settings.timeout)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dropped: list[int] = []  # seqs dropped since the last drop record
        self._pending_notice: tuple[int, int, int] | None = None
        self._resources: dict[tuple[str | None, str | None], Any] = {}
        self._thread = threading.Thread(target=self._run, name="cowork-export", daemon=True)
        self.sent = 0
        self.failures = 0
        self._thread.start()

    # --- queue ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Any:
        with self._lock:
            fd = os.open(self.queue_dir / (QUEUE_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _read_cursor(self) -> int:
        try:
            return int(self._cursor.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_cursor(self, value: int) -> None:
        tmp = self._cursor.with_suffix(".tmp")
        tmp.write_text(str(value))
        os.replace(tmp, self._cursor)

    def _size(self) -> int:
        try:
            return self._queue.stat().st_size
        except FileNotFoundError:
            return 0

    def _append(self, data: bytes) -> None:
        fd = os.open(self._queue, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def pending_bytes(self) -> int:
        with self._locked():
            return self._size() - self._read_cursor()

    def enqueue(self, line: Mapping[str, Any]) -> bool:
        """Queue one audit line for export; False when the queue is full (line dropped)."""
        data = (
            json.dumps(line, sort_keys=True, separators=(",", ":"), default=str) + "\n"
        ).encode()
        with self._locked():
            pending = self._size() - self._read_cursor()
            if pending + len(data) > self.settings.max_bytes:
                self._dropped.append(int(line.get("seq") or 0))
                return False
            if self._dropped:
                first, last, count = self._dropped[0], self._dropped[-1], len(self._dropped)
                self._dropped = []
                notice = {
                    "kind": "export.dropped",
                    "time": time.time(),
                    "session": line.get("session"),
                    "fields": {"count": count, "first_seq": first, "last_seq": last},
                }
                self._append((json.dumps(notice, sort_keys=True) + "\n").encode())
                self._pending_notice = (count, first, last)
            self._append(data)
        return True

    __call__ = enqueue

    def _read_batch(self) -> tuple[list[dict[str, Any]], int]:
        """Up to ``batch_size`` queued lines from the cursor, and the offset after them."""
        with self._locked():
            start = self._read_cursor()
            size = self._size()
            if start >= size:
                if size and start >= size:
                    os.truncate(self._queue, 0)
                    self._write_cursor(0)
                return [], start
            out: list[dict[str, Any]] = []
            end = start
            with self._queue.open("rb") as fh:
                fh.seek(start)
                while len(out) < self.settings.batch_size:
                    raw = fh.readline()
                    if not raw or not raw.endswith(b"\n"):
                        break
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        end += len(raw)
                        continue
                    # One session (one OTLP resource) per batch: OTLP groups records by
                    # resource, so mixing them would lose the order across sessions.
                    if out and obj.get("session") != out[0].get("session"):
                        break
                    end += len(raw)
                    if isinstance(obj, dict):
                        out.append(obj)
            return out, end

    def _commit(self, end: int) -> None:
        with self._locked():
            if end >= self._size():
                os.truncate(self._queue, 0)
                self._write_cursor(0)
            else:
                self._write_cursor(end)

    # --- sending ----------------------------------------------------------------------
    def _resource(self, session: str | None) -> Any:
        from opentelemetry.sdk.resources import Resource

        ws = self._workspace_of(session) if session else None
        key = (session, ws)
        if key not in self._resources:
            attrs: dict[str, Any] = {
                "service.name": "cowork",
                "service.version": __version__,
                "user.name": getpass.getuser(),
                "host.name": socket.gethostname(),
            }
            if session:
                attrs["cowork.session"] = session
            if ws:
                attrs["cowork.workspace.hash"] = workspace_hash(ws)
            self._resources[key] = Resource.create(attrs)
        return self._resources[key]

    def _records(self, lines: list[dict[str, Any]]) -> list[Any]:
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.sdk._logs import ReadableLogRecord
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        scope = InstrumentationScope("cowork.audit", __version__)
        out = []
        for line in lines:
            kind = str(line.get("kind"))
            fields = line.get("fields") or {}
            refusal = kind in _REFUSALS or (
                kind == "action.decided" and fields.get("verdict") in ("refuse", "refused")
            )
            ns = int(float(line.get("time") or time.time()) * 1e9)
            record = LogRecord(
                timestamp=ns,
                observed_timestamp=ns,
                severity_number=SeverityNumber.WARN if refusal else SeverityNumber.INFO,
                severity_text="WARN" if refusal else "INFO",
                body=kind,
                attributes=record_attributes(line),
                event_name=kind,
            )
            session = line.get("session")
            out.append(
                ReadableLogRecord(
                    log_record=record,
                    resource=self._resource(session if isinstance(session, str) else None),
                    instrumentation_scope=scope,
                )
            )
        return out

    def _send(self, lines: list[dict[str, Any]]) -> bool:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        try:
            result = self._sender.export(self._records(lines))
        except Exception:
            log.exception("export to the collector failed")
            return False
        return bool(result == LogRecordExportResult.SUCCESS)

    def _run(self) -> None:
        backoff = self.settings.backoff_initial
        lock_fd = os.open(self.queue_dir / SENDER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        have_lock = False
        try:
            while True:
                stopping = self._stop.is_set()
                if not have_lock:
                    try:
                        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        have_lock = True
                    except BlockingIOError:  # another cowork process is sending this queue
                        if stopping:
                            return
                        self._wake.wait(self.settings.flush_interval)
                        self._wake.clear()
                        continue
                self._notify_drops()
                lines, end = self._read_batch()
                if lines:
                    if self._send(lines):
                        self._commit(end)
                        self.sent += len(lines)
                        backoff = self.settings.backoff_initial
                        continue
                    self.failures += 1
                    if stopping:
                        remaining = self._stop_deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        time.sleep(min(backoff, remaining))
                    else:
                        self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.settings.backoff_max)
                    continue
                if stopping:
                    return
                self._wake.wait(self.settings.flush_interval)
                self._wake.clear()
        finally:
            os.close(lock_fd)

    def _notify_drops(self) -> None:
        with self._lock:
            notice, self._pending_notice = self._pending_notice, None
        if notice is not None:
            try:
                self._on_dropped(*notice)
            except Exception:
                log.exception("export drop notice failed")

    _stop_deadline = 0.0

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending_bytes() == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self.pending_bytes() == 0

    def close(self, timeout: float = 5.0) -> None:
        """Try to send what is queued for up to ``timeout`` s; the rest waits on disk."""
        if self._stop.is_set():
            return
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + self.settings.timeout + 1)
        with contextlib.suppress(Exception):
            self._sender.shutdown()
