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
query string is never part of the match.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GRANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
CREDENTIAL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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

    @model_validator(mode="after")
    def _format(self) -> Grant:
        if self.credential is not None and "{credential}" not in self.inject_format:
            raise ValueError("inject_format must contain '{credential}' where the value goes")
        return self

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (443 if self.scheme == "https" else 80)


# --- matching ------------------------------------------------------------------------------

_PATH_TRICK_RE = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)


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


def path_is_plain(path: str) -> bool:
    """False for paths an upstream could normalise into a different one.

    Refused: ``.``/``..`` segments, empty segments (``//``), backslashes, encoded dots,
    slashes, backslashes or NUL, and anything not printable ASCII.
    """
    if not path.startswith("/") or not path.isascii():
        return False
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in path) or "\\" in path:
        return False
    if _PATH_TRICK_RE.search(path):
        return False
    segments = path.split("/")[1:]
    return not any(s in (".", "..") for s in segments) and "//" not in path


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
