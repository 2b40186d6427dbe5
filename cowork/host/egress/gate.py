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
- any exception while deciding denies (:func:`decide_request`, :func:`decide_connect`).

Reasons are short, fixed phrases plus names (grant id, host); never header values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from cowork.host.egress.floor import FloorViolation, normalize_host
from cowork.host.egress.grants import (
    Grant,
    grant_allows,
    grant_matches_destination,
    path_is_plain,
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
    """Names of auth-bearing headers/parameters whose value is not the placeholder."""
    found: list[str] = []
    for name, value in headers:
        if name.lower() == "proxy-authorization":
            continue  # the gateway's own token; consumed and removed by the gateway
        if is_auth_header(name) and not is_placeholder(value):
            found.append(name.lower())
    for name, value in parse_qsl(query, keep_blank_values=True):
        if is_auth_query_param(name) and not is_placeholder(value):
            found.append(f"?{name}")
    return found


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


def _check_request(facts: RequestFacts, grants: Sequence[Grant]) -> Decision:
    try:
        host = normalize_host(facts.host)
    except FloorViolation as exc:
        return _deny(str(exc))
    if facts.scheme not in ("http", "https"):
        return _deny("unsupported scheme", host)
    # One name everywhere: CONNECT target, SNI and Host.
    if facts.tunnel is not None:
        t_host, t_port = facts.tunnel
        if t_host.lower() != host or t_port != facts.port:
            return _deny("Host header differs from the CONNECT target", host)
        if facts.scheme == "https" and (facts.sni or "").lower() != host:
            return _deny("TLS SNI differs from the CONNECT target", host)
        if facts.scheme != "https":
            return _deny("plain HTTP inside a CONNECT tunnel", host)
    elif facts.scheme != "http":
        return _deny("HTTPS must use CONNECT", host)
    if facts.host_header is None:
        return _deny("missing Host header", host)
    hh, hp = _parse_authority(facts.host_header)
    if hh.lower() != host or (hp is not None and hp != facts.port):
        return _deny("Host header differs from the request target", host)
    if len(facts.header_values("host")) > 1:
        return _deny("more than one Host header", host)

    path, query = split_path(facts.path)
    if not path_is_plain(path):
        return _deny("path with dot segments, encoded separators or control characters", host)
    method = facts.method.upper()

    candidates = [g for g in grants if grant_matches_destination(g, facts.scheme, host, facts.port)]
    if not candidates:
        return _deny("no grant for this host", host)
    grant = next((g for g in candidates if grant_allows(g, method, path)), None)
    if grant is None:
        return _deny("method or path not granted", host, candidates[0])

    upgrades = [v.strip().lower() for v in facts.header_values("upgrade")]
    if (
        upgrades
        or any("upgrade" in v.lower() for v in facts.header_values("connection"))
        or facts.header_values("http2-settings")
    ):
        if upgrades != ["websocket"]:
            return _deny("protocol upgrade refused", host, grant)
        if not (grant.websocket and facts.websockets_enabled):
            return _deny("websocket not granted", host, grant)

    foreign = foreign_credentials(facts.headers, query)
    if foreign:
        return _deny(
            "request carries a credential cowork did not issue (" + ", ".join(foreign) + ")",
            host,
            grant,
        )
    return Decision(True, "granted", grant, host)


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
