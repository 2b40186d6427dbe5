"""Why was this blocked, and what would allow it: explanations and exception requests.

Every refusal cowork records in the audit log (an egress denial, the egress floor, an
approvals rule, a policy lock, an untrusted workspace, a refused admin policy) can be
explained from its audit log line alone: :func:`explain` turns line ``seq`` into an
:class:`Explanation` with a plain-language reason, what could allow it, and, where policy
can allow it, the exact policy snippet (TOML) an administrator could paste. For egress the
snippet is one grant for exactly the refused request: same scheme, host, port, method and
path (no wildcards), so it allows that request and no neighbour of it.

:func:`request_exception` writes a request (JSON: the refused event, the person's note, the
snippet) into the folder named by admin policy ``audit.exception_inbox`` and records an
``exception.requested`` event (which the OpenTelemetry export sends to the collector).
The CLI (``cowork why``, ``cowork request-exception``) and the app both use this module.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cowork.errors import UsageError
from cowork.host.audit import find_line
from cowork.host.egress.grants import GRANT_ID_RE, HTTP_METHODS, Grant
from cowork.host.events import EventBus, Kind

#: Event kinds that are refusals (``action.decided`` only when its verdict is "refuse").
REFUSAL_KINDS = frozenset(
    {
        str(Kind.EGRESS_DENIED),
        str(Kind.ACTION_DECIDED),
        str(Kind.POLICY_IGNORED),
        str(Kind.POLICY_REJECTED),
    }
)

_FLOOR_HINTS = (
    "ip address",
    "single-label",
    "trailing dot",
    "control character",
    "non-ascii",
    "loopback, private or reserved",
    "malformed host",
    "empty host",
    "too long",
)


@dataclass(frozen=True)
class Explanation:
    seq: int
    kind: str
    category: str  # egress, floor, approvals, lock, trust, policy
    what: str
    reason: str
    allow: str
    snippet: str | None  # TOML an admin can paste; None when no policy can allow it
    session: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.seq,
            "kind": self.kind,
            "category": self.category,
            "what": self.what,
            "reason": self.reason,
            "allow": self.allow,
            "snippet": self.snippet,
            "session": self.session,
        }

    def text(self) -> str:
        lines = [
            f"Event {self.seq}: {self.what}",
            f"Why it was blocked: {self.reason}",
            f"What could allow it: {self.allow}",
        ]
        if self.snippet is not None:
            lines += ["", "Policy an administrator could add:", "", self.snippet.rstrip()]
        return "\n".join(lines)


def is_refusal(line: Mapping[str, Any]) -> bool:
    kind = str(line.get("kind"))
    if kind not in REFUSAL_KINDS:
        return False
    if kind == str(Kind.ACTION_DECIDED):
        return str((line.get("fields") or {}).get("verdict")) in ("refuse", "refused")
    return True


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _grant_id(seq: int, host: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", host.lower()).strip("-")
    gid = f"exception-{seq}-{base}"[:64].rstrip("-._")
    return gid if GRANT_ID_RE.match(gid) else f"exception-{seq}"


def egress_grant(seq: int, fields: Mapping[str, Any]) -> Grant:
    """The narrowest grant that allows the refused request in ``fields`` (an egress.denied)."""
    host = str(fields.get("host") or "")
    port = int(fields.get("port") or 0)
    method = str(fields.get("method") or "").upper()
    path = str(fields.get("path") or "").split("?", 1)[0]
    scheme = str(fields.get("scheme") or "")
    if method == "CONNECT" or scheme not in ("http", "https"):
        scheme = "https" if method == "CONNECT" or port != 80 else "http"
    default_port = 443 if scheme == "https" else 80
    if method == "CONNECT":
        # HTTPS hides the request inside the tunnel: only the destination was seen.
        methods: tuple[str, ...] = ("GET", "HEAD")
        paths: tuple[str, ...] = ("/**",)
    else:
        if method not in HTTP_METHODS:
            raise UsageError(f"method {method!r} cannot be granted")
        if not path.startswith("/") or "*" in path:
            raise UsageError(f"path {path!r} cannot be granted exactly (it contains '*')")
        methods, paths = (method,), (path,)
    return Grant(
        id=_grant_id(seq, host),
        scheme=scheme,  # type: ignore[arg-type]
        host=host,
        port=None if port in (0, default_port) else port,
        methods=methods,
        paths=paths,
    )


def grant_toml(grant: Grant, comment: str | None = None) -> str:
    lines = []
    if comment:
        lines += [f"# {c}" for c in comment.splitlines()]
    lines.append("[[egress.grants]]")
    lines.append(f"id = {_toml_str(grant.id)}")
    if grant.scheme != "https":
        lines.append(f"scheme = {_toml_str(grant.scheme)}")
    lines.append(f"host = {_toml_str(grant.host)}")
    if grant.port is not None:
        lines.append(f"port = {grant.port}")
    lines.append("methods = [" + ", ".join(_toml_str(m) for m in grant.methods) + "]")
    lines.append("paths = [" + ", ".join(_toml_str(p) for p in grant.paths) + "]")
    return "\n".join(lines) + "\n"


def _looks_like_floor(reason: str) -> bool:
    r = reason.lower()
    return any(h in r for h in _FLOOR_HINTS) and "grant" not in r


def _explain_egress(seq: int, line: Mapping[str, Any], fields: Mapping[str, Any]) -> Explanation:
    reason = str(fields.get("reason") or "refused by the egress gateway")
    method = str(fields.get("method") or "?")
    host = str(fields.get("host") or "?")
    port = fields.get("port")
    path = str(fields.get("path") or "")
    target = f"{host}:{port}" if port else host
    what = (
        f"a connection to {target} was refused"
        if method == "CONNECT"
        else f"{method} {target}{path} was refused"
    )
    session = line.get("session")
    r = reason.lower()
    if "proxy token" in r:
        return Explanation(
            seq,
            str(line["kind"]),
            "egress",
            what,
            f"{reason}: a program tried the gateway without cowork's own connection details.",
            "Nothing in policy: only programs using the VM's proxy settings can go out.",
            None,
            session,
        )
    if _looks_like_floor(reason):
        return Explanation(
            seq,
            str(line["kind"]),
            "floor",
            what,
            f"{reason}. This is cowork's built-in safety floor (no private, local or raw IP "
            "destinations).",
            "Nothing: no policy can loosen the floor. Use a public DNS name for the service.",
            None,
            session,
        )
    if any(k in r for k in ("no grant", "not granted", "connect to port")):
        try:
            grant = egress_grant(seq, fields)
        except (UsageError, ValueError) as exc:
            return Explanation(
                seq,
                str(line["kind"]),
                "egress",
                what,
                f"{reason}: no rule in policy lets the VM reach this.",
                f"An administrator would have to write a grant by hand ({exc}).",
                None,
                session,
            )
        note = None
        if method == "CONNECT":
            note = (
                "Only the destination was seen (HTTPS hides the request itself);\n"
                "narrow methods and paths if you know them."
            )
        return Explanation(
            seq,
            str(line["kind"]),
            "egress",
            what,
            f"{reason}: no rule in policy lets the VM reach this (cowork denies by default).",
            "An administrator can add the grant below to admin policy (it allows exactly "
            "this request), or you can ask with 'cowork request-exception "
            f"{seq} --note ...'. A host in egress.deny_hosts stays blocked even then.",
            grant_toml(grant, note),
            session,
        )
    if "websocket" in r:
        return Explanation(
            seq,
            str(line["kind"]),
            "egress",
            what,
            f"{reason}.",
            "An administrator can set egress.allow_websockets = true and websocket = true on "
            "the grant for this host.",
            None,
            session,
        )
    return Explanation(
        seq,
        str(line["kind"]),
        "egress",
        what,
        f"{reason}. This is one of the gateway's protections against requests that hide "
        "where they go or carry credentials cowork did not issue.",
        "Nothing in policy: the program has to make a plain request through the proxy.",
        None,
        session,
    )


def _explain_action(seq: int, line: Mapping[str, Any], fields: Mapping[str, Any]) -> Explanation:
    action = str(fields.get("action") or fields.get("tool") or "an action")
    reason = str(fields.get("reason") or "the approvals rules refused it")
    risk = str(fields.get("risk") or "")
    rule = str(fields.get("rule") or "")
    session = line.get("session")
    what = f"the agent was not allowed to: {action}"
    if risk == "risky":
        snippet = (
            "# Makes cowork ask the person instead of refusing risky actions\n"
            "# (for every risky action, not only this one).\n"
            '[agent]\napproval_mode = "ask"\nallowed_approval_modes = ["ask", "deny-risky"]\n'
        )
        return Explanation(
            seq,
            str(line["kind"]),
            "approvals",
            what,
            f"{reason} (rule {rule}; the approval mode refuses risky actions).",
            "Choose the 'ask' approval mode so that cowork asks you, if policy allows that "
            "mode; an administrator can allow it with the snippet below.",
            snippet,
            session,
        )
    return Explanation(
        seq,
        str(line["kind"]),
        "approvals",
        what,
        f"{reason} (rule {rule or 'unknown'}).",
        "Nothing in policy: cowork never lets the agent do this. You can do it yourself "
        "outside cowork if you are sure.",
        None,
        session,
    )


def _explain_policy(seq: int, line: Mapping[str, Any], fields: Mapping[str, Any]) -> Explanation:
    session = line.get("session")
    kind = str(line["kind"])
    if kind == str(Kind.POLICY_REJECTED):
        problems = [str(p) for p in fields.get("problems") or []]
        return Explanation(
            seq,
            kind,
            "policy",
            "the administrator's policy file was refused, so cowork runs fully locked down",
            "; ".join(problems) or "the admin policy is invalid",
            "An administrator fixes the file ('cowork policy check FILE' shows each problem).",
            None,
            session,
        )
    cause = str(fields.get("cause") or "")
    key = str(fields.get("key") or "")
    note = str(fields.get("reason") or "")
    if cause == "trust":
        folder = str(fields.get("workspace") or "the folder")
        return Explanation(
            seq,
            kind,
            "trust",
            f"the settings inside {folder} were not used",
            "You have not trusted this folder's own configuration (or it changed since).",
            f"Review and trust it yourself: cowork trust {folder}",
            None,
            session,
        )
    if cause == "lock":
        section, _, name = key.partition(".")
        snippet = (
            f"# Remove {_toml_str(key)} (or {_toml_str(section)}) from 'locks' in admin "
            "policy,\n# or set the value you need there:\n"
            f"[{section}]\n# {name} = ...\n"
        )
        return Explanation(
            seq,
            kind,
            "lock",
            f"your setting {key} was not used",
            f"{note}: your organisation's policy fixes this setting.",
            "Only an administrator can change it: unlock the key or set the value you need.",
            snippet,
            session,
        )
    return Explanation(
        seq,
        kind,
        "policy",
        "a setting was not used",
        note or "a lower layer cannot widen what a stronger one set",
        "Ask an administrator to set the value in admin policy.",
        None,
        session,
    )


def explain_line(line: Mapping[str, Any]) -> Explanation:
    seq = int(line.get("seq") or 0)
    if not is_refusal(line):
        raise UsageError(
            f"event {seq} ({line.get('kind')}) is not a refusal; "
            "use the number shown beside a refusal ('event N')"
        )
    fields: Mapping[str, Any] = line.get("fields") or {}
    kind = str(line["kind"])
    if kind == str(Kind.EGRESS_DENIED):
        return _explain_egress(seq, line, fields)
    if kind == str(Kind.ACTION_DECIDED):
        return _explain_action(seq, line, fields)
    return _explain_policy(seq, line, fields)


def explain(log: Path, seq: int) -> Explanation:
    """The explanation of audit log event ``seq``."""
    return explain_line(find_line(log, seq))


def short_notice(line: Mapping[str, Any]) -> str | None:
    """One line for the CLI beside a refusal: its event number and what to run next."""
    if not is_refusal(line):
        return None
    seq = line.get("seq")
    return f"event {seq}: 'cowork why {seq}' explains it; 'cowork request-exception {seq}' asks"


@dataclass(frozen=True)
class ExceptionRequest:
    path: Path | None
    explanation: Explanation
    note: str


def request_exception(
    log: Path,
    seq: int,
    note: str,
    *,
    inbox: Path | None,
    bus: EventBus | None = None,
    exporting: bool = False,
) -> ExceptionRequest:
    """Write a request for the refusal ``seq`` into ``inbox`` and record it as an event.

    Raises :class:`UsageError` when there is nowhere to send it (no inbox and no export).
    """
    note = note.strip()
    if not note:
        raise UsageError("--note: say in a sentence why you need this (the admin reads it)")
    if len(note) > 2000:
        raise UsageError("--note: keep it under 2000 characters")
    line = find_line(log, seq)
    ex = explain_line(line)
    if inbox is None and not exporting:
        raise UsageError(
            "your organisation has not set audit.exception_inbox (nor audit.otel_endpoint), "
            "so there is nowhere to send a request; show 'cowork why "
            f"{seq}' to your administrator instead"
        )
    request = {
        "version": 1,
        "requested_at": time.time(),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "note": note,
        "event": {k: line.get(k) for k in ("seq", "hash", "time", "kind", "session", "fields")},
        "log": str(log),
        **{k: v for k, v in ex.to_json().items() if k not in ("event", "kind", "session")},
    }
    written: Path | None = None
    if inbox is not None:
        if not inbox.is_dir():
            raise UsageError(
                f"audit.exception_inbox {str(inbox)!r} is not a folder; ask your administrator "
                "to create it (writable by you, readable by them)"
            )
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{re.sub(r'[^A-Za-z0-9_-]', '_', getpass.getuser())}-event{seq}.json"
        written = inbox / name
        try:
            fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError as exc:
            raise UsageError(f"{written}: a request for event {seq} was just written") from exc
        except OSError as exc:
            raise UsageError(
                f"audit.exception_inbox {str(inbox)!r}: cannot write there ({exc.strerror})"
            ) from exc
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(request, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
    if bus is not None:
        bus.emit(
            Kind.EXCEPTION_REQUESTED,
            session=ex.session,
            event=seq,
            category=ex.category,
            note=note,
            snippet=ex.snippet,
            file=str(written) if written else None,
        )
    return ExceptionRequest(path=written, explanation=ex, note=note)
