"""What a request says besides its line and headers: query, form and JSON bodies.

Pure functions, no I/O, used by :mod:`cowork.host.egress.gate`. Contract:

- a query string is read the way the most permissive common server reads it: split on both
  ``&`` and ``;``, ``+`` as space, names percent-decoded repeatedly (up to three times, so a
  double-encoded ``%256Bey`` is seen as ``key``); a name holding a control character (NUL) is
  refused outright, since stacks disagree on where such a name ends;
- a body is inspected only in its decoded form (the gateway undoes ``Content-Encoding`` and
  refuses a body it cannot decode); JSON and form bodies are parsed, anything else is scanned
  as bytes for token-shaped strings;
- the ``anthropic-messages`` body policy refuses any tool whose ``type`` is not one the client
  runs itself (server-side web search, web fetch, code execution and unknown types), any
  ``mcp_servers`` and any ``container``, unless the grant lists them in ``allow_server_tools``;
  a body it cannot parse as a JSON object is refused.

Every checker returns a short reason (names, never values) or None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote_plus

#: HTTP methods, the WebDAV ones included: what a method-override value may name.
KNOWN_METHODS = frozenset(
    {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "TRACE",
        "CONNECT",
        "PROPFIND",
        "PROPPATCH",
        "MKCOL",
        "COPY",
        "MOVE",
        "LOCK",
        "UNLOCK",
        "SEARCH",
        "PURGE",
        "MERGE",
    }
)

#: Field names (lower-case, without ``-`` and ``_``) that carry a credential in a body.
CREDENTIAL_FIELDS = frozenset(
    {
        "apikey",
        "xapikey",
        "apitoken",
        "apisecret",
        "accesskey",
        "accesskeyid",
        "secretaccesskey",
        "secretkey",
        "accesstoken",
        "refreshtoken",
        "idtoken",
        "authtoken",
        "sessiontoken",
        "securitytoken",
        "bearertoken",
        "token",
        "secret",
        "clientsecret",
        "clientassertion",
        "password",
        "passwd",
        "privatekey",
        "authorization",
        "auth",
        "credential",
        "credentials",
        "signature",
        "sig",
    }
)

#: Shapes of well-known credentials: provider prefixes, JWTs, cloud access key ids.
TOKEN_RE = re.compile(
    rb"(?<![A-Za-z0-9_-])("
    rb"sk-[A-Za-z0-9_-]{16,}"
    rb"|sk_(live|test)_[A-Za-z0-9]{16,}"
    rb"|rk_(live|test)_[A-Za-z0-9]{16,}"
    rb"|gh[pousr]_[A-Za-z0-9]{30,}"
    rb"|github_pat_[A-Za-z0-9_]{30,}"
    rb"|glpat-[A-Za-z0-9_-]{20,}"
    rb"|xox[abposr]-[A-Za-z0-9-]{10,}"
    rb"|AKIA[0-9A-Z]{16}"
    rb"|ASIA[0-9A-Z]{16}"
    rb"|AIza[0-9A-Za-z_-]{35}"
    rb"|ya29\.[0-9A-Za-z_-]{20,}"
    rb"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    rb"|hf_[A-Za-z0-9]{30,}"
    rb"|npm_[A-Za-z0-9]{30,}"
    rb"|pypi-[A-Za-z0-9_-]{50,}"
    rb")"
)

#: Tool types the client executes itself (the API only describes them to the model).
CLIENT_TOOL_PREFIXES = ("custom", "bash_", "text_editor_", "computer_", "memory_")
MAX_JSON_DEPTH = 64


def _norm(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


def is_credential_field(name: str) -> bool:
    return _norm(name) in CREDENTIAL_FIELDS


def query_pairs(query: str) -> list[tuple[str, str]]:
    """(name, value) pairs as the most permissive server reads them. Raises ValueError."""
    out: list[tuple[str, str]] = []
    for part in re.split(r"[&;]", query):
        if not part:
            continue
        name, _, value = part.partition("=")
        for _ in range(3):
            decoded = unquote_plus(name, errors="strict")
            if decoded == name:
                break
            name = decoded
        if "%" in name and unquote_plus(name, errors="strict") != name:
            raise ValueError("query parameter name encoded more than three times")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise ValueError("query parameter name with a control character")
        out.append((name, unquote_plus(value, errors="replace")))
    return out


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def type_allowed(mtype: str, allowed: Sequence[str]) -> bool:
    """Whether media type ``mtype`` is in ``allowed``. A body without a type is inspected as
    JSON when it parses as JSON and as bytes otherwise, so it is accepted."""
    if not mtype:
        return True
    major = mtype.split("/", 1)[0]
    return any(a in ("*/*", mtype, f"{major}/*") for a in allowed)


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; raises ValueError (also for duplicate keys and depth)."""

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            # Parsers disagree on which duplicate wins; refuse the ambiguity.
            raise ValueError("duplicate key in a JSON object")
        return dict(pairs)

    text = body.decode("utf-8", errors="strict")
    depth = 0
    for c in text:
        if c in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError("JSON nested too deeply")
        elif c in "]}":
            depth -= 1
    return json.loads(text, object_pairs_hook=no_dupes)


def form_pairs(body: bytes) -> list[tuple[str, str]]:
    return query_pairs(body.decode("utf-8", errors="strict"))


def multipart_names(body: bytes) -> list[str]:
    return [m.decode("latin-1") for m in re.findall(rb'name="([^"\r\n]*)"', body)]


def _shallow_items(value: Any, depth: int = 2) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of an object and of objects directly inside it (not in arrays)."""
    if not isinstance(value, dict) or depth == 0:
        return
    for k, v in value.items():
        yield str(k), v
        yield from _shallow_items(v, depth - 1)


def _is_placeholder(value: str, placeholder: str) -> bool:
    v = value.strip()
    for prefix in ("bearer ", "basic ", "token "):
        if v.lower().startswith(prefix):
            v = v[len(prefix) :].strip()
    return v in ("", placeholder)


def has_token_shape(data: bytes) -> bool:
    return TOKEN_RE.search(data) is not None


def method_overrides(
    headers: Iterable[tuple[str, str]], pairs: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """(where, method) for every header or parameter that could override the method.

    Any header whose name mentions ``method`` counts, whatever its value; a parameter counts
    when its name mentions ``method`` and its value names an HTTP method.
    """
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if "method" in _norm(name):
            for v in value.split(","):
                out.append((name.lower(), v.strip().upper()))
    for name, value in pairs:
        v = value.strip().upper()
        if "method" in _norm(name) and v in KNOWN_METHODS:
            out.append((f"?{name}", v))
    return out


def body_fields(body: bytes, mtype: str) -> tuple[list[tuple[str, Any]], bool]:
    """Fields of a JSON object or form body as (name, value); and whether it was parsed.

    JSON: the top level and objects directly inside it. Raises ValueError for a JSON or form
    body that does not parse.
    """
    if not body.strip():
        return [], True
    if not mtype:
        try:
            return list(_shallow_items(parse_json(body))), True
        except (ValueError, UnicodeDecodeError):
            return [], False
    if mtype == "application/json" or mtype.endswith("+json"):
        value = parse_json(body)
        return list(_shallow_items(value)), True
    if mtype == "application/x-www-form-urlencoded":
        return [(k, v) for k, v in form_pairs(body)], True
    if mtype == "multipart/form-data":
        return [(n, None) for n in multipart_names(body)], False
    return [], False


def body_method_pairs(fields: Sequence[tuple[str, Any]], mtype: str) -> list[tuple[str, str]]:
    """Fields that can carry a method override: form fields, and top-level JSON strings."""
    return [(k, v) for k, v in fields if isinstance(v, str)]


def body_credentials(
    body: bytes, fields: Sequence[tuple[str, Any]], parsed: bool, placeholder: str
) -> list[str]:
    """Names of credential-shaped fields or values in a body (never the values)."""
    found: list[str] = []
    for name, value in fields:
        if is_credential_field(name):
            if (
                value is None
                or not isinstance(value, str)
                or not _is_placeholder(value, placeholder)
            ):
                found.append(f"body:{name}")
        elif isinstance(value, str) and has_token_shape(value.encode("utf-8", "replace")):
            found.append(f"body:{name}")
    if not parsed and has_token_shape(body):
        found.append("body: a token-shaped string")
    return found


def anthropic_messages_problem(body: bytes, allow: Sequence[str]) -> str | None:
    """Why a Messages API request body asks the provider to reach out, or None.

    Also checks each ``params`` of a batch (``requests[].params``).
    """
    if not body.strip():
        return None
    try:
        value = parse_json(body)
    except ValueError:
        return "model API request body is not valid JSON"
    if not isinstance(value, dict):
        return "model API request body is not a JSON object"
    requests = [value]
    batch = value.get("requests")
    if isinstance(batch, list):
        for item in batch:
            if isinstance(item, dict) and isinstance(item.get("params"), dict):
                requests.append(item["params"])
            elif isinstance(item, dict) and "params" in item:
                return "model API batch item with malformed params"
    for req in requests:
        problem = _messages_params_problem(req, allow)
        if problem is not None:
            return problem
    return None


def _allowed(kind: str, allow: Sequence[str]) -> bool:
    return any(kind == a or kind.startswith(a) for a in allow)


def _messages_params_problem(req: dict[str, Any], allow: Sequence[str]) -> str | None:
    if req.get("mcp_servers") not in (None, []) and not _allowed("mcp_servers", allow):
        return "model API request names remote MCP servers (mcp_servers); not allowed by policy"
    if req.get("container") is not None and not _allowed("container", allow):
        return "model API request asks for a server-side container; not allowed by policy"
    tools = req.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "model API request with malformed tools"
    for tool in tools:
        if not isinstance(tool, dict):
            return "model API request with malformed tools"
        kind = tool.get("type")
        if kind is None:
            continue  # a client tool: name, description, input_schema
        if not isinstance(kind, str):
            return "model API request with malformed tool type"
        if kind.startswith(CLIENT_TOOL_PREFIXES):
            continue
        if kind.startswith("mcp") and not _allowed("mcp_servers", allow):
            return "model API request uses a remote MCP toolset; not allowed by policy"
        if not _allowed(kind, allow):
            safe = re.sub(r"[^a-z0-9_]", "", kind.lower())[:40]
            return f"model API request asks for server-side tool {safe!r}; not allowed by policy"
    return None
