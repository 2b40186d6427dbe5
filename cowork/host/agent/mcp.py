"""MCP servers (stdio) inside the VM, spoken to from the host with the official ``mcp`` SDK.

A server named in trusted configuration (:func:`configured_servers`: ``mcp.servers`` in admin
policy or user settings, and a trusted workspace's ``.mcp.json``) is started **inside the VM**
as the agent user, through the private
channel (:meth:`cowork.host.channel.Channel.open_stream`); its network traffic goes through
the egress gateway like every other guest process, and a credential it needs is injected by
the gateway, never given to it. The host speaks JSON-RPC to it over that stream with
``mcp.ClientSession`` (the SDK's stdio framing: one JSON message per line).

Its tools reach the model as ``mcp__<server>__<tool>``; every call goes through approvals
(connector tools are asked about, whatever the server's own hints say) and every result is
outside content (:mod:`cowork.host.agent.content`).

The driver is synchronous; each server gets an event loop on its own thread and
:class:`McpServer` offers blocking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from mcp import ClientSession, types
from mcp.shared.message import SessionMessage

from cowork.errors import AgentError
from cowork.host.agent.loop import ToolOutcome

if TYPE_CHECKING:
    from cowork.host.policy import Policy

log = logging.getLogger(__name__)

PREFIX = "mcp__"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
_CHUNK = 65536


class Pipe(Protocol):
    """A byte stream to the server's stdin and from its stdout. ``read`` blocks; b"" at EOF."""

    def read(self, n: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    source: str = ""  # which configuration named it


def servers_from_mcp_json(
    text: str, source: str = ".mcp.json", skipped: list[str] | None = None
) -> list[ServerSpec]:
    """The stdio servers of a ``.mcp.json`` (``{"mcpServers": {name: {command, args, env}}}``).

    A remote server (an entry with a ``url`` and no ``command``) is not started: cowork runs
    servers inside the VM only. Its name, with why, is added to ``skipped`` when given.
    Raises :class:`AgentError` naming the file and the entry for anything malformed.
    """
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise AgentError(f"{source}: not valid JSON ({exc}); fix or remove the file") from None
    servers = obj.get("mcpServers") if isinstance(obj, dict) else None
    if not isinstance(servers, dict):
        raise AgentError(f"{source}: expected an object with 'mcpServers'")
    out: list[ServerSpec] = []
    for name, entry in servers.items():
        where = f"{source}: mcpServers.{name}"
        if not _NAME.match(str(name)):
            raise AgentError(f"{where}: a server name may use only letters, digits, - and _")
        if isinstance(entry, dict) and "command" not in entry and "url" in entry:
            if skipped is not None:
                skipped.append(
                    f"{where}: a remote server, which cowork does not start (only servers "
                    "with a 'command', run inside the VM)"
                )
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
            raise AgentError(f"{where}: needs a 'command' (only stdio servers are supported)")
        args = entry.get("args", [])
        env = entry.get("env", {})
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise AgentError(f"{where}.args: must be a list of strings")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise AgentError(f"{where}.env: must map names to strings")
        out.append(ServerSpec(str(name), entry["command"], tuple(args), dict(env), source))
    return out


def tool_name(server: str, tool: str) -> str:
    return f"{PREFIX}{server}__{tool}"


def split_tool_name(name: str) -> tuple[str, str] | None:
    if not name.startswith(PREFIX):
        return None
    server, sep, tool = name[len(PREFIX) :].partition("__")
    return (server, tool) if sep and server and tool else None


class McpServer:
    """One running server: the SDK session on its own event loop thread."""

    def __init__(self, name: str, pipe: Pipe, *, timeout: float = 60.0) -> None:
        self.name = name
        self.timeout = timeout
        self._pipe = pipe
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"cowork-mcp-{name}", daemon=True
        )
        self._session: ClientSession | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self.tools: list[types.Tool] = []
        self._runner: Any = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> McpServer:
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        if not self._ready.wait(self.timeout):
            self.close()
            raise AgentError(f"the connector {self.name} did not start within {self.timeout} s")
        if self._failed is not None:
            self.close()
            raise AgentError(f"the connector {self.name} could not start: {self._failed}")
        return self

    async def _serve(self) -> None:
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
        self._stop = asyncio.Event()

        async def reader() -> None:
            buffer = b""
            async with read_writer:
                while True:
                    chunk = await anyio.to_thread.run_sync(self._pipe.read, _CHUNK)
                    if not chunk:
                        return
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        try:
                            message = types.JSONRPCMessage.model_validate_json(line)
                        except Exception as exc:
                            await read_writer.send(exc)
                            continue
                        await read_writer.send(SessionMessage(message))

        async def writer() -> None:
            async with write_reader:
                async for item in write_reader:
                    data = item.message.model_dump_json(by_alias=True, exclude_none=True)
                    await anyio.to_thread.run_sync(self._pipe.write, data.encode() + b"\n")

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                tg.start_soon(writer)
                async with ClientSession(read_stream, write_stream) as session:
                    await session.initialize()
                    listed = await session.list_tools()
                    self.tools = list(listed.tools)
                    self._session = session
                    self._ready.set()
                    await self._stop.wait()
                tg.cancel_scope.cancel()
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pipe.close()
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                self._runner.result(5)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    # --- calls -------------------------------------------------------------------------------
    def read_only(self, tool: str) -> bool:
        """True only when the server declares the tool read-only (used to ask *more*)."""
        for t in self.tools:
            if t.name == tool:
                return bool(t.annotations is not None and t.annotations.readOnlyHint)
        return False

    def schemas(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for t in self.tools:
            if not _NAME.match(t.name):
                continue
            out.append(
                {
                    "name": tool_name(self.name, t.name),
                    "description": (
                        f"[connector {self.name}] {(t.description or '').strip()}"[:1024]
                    ),
                    "input_schema": t.inputSchema or {"type": "object"},
                }
            )
        return out

    def call(self, tool: str, arguments: Mapping[str, Any]) -> ToolOutcome:
        session = self._session
        if session is None:
            return ToolOutcome(f"the connector {self.name} is not running", is_error=True)
        future = asyncio.run_coroutine_threadsafe(
            session.call_tool(tool, dict(arguments)), self._loop
        )
        try:
            result = future.result(self.timeout)
        except TimeoutError:
            future.cancel()
            return ToolOutcome(f"the connector {self.name} did not answer in time", True)
        except Exception as exc:
            return ToolOutcome(f"the connector {self.name} failed: {exc}", is_error=True)
        parts: list[str] = []
        for block in result.content:
            if isinstance(block, types.TextContent):
                parts.append(block.text)
            else:
                parts.append(f"[{block.type} content omitted]")
        return ToolOutcome("\n".join(parts) or "(no output)", bool(result.isError))


class McpHub:
    """The session's running servers, by name."""

    def __init__(self, servers: Sequence[McpServer] = ()) -> None:
        self.servers = {s.name: s for s in servers}

    def schemas(self) -> list[dict[str, Any]]:
        return [schema for s in self.servers.values() for schema in s.schemas()]

    def read_only(self, name: str) -> bool:
        parts = split_tool_name(name)
        server = self.servers.get(parts[0]) if parts else None
        return server is not None and parts is not None and server.read_only(parts[1])

    def call(self, name: str, arguments: Mapping[str, Any]) -> ToolOutcome:
        parts = split_tool_name(name)
        server = self.servers.get(parts[0]) if parts else None
        if server is None or parts is None:
            return ToolOutcome(f"there is no connector tool {name}", is_error=True)
        return server.call(parts[1], arguments)

    def close(self) -> None:
        for s in self.servers.values():
            s.close()


class StreamOpener(Protocol):
    def open_stream(
        self, cmd: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None
    ) -> Pipe: ...


def start_servers(
    channel: object, specs: Sequence[ServerSpec], *, cwd: str = "/workspace", timeout: float = 60.0
) -> McpHub:
    """Start every server in ``specs`` inside the guest (as the agent user, through the
    channel); a server that cannot start is left out and logged."""
    import shlex

    opener = getattr(channel, "open_stream", None)
    servers: list[McpServer] = []
    if opener is None:
        if specs:
            log.warning("this channel cannot start connectors; none started")
        return McpHub()
    for spec in specs:
        try:
            pipe = opener(shlex.join([spec.command, *spec.args]), cwd=cwd, env=dict(spec.env))
            servers.append(McpServer(spec.name, pipe, timeout=timeout).start())
        except Exception as exc:
            log.warning("the connector %s did not start: %s", spec.name, exc)
    return McpHub(servers)


def workspace_servers(
    workspace: Path, trusted: bool, skipped: list[str] | None = None
) -> list[ServerSpec]:
    """The servers of the workspace's own ``.mcp.json``: none (the file is not even read)
    unless the person trusted the folder. Servers cowork does not start go to ``skipped``."""
    if not trusted:
        return []
    path = workspace / ".mcp.json"
    if not path.is_file():
        return []
    return servers_from_mcp_json(path.read_text(encoding="utf-8"), str(path), skipped)


_LAYER_NAMES = {"admin": "admin policy", "user": "user settings"}


def policy_servers(policy: Policy) -> list[ServerSpec]:
    """The servers of ``mcp.servers`` (admin policy and user settings, merged by the policy)."""
    out: list[ServerSpec] = []
    for name, entry in policy.mcp.servers.items():
        layer = policy.server_origins.get(name, "admin")
        source = f"{_LAYER_NAMES.get(layer, layer)}: mcp.servers.{name}"
        out.append(ServerSpec(name, entry.command, tuple(entry.args), dict(entry.env), source))
    return out


def configured_servers(
    policy: Policy, workspace: Path, trusted: bool, skipped: list[str] | None = None
) -> list[ServerSpec]:
    """Every server a task starts: those of admin policy and user settings, then those of the
    workspace's ``.mcp.json`` when the person trusts the folder.

    A name clash is settled for the stronger side: a workspace server with the name of one
    from admin policy or user settings is not started (it goes to ``skipped`` with why), so a
    workspace can never stand in for a connector someone configured for every folder."""
    out = policy_servers(policy)
    taken = {s.name: s.source for s in out}
    for spec in workspace_servers(workspace, trusted, skipped):
        if spec.name in taken:
            if skipped is not None:
                skipped.append(
                    f"{spec.source}: mcpServers.{spec.name}: a connector of that name comes "
                    f"from {taken[spec.name]}, which is used instead"
                )
            continue
        out.append(spec)
    return out
