"""The trust gate for a workspace's own configuration.

Contract (what MUST hold):
- Trust is recorded per workspace (its resolved path) and pinned to the sha256 of every
  workspace config file (``.claude/settings.json``, ``.claude/settings.local.json``,
  ``.mcp.json``, ``.cowork.toml``; an absent file is pinned as absent).
- Until a workspace is trusted, nothing in those files is acted on. They are at most hashed,
  and parsed by the size-limited safe parsers of :mod:`cowork.host.policy.load` to show the
  summary. Nothing from a workspace is ever imported or executed on the host, and ``.env``
  is never read.
- When any pinned file changes, trust lapses (``TRUST_LAPSED``); the user sees the new
  summary, item by item, before trusting again.
- Config files are hashed and read through descriptors opened once (the workspace, then
  ``.claude`` relative to it with ``O_NOFOLLOW``, then each file relative to its folder), never
  by path twice: a ``.claude`` or file swapped for a symlink at any moment is never trusted.
- Fail closed: any error while checking trust means "not trusted".
- Hooks and MCP servers of a trusted workspace run only inside the VM; the host never runs
  them. The summary says so.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cowork.errors import ConfigError, TrustError
from cowork.host.events import EventBus, Kind
from cowork.host.policy.load import (
    MAX_FILE_BYTES,
    parse_json,
    parse_toml,
    read_limited,
    validate_table,
)
from cowork.host.policy.merge import LISTS, NARROWABLE
from cowork.paths import WORKSPACE_CONFIG_FILES

log = logging.getLogger(__name__)

#: Largest trust store read, in bytes.
MAX_STORE_BYTES = 4 * 1024 * 1024
#: Longest value shown in a summary line.
MAX_SHOWN = 300
STORE_VERSION = 1
#: Environment variables that would redirect the model API or carry credentials.
SENSITIVE_ENV = frozenset(
    {
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_CUSTOM_HEADERS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "NODE_OPTIONS",
        "LD_PRELOAD",
        "PYTHONPATH",
    }
)


class TrustState(enum.StrEnum):
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    LAPSED = "lapsed"


@dataclass(frozen=True)
class ConfigFile:
    """One workspace config file as found: its bytes (when safely readable) and hash."""

    rel: str
    data: bytes | None
    sha256: str | None
    problem: str | None = None

    @property
    def present(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class Snapshot:
    """The workspace config files read once, so what is checked is what is parsed."""

    root: Path
    files: tuple[ConfigFile, ...]

    def hashes(self) -> dict[str, str | None]:
        return {f.rel: f.sha256 for f in self.files}

    def file(self, rel: str) -> ConfigFile:
        for f in self.files:
            if f.rel == rel:
                return f
        raise KeyError(rel)


def workspace_key(workspace: Path) -> Path:
    return Path(os.path.realpath(workspace))


def _hash_special(rel: str, what: bytes) -> str:
    return hashlib.sha256(b"cowork-special\0" + rel.encode() + b"\0" + what).hexdigest()


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: A seam for tests: called with the name of each step of :func:`snapshot` before it runs.
Step = Callable[[str], None]


def _read_fd(fd: int, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of an open file; None if there is more."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None


def _open_child_dir(parent_fd: int, name: str) -> int | None:
    """An fd for folder ``name`` in ``parent_fd``, never through a symlink; None if absent.
    Raises OSError (ELOOP/ENOTDIR) for a link or a non-folder."""
    try:
        return os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW, dir_fd=parent_fd)
    except FileNotFoundError:
        return None


def _snapshot_file(rel: str, dir_fd: int, name: str, step: Step) -> ConfigFile:
    step(f"open {rel}")
    try:
        fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return ConfigFile(rel, None, None)
    except OSError as exc:
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return ConfigFile(
                rel, None, _hash_special(rel, b"error"), f"cannot read: {exc.strerror}"
            )
        return ConfigFile(
            rel,
            None,
            _hash_special(rel, b"link\0" + os.fsencode(target)),
            f"is a symbolic link to {target!r}; replace it with a plain file",
        )
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ConfigFile(rel, None, _hash_special(rel, b"special"), "is not a regular file")
        step(f"read {rel}")
        data = _read_fd(fd, MAX_FILE_BYTES)
        if data is None:
            marker = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()
            return ConfigFile(
                rel,
                None,
                _hash_special(rel, marker),
                f"is larger than the {MAX_FILE_BYTES}-byte limit; config files are small, "
                "check it is the right file",
            )
        return ConfigFile(rel, data, hashlib.sha256(data).hexdigest())
    finally:
        os.close(fd)


def snapshot(workspace: Path, *, step: Step | None = None) -> Snapshot:
    """Hash (and keep the bytes of) every workspace config file.

    Everything is read through file descriptors opened once: the workspace folder, then each
    folder on the way (``.claude``) relative to its parent's descriptor and never through a
    symbolic link, then each file relative to its folder's descriptor, hashed and read from
    that same descriptor. So a ``.claude`` (or a file) swapped for a symlink at any moment is
    seen as a link (a problem, never trusted), and what is hashed is what is parsed. Never
    blocks on special files, never reads more than the size limit. ``step`` is a test seam.
    """
    at = step or (lambda _name: None)
    root = workspace_key(workspace)
    at("open workspace")
    root_fd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW)
    dirs: dict[str, int | OSError | None] = {"": root_fd}
    files = []
    try:
        for rel in WORKSPACE_CONFIG_FILES:
            folder, _, name = rel.rpartition("/")
            if folder not in dirs:
                at(f"open {folder}")
                try:
                    dirs[folder] = _open_child_dir(root_fd, folder)
                except OSError as exc:
                    dirs[folder] = exc
            dir_fd = dirs[folder]
            if dir_fd is None:
                files.append(ConfigFile(rel, None, None))
            elif isinstance(dir_fd, OSError):
                try:
                    target = os.readlink(folder, dir_fd=root_fd)
                    marker, problem = (
                        b"dirlink\0" + os.fsencode(target),
                        f"{folder} is a symbolic link to {target!r}; replace it with a folder",
                    )
                except OSError:
                    marker, problem = b"notdir", f"{folder} is not a folder"
                files.append(ConfigFile(rel, None, _hash_special(rel, marker), problem))
            else:
                files.append(_snapshot_file(rel, dir_fd, name, at))
    finally:
        for fd in dirs.values():
            if isinstance(fd, int):
                os.close(fd)
    return Snapshot(root=root, files=tuple(files))


# --- summary ------------------------------------------------------------------------------


def show(value: Any) -> str:
    """A value as one safe line: control characters escaped, long text cut."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    out = "".join(
        c if c.isprintable() and c not in "\x1b\x9b" else f"\\x{ord(c):02x}" for c in text
    )
    return out if len(out) <= MAX_SHOWN else out[: MAX_SHOWN - 1] + "…"


@dataclass(frozen=True)
class SummaryItem:
    file: str
    kind: str  # hook, mcp-server, env, permissions, base-url, command, setting, problem
    text: str


@dataclass(frozen=True)
class TrustSummary:
    snapshot: Snapshot
    items: tuple[SummaryItem, ...]
    problems: tuple[str, ...]

    @property
    def workspace(self) -> Path:
        return self.snapshot.root

    def lines(self) -> list[str]:
        """The summary in plain language, one line per item."""
        out = [f"Workspace {show(str(self.workspace))}"]
        if not any(f.present for f in self.snapshot.files):
            out.append("  has no cowork or Claude configuration files.")
        for f in self.snapshot.files:
            if not f.present:
                continue
            out.append(f"  {f.rel}:")
            items = [i for i in self.items if i.file == f.rel]
            if not items:
                out.append("    - nothing that changes behaviour")
            out += [f"    - {i.text}" for i in items]
        if self.problems:
            out.append("  Problems (fix these before trusting):")
            out += [f"    - {show(p)}" for p in self.problems]
        return out


def _summarize_claude(rel: str, obj: Any, items: list[SummaryItem]) -> None:
    def add(kind: str, text: str) -> None:
        items.append(SummaryItem(rel, kind, text))

    if not isinstance(obj, Mapping):
        add("setting", f"top level is {type(obj).__name__}, not an object: {show(obj)}")
        return
    for key, value in obj.items():
        if key == "hooks" and isinstance(value, Mapping):
            for event, groups in value.items():
                for group in groups if isinstance(groups, list) else [groups]:
                    matcher = group.get("matcher", "*") if isinstance(group, Mapping) else "*"
                    hooks = group.get("hooks", []) if isinstance(group, Mapping) else [group]
                    for hook in hooks if isinstance(hooks, list) else [hooks]:
                        cmd = hook.get("command", hook) if isinstance(hook, Mapping) else hook
                        add(
                            "hook",
                            f"hook on {show(event)} (matching {show(matcher)}) runs the command "
                            f"`{show(cmd)}` inside the VM",
                        )
        elif key == "mcpServers" and isinstance(value, Mapping):
            for name, server in value.items():
                if isinstance(server, Mapping) and "command" in server:
                    argv = [server["command"], *(server.get("args") or [])]
                    text = f"MCP server {show(name)} runs `{show(' '.join(map(str, argv)))}`"
                    text += " inside the VM"
                    if server.get("env"):
                        text += f" with environment {show(server['env'])}"
                elif isinstance(server, Mapping) and "url" in server:
                    text = f"MCP server {show(name)} connects to {show(server['url'])}"
                    text += " (only through egress grants)"
                else:
                    text = f"MCP server {show(name)}: {show(server)}"
                add("mcp-server", text)
        elif key == "env" and isinstance(value, Mapping):
            for name, val in value.items():
                text = f"sets environment variable {show(name)} = {show(val)}"
                if str(name).upper() in SENSITIVE_ENV:
                    text += " (cowork never applies this on the host)"
                add("base-url" if name == "ANTHROPIC_BASE_URL" else "env", text)
        elif key == "permissions" and isinstance(value, Mapping):
            for pkey, pval in value.items():
                if pkey == "defaultMode":
                    add("permissions", f"permission mode {show(pval)}")
                else:
                    add("permissions", f"permission rule {show(pkey)}: {show(pval)}")
        elif key in ("apiKeyHelper", "awsCredentialExport", "awsAuthRefresh", "otelHeadersHelper"):
            add("command", f"{key} runs the command `{show(value)}`")
        elif key == "statusLine" and isinstance(value, Mapping) and "command" in value:
            add("command", f"status line runs the command `{show(value['command'])}`")
        elif key in ("enableAllProjectMcpServers", "enabledMcpjsonServers"):
            add("mcp-server", f"{key} = {show(value)}")
        else:
            add("setting", f"setting {show(key)} = {show(value)}")


def _summarize_cowork(rel: str, snap_file: ConfigFile, problems: list[str]) -> list[SummaryItem]:
    assert snap_file.data is not None
    path = snap_file.rel
    table, lines = parse_toml(Path(path), snap_file.data)
    try:
        _, keys = validate_table(Path(path), table, lines)
    except ConfigError as exc:
        problems.extend(exc.problems or [str(exc)])
        keys = frozenset()
    items = []
    for key in sorted(keys):
        section, _, name = key.partition(".")
        value = table.get(section, {}).get(name) if name else table.get(section)
        if key in NARROWABLE or key in LISTS:
            text = f"asks for {key} = {show(value)} (applied only where it narrows)"
        else:
            text = f"asks for {key} = {show(value)} (a workspace cannot set this; ignored)"
        kind = "base-url" if key == "agent.base_url" else "setting"
        items.append(SummaryItem(rel, kind, text))
    return items


def summarize(snap: Snapshot) -> TrustSummary:
    """What the workspace config would do, item by item. Parses only with the safe parsers;
    never raises for bad content (it becomes a problem in the summary)."""
    items: list[SummaryItem] = []
    problems: list[str] = []
    for f in snap.files:
        if not f.present:
            continue
        if f.problem is not None or f.data is None:
            problems.append(f"{f.rel}: {f.problem}")
            continue
        try:
            if f.rel.endswith(".json"):
                _summarize_claude(f.rel, parse_json(Path(f.rel), f.data), items)
            else:
                items += _summarize_cowork(f.rel, f, problems)
        except ConfigError as exc:
            problems.extend(exc.problems or [str(exc)])
        except Exception as exc:  # content we did not foresee: shown, never trusted
            problems.append(f"{f.rel}: cannot be summarised ({type(exc).__name__})")
    return TrustSummary(snapshot=snap, items=tuple(items), problems=tuple(problems))


# --- the store ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustRecord:
    workspace: Path
    trusted_at: float
    files: Mapping[str, str | None]


@dataclass(frozen=True)
class TrustStatus:
    state: TrustState
    workspace: Path
    changed: tuple[str, ...] = ()
    record: TrustRecord | None = None

    @property
    def trusted(self) -> bool:
        return self.state is TrustState.TRUSTED


class TrustStore:
    """Per-user trust decisions in one JSON file (``Paths().trust_store``)."""

    def __init__(self, path: Path, bus: EventBus | None = None) -> None:
        self.path = path
        self.bus = bus or EventBus()

    def _read(self) -> dict[str, TrustRecord]:
        try:
            data = read_limited(self.path, MAX_STORE_BYTES)
        except ConfigError as exc:
            raise TrustError(f"trust store {self.path}: {exc}") from None
        if data is None:
            return {}
        try:
            obj = parse_json(self.path, data)
            if obj.get("version") != STORE_VERSION:
                raise ValueError("unknown version")
            out = {}
            for key, rec in obj["workspaces"].items():
                files = {str(k): (None if v is None else str(v)) for k, v in rec["files"].items()}
                out[key] = TrustRecord(Path(key), float(rec["trusted_at"]), files)
            return out
        except (ConfigError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrustError(
                f"trust store {self.path} is damaged ({type(exc).__name__}); remove it and "
                "trust your folders again"
            ) from None

    def _write(self, records: Mapping[str, TrustRecord]) -> None:
        obj = {
            "version": STORE_VERSION,
            "workspaces": {
                key: {"trusted_at": r.trusted_at, "files": dict(r.files)}
                for key, r in sorted(records.items())
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".trust-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(obj, fh, indent=2)
                fh.write("\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def records(self) -> list[TrustRecord]:
        return sorted(self._read().values(), key=lambda r: str(r.workspace))

    def status(self, workspace: Path, snap: Snapshot | None = None) -> TrustStatus:
        """Whether ``workspace``'s config is trusted now. Fails closed: errors → untrusted."""
        root = workspace_key(workspace)
        try:
            record = self._read().get(str(root))
            if record is None:
                return TrustStatus(TrustState.UNTRUSTED, root)
            snap = snap if snap is not None else snapshot(root)
            now = snap.hashes()
            changed = tuple(
                rel for rel in WORKSPACE_CONFIG_FILES if record.files.get(rel, "?") != now[rel]
            )
            if changed:
                self.bus.emit(Kind.TRUST_LAPSED, workspace=str(root), changed=list(changed))
                return TrustStatus(TrustState.LAPSED, root, changed, record)
            return TrustStatus(TrustState.TRUSTED, root, (), record)
        except Exception:
            log.warning("trust check for %s failed; treating it as untrusted", root, exc_info=True)
            return TrustStatus(TrustState.UNTRUSTED, root)

    def verified_snapshot(self, workspace: Path, *, step: Step | None = None) -> Snapshot | None:
        """The workspace's config bytes if (and only if) they match the trusted hashes.
        (``step`` is the test seam of :func:`snapshot`.)"""
        try:
            if str(workspace_key(workspace)) not in self._read():
                return None  # untrusted: its config files are not even opened
            snap = snapshot(workspace, step=step)
            return snap if self.status(workspace, snap).trusted else None
        except Exception:
            log.warning("trust check for %s failed", workspace, exc_info=True)
            return None

    def trust(self, summary: TrustSummary) -> TrustRecord:
        """Trust exactly the config the user was shown in ``summary``."""
        if summary.problems:
            raise TrustError(
                f"{summary.workspace}: cannot trust a workspace whose configuration has "
                "problems:\n" + "\n".join(f"  - {p}" for p in summary.problems)
            )
        records = self._read()
        record = TrustRecord(summary.workspace, time.time(), summary.snapshot.hashes())
        records[str(summary.workspace)] = record
        self._write(records)
        self.bus.emit(
            Kind.TRUST_GRANTED,
            workspace=str(summary.workspace),
            files=[f.rel for f in summary.snapshot.files if f.present],
        )
        return record

    def untrust(self, workspace: Path) -> bool:
        """Forget trust for ``workspace``; False if it was not trusted."""
        root = workspace_key(workspace)
        records = self._read()
        if records.pop(str(root), None) is None:
            return False
        self._write(records)
        self.bus.emit(Kind.TRUST_REVOKED, workspace=str(root))
        return True


def iter_summary(workspace: Path) -> Iterator[str]:
    """The plain-language summary lines for ``workspace`` (convenience for the faces)."""
    yield from summarize(snapshot(workspace)).lines()
