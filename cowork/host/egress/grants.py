"""A grant: one capability to reach one HTTP(S) service, optionally with a credential.

A grant is not a destination. It names scheme + exact host (or a wildcard with at least two
labels after ``*.``) + port + methods + path patterns, and optionally the id of a credential
in the OS keychain that the gateway injects (the guest never sees it).

Policy TOML::

    [[egress.grants]]
    id = "anthropic-messages"
    host = "api.anthropic.com"
    methods = ["POST"]
    paths = ["/v1/messages", "/v1/messages/*"]
    credential = "anthropic"
    inject_header = "x-api-key"
    inject_format = "{credential}"

Path patterns: ``*`` matches within one path segment, ``**`` matches across segments; the
query string is never part of the match. A request path is matched only in its one canonical
form (:func:`path_problem`): anything whose meaning differs between common server stacks is
refused before any grant is consulted.

A credential-bound grant MUST name an exact host (no wildcard) and use ``https``; it forwards
only the request headers in :data:`DEFAULT_FORWARD_HEADERS` plus its ``forward_headers``, and
only request bodies of its ``body_types``. ``body_policy`` names a checker for the body of an
API that can itself reach the internet (``"anthropic-messages"``: no server-side tools, no
remote MCP servers unless listed in ``allow_server_tools``); left unset, it is chosen from the
host (the Anthropic API host, and the model's base URL host in policy, get
``"anthropic-messages"``).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GRANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
CREDENTIAL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HEADER_PATTERN_RE = re.compile(r"^[a-z0-9-]{1,64}(\*)?$")
MEDIA_TYPE_RE = re.compile(r"^([a-z0-9.+-]+/([a-z0-9.+-]+|\*)|\*/\*)$")

BodyPolicy = Literal["none", "anthropic-messages"]
BODY_POLICIES: tuple[str, ...] = ("none", "anthropic-messages")
#: Hosts whose grants get the ``anthropic-messages`` body policy when none is set.
MODEL_API_HOSTS = frozenset({"api.anthropic.com"})

#: Request headers a credential-bound grant forwards (lower-case; ``x-*`` prefix patterns end
#: in ``*``). Everything else the guest sends is dropped before the request leaves.
DEFAULT_FORWARD_HEADERS: tuple[str, ...] = (
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "date",
    "expect",
    "host",
    "idempotency-key",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "pragma",
    "range",
    "te",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "user-agent",
    "x-request-id",
)
#: Added for a websocket grant.
WEBSOCKET_HEADERS: tuple[str, ...] = ("upgrade", "sec-websocket-*")
#: Added by the ``anthropic-messages`` body policy (the SDK's version and platform headers).
ANTHROPIC_HEADERS: tuple[str, ...] = ("anthropic-version", "anthropic-beta", "x-stainless-*")
#: Request body media types a credential-bound grant accepts unless it says otherwise.
DEFAULT_BODY_TYPES: tuple[str, ...] = (
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
)


def _looks_like_ip(host: str) -> bool:
    """True for any IP literal form, including ones inet_aton accepts (0x7f.1, 2130706433)."""
    h = host.strip("[]")
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        pass
    # Every label numeric (decimal, octal or hex) means an IPv4 literal to inet_aton.
    return all(re.fullmatch(r"(0x[0-9a-f]*|[0-9]+)", part) for part in h.split(".") if part)


def check_host_pattern(value: str) -> str:
    """Validate a grant host; returns it lower-cased. Raises ValueError with a hint."""
    host = value.strip().lower()
    if host != value.strip() and value.strip() != value:
        raise ValueError(f"host {value!r} has surrounding spaces")
    if not host:
        raise ValueError("host is empty")
    if host.endswith("."):
        raise ValueError(f"host {value!r}: remove the trailing dot")
    if _looks_like_ip(host):
        raise ValueError(f"host {value!r}: IP addresses cannot be granted; use a DNS name")
    labels = host.split(".")
    if labels[0] == "*":
        if len(labels) < 3:
            raise ValueError(
                f"host {value!r}: a wildcard needs at least two labels after it "
                "(e.g. '*.example.com')"
            )
        labels = labels[1:]
    for label in labels:
        if not LABEL_RE.match(label):
            raise ValueError(
                f"host {value!r}: label {label!r} is not a valid DNS label "
                "(letters, digits and '-'; IDNs in their xn-- form)"
            )
    return host


class Grant(BaseModel):
    """One egress capability. Frozen; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Unique name of this grant, shown in events.")
    scheme: Literal["https", "http"] = "https"
    host: str = Field(description="Exact host name, or '*.' followed by at least two labels.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Default: 443/80.")
    methods: tuple[str, ...] = Field(default=("GET", "HEAD"), min_length=1)
    paths: tuple[str, ...] = Field(default=("/**",), min_length=1)
    credential: str | None = Field(
        default=None, description="Id of a credential in the OS keychain to inject."
    )
    inject_header: str = "Authorization"
    inject_format: str = "Bearer {credential}"
    websocket: bool = False
    forward_headers: tuple[str, ...] = Field(
        default=(),
        description="Request headers a credential-bound grant forwards besides the default "
        "set (names, or a prefix ending in '*', e.g. 'x-github-*').",
    )
    body_types: tuple[str, ...] = Field(
        default=DEFAULT_BODY_TYPES,
        description="Request body media types a credential-bound grant accepts "
        "('type/*' or '*/*' to widen; bodies that are not JSON, form or text are only "
        "scanned for token-shaped strings).",
    )
    body_policy: BodyPolicy | None = Field(
        default=None,
        description="Checker for request bodies of an API that can reach the internet itself: "
        "'anthropic-messages' or 'none'. Default: chosen from the host (the model API).",
    )
    allow_server_tools: tuple[str, ...] = Field(
        default=(),
        description="Server-side tool types (prefixes such as 'web_search') and 'mcp_servers' "
        "the anthropic-messages body policy lets a request ask for.",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not GRANT_ID_RE.match(v):
            raise ValueError(f"grant id {v!r}: use lower-case letters, digits, '.', '_', '-'")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host_pattern(v)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(m.upper() for m in v)
        bad = [m for m in out if m not in HTTP_METHODS]
        if bad:
            raise ValueError(
                f"unknown HTTP method(s) {', '.join(bad)}; use {', '.join(sorted(HTTP_METHODS))}"
            )
        return out

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not p.startswith("/") or "?" in p or "#" in p or any(ord(c) < 33 for c in p):
                raise ValueError(
                    f"path pattern {p!r}: must start with '/', without query, fragment or spaces"
                )
        return v

    @field_validator("credential")
    @classmethod
    def _credential(cls, v: str | None) -> str | None:
        if v is not None and not CREDENTIAL_ID_RE.match(v):
            raise ValueError(f"credential id {v!r}: use lower-case letters, digits, '.', '_', '-'")
        return v

    @field_validator("inject_header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not HEADER_RE.match(v):
            raise ValueError(f"inject_header {v!r}: not a valid header name")
        return v

    @field_validator("forward_headers")
    @classmethod
    def _forward_headers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(h.strip().lower() for h in v)
        for h in out:
            if not HEADER_PATTERN_RE.match(h) or h == "*":
                raise ValueError(
                    f"forward_headers: {h!r} is not a header name or a prefix ending in '*'"
                )
            if h in ("proxy-authorization", "cookie", "authorization"):
                raise ValueError(
                    f"forward_headers: {h!r} carries credentials; bind the grant to a "
                    "credential instead"
                )
        return out

    @field_validator("body_types")
    @classmethod
    def _body_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(t.strip().lower() for t in v)
        for t in out:
            if not MEDIA_TYPE_RE.match(t):
                raise ValueError(
                    f"body_types: {t!r} is not a media type such as 'application/json'"
                )
        return out

    @model_validator(mode="after")
    def _format(self) -> Grant:
        if self.credential is not None and "{credential}" not in self.inject_format:
            raise ValueError("inject_format must contain '{credential}' where the value goes")
        if self.credential is not None and self.host.startswith("*."):
            raise ValueError(
                f"grant {self.id!r}: host {self.host!r} is a wildcard, and a credential-bound "
                "grant must name one exact host (anyone who can register a subdomain would "
                "receive the credential); list each host in its own grant"
            )
        if self.credential is not None and self.scheme != "https":
            raise ValueError(
                f"grant {self.id!r}: scheme 'http' would send the credential in clear; "
                "use scheme = 'https' or remove credential"
            )
        return self

    @property
    def effective_body_policy(self) -> BodyPolicy:
        if self.body_policy is not None:
            return self.body_policy
        return "anthropic-messages" if self.host in MODEL_API_HOSTS else "none"

    @property
    def forwarded_header_patterns(self) -> tuple[str, ...]:
        out = DEFAULT_FORWARD_HEADERS + self.forward_headers
        if self.websocket:
            out += WEBSOCKET_HEADERS
        if self.effective_body_policy == "anthropic-messages":
            out += ANTHROPIC_HEADERS
        return out

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (443 if self.scheme == "https" else 80)


# --- matching ------------------------------------------------------------------------------

#: Characters a canonical path may hold literally: unreserved, sub-delims except ';' (path
#: parameters: Tomcat and Spring read ``/a/..;/b`` as ``/b``), ':' '@' '/' and '%' (escapes).
_PATH_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,=:@/%"
)
_UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
#: Bytes that must never appear percent-encoded: separators and the escape character itself
#: (decoded by some stacks and not others), ';' and '?' '#' (which change how the rest reads).
_NEVER_ENCODED = frozenset(b"/\\.%;?#")
#: Characters that some stacks map to a separator or a dot (Unicode "best fit" conversions,
#: full-width forms, compatibility normalisation).
_LOOKALIKES = frozenset("\u2215\u2044\u29f8\uff0f\u2216\ufe68\uff3c\u2024\uff0e\u3002\ufe52\uff1b")
MAX_PATH_LENGTH = 8192
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")


def path_problem(path: str) -> str | None:
    """Why ``path`` (no query) is not in canonical form, or None when it is.

    The canonical form is the only one cowork matches: a path that every common server stack
    (Apache, nginx, Tomcat/Spring, IIS, Node, Go, Python) reads the same way. So:

    - it starts with ``/``, is printable ASCII of the characters in ``_PATH_CHARS``;
    - no ``.``/``..`` segment, no empty segment (``//``), no segment ending in ``.``
      (Windows drops it), no ``;`` (path parameters), no backslash;
    - every ``%`` starts a two-digit escape; an escape never encodes an unreserved character
      (``%61`` would be a second spelling), a separator, a dot, ``%`` (double encoding),
      ``;``, ``?``, ``#``, a control character or a space;
    - escaped bytes above 0x7F must be valid UTF-8 (no overlong forms, no surrogates) whose
      text is stable under NFKC and holds no look-alike of a separator or dot.
    """
    if not path.startswith("/"):
        return "path does not start with '/'"
    if len(path) > MAX_PATH_LENGTH:
        return "path too long"
    if not path.isascii() or any(c not in _PATH_CHARS for c in path):
        return "path with characters outside the canonical set"
    raw = bytearray()
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%":
            m = _ESCAPE_RE.match(path, i)
            if m is None:
                return "path with a malformed percent escape"
            b = int(m.group(1), 16)
            if b in _UNRESERVED:
                return "path with an encoded unreserved character"
            if b in _NEVER_ENCODED:
                return "path with an encoded separator, dot or percent sign"
            if b < 0x21 or b == 0x7F:
                return "path with an encoded control character"
            raw.append(b)
            i += 3
        else:
            raw.append(ord(c))
            i += 1
    try:
        text = bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return "path with an invalid or overlong UTF-8 sequence"
    if unicodedata.normalize("NFKC", text) != text or any(c in _LOOKALIKES for c in text):
        return "path with characters that normalise to other characters"
    if any(unicodedata.category(c)[0] in "CZ" for c in text if not c.isascii()):
        return "path with invisible or space characters"
    segments = path.split("/")[1:]
    if any(s in (".", "..") for s in segments):
        return "path with dot segments"
    if "//" in path:
        return "path with an empty segment"
    if any(s.endswith(".") for s in segments):
        return "path segment ending in a dot"
    return None


def path_is_plain(path: str) -> bool:
    """True only for a path in canonical form (see :func:`path_problem`)."""
    return path_problem(path) is None


def host_matches(pattern: str, host: str) -> bool:
    """``host`` (already normalised, lower-case) against a grant host pattern.

    An exact pattern matches only itself; ``*.a.b`` matches exactly one more label
    (``x.a.b``), never ``a.b`` itself, never ``x.y.a.b`` and never ``xa.b``.
    """
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".a.b"
        if not host.endswith(suffix):
            return False
        first = host[: -len(suffix)]
        return bool(first) and "." not in first and LABEL_RE.match(first) is not None
    return host == pattern


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def path_matches(pattern: str, path: str) -> bool:
    """``path`` (without query string) against one grant path pattern."""
    if not path_is_plain(path):
        return False
    return _pattern_regex(pattern).fullmatch(path) is not None


def grant_matches_destination(grant: Grant, scheme: str, host: str, port: int) -> bool:
    return (
        grant.scheme == scheme and grant.effective_port == port and host_matches(grant.host, host)
    )


def grant_allows(grant: Grant, method: str, path: str) -> bool:
    return method in grant.methods and any(path_matches(p, path) for p in grant.paths)
