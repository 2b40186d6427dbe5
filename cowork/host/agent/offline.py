"""An offline model: a local HTTP server that speaks enough of the Messages API to replay a
scripted conversation.

Used by the tests through the real ``anthropic`` SDK and by ``cowork run`` as the *demo model*
when no API key is configured. It answers ``POST /v1/messages`` with JSON or, when the request
asks for ``stream: true``, with server-sent events in the real order (``message_start``,
``content_block_start``, ``content_block_delta`` with ``text_delta`` / ``input_json_delta``,
``content_block_stop``, ``message_delta``, ``message_stop``).

A script is JSON::

    {"name": "...", "turns": [
        {"content": [{"type": "text", "text": "..."},
                     {"type": "tool_use", "name": "read_file", "input": {"path": "a.txt"}}]},
        {"expect": ["text the previous tool results must contain"],
         "fail_first": [529, 429],
         "content": [{"type": "text", "text": "Done."}]}
    ]}

The turn answered is the number of assistant messages already in the request, so a retried
request gets the same turn. ``expect`` mismatches are recorded in :attr:`OfflineModel.problems`
(the reply is still sent); ``fail_first`` answers that turn's first attempts with those HTTP
errors (429 rate limit, 529 overloaded, 500).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_SCRIPT = "summarise.json"
_ERRORS = {
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit (offline model)"),
    500: ("api_error", "Internal server error (offline model)"),
    529: ("overloaded_error", "Overloaded (offline model)"),
}


@dataclass(frozen=True)
class Turn:
    content: tuple[Mapping[str, Any], ...]
    expect: tuple[str, ...] = ()
    fail_first: tuple[int, ...] = ()


@dataclass(frozen=True)
class Script:
    name: str
    turns: tuple[Turn, ...]
    description: str = ""


def parse_script(obj: Any, source: str = "<script>") -> Script:
    """Validate a script object. Raises ValueError naming ``source`` and the turn."""
    if not isinstance(obj, dict) or not isinstance(obj.get("turns"), list):
        raise ValueError(f"{source}: a script is an object with a list 'turns'")
    turns = []
    for n, raw in enumerate(obj["turns"], start=1):
        if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
            raise ValueError(f"{source}: turn {n} needs a list 'content'")
        blocks = []
        for b in raw["content"]:
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text" and isinstance(b.get("text"), str):
                blocks.append({"type": "text", "text": b["text"]})
            elif kind == "tool_use" and isinstance(b.get("name"), str):
                blocks.append({"type": "tool_use", "name": b["name"], "input": b.get("input", {})})
            else:
                raise ValueError(f"{source}: turn {n} has a block that is not text or tool_use")
        for code in raw.get("fail_first", []):
            if code not in _ERRORS:
                raise ValueError(f"{source}: turn {n}: fail_first supports {sorted(_ERRORS)}")
        turns.append(
            Turn(
                content=tuple(blocks),
                expect=tuple(str(e) for e in raw.get("expect", [])),
                fail_first=tuple(int(c) for c in raw.get("fail_first", [])),
            )
        )
    return Script(
        name=str(obj.get("name", source)),
        turns=tuple(turns),
        description=str(obj.get("description", "")),
    )


def load_script(path: Path) -> Script:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the script: {exc}") from exc
    return parse_script(obj, str(path))


def demo_script() -> Script:
    """The script shipped with cowork for the demo model."""
    text = resources.files("cowork.host.agent.demo").joinpath(DEMO_SCRIPT).read_text("utf-8")
    return parse_script(json.loads(text), f"cowork/host/agent/demo/{DEMO_SCRIPT}")


def _tool_results_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if not isinstance(content, list):
        return str(content or "")
    out = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                out += [str(p.get("text", "")) for p in inner if isinstance(p, dict)]
            else:
                out.append(str(inner or ""))
    return "\n".join(out)


@dataclass
class _State:
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class OfflineModel:
    """The server. Use as a context manager; ``base_url`` is what the SDK needs."""

    def __init__(self, script: Script, *, model: str = "cowork-demo-model") -> None:
        self.script = script
        self.model = model
        self._state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- what tests read --------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def problems(self) -> list[str]:
        with self._state.lock:
            return list(self._state.problems)

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the offline model is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> OfflineModel:
        handler = type("Handler", (_Handler,), {"model": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="offline-model", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OfflineModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the conversation -------------------------------------------------------------
    def answer(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one request; records it."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, _error("invalid_request_error", "messages: at least one message")
        index = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        with self._state.lock:
            self._state.requests.append(dict(body))
            attempt = self._state.attempts.get(index, 0)
            self._state.attempts[index] = attempt + 1
        if index >= len(self.script.turns):
            self._problem(f"turn {index + 1}: the script has only {len(self.script.turns)} turns")
            blocks: Sequence[Mapping[str, Any]] = [
                {"type": "text", "text": "(The scripted conversation has ended.)"}
            ]
        else:
            turn = self.script.turns[index]
            if attempt < len(turn.fail_first):
                kind, text = _ERRORS[turn.fail_first[attempt]]
                return turn.fail_first[attempt], _error(kind, text)
            last = messages[-1] if isinstance(messages[-1], dict) else {}
            seen = _tool_results_text(last)
            for needle in turn.expect:
                if needle not in seen:
                    self._problem(
                        f"turn {index + 1}: expected {needle!r} in the tool results, got "
                        f"{seen[:300]!r}"
                    )
            blocks = turn.content
        content = []
        for n, block in enumerate(blocks):
            if block["type"] == "tool_use":
                content.append({**block, "id": f"toolu_offline_{index + 1:03d}_{n}"})
            else:
                content.append(dict(block))
        stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        return 200, {
            "id": f"msg_offline_{index + 1:03d}",
            "type": "message",
            "role": "assistant",
            "model": str(body.get("model") or self.model),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": len(json.dumps(messages)) // 4, "output_tokens": 10},
        }

    def _problem(self, text: str) -> None:
        with self._state.lock:
            self._state.problems.append(text)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def sse_events(message: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The server-sent events that stream ``message`` (pure; golden-tested)."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**message["usage"], "output_tokens": 1}
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            text = block["text"]
            for piece in _chunks(text, 24):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        else:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {
                        "type": "tool_use",
                        "id": block["id"],
                        "name": block["name"],
                        "input": {},
                    },
                },
            )
            for piece in _chunks(json.dumps(block["input"]), 32):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        yield "content_block_stop", {"type": "content_block_stop", "index": i}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Handler(BaseHTTPRequestHandler):
    model: OfflineModel
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        if self.path.split("?")[0].rstrip("/") != "/v1/messages":
            self._json(404, _error("not_found_error", f"{self.path} is not served here"))
            return
        try:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._json(400, _error("invalid_request_error", "the body is not a JSON object"))
            return
        status, reply = self.model.answer(body)
        if status != 200 or not body.get("stream"):
            self._json(status, reply)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        for name, data in sse_events(reply):
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def _json(self, status: int, obj: Mapping[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if status in (429, 529):
            self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(data)
