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

Spans: the agent's work also goes out as traces, derived on the host from the same audit
lines (:class:`SpanBuilder`), not from a tracer threaded through the agent loop. Each task
(``agent.started`` .. ``agent.finished``) is one span; each tool call in it is a child span
named after the tool, from its decision (``action.decided``, or ``approval.asked`` when the
person was asked) to its end (``tool.finished``, or the refusal itself). A finished span is
queued beside the log records, through the same bounded queue, batches and backoff (a batch
holds logs or spans, never both), and sent to ``/v1/traces`` or the gRPC TraceService. Log
records of a tool call carry its trace and span ids. Spans still open when cowork stops are
not exported (the task they belong to ends with the process).

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

SPAN_ENTRY = "span"

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


# --- spans -----------------------------------------------------------------------------------
#: Tool calls tracked at once; beyond this the oldest unfinished one is forgotten.
MAX_OPEN_SPANS = 4096
_TOOL_END_VERDICTS = frozenset({"refuse", "refused", "refused-by-user"})
_TASK_RESULT_FIELDS = ("reason", "turns", "ran", "asked", "refused", "error")


@dataclass
class _Open:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: float
    attributes: dict[str, Any]


def _new_id(nbytes: int) -> str:
    value = os.urandom(nbytes).hex()
    return value if value.strip("0") else _new_id(nbytes)  # all-zero ids are invalid in OTLP


class SpanBuilder:
    """Turns audit lines, in log order, into finished spans (one per task and tool call).

    :meth:`feed` returns the trace context that the line belongs to (``trace_id`` and
    ``span_id``, for the line's log record) and the spans that the line finished, each a
    JSON-serialisable dict: ``name``, ``trace_id``, ``span_id``, ``parent_id``, ``start``,
    ``end`` (epoch seconds), ``error`` and sanitised ``attributes``. Children end before
    their parent, so they are queued first.
    """

    def __init__(self) -> None:
        self._tasks: dict[str | None, _Open] = {}
        self._calls: dict[tuple[str | None, str], _Open] = {}

    def feed(self, line: Mapping[str, Any]) -> tuple[dict[str, str] | None, list[dict[str, Any]]]:
        kind = str(line.get("kind"))
        raw_session = line.get("session")
        session: str | None = raw_session if isinstance(raw_session, str) else None
        f: Mapping[str, Any] = line.get("fields") or {}
        now = float(line.get("time") or time.time())
        done: list[dict[str, Any]] = []
        if kind == "agent.started":
            for key in [k for k in self._calls if k[0] == session]:  # a task ended unseen
                done.append(self._end(self._calls.pop(key), now, {"cowork.outcome": "unfinished"}))
            if session in self._tasks:
                done.append(self._end(self._tasks.pop(session), now, {"cowork.reason": "lost"}))
            attrs = {"cowork.session": session or "", "cowork.task_id": str(f.get("task_id"))}
            if f.get("model"):
                attrs["cowork.model"] = str(f["model"])
            started = _Open("cowork.task", _new_id(16), _new_id(8), None, now, attrs)
            self._tasks[session] = started
            return self._ctx(started), done
        if kind == "agent.finished":
            ended = self._tasks.pop(session, None)
            for key in [k for k in self._calls if k[0] == session]:
                done.append(self._end(self._calls.pop(key), now, {"cowork.outcome": "unfinished"}))
            if ended is None:
                return None, done
            result = {f"cowork.{k}": f.get(k) for k in _TASK_RESULT_FIELDS if f.get(k) is not None}
            done.append(self._end(ended, now, result, error=bool(f.get("error"))))
            return self._ctx(ended), done
        call_id = f.get("call_id")
        if not call_id or kind not in (
            "action.decided", "approval.asked", "approval.answered", "tool.finished",
        ):  # fmt: skip
            owner = self._calls.get((session, str(call_id))) if call_id else None
            owner = owner or self._tasks.get(session)
            return (self._ctx(owner) if owner is not None else None), done
        key = (session, str(call_id))
        call = self._calls.get(key)
        if call is None:
            task = self._tasks.get(session)
            if kind not in ("action.decided", "approval.asked"):  # no span began: none ends
                return (self._ctx(task) if task is not None else None), done
            if len(self._calls) >= MAX_OPEN_SPANS:  # calls that never ended: forget the oldest
                del self._calls[next(iter(self._calls))]
            call = _Open(
                str(f.get("tool") or "tool"),
                task.trace_id if task else _new_id(16),
                _new_id(8),
                task.span_id if task else None,
                now,
                {
                    "cowork.session": session or "",
                    "cowork.tool": str(f.get("tool") or ""),
                    "cowork.call_id": str(call_id),
                },
            )
            self._calls[key] = call
        ctx = self._ctx(call)
        if kind == "approval.asked":
            call.attributes["cowork.verdict"] = "ask"
        elif kind == "approval.answered":
            call.attributes["cowork.approved"] = bool(f.get("approved"))
            if f.get("approved"):
                call.attributes["cowork.verdict"] = "run-approved"
        elif kind == "action.decided":
            verdict = str(f.get("verdict"))
            call.attributes["cowork.verdict"] = verdict
            for name in ("risk", "rule"):
                if f.get(name) is not None:
                    call.attributes[f"cowork.{name}"] = f.get(name)
            if verdict in _TOOL_END_VERDICTS:
                del self._calls[key]
                done.append(self._end(call, now, {"cowork.outcome": "refused"}))
        elif kind == "tool.finished":
            del self._calls[key]
            outcome = str(f.get("outcome"))
            done.append(self._end(call, now, {"cowork.outcome": outcome}, error=outcome != "ok"))
        return ctx, done

    @staticmethod
    def _ctx(span: _Open) -> dict[str, str]:
        return {"trace_id": span.trace_id, "span_id": span.span_id}

    @staticmethod
    def _end(
        span: _Open, end: float, extra: Mapping[str, Any], *, error: bool = False
    ) -> dict[str, Any]:
        attrs = {**span.attributes, **extra}
        attrs["cowork.duration_s"] = round(max(0.0, end - span.start), 6)
        return {
            "name": span.name,
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "parent_id": span.parent_id,
            "start": span.start,
            "end": max(end, span.start),
            "error": error,
            "attributes": {k: _attr_value(v) for k, v in sorted(attrs.items())},
        }


def _trace_context(trace: Any) -> Any:
    """An OpenTelemetry context holding the span ``trace`` names, for a log record."""
    if not isinstance(trace, Mapping):
        return None
    from opentelemetry import trace as otel_trace

    try:
        ctx = otel_trace.SpanContext(
            int(str(trace["trace_id"]), 16),
            int(str(trace["span_id"]), 16),
            False,
            otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
        )
    except (KeyError, ValueError):
        return None
    return otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(ctx))


class LogSender(Protocol):
    """What the exporter needs from an OTLP log exporter (the SDK's, or a test's)."""

    def export(self, batch: Sequence[Any]) -> Any: ...

    def shutdown(self) -> None: ...


class SpanSender(Protocol):
    """What the exporter needs from an OTLP span exporter (the SDK's, or a test's)."""

    def export(self, spans: Sequence[Any]) -> Any: ...

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


def traces_url(endpoint: str) -> str:
    """Where OTLP/HTTP spans go: ``…/v1/logs`` becomes ``…/v1/traces``; a base URL (or any
    other path) gets ``/v1/traces`` appended."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    if path.endswith("/v1/logs"):
        path = path[: -len("/v1/logs")]
    return parts._replace(path=path + "/v1/traces").geturl()


def make_span_sender(endpoint: str, protocol: Protocol_, timeout: float) -> SpanSender:
    """The SDK's OTLP span exporter for ``endpoint`` and ``protocol``."""
    parts = urlsplit(endpoint)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(
            endpoint=f"{parts.hostname}:{parts.port or 4317}",
            insecure=parts.scheme == "http",
            timeout=timeout,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=traces_url(endpoint), timeout=timeout)


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
        span_sender: SpanSender | None = None,
    ) -> None:
        self.settings = settings
        self.queue_dir = settings.queue_dir
        self.queue_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._queue = self.queue_dir / QUEUE_FILE
        self._cursor = self.queue_dir / CURSOR_FILE
        self._workspace_of = workspace_of
        self._on_dropped = on_dropped
        self._sender = sender or make_sender(settings.endpoint, settings.protocol, settings.timeout)
        self._span_sender = span_sender or make_span_sender(
            settings.endpoint, settings.protocol, settings.timeout
        )
        self._spans = SpanBuilder()
        self._dropped_spans = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dropped: list[int] = []  # seqs dropped since the last drop record
        self._pending_notice: tuple[int, int, int] | None = None
        self._resources: dict[tuple[str | None, str | None], Any] = {}
        self._thread = threading.Thread(target=self._run, name="cowork-export", daemon=True)
        self.sent = 0
        self.sent_spans = 0
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
        """Queue one audit line for export (and the spans it finished); False when the queue
        is full (the line dropped)."""
        with self._locked():
            ctx, spans = self._spans.feed(line)
            entry = dict(line)
            if ctx is not None:
                entry["trace"] = ctx
            entries: list[tuple[dict[str, Any], bool]] = [(entry, False)]
            entries += [
                ({"kind": SPAN_ENTRY, "session": line.get("session"), "span": span}, True)
                for span in spans
            ]
            queued = True
            for obj, is_span in entries:
                data = (
                    json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str) + "\n"
                ).encode()
                pending = self._size() - self._read_cursor()
                if pending + len(data) > self.settings.max_bytes:
                    if is_span:
                        self._dropped_spans += 1
                    else:
                        self._dropped.append(int(line.get("seq") or 0))
                        queued = False
                    continue
                self._queue_drop_notice(line.get("session"))
                self._append(data)
        return queued

    def _queue_drop_notice(self, session: Any) -> None:
        """Queue an ``export.dropped`` record for what was dropped since the last one."""
        if not self._dropped and not self._dropped_spans:
            return
        lines, spans = len(self._dropped), self._dropped_spans
        first, last = (self._dropped[0], self._dropped[-1]) if lines else (0, 0)
        self._dropped, self._dropped_spans = [], 0
        notice = {
            "kind": "export.dropped",
            "time": time.time(),
            "session": session,
            "fields": {"count": lines + spans, "first_seq": first, "last_seq": last,
                       "spans": spans},
        }  # fmt: skip
        self._append((json.dumps(notice, sort_keys=True) + "\n").encode())
        self._pending_notice = (lines + spans, first, last)

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
                    # resource, so mixing them would lose the order across sessions. And
                    # logs or spans, not both: each goes to its own service.
                    if out and (
                        obj.get("session") != out[0].get("session")
                        or (obj.get("kind") == SPAN_ENTRY) != (out[0].get("kind") == SPAN_ENTRY)
                    ):
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
                context=_trace_context(line.get("trace")),
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

    def _span_objects(self, entries: list[dict[str, Any]]) -> list[Any]:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        scope = InstrumentationScope("cowork.agent", __version__)
        flags = TraceFlags(TraceFlags.SAMPLED)
        out = []
        for entry in entries:
            span = entry.get("span") or {}
            trace_id = int(str(span["trace_id"]), 16)
            parent = span.get("parent_id")
            session = entry.get("session")
            out.append(
                ReadableSpan(
                    name=str(span.get("name")),
                    context=SpanContext(trace_id, int(str(span["span_id"]), 16), False, flags),
                    parent=SpanContext(trace_id, int(str(parent), 16), False, flags)
                    if parent
                    else None,
                    resource=self._resource(session if isinstance(session, str) else None),
                    attributes=dict(span.get("attributes") or {}),
                    kind=SpanKind.INTERNAL,
                    status=Status(StatusCode.ERROR if span.get("error") else StatusCode.UNSET),
                    start_time=int(float(span["start"]) * 1e9),
                    end_time=int(float(span["end"]) * 1e9),
                    instrumentation_scope=scope,
                )
            )
        return out

    def _send(self, lines: list[dict[str, Any]]) -> bool:
        from opentelemetry.sdk._logs.export import LogRecordExportResult
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            if lines[0].get("kind") == SPAN_ENTRY:
                spans = self._span_objects([x for x in lines if x.get("span")])
                return bool(self._span_sender.export(spans) == SpanExportResult.SUCCESS)
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
                        if lines[0].get("kind") == SPAN_ENTRY:
                            self.sent_spans += len(lines)
                        else:
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
        for sender in (self._sender, self._span_sender):
            with contextlib.suppress(Exception):
                sender.shutdown()
