"""Export to real OTLP receivers: an OTLP/HTTP endpoint decoding protobuf with the official
``opentelemetry-proto`` package, and an OTLP/gRPC server (grpcio)."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from cowork import __version__
from cowork.host.events import AuditLog, EventBus, Kind
from cowork.host.export import Exporter, ExportSettings, workspace_hash


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


class Received:
    """What a receiver got: one dict per log record, in arrival order."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.requests = 0
        self.lock = threading.Lock()

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
                assert self.path == "/v1/logs"
                assert self.headers["Content-Type"] == "application/x-protobuf"
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

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Servicer(), self.server)
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
        timeout=1.0,
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


def _wait(pred, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


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
    _wait(lambda: exporter.failures >= 2)
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
    _wait(lambda: exporter.failures >= 1)
    receiver.start()
    _wait(lambda: len(receiver.received.records) > 0)
    assert exporter.flush(60)
    bus.emit(Kind.COMMAND_STARTED, argv=["last"])
    assert exporter.flush(60)
    _wait(lambda: bool(drops))
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
