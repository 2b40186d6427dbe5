"""Export to real OTLP receivers: an OTLP/HTTP endpoint decoding protobuf with the official
``opentelemetry-proto`` package, and an OTLP/gRPC server (grpcio)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import zlib
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from cowork import __version__
from cowork.host.events import AuditLog, EventBus, Kind
from cowork.host.export import Exporter, ExportSettings, traces_url, workspace_hash
from tests.waiting import wait_until


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


class Received:
    """What a receiver got: one dict per log record and per span, in arrival order."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self.span_requests = 0
        self.lock = threading.Lock()

    def add_spans(self, req: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            self.span_requests += 1
            for rs in req.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        self.spans.append(
                            {
                                "resource": resource,
                                "scope": ss.scope.name,
                                "name": sp.name,
                                "trace_id": sp.trace_id.hex(),
                                "span_id": sp.span_id.hex(),
                                "parent_id": sp.parent_span_id.hex(),
                                "start": sp.start_time_unix_nano,
                                "end": sp.end_time_unix_nano,
                                "status": sp.status.code,
                                "attrs": {a.key: _value(a.value) for a in sp.attributes},
                            }
                        )

    def add(self, req: logs_service_pb2.ExportLogsServiceRequest) -> None:
        with self.lock:
            self.requests += 1
            for rl in req.resource_logs:
                resource = {a.key: _value(a.value) for a in rl.resource.attributes}
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        self.records.append(
                            {
                                "resource": resource,
                                "attrs": {a.key: _value(a.value) for a in r.attributes},
                                "body": _value(r.body),
                                "event_name": r.event_name,
                                "time": r.time_unix_nano,
                                "severity": r.severity_text,
                                "trace_id": r.trace_id.hex(),
                                "span_id": r.span_id.hex(),
                            }
                        )

    def seqs(self) -> list[int]:
        with self.lock:
            return [r["attrs"]["cowork.audit.seq"] for r in self.records]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpReceiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.received = Received()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                enc = self.headers.get("Content-Encoding")
                if enc == "gzip":
                    body = gzip.decompress(body)
                elif enc == "deflate":
                    body = zlib.decompress(body)
                assert self.headers["Content-Type"] == "application/x-protobuf"
                if self.path == "/v1/traces":
                    spans = trace_service_pb2.ExportTraceServiceRequest()
                    spans.ParseFromString(body)
                    received.add_spans(spans)
                    out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                else:
                    assert self.path == "/v1/logs"
                    req = logs_service_pb2.ExportLogsServiceRequest()
                    req.ParseFromString(body)
                    received.add(req)
                    out = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class GrpcReceiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.received = Received()
        self.server: grpc.Server | None = None

    def start(self) -> None:
        received = self.received

        class Servicer(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                received.add(request)
                return logs_service_pb2.ExportLogsServiceResponse()

        class TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                received.add_spans(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Servicer(), self.server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceServicer(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None


PROTOCOLS = {"http/protobuf": HttpReceiver, "grpc": GrpcReceiver}


@pytest.fixture(params=sorted(PROTOCOLS))
def receiver(request) -> Iterator[HttpReceiver | GrpcReceiver]:
    r = PROTOCOLS[request.param](_free_port())
    r.protocol = request.param  # type: ignore[union-attr]
    yield r
    r.stop()


def _exporter(tmp_path: Path, receiver, **kw: Any) -> tuple[Exporter, list[tuple[int, int, int]]]:
    drops: list[tuple[int, int, int]] = []
    settings = ExportSettings(
        endpoint=receiver.endpoint,
        protocol=receiver.protocol,
        queue_dir=tmp_path / "queue",
        flush_interval=0.1,
        timeout=5.0,  # generous: a reply slower than this is resent (and arrives twice)
        backoff_initial=0.1,
        backoff_max=0.5,
        **kw,
    )
    exporter = Exporter(
        settings,
        workspace_of=lambda s: str(tmp_path / "ws") if s == "s1" else None,
        on_dropped=lambda n, a, b: drops.append((n, a, b)),
    )
    return exporter, drops


def _bus(tmp_path: Path, exporter: Exporter) -> tuple[EventBus, AuditLog]:
    audit = AuditLog(tmp_path / "audit.jsonl", anchors=tmp_path / "anchors.jsonl")
    audit.add_listener(exporter.enqueue)
    bus = EventBus(session="s1")
    bus.subscribe(audit)
    return bus, audit


def test_every_event_arrives_once_in_order_with_its_attributes(tmp_path, receiver):
    receiver.start()
    exporter, _ = _exporter(tmp_path, receiver)
    bus, audit = _bus(tmp_path, exporter)
    bus.emit(Kind.SESSION_STARTED, workspace=str(tmp_path / "ws"))
    bus.emit(Kind.EGRESS_DENIED, reason="no grant for this host", host="a.example.com", port=443)
    bus.emit(Kind.AGENT_TEXT, text="the contents of secret-plans.txt")
    bus.emit(Kind.COMMAND_STARTED, argv=["curl", "-H", "Authorization: Bearer abcdef123456"])
    bus.emit(Kind.AGENT_TEXT, text="x", session="other")
    for i in range(300):
        bus.emit(Kind.FILE_CHANGED, path=f"/workspace/f{i}", change="modified")
    bus.emit(Kind.SESSION_ENDED, overlay_kept=False)
    assert exporter.flush(60)
    exporter.close()
    got = receiver.received.records
    assert receiver.received.seqs() == list(range(1, 307))
    assert receiver.received.requests >= 2  # batched (256 per batch)
    first = got[0]
    assert first["resource"]["service.name"] == "cowork"
    assert first["resource"]["service.version"] == __version__
    assert first["resource"]["user.name"] and first["resource"]["host.name"]
    assert first["resource"]["cowork.session"] == "s1"
    assert first["resource"]["cowork.workspace.hash"] == workspace_hash(tmp_path / "ws")
    assert got[4]["resource"]["cowork.session"] == "other"
    assert "cowork.workspace.hash" not in got[4]["resource"]
    assert got[1]["severity"] == "WARN" and got[1]["event_name"] == "egress.denied"
    assert got[1]["attrs"]["cowork.host"] == "a.example.com"
    text = got[2]["attrs"]
    assert "cowork.text" not in text and text["cowork.text.length"] == 32
    argv = got[3]["attrs"]["cowork.argv"]
    assert "abcdef123456" not in str(argv) and "***" in argv[2]
    # nothing anywhere carries the file content or the token
    everything = repr(got)
    assert "secret-plans" not in everything and "abcdef123456" not in everything
    # the session's anchor (its final chain head) is sent with session.ended
    from cowork.host.audit import read_anchors

    (anchor,) = read_anchors(tmp_path / "anchors.jsonl", audit.path)
    assert got[-1]["event_name"] == "session.ended"
    assert got[-1]["attrs"]["cowork.audit.hash"] == anchor.hash
    assert got[-1]["time"] > 0


def test_nothing_is_lost_while_the_collector_is_down(tmp_path, receiver):
    exporter, drops = _exporter(tmp_path, receiver)
    bus, _ = _bus(tmp_path, exporter)
    for i in range(40):
        bus.emit(Kind.COMMAND_STARTED, argv=["step", str(i)])
    assert wait_until(lambda: exporter.failures >= 2, 60)
    receiver.start()
    for i in range(10):
        bus.emit(Kind.COMMAND_STARTED, argv=["after", str(i)])
    assert exporter.flush(60)
    exporter.close()
    assert receiver.received.seqs() == list(range(1, 51))
    assert drops == []


def test_beyond_the_bound_records_are_dropped_and_that_is_reported(tmp_path, receiver):
    exporter, drops = _exporter(tmp_path, receiver, max_bytes=4000)
    bus, _ = _bus(tmp_path, exporter)
    for i in range(40):
        bus.emit(Kind.COMMAND_STARTED, argv=["step", str(i)])
    kept = exporter.pending_bytes()
    assert 0 < kept <= 4000
    assert wait_until(lambda: exporter.failures >= 1, 60)
    receiver.start()
    assert wait_until(lambda: len(receiver.received.records) > 0, 60)
    assert exporter.flush(60)
    bus.emit(Kind.COMMAND_STARTED, argv=["last"])
    assert exporter.flush(60)
    assert wait_until(lambda: bool(drops), 60)
    assert exporter.flush(60)
    exporter.close()
    got = receiver.received.records
    kinds = [r["event_name"] for r in got]
    n_kept = kinds.index("export.dropped")
    assert receiver.received.seqs()[:n_kept] == list(range(1, n_kept + 1))
    dropped = got[n_kept]["attrs"]
    assert dropped["cowork.count"] == 40 - n_kept
    assert dropped["cowork.first_seq"] == n_kept + 1 and dropped["cowork.last_seq"] == 40
    assert got[n_kept + 1]["attrs"]["cowork.audit.seq"] == 41
    assert drops[0] == (40 - n_kept, n_kept + 1, 40)


def test_the_queue_survives_a_restart(tmp_path, receiver):
    exporter, _ = _exporter(tmp_path, receiver)
    bus, _ = _bus(tmp_path, exporter)
    for i in range(5):
        bus.emit(Kind.COMMAND_STARTED, argv=["step", str(i)])
    exporter.close(timeout=0.5)
    assert exporter.pending_bytes() > 0
    receiver.start()
    again, _ = _exporter(tmp_path, receiver)
    assert again.flush(60)
    again.close()
    assert receiver.received.seqs() == [1, 2, 3, 4, 5]


# --- spans per task and per tool call --------------------------------------------------------
SECRET_ACTION = "run `curl -H 'Authorization: Bearer abcdef123456' https://x`"


def _task(bus: EventBus, task: str, calls: list[tuple[str, str, str]], **finished: Any) -> None:
    """One agent task as the driver emits it; each call is (call_id, tool, how) with how one
    of run / asked-yes / asked-no / refuse / open (still running when the task ends)."""
    bus.emit(Kind.AGENT_STARTED, task_id=task, model="claude-test")
    for call_id, tool, how in calls:
        if how.startswith("asked"):
            bus.emit(Kind.APPROVAL_ASKED, call_id=call_id, tool=tool, action=SECRET_ACTION)
            bus.emit(Kind.APPROVAL_ANSWERED, call_id=call_id, approved=how == "asked-yes")
        else:
            verdict = "refuse" if how == "refuse" else "run"
            bus.emit(
                Kind.ACTION_DECIDED, call_id=call_id, tool=tool, action=SECRET_ACTION,
                verdict=verdict, risk="low", rule="floor" if how == "refuse" else None,
            )  # fmt: skip
        if how == "asked-no":
            bus.emit(Kind.ACTION_DECIDED, call_id=call_id, tool=tool, verdict="refused-by-user")
        if how in ("run", "asked-yes"):
            bus.emit(Kind.COMMAND_STARTED, command="echo hi", job="j1")
            bus.emit(Kind.GUEST_PROCESS, pid=7, argv=["echo", "hi"], call_id=call_id)
            bus.emit(
                Kind.TOOL_FINISHED, call_id=call_id, tool=tool,
                outcome="error" if tool == "write_file" else "ok", seconds=0.01,
            )  # fmt: skip
    bus.emit(Kind.AGENT_FINISHED, task_id=task, **finished)


def test_each_task_and_tool_call_arrives_once_as_a_span_with_its_parent(tmp_path, receiver):
    receiver.start()
    exporter, _ = _exporter(tmp_path, receiver)
    bus, audit = _bus(tmp_path, exporter)
    bus.emit(Kind.SESSION_STARTED, workspace=str(tmp_path / "ws"))
    _task(
        bus, "t1",
        [("c1", "bash", "run"), ("c2", "write_file", "asked-yes"), ("c3", "bash", "asked-no"),
         ("c4", "web_fetch", "refuse")],
        reason="completed", turns=3, ran=2, asked=2, refused=2, error=None,
    )  # fmt: skip
    _task(bus, "t2", [("c5", "bash", "open")], reason="interrupted", error="stopped by the user")
    assert exporter.flush(60)
    exporter.close()
    got = receiver.received
    spans = {s["name"] + ":" + str(s["attrs"].get("cowork.call_id", s["attrs"].get(
        "cowork.task_id"))): s for s in got.spans}  # fmt: skip
    assert len(got.spans) == len(spans) == 7, [s["name"] for s in got.spans]
    assert len({s["span_id"] for s in got.spans}) == 7
    t1, t2 = spans["cowork.task:t1"], spans["cowork.task:t2"]
    assert t1["parent_id"] == t2["parent_id"] == "" and t1["trace_id"] != t2["trace_id"]
    for key in ("bash:c1", "write_file:c2", "bash:c3", "web_fetch:c4"):
        assert spans[key]["trace_id"] == t1["trace_id"], key
        assert spans[key]["parent_id"] == t1["span_id"], key
        assert t1["start"] <= spans[key]["start"] <= spans[key]["end"] <= t1["end"], key
    assert spans["bash:c5"]["parent_id"] == t2["span_id"]
    assert spans["bash:c5"]["trace_id"] == t2["trace_id"]
    # children are queued (and so arrive) before their task
    order = [s["name"] + ":" + str(s["attrs"].get("cowork.call_id", "")) for s in got.spans]
    assert order.index("bash:c1") < order.index("cowork.task:")
    # attributes: session, tool, verdict, outcome, duration
    want = {
        "bash:c1": ("run", "ok"),
        "write_file:c2": ("run-approved", "error"),
        "bash:c3": ("refused-by-user", "refused"),
        "web_fetch:c4": ("refuse", "refused"),
        "bash:c5": ("run", "unfinished"),
    }
    for key, (verdict, outcome) in want.items():
        a = spans[key]["attrs"]
        assert a["cowork.session"] == "s1" and a["cowork.tool"] == key.split(":")[0], a
        assert (a["cowork.verdict"], a["cowork.outcome"]) == (verdict, outcome), key
        assert a["cowork.duration_s"] >= 0
    assert spans["web_fetch:c4"]["attrs"]["cowork.rule"] == "floor"
    assert spans["write_file:c2"]["status"] == 2 and spans["bash:c1"]["status"] == 0  # ERROR
    assert t1["attrs"]["cowork.reason"] == "completed" and t1["attrs"]["cowork.ran"] == 2
    assert t1["attrs"]["cowork.model"] == "claude-test" and t1["attrs"]["cowork.session"] == "s1"
    assert t2["status"] == 2 and t2["attrs"]["cowork.error"] == "stopped by the user"
    # span times are the audit lines' times
    lines = [json.loads(x) for x in audit.path.read_text().splitlines()]
    decided = next(x for x in lines if x["fields"].get("call_id") == "c1")
    done = next(x for x in lines if x["kind"] == "tool.finished")
    assert abs(spans["bash:c1"]["start"] - decided["time"] * 1e9) < 1e4
    assert abs(spans["bash:c1"]["end"] - done["time"] * 1e9) < 1e4
    # same resource attributes as the logs
    log_of_session = next(r for r in got.records if r["resource"].get("cowork.session") == "s1")
    for s in got.spans:
        assert s["resource"] == log_of_session["resource"]
        assert s["scope"] == "cowork.agent"
    assert t1["resource"]["cowork.workspace.hash"] == workspace_hash(tmp_path / "ws")
    # a tool call's log records carry its span; the task's other records the task's span
    for r in got.records:
        if r["attrs"].get("cowork.call_id") == "c1":
            assert (r["trace_id"], r["span_id"]) == (t1["trace_id"], spans["bash:c1"]["span_id"])
    started = next(r for r in got.records if r["event_name"] == "agent.started")
    assert (started["trace_id"], started["span_id"]) == (t1["trace_id"], t1["span_id"])
    assert next(r for r in got.records if r["event_name"] == "session.started")["span_id"] == ""
    # never the action text (the log export masks it; spans do not carry it at all)
    assert "abcdef123456" not in repr(got.spans) and "curl" not in repr(got.spans)
    assert "abcdef123456" not in repr(got.records)
    # every log record arrived once too, in order
    assert got.seqs() == list(range(1, len(got.records) + 1))


def test_no_span_is_lost_while_the_collector_is_down(tmp_path, receiver):
    exporter, drops = _exporter(tmp_path, receiver)
    bus, _ = _bus(tmp_path, exporter)
    for i in range(6):
        _task(bus, f"t{i}", [(f"c{i}-{j}", "bash", "run") for j in range(3)], reason="completed")
    assert wait_until(lambda: exporter.failures >= 2, 60)
    receiver.start()
    _task(bus, "last", [("c-last", "read_file", "run")], reason="completed")
    assert exporter.flush(60)
    exporter.close()
    got = receiver.received
    assert len(got.spans) == 6 * 4 + 2
    assert len({s["span_id"] for s in got.spans}) == len(got.spans)
    tasks = {s["span_id"]: s for s in got.spans if s["name"] == "cowork.task"}
    assert len(tasks) == 7
    for s in got.spans:
        if s["name"] != "cowork.task":
            assert tasks[s["parent_id"]]["trace_id"] == s["trace_id"]
    assert got.seqs() == list(range(1, len(got.records) + 1))
    assert exporter.sent_spans == len(got.spans)
    assert drops == []


def test_spans_beyond_the_bound_are_dropped_and_counted(tmp_path, receiver):
    exporter, drops = _exporter(tmp_path, receiver, max_bytes=6000)
    bus, _ = _bus(tmp_path, exporter)
    for i in range(20):
        _task(bus, f"t{i}", [(f"c{i}", "bash", "run")], reason="completed")
    receiver.start()
    assert exporter.flush(60)
    bus.emit(Kind.COMMAND_STARTED, argv=["last"])
    assert exporter.flush(60)
    assert wait_until(lambda: bool(drops), 60)
    assert exporter.flush(60)
    exporter.close()
    notice = next(r for r in receiver.received.records if r["event_name"] == "export.dropped")
    assert notice["attrs"]["cowork.spans"] > 0
    assert notice["attrs"]["cowork.count"] >= notice["attrs"]["cowork.spans"]


def test_the_traces_url_follows_the_logs_url():
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("https://c/v1/logs") == "https://c/v1/traces"
    assert traces_url("https://c/otlp/") == "https://c/otlp/v1/traces"


def test_a_task_run_by_the_real_agent_driver_becomes_one_trace(tmp_path, receiver):
    """The driver's own events (not a hand-written sequence) make the task and tool spans."""
    from cowork.host.agent.driver import AnthropicModel
    from cowork.host.agent.offline import OfflineModel, load_script
    from cowork.host.agent.settings import AgentSettings
    from cowork.host.agent.task import run_task
    from cowork.host.agent.testing import ScriptedApprover
    from cowork.host.channel_fake import FakeChannel

    receiver.start()
    exporter, _ = _exporter(tmp_path, receiver)
    bus, _ = _bus(tmp_path, exporter)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "draft.txt").write_text("Teh quick brown fox\n")
    scripts = Path(__file__).parents[1] / "data" / "scripts"
    with OfflineModel(load_script(scripts / "edit_task.json")) as server:
        settings = AgentSettings(base_url=server.base_url, max_turns=10)
        summary = run_task(
            FakeChannel(ws),
            "Fix the typo and write a summary",
            settings=settings,
            events=bus,
            approver=ScriptedApprover(False),
            model=AnthropicModel(settings, "test-key", sleep=lambda _s: None),
            root=str(ws),
            state_dir=str(tmp_path / "state"),
        )
    assert summary.ran == 4
    assert exporter.flush(60)
    exporter.close()
    spans = receiver.received.spans
    (task,) = [s for s in spans if s["name"] == "cowork.task"]
    tools = [s for s in spans if s["name"] != "cowork.task"]
    assert len(tools) == 4 and task["attrs"]["cowork.ran"] == 4
    assert all(s["parent_id"] == task["span_id"] for s in tools)
    assert all(s["trace_id"] == task["trace_id"] for s in tools)
    assert {s["attrs"]["cowork.verdict"] for s in tools} == {"run"}
    assert [s["name"] for s in tools] == [s["attrs"]["cowork.tool"] for s in tools]
    assert "Fix the typo" not in repr(spans) and "test-key" not in repr(spans)


def test_span_builder_ignores_ends_without_a_start_and_forgets_calls_beyond_its_bound():
    from cowork.host import export

    b = export.SpanBuilder()
    line = lambda kind, **f: {"kind": kind, "session": "s", "time": 1.0, "fields": f}  # noqa: E731
    assert b.feed(line("tool.finished", call_id="x", tool="bash", outcome="ok")) == (None, [])
    assert b.feed(line("approval.answered", call_id="y", approved=True)) == (None, [])
    for i in range(export.MAX_OPEN_SPANS + 10):
        b.feed(line("action.decided", call_id=f"c{i}", tool="bash", verdict="run"))
    assert len(b._calls) == export.MAX_OPEN_SPANS
    _, done = b.feed(line("tool.finished", call_id="c0", tool="bash", outcome="ok"))
    assert done == []  # forgotten
    _, done = b.feed(line("tool.finished", call_id="c20", tool="bash", outcome="ok"))
    assert [d["attributes"]["cowork.call_id"] for d in done] == ["c20"]
    assert done[0]["parent_id"] is None  # no task running: a trace of its own
