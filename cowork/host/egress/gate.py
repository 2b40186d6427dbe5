"""The egress gate: request facts + grants -> a :class:`Decision` with a reason.

Pure and synchronous; no mitmproxy, no I/O. The addon gathers facts from the engine, asks
here, and acts on the answer. Contract:

- deny by default: a request is allowed only when exactly the floor passes and some grant
  matches scheme, host, port, method and path;
- every tunnelled request MUST name the same host in CONNECT, TLS SNI and ``Host``;
- a request that carries a credential cowork did not issue (an auth-bearing header, cookie
  or query parameter with a value other than :data:`PLACEHOLDER`) is refused;
- an upgrade (websocket) is allowed only where the grant says so and the gateway enables
  websockets; any other ``Upgrade`` (``h2c``, raw protocols) is refused;
- the path is judged only in its canonical form (:func:`cowork.host.egress.grants.path_problem`);
- a method override (``X-HTTP-Method-Override`` and any header naming a method, ``_method``
  and the like in the query, a form body or a JSON body's top level) is refused unless the
  grant allows the method it names;
- for a credential-bound grant, only the grant's allowed request headers are forwarded
  (:func:`headers_to_forward`), a body must be of the grant's ``body_types`` and carry no
  credential-shaped field or token-shaped value (:mod:`cowork.host.egress.bodies`);
- a grant with the ``anthropic-messages`` body policy refuses server-side tools and remote MCP
  servers unless the grant allows them;
- any exception while deciding denies (:func:`decide_request`, :func:`decide_connect`).

A request is decided by :data:`REQUEST_CHECKS`, a sequence of small checks run in order; the
first one that returns a :class:`Decision` (a denial) ends it. A new check is a function
``(RequestContext) -> Decision | None`` added to that tuple.

Reasons are short, fixed phrases plus names (grant id, host); never header values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import parse_qsl, urlencode

from cowork.host.egress import bodies
from cowork.host.egress.floor import FloorViolation, normalize_host
from cowork.host.egress.grants import (
    Grant,
    grant_allows,
    grant_matches_destination,
    path_problem,
)

log = logging.getLogger(__name__)

#: The value a guest tool may put where a credential goes (``ANTHROPIC_API_KEY=cowork-managed``);
#: the gateway removes it and injects the real one for a credential-bound grant.
PLACEHOLDER = "cowork-managed"

#: Header names that carry credentials. Any of these (and any name matching
#: :data:`AUTH_HEADER_WORDS`) sent by the guest is stripped before forwarding.
AUTH_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "apikey",
        "x-goog-api-key",
        "x-auth-token",
        "x-access-token",
        "private-token",
        "x-amz-security-token",
        "x-csrf-token",
        "cookie",
        "cookie2",
    }
)
AUTH_HEADER_WORDS = (
    "auth",
    "token",
    "key",
    "secret",
    "cookie",
    "session",
    "password",
    "credential",
)
#: Header names containing one of the words above that are not credentials.
NON_AUTH_HEADERS = frozenset({"sec-websocket-key", "idempotency-key", "x-idempotency-key"})

AUTH_QUERY_PARAMS = frozenset(
    {"key", "sig", "signature", "access_token", "id_token", "refresh_token", "token"}
)
AUTH_QUERY_WORDS = ("token", "secret", "password", "credential", "apikey", "api_key", "api-key")
AUTH_QUERY_WORDS_PREFIX = ("x-amz-", "x-goog-")

_SCHEME_PREFIXES = ("bearer ", "basic ", "token ", "apikey ")


def is_auth_header(name: str) -> bool:
    n = name.lower()
    if n in NON_AUTH_HEADERS:
        return False
    return n in AUTH_HEADERS or any(w in n for w in AUTH_HEADER_WORDS)


def is_auth_query_param(name: str) -> bool:
    n = name.lower()
    return (
        n in AUTH_QUERY_PARAMS
        or any(w in n for w in AUTH_QUERY_WORDS)
        or n.startswith(AUTH_QUERY_WORDS_PREFIX)
        or n.endswith("key")
    )


def is_placeholder(value: str) -> bool:
    v = value.strip()
    low = v.lower()
    for prefix in _SCHEME_PREFIXES:
        if low.startswith(prefix):
            v = v[len(prefix) :].strip()
            break
    return v in ("", PLACEHOLDER)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    grant: Grant | None = None
    host: str | None = None  # normalised host, when it got that far

    @property
    def grant_id(self) -> str | None:
        return self.grant.id if self.grant is not None else None


def _deny(reason: str, host: str | None = None, grant: Grant | None = None) -> Decision:
    return Decision(False, reason, grant, host)


@dataclass(frozen=True)
class RequestFacts:
    """What the engine knows about one request, as plain values.

    ``tunnel`` is the (host, port) of the CONNECT this request arrived in, or None for a
    plain-HTTP absolute-form request. ``path`` includes the query string.
    """

    scheme: str
    host: str
    port: int
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    host_header: str | None = None
    tunnel: tuple[str, int] | None = None
    sni: str | None = None
    websockets_enabled: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    #: The request body after undoing its Content-Encoding; None when there is none.
    body: bytes | None = None
    #: True when the body had a Content-Encoding the gateway could not undo.
    body_undecodable: bool = False
    #: Trailer fields sent after a chunked or HTTP/2 request body.
    trailers: tuple[tuple[str, str], ...] = ()

    def header_values(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]


def split_path(path: str) -> tuple[str, str]:
    if "?" in path:
        p, q = path.split("?", 1)
        return p, q
    return path, ""


def redact_path(path: str) -> str:
    """The path with query values removed (names kept) — what events may carry."""
    p, q = split_path(path)
    if not q:
        return p
    names = [k for k, _ in parse_qsl(q, keep_blank_values=True)]
    return p + "?" + "&".join(f"{n}=" for n in names)


def foreign_credentials(headers: Iterable[tuple[str, str]], query: str) -> list[str]:
    """Names of auth-bearing headers/parameters whose value is not the placeholder.

    A header counts when its name is auth-bearing or its value has the shape of a well-known
    token. The query is read as the most permissive server would (``;`` separates too, names are
    decoded repeatedly); a query that cannot be read that way counts as a credential.
    """
    found: list[str] = []
    for name, value in headers:
        if name.lower() == "proxy-authorization":
            continue  # the gateway's own token; consumed and removed by the gateway
        if is_auth_header(name) and not is_placeholder(value):
            found.append(name.lower())
        elif bodies.has_token_shape(value.encode("utf-8", "replace")):
            found.append(name.lower())  # a well-known token under a name with no auth word
    try:
        pairs = bodies.query_pairs(query)
    except ValueError:
        return [*found, "?<unreadable parameter name>"]
    for name, value in pairs:
        if is_auth_query_param(name) and not is_placeholder(value):
            found.append(f"?{name}")
    return found


def header_forwarded(grant: Grant, name: str) -> bool:
    """Whether a credential-bound ``grant`` forwards request header ``name``."""
    n = name.lower()
    return any(fnmatchcase(n, p) for p in grant.forwarded_header_patterns)


def headers_to_forward(grant: Grant, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The request headers that leave the gateway for ``grant`` (before injection).

    A credential-bound grant forwards only its allowed headers; any other grant forwards all
    but the auth-bearing ones.
    """
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if name.lower() == "proxy-authorization" or is_auth_header(name):
            continue
        if grant.credential is not None and not header_forwarded(grant, name):
            continue
        out.append((name, value))
    return out


def strip_query_credentials(query: str) -> str:
    """The query string without auth-bearing parameters."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if not is_auth_query_param(k)])


def _parse_authority(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        return value, None
    if not port.isdigit():
        raise FloorViolation("malformed port in Host header")
    return host, int(port)


def _check_connect(host: str, port: int, grants: Sequence[Grant]) -> Decision:
    try:
        h = normalize_host(host)
    except FloorViolation as exc:
        return _deny(str(exc))
    if not 0 < port < 65536:
        return _deny("invalid port", h)
    for g in grants:
        if grant_matches_destination(g, "https", h, port):
            return Decision(True, "tunnel to a granted host", g, h)
    if port != 443 and any(
        grant_matches_destination(g, "https", h, g.effective_port) for g in grants
    ):
        return _deny(f"CONNECT to port {port} is not granted", h)
    return _deny("no grant for this host", h)


def decide_connect(host: str, port: int, grants: Sequence[Grant]) -> Decision:
    """Whether to open a tunnel to ``host:port``. Fails closed."""
    try:
        return _check_connect(host, port, grants)
    except Exception:
        log.exception("egress gate failed deciding a CONNECT; denied")
        return _deny("internal error in the egress gate (denied)")


@dataclass
class RequestContext:
    """What the checks of one request share; filled in as the checks go."""

    facts: RequestFacts
    grants: Sequence[Grant]
    host: str = ""
    path: str = ""
    query: str = ""
    grant: Grant | None = None
    body_fields: list[tuple[str, object]] = field(default_factory=list)
    body_parsed: bool = False

    def deny(self, reason: str) -> Decision:
        return _deny(reason, self.host or None, self.grant)


RequestCheck = Callable[[RequestContext], "Decision | None"]


def check_host(ctx: RequestContext) -> Decision | None:
    try:
        ctx.host = normalize_host(ctx.facts.host)
    except FloorViolation as exc:
        return _deny(str(exc))
    if ctx.facts.scheme not in ("http", "https"):
        return ctx.deny("unsupported scheme")
    return None


def check_one_name(ctx: RequestContext) -> Decision | None:
    """One name everywhere: CONNECT target, SNI and Host."""
    facts, host = ctx.facts, ctx.host
    if facts.tunnel is not None:
        t_host, t_port = facts.tunnel
        if t_host.lower() != host or t_port != facts.port:
            return ctx.deny("Host header differs from the CONNECT target")
        if facts.scheme == "https" and (facts.sni or "").lower() != host:
            return ctx.deny("TLS SNI differs from the CONNECT target")
        if facts.scheme != "https":
            return ctx.deny("plain HTTP inside a CONNECT tunnel")
    elif facts.scheme != "http":
        return ctx.deny("HTTPS must use CONNECT")
    if facts.host_header is None:
        return ctx.deny("missing Host header")
    hh, hp = _parse_authority(facts.host_header)
    if hh.lower() != host or (hp is not None and hp != facts.port):
        return ctx.deny("Host header differs from the request target")
    if len(facts.header_values("host")) > 1:
        return ctx.deny("more than one Host header")
    return None


def check_path(ctx: RequestContext) -> Decision | None:
    ctx.path, ctx.query = split_path(ctx.facts.path)
    problem = path_problem(ctx.path)
    if problem is not None:
        return ctx.deny(problem + " (not in canonical form)")
    return None


def check_grant(ctx: RequestContext) -> Decision | None:
    facts = ctx.facts
    method = facts.method.upper()
    candidates = [
        g for g in ctx.grants if grant_matches_destination(g, facts.scheme, ctx.host, facts.port)
    ]
    if not candidates:
        return ctx.deny("no grant for this host")
    ctx.grant = next((g for g in candidates if grant_allows(g, method, ctx.path)), None)
    if ctx.grant is None:
        return _deny("method or path not granted", ctx.host, candidates[0])
    return None


def check_upgrade(ctx: RequestContext) -> Decision | None:
    facts, grant = ctx.facts, ctx.grant
    assert grant is not None
    upgrades = [v.strip().lower() for v in facts.header_values("upgrade")]
    if (
        upgrades
        or any("upgrade" in v.lower() for v in facts.header_values("connection"))
        or facts.header_values("http2-settings")
    ):
        if upgrades != ["websocket"]:
            return ctx.deny("protocol upgrade refused")
        if not (grant.websocket and facts.websockets_enabled):
            return ctx.deny("websocket not granted")
    return None


def check_trailers(ctx: RequestContext) -> Decision | None:
    """Trailers are headers after the body: a credential-bound grant takes none, and no grant
    takes a credential-shaped one."""
    grant = ctx.grant
    assert grant is not None
    if ctx.facts.trailers and grant.credential is not None:
        return ctx.deny("request trailers are not accepted for a credential-bound grant")
    if any(is_auth_header(k) for k, _ in ctx.facts.trailers):
        return ctx.deny("request trailer carries a credential cowork did not issue")
    return None


def check_foreign_credentials(ctx: RequestContext) -> Decision | None:
    foreign = foreign_credentials(ctx.facts.headers, ctx.query)
    if foreign:
        return ctx.deny(
            "request carries a credential cowork did not issue (" + ", ".join(foreign) + ")"
        )
    return None


def check_body_readable(ctx: RequestContext) -> Decision | None:
    facts, grant = ctx.facts, ctx.grant
    assert grant is not None
    if facts.body_undecodable:
        return ctx.deny("request body with a content encoding the gateway cannot read")
    body = facts.body or b""
    mtype = bodies.media_type(next(iter(facts.header_values("content-type")), None))
    if body and grant.credential is not None and not bodies.type_allowed(mtype, grant.body_types):
        return ctx.deny(
            f"request body of type {mtype or 'unknown'!r} is not in the grant's body_types"
        )
    try:
        ctx.body_fields, ctx.body_parsed = bodies.body_fields(body, mtype)
    except (ValueError, UnicodeDecodeError):
        if grant.credential is not None or grant.effective_body_policy != "none":
            return ctx.deny(f"request body does not parse as its type {mtype!r}")
        ctx.body_fields, ctx.body_parsed = [], False
    return None


def check_method_override(ctx: RequestContext) -> Decision | None:
    grant = ctx.grant
    assert grant is not None
    try:
        pairs = bodies.query_pairs(ctx.query)
    except ValueError as exc:
        return ctx.deny(str(exc))
    mtype = bodies.media_type(next(iter(ctx.facts.header_values("content-type")), None))
    pairs += bodies.body_method_pairs(ctx.body_fields, mtype)
    for where, method in bodies.method_overrides(ctx.facts.headers, pairs):
        if method not in grant.methods:
            return ctx.deny(f"method override to {method[:10]!r} ({where[:40]}) is not granted")
    return None


def check_body_credentials(ctx: RequestContext) -> Decision | None:
    grant = ctx.grant
    assert grant is not None
    if grant.credential is None or not ctx.facts.body:
        return None
    found = bodies.body_credentials(ctx.facts.body, ctx.body_fields, ctx.body_parsed, PLACEHOLDER)
    if found:
        names = ", ".join(sorted(set(found)))[:200]
        return ctx.deny(f"request body carries a credential cowork did not issue ({names})")
    return None


def check_body_policy(ctx: RequestContext) -> Decision | None:
    grant = ctx.grant
    assert grant is not None
    if grant.effective_body_policy == "anthropic-messages" and ctx.facts.body:
        problem = bodies.anthropic_messages_problem(ctx.facts.body, grant.allow_server_tools)
        if problem is not None:
            return ctx.deny(problem)
    return None


#: The request pipeline, in order. Cheap destination checks first; body checks last.
REQUEST_CHECKS: tuple[RequestCheck, ...] = (
    check_host,
    check_one_name,
    check_path,
    check_grant,
    check_upgrade,
    check_trailers,
    check_foreign_credentials,
    check_body_readable,
    check_method_override,
    check_body_credentials,
    check_body_policy,
)


def _check_request(facts: RequestFacts, grants: Sequence[Grant]) -> Decision:
    ctx = RequestContext(facts, grants)
    for check in REQUEST_CHECKS:
        denied = check(ctx)
        if denied is not None:
            return denied
    assert ctx.grant is not None
    return Decision(True, "granted", ctx.grant, ctx.host)


def decide_request(facts: RequestFacts, grants: Sequence[Grant]) -> Decision:
    """Whether to forward one request. Fails closed: any exception denies."""
    try:
        return _check_request(facts, grants)
    except Exception:
        log.exception("egress gate failed deciding a request; denied")
        return _deny("internal error in the egress gate (denied)")


def explain_url(url: str, method: str, grants: Sequence[Grant]) -> Decision:
    """What the gateway would decide for ``method url`` from a well-behaved client.

    The request is taken as a client following the proxy variables would send it: HTTPS via
    CONNECT with matching SNI and Host, plain HTTP in absolute form. DNS is not consulted;
    the gateway also refuses, at connect time, a name resolving to a non-public address.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            return _deny("only http:// and https:// URLs go through the gateway")
        host = parts.hostname or ""
        raw_host = parts.netloc.rpartition("@")[2]
        if raw_host.startswith("["):
            host = raw_host.split("]")[0] + "]"
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        return _deny(f"not a valid URL ({exc})")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if scheme == "https":
        connect = decide_connect(host, port, grants)
        if not connect.allowed:
            return Decision(
                False, "CONNECT refused: " + connect.reason, connect.grant, connect.host
            )
    authority = host if (parts.port is None) else f"{host}:{port}"
    facts = RequestFacts(
        scheme=scheme,
        host=host,
        port=port,
        method=method.upper(),
        path=path,
        headers=(("host", authority),),
        host_header=authority,
        tunnel=(host.lower(), port) if scheme == "https" else None,
        sni=host if scheme == "https" else None,
    )
    return decide_request(facts, grants)
