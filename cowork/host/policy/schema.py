"""The one versioned schema for everything configurable in cowork.

The same document shape is used by every layer (admin policy, user settings, a trusted
workspace's ``.cowork.toml``); which keys a layer may actually change is decided by
:mod:`cowork.host.policy.merge`. Every model is frozen and rejects unknown keys.

Shape (TOML)::

    version = 1
    locks = ["egress.grants", "agent.base_url"]

    [vm]        cpus, memory_mib, accel, libvirt_uri, keep_overlay, boot_timeout_s, start_mode,
                pool_size, pool_memory_mib
    [mounts]    workspace_writable, claude_dir, claude_writable, secret_files
    [egress]    grants (list of Grant), deny_hosts, allow_websockets, max_body_mib
    [agent]     model, base_url, approval_mode, allowed_approval_modes, max_turns, max_tokens
    [audit]     log_path, otel_endpoint, exception_inbox, otel_protocol, export_queue_mib,
                monitor_lost
    [workspace] changes, undo_quota_mib, undo_max_age_days
    [mcp]       servers (table of name -> McpServer: command, args, env)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cowork.host.egress.gate import PLACEHOLDER
from cowork.host.egress.grants import Grant, check_host_pattern

SCHEMA_VERSION = 1

ApprovalMode = Literal["ask", "auto", "deny-risky"]
#: Strictness of each approval mode; a higher rank is narrower (fewer actions run unasked).
APPROVAL_RANK: dict[str, int] = {"auto": 0, "ask": 1, "deny-risky": 2}
ALL_APPROVAL_MODES: tuple[ApprovalMode, ...] = ("ask", "auto", "deny-risky")


def _check_url(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{key} {value!r}: use an absolute http(s) URL, e.g. 'https://host/path'")
    if parts.username or parts.password:
        raise ValueError(f"{key}: do not put credentials in the URL; store them in the OS keychain")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VMSection(_Section):
    cpus: int = Field(default=2, ge=1, le=64, description="Virtual CPUs for the guest.")
    memory_mib: int = Field(default=2048, ge=256, le=262144, description="Guest memory in MiB.")
    accel: Literal["auto", "kvm", "tcg"] = Field(
        default="auto", description="'auto' uses KVM where usable, else software emulation."
    )
    libvirt_uri: str | None = Field(
        default=None, description="libvirt connection URI; default qemu:///session for users."
    )
    keep_overlay: bool = Field(
        default=False, description="Keep the session's copy-on-write disk after it ends."
    )
    boot_timeout_s: int = Field(
        default=300, ge=10, le=3600, description="Destroy a guest not ready after this long."
    )
    start_mode: Literal["cold", "restore"] = Field(
        default="cold",
        description="'restore' starts a session from a saved, reseeded template guest "
        "(built once per image, guest code and VM size); 'cold' boots every time.",
    )
    pool_size: int = Field(
        default=0,
        ge=0,
        le=8,
        description="Restored guests a long-running cowork keeps ready per workspace; 0 is off.",
    )
    pool_memory_mib: int = Field(
        default=4096,
        ge=0,
        le=262144,
        description="At most this much guest memory (MiB) waits in the pool.",
    )


class MountsSection(_Section):
    workspace_writable: bool = Field(default=True, description="Share the workspace read-write.")
    claude_dir: Path | None = Field(
        default=None, description="The .claude folder shared into the VM; default ~/.claude."
    )
    claude_writable: bool = Field(
        default=False,
        description="Share the .claude folder read-write. Only admin policy can turn this on; "
        "a workspace's own .claude folder is always read-only.",
    )
    secret_files: Literal["warn", "refuse"] = Field(
        default="warn",
        description="A workspace holding files that look like credentials (keys, .env, "
        "password exports): 'warn' shares it and says so, 'refuse' does not share it.",
    )

    @field_validator("claude_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not (v.is_absolute() or str(v).startswith("~")):
            raise ValueError(f"claude_dir {str(v)!r}: use an absolute path or one starting '~'")
        return v


class EgressSection(_Section):
    grants: tuple[Grant, ...] = Field(
        default=(), description="Capabilities to reach HTTP(S) services (deny by default)."
    )
    deny_hosts: tuple[str, ...] = Field(
        default=(), description="Hosts (or '*.' wildcards) no grant may reach, from any layer."
    )
    allow_websockets: bool = Field(
        default=False, description="Let grants marked websocket=true upgrade to WebSocket."
    )
    max_body_mib: int = Field(default=64, ge=1, le=4096, description="Largest request body.")

    @field_validator("deny_hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_host_pattern(h) for h in v)

    @field_validator("grants")
    @classmethod
    def _unique(cls, v: tuple[Grant, ...]) -> tuple[Grant, ...]:
        seen: set[str] = set()
        for g in v:
            if g.id in seen:
                raise ValueError(f"grant id {g.id!r} appears twice; give each grant its own id")
            seen.add(g.id)
        return v


class AgentSection(_Section):
    model: str = Field(default="claude-sonnet-4-5", min_length=1, max_length=200)
    base_url: str | None = Field(
        default=None, description="Model API base URL; only admin or user settings can set it."
    )
    approval_mode: ApprovalMode = Field(
        default="auto", description="How actions are approved: ask, auto or deny-risky."
    )
    allowed_approval_modes: tuple[ApprovalMode, ...] = Field(
        default=ALL_APPROVAL_MODES, min_length=1, description="Modes a lower layer may choose."
    )
    max_turns: int = Field(default=50, ge=1, le=10000)
    max_tokens: int = Field(default=8192, ge=1, le=1_000_000)
    after_outside_content: Literal["ask", "deny", "off"] = Field(
        default="ask",
        description=(
            "After outside text (a web page, a connector) entered the agent's context, "
            "requests that can send data out are asked about (ask), refused (deny) or "
            "passed (off)."
        ),
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v, "base_url")


class AuditSection(_Section):
    log_path: Path | None = Field(default=None, description="Audit log; default in user data.")
    otel_endpoint: str | None = Field(default=None, description="OpenTelemetry collector URL.")
    exception_inbox: Path | None = Field(
        default=None,
        description="Folder where 'cowork request-exception' writes requests for the admin.",
    )
    otel_protocol: Literal["http/protobuf", "grpc"] = Field(
        default="http/protobuf", description="OTLP transport to otel_endpoint."
    )
    export_queue_mib: int = Field(
        default=64, ge=1, le=4096, description="Largest on-disk queue while the collector is down."
    )
    monitor_lost: Literal["stop", "mark"] = Field(
        default="stop",
        description="When the guest activity monitor stops reporting: stop the session or "
        "mark it (events say so) and keep going.",
    )

    @field_validator("otel_endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v, "otel_endpoint")


ChangesMode = Literal["staged", "direct"]


class WorkspaceSection(_Section):
    changes: ChangesMode | None = Field(
        default=None,
        description="'staged': the agent's changes are kept apart until the user keeps them; "
        "'direct': the agent writes into the folder. Unset: each command's own default "
        "(staged for 'cowork run' and the app, direct for 'cowork exec' and 'cowork shell').",
    )
    undo_quota_mib: int = Field(
        default=2048,
        ge=0,
        le=1_048_576,
        description="Disk space for undo records and kept change sets; oldest undo goes first.",
    )
    undo_max_age_days: int = Field(
        default=30, ge=0, le=3650, description="Undo records older than this are removed."
    )


#: A connector's name: it prefixes its tools (``mcp__<name>__<tool>``).
MCP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
#: The value a credential-shaped variable may hold, for a server that will not start without
#: one: the gateway removes it from requests and adds the real credential of the grant.
MCP_PLACEHOLDER = PLACEHOLDER
_CREDENTIAL_WORDS = frozenset(
    {"TOKEN", "KEY", "APIKEY", "SECRET", "PASSWORD", "PASSWD", "PASS", "PAT", "AUTH",
     "CREDENTIAL", "CREDENTIALS", "COOKIE", "BEARER", "PRIVATE"}
)  # fmt: skip


def credential_shaped(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential."""
    return any(part in _CREDENTIAL_WORDS for part in re.split(r"[^A-Z0-9]+", name.upper()))


class McpServer(_Section):
    """A connector (MCP server, stdio) started inside the VM as the agent user."""

    command: str = Field(
        min_length=1, max_length=4096, description="The program, as found inside the VM."
    )
    args: tuple[str, ...] = Field(default=(), description="Its arguments.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables for it: settings only, never a credential (store "
        "the credential in the keychain and bind it to a grant for the server's API host; the "
        f"gateway adds it to the server's requests). A variable named like a credential may "
        f"only hold {MCP_PLACEHOLDER!r}, for a server that insists on one.",
    )

    @field_validator("env")
    @classmethod
    def _no_credentials(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
                raise ValueError(f"{name!r} is not a valid variable name")
            if credential_shaped(name) and value != MCP_PLACEHOLDER:
                raise ValueError(
                    f"{name} looks like a credential; a credential never goes to a server. "
                    "Store it with 'cowork creds set ID', add a grant for the server's API host "
                    f"with credential = 'ID', and set {name} = {MCP_PLACEHOLDER!r} if the "
                    "server will not start without it"
                )
        return v


class McpSection(_Section):
    servers: dict[str, McpServer] = Field(
        default_factory=dict,
        description="Connectors (MCP servers) for every workspace, by name. Admin policy and "
        "user settings only; a workspace names its own in .mcp.json, used once trusted.",
    )

    @field_validator("servers")
    @classmethod
    def _names(cls, v: dict[str, McpServer]) -> dict[str, McpServer]:
        for name in v:
            if not MCP_NAME.match(name):
                raise ValueError(
                    f"server name {name!r}: use 1-48 letters, digits, '-' or '_' "
                    "(it prefixes the server's tool names)"
                )
        return v


SECTIONS: dict[str, type[_Section]] = {
    "vm": VMSection,
    "mounts": MountsSection,
    "egress": EgressSection,
    "agent": AgentSection,
    "audit": AuditSection,
    "workspace": WorkspaceSection,
    "mcp": McpSection,
}


class PolicyDocument(BaseModel):
    """One policy or settings file, after validation. Unset keys hold the built-in defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="cowork policy")

    version: Literal[1] = Field(default=1, description="Schema version; always 1.")
    locks: tuple[str, ...] = Field(
        default=(),
        description="Dotted keys (or whole sections) lower layers cannot change. Admin only.",
    )
    vm: VMSection = VMSection()
    mounts: MountsSection = MountsSection()
    egress: EgressSection = EgressSection()
    agent: AgentSection = AgentSection()
    audit: AuditSection = AuditSection()
    workspace: WorkspaceSection = WorkspaceSection()
    mcp: McpSection = McpSection()

    @field_validator("locks")
    @classmethod
    def _locks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for key in v:
            if key not in ALL_KEYS and key not in SECTIONS:
                raise ValueError(
                    f"locks: unknown key {key!r}; lock a section ({', '.join(SECTIONS)}) "
                    "or a dotted key such as 'agent.base_url'"
                )
        return v

    @model_validator(mode="after")
    def _mode_allowed(self) -> PolicyDocument:
        fields = self.agent.model_fields_set
        both = "approval_mode" in fields and "allowed_approval_modes" in fields
        if both and self.agent.approval_mode not in self.agent.allowed_approval_modes:
            raise ValueError(
                f"agent.approval_mode {self.agent.approval_mode!r} is not in "
                f"agent.allowed_approval_modes {list(self.agent.allowed_approval_modes)}"
            )
        return self


#: Every leaf key, dotted, in schema order.
ALL_KEYS: tuple[str, ...] = tuple(
    f"{section}.{name}" for section, model in SECTIONS.items() for name in model.model_fields
)


def expand_locks(locks: tuple[str, ...]) -> frozenset[str]:
    """Dotted leaf keys covered by ``locks`` (a section name locks every key in it)."""
    out: set[str] = set()
    for key in locks:
        if key in SECTIONS:
            out.update(k for k in ALL_KEYS if k.startswith(key + "."))
        elif key in ALL_KEYS:
            out.add(key)
    return frozenset(out)


def get_value(doc: PolicyDocument, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(doc, section), name)


def json_schema() -> dict[str, Any]:
    """JSON Schema of a policy file, for editors and MDM tools."""
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
