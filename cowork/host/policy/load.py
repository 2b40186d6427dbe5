"""Reading policy files: parse (no validation) → validate one layer, collecting every problem.

Contract:
- Parsing is safe and size-limited: TOML with ``tomllib``, JSON with the standard decoder and
  a duplicate-key check; nothing is ever imported or executed. Files are opened without
  following symlinks and without blocking (a FIFO is refused, not read).
- Every problem names the file, the line where the format allows, the dotted key path and a
  hint; all problems of a file are reported together in one :class:`ConfigError`.
- Admin files (``policy.toml`` and ``policy.d/*.toml``) are refused when they are symlinks,
  not owned by root, or writable by group or others; so is an admin folder with those flaws.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cowork.errors import ConfigError
from cowork.host.policy.schema import SECTIONS, PolicyDocument

#: Largest config file read, in bytes; larger files are refused unread.
MAX_FILE_BYTES = 256 * 1024
#: Deepest nesting of tables/arrays accepted in a config file.
MAX_DEPTH = 32

LayerName = Literal["admin", "user", "workspace"]


@dataclass(frozen=True)
class PolicySource:
    """One file that contributed to a layer."""

    layer: LayerName
    path: Path


@dataclass(frozen=True)
class Layer:
    """One validated layer: the merged document, the dotted keys it set, and its files."""

    name: LayerName
    doc: PolicyDocument
    keys: frozenset[str]
    sources: tuple[PolicySource, ...]

    @classmethod
    def empty(cls, name: LayerName) -> Layer:
        return cls(name=name, doc=PolicyDocument(), keys=frozenset(), sources=())


# --- reading bytes ------------------------------------------------------------------------


def read_limited(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of regular file ``path``, or None if it does not exist.

    Never follows a symlink, never blocks on a FIFO or device, never reads past ``limit``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{path}: is a symbolic link; cowork does not follow links for config files",
                [f"{path}: replace the link with the file itself"],
            ) from None
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: is not a regular file; remove it or replace it")
        if st.st_size > limit:
            raise ConfigError(
                f"{path}: is {st.st_size} bytes, larger than the {limit}-byte limit; "
                "config files are small, check it is the right file"
            )
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise ConfigError(f"{path}: larger than the {limit}-byte limit")
        return data
    finally:
        os.close(fd)


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: is not valid UTF-8",
            [f"{path}:{line}: byte {exc.start} is not UTF-8; save the file as UTF-8"],
        ) from None


def _depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of ``obj``, iteratively (no recursion limit to trip)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


# --- TOML ---------------------------------------------------------------------------------

_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]#]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")


def parse_toml(path: Path, data: bytes) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """Parse TOML bytes; returns the table and a map from key path to line number."""
    text = _decode(path, data)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS.search(msg)
        where = f"{path}:{m.group(1)}" if m else str(path)
        reason = _TOML_POS.sub("", msg).strip()
        hint = "duplicate keys are not allowed" if "overwrite" in reason.lower() else ""
        problem = f"{where}: {reason}" + (f" ({hint})" if hint else "")
        raise ConfigError(f"{path}: is not valid TOML", [problem]) from None
    except RecursionError:
        raise ConfigError(f"{path}: is nested too deeply") from None
    if _depth(table) > MAX_DEPTH:
        raise ConfigError(f"{path}: is nested more than {MAX_DEPTH} levels deep")
    return table, toml_lines(text)


def _split_key(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in raw.split("."))


def toml_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Best-effort line numbers of keys and tables (quoted keys containing '.' excepted)."""
    lines: dict[tuple[Any, ...], int] = {}
    prefix: tuple[Any, ...] = ()
    arrays: dict[tuple[Any, ...], int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        h = _HEADER.match(line)
        if h:
            name = _split_key(h.group(2))
            if h.group(1) == "[[":
                index = arrays.get(name, -1) + 1
                arrays[name] = index
                prefix = (*name, index)
                lines.setdefault(name, n)
            else:
                prefix = name
            lines.setdefault(prefix, n)
            continue
        k = _KEY.match(line)
        if k:
            lines.setdefault((*prefix, *_split_key(k.group(1))), n)
    return lines


def line_of(lines: Mapping[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    """Line of ``loc`` or of its nearest ancestor that has one."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


# --- JSON ---------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(path: Path, data: bytes) -> Any:
    """Parse JSON bytes strictly: duplicate keys, NaN/Infinity and deep nesting are errors."""
    text = _decode(path, data)

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=no_constants)
    except _DuplicateKey as dup:
        needle = json.dumps(dup.key)
        hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
        where = f"{path}:{hits[-1]}" if len(hits) >= 2 else str(path)
        raise ConfigError(
            f"{path}: has a duplicate key",
            [
                f"{where}: key {dup.key!r} appears more than once in one object; "
                "keep one (tools disagree on which copy wins)"
            ],
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: is not valid JSON", [f"{path}:{exc.lineno}: {exc.msg} (column {exc.colno})"]
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{path}: is not valid JSON", [f"{path}: {exc}"]) from None
    except RecursionError:
        raise ConfigError(f"{path}: is nested too deeply") from None
    if _depth(obj) > MAX_DEPTH:
        raise ConfigError(f"{path}: is nested more than {MAX_DEPTH} levels deep")
    return obj


# --- validation ---------------------------------------------------------------------------

_HINTS = {
    "extra_forbidden": "unknown key; check the spelling (`cowork policy schema` lists every key)",
    "missing": "this key is required",
    "int_type": "write a whole number without quotes",
    "int_parsing": "write a whole number without quotes",
    "int_from_float": "write a whole number",
    "bool_type": "write true or false without quotes",
    "bool_parsing": "write true or false without quotes",
    "string_type": "write a quoted string",
    "literal_error": "use one of the listed values",
    "greater_than_equal": "the value is too small",
    "less_than_equal": "the value is too large",
    "too_short": "the list may not be empty",
    "tuple_type": 'write a list, e.g. ["a", "b"]',
    "model_type": "write a table (section)",
    "model_attributes_type": "write a table (section)",
}


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _problems(path: Path, exc: ValidationError, lines: Mapping[tuple[Any, ...], int]) -> list[str]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        line = line_of(lines, loc)
        where = f"{path}:{line}" if line else str(path)
        msg = str(err["msg"]).removeprefix("Value error, ")
        hint = _HINTS.get(str(err["type"]))
        out.append(f"{where}: {_dotted(loc)}: {msg}" + (f" ({hint})" if hint else ""))
    return out


def _keys_set(table: Mapping[str, Any]) -> frozenset[str]:
    keys: set[str] = set()
    for top, value in table.items():
        if top in SECTIONS and isinstance(value, Mapping):
            keys.update(f"{top}.{name}" for name in value)
        else:
            keys.add(top)
    return frozenset(keys)


def validate_table(
    path: Path, table: Mapping[str, Any], lines: Mapping[tuple[Any, ...], int] | None = None
) -> tuple[PolicyDocument, frozenset[str]]:
    """Validate one parsed policy table; returns the document and the dotted keys it sets."""
    if "version" in table and table["version"] != 1:
        line = line_of(lines or {}, ("version",))
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            f"{path}: is not a valid cowork policy file",
            [
                f"{where}: version: {table['version']!r} is not supported "
                "(this cowork reads version = 1; upgrade cowork or rewrite the file)"
            ],
        )
    try:
        doc = PolicyDocument.model_validate(dict(table))
    except ValidationError as exc:
        raise ConfigError(
            f"{path}: is not a valid cowork policy file", _problems(path, exc, lines or {})
        ) from None
    return doc, _keys_set(table)


# --- admin file checks --------------------------------------------------------------------


def admin_file_problems(path: Path, *, directory: bool = False) -> list[str]:
    """Why ``path`` cannot be trusted as admin policy; empty when it can (or is absent)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"{path}: cannot be inspected ({exc.strerror})"]
    what = "folder" if directory else "file"
    if stat.S_ISLNK(st.st_mode):
        return [f"{path}: admin policy {what} is a symbolic link; replace it with a real {what}"]
    if directory and not stat.S_ISDIR(st.st_mode):
        return [f"{path}: expected a folder"]
    if not directory and not stat.S_ISREG(st.st_mode):
        return [f"{path}: admin policy file is not a regular file"]
    out = []
    if sys.platform != "win32" and st.st_uid != 0:
        out.append(
            f"{path}: admin policy {what} is owned by uid {st.st_uid}, not root; "
            f"run: sudo chown root:root '{path}'"
        )
    if st.st_mode & 0o022:
        out.append(
            f"{path}: admin policy {what} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run: sudo chmod go-w '{path}'"
        )
    return out


def admin_files(admin_dir: Path, main_file: Path, dropins: Path) -> tuple[list[Path], list[str]]:
    """The admin policy files in merge order, and every permission problem found."""
    problems = admin_file_problems(admin_dir, directory=True)
    files: list[Path] = []
    if main_file.exists() or main_file.is_symlink():
        files.append(main_file)
    if dropins.is_symlink() or dropins.exists():
        problems += admin_file_problems(dropins, directory=True)
        if dropins.is_dir() and not dropins.is_symlink():
            files += sorted(p for p in dropins.iterdir() if p.name.endswith(".toml"))
    for f in files:
        problems += admin_file_problems(f)
    return files, problems


def merge_admin_tables(tables: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Merge admin files in name order: later keys win, except ``egress.grants`` and
    ``mcp.servers`` (joined; a repeated id or name is an error), ``egress.deny_hosts`` and
    ``locks`` (joined)."""
    out: dict[str, Any] = {}
    grant_owner: dict[str, Path] = {}
    problems: list[str] = []
    for path, table in tables:
        for top, value in table.items():
            if top == "locks" and isinstance(value, list):
                out["locks"] = list(dict.fromkeys([*out.get("locks", []), *value]))
            elif top in SECTIONS and isinstance(value, dict) and isinstance(out.get(top), dict):
                section = dict(out[top])
                for name, item in value.items():
                    joined = (top, name) in (("egress", "grants"), ("egress", "deny_hosts"))
                    if joined and isinstance(item, list) and isinstance(section.get(name), list):
                        section[name] = [*section[name], *item]
                    elif (top, name) == ("mcp", "servers") and isinstance(item, dict):
                        servers = dict(section.get(name) or {})
                        for server in item:
                            if server in servers:
                                problems.append(
                                    f"{path}: mcp.servers.{server}: already defined in "
                                    "another admin policy file; give each server its own name"
                                )
                        section[name] = {**servers, **item}
                    else:
                        section[name] = item
                out[top] = section
            else:
                out[top] = dict(value) if isinstance(value, dict) else value
            if (
                top == "egress"
                and isinstance(value, dict)
                and isinstance(value.get("grants"), list)
            ):
                for g in value["grants"]:
                    gid = g.get("id") if isinstance(g, dict) else None
                    if isinstance(gid, str):
                        if gid in grant_owner and grant_owner[gid] != path:
                            problems.append(
                                f"{path}: egress.grants: id {gid!r} is already defined in "
                                f"{grant_owner[gid]}; give each grant its own id"
                            )
                        grant_owner[gid] = path
    if problems:
        raise ConfigError("admin policy files conflict", problems)
    return out
