"""Merging the layers into the effective :class:`Policy`.

THE MERGE RULES (every rule here has a test in ``tests/host/policy/test_merge.py``).

Layers, strongest first: **floor** (built in, not configurable) > **admin** > **user** >
**workspace** (read only for a trusted workspace whose pinned hashes still match). Keys
nobody sets keep the built-in **default**.

1. Locks. ``locks`` is read from admin policy only (a ``locks`` key elsewhere is ignored with
   a note). A locked key takes the admin value, or the default when the admin did not set
   it; user and workspace values for it are ignored. Locking a section locks all its keys.
   If admin policy cannot be trusted (bad permissions, invalid), cowork uses the defaults
   with EVERY key locked ("lockdown") and reports why.
2. Plain scalars (``vm.accel``, ``vm.libvirt_uri``, ``vm.keep_overlay``,
   ``vm.boot_timeout_s``, ``mounts.claude_dir``, ``agent.model``, ``agent.base_url``,
   ``audit.*``, ``workspace.undo_quota_mib``, ``workspace.undo_max_age_days``): the
   strongest layer that sets the key wins. The workspace layer can never set them (ignored
   with a note): a workspace cannot move the model API, the audit log or the shared
   ``.claude`` folder.
3. Narrowable scalars: limits where lower is narrower (``vm.cpus``, ``vm.memory_mib``,
   ``egress.max_body_mib``, ``agent.max_turns``, ``agent.max_tokens``), permissions where
   false is narrower (``mounts.workspace_writable``, ``mounts.claude_writable``,
   ``egress.allow_websockets``) and ``agent.approval_mode`` (``auto`` < ``ask`` <
   ``deny-risky``). The strongest layer that sets the key gives the value; each weaker layer
   may then only narrow it (a wider value is ignored with a note). A user value for a key
   nobody stronger set is taken as is; a workspace value must be narrower-or-equal than the
   value it would otherwise get.
4. Allow-lists intersect with the stronger layers' list. ``agent.allowed_approval_modes``:
   the strongest layer that sets it gives the universe; weaker layers intersect (an empty
   intersection is ignored with a note, so some mode always remains).
   ``egress.grants``:
   - If the admin sets ``egress.grants`` (even to ``[]``), the admin list is the universe.
   - Otherwise, if the admin locked ``egress.grants``, there are no grants.
   - Otherwise the user list is the universe (the user may add grants), and with no user
     list there are none: egress is denied by default.
   - A weaker layer that sets the key replaces the list with its own, each entry kept only
     if the universe has a grant with the same id and the entry is narrower-or-equal: same
     scheme, host, port, credential, inject_header and inject_format; methods ⊆; paths ⊆
     (as strings); websocket only if the universe's grant has it; forward_headers ⊆,
     body_types ⊆, allow_server_tools ⊆; the same body policy or ``anthropic-messages``.
     Others are dropped with a note. So a workspace can remove or narrow a grant, never add
     or widen one.
5. Deny-lists union: ``egress.deny_hosts`` from every layer (workspace included) are joined,
   and every grant whose host pattern overlaps a denied pattern is removed.
6. Connectors: ``mcp.servers`` (a table of name -> server) from admin policy and user
   settings are joined by name. On a name both set, the admin's server is used and the
   user's is ignored with a note. When the admin locks ``mcp.servers``, only the admin's
   servers exist. A workspace layer can never set it (ignored with a note): a workspace
   names its own servers in ``.mcp.json``, used only once the folder is trusted (and those
   never replace a server of the same name from admin policy or user settings; see
   :func:`cowork.host.agent.mcp.configured_servers`). Where each server came from is in
   :attr:`Policy.server_origins`.
7. The floor, applied last and shown with origin ``floor``:
   - ``mounts.claude_writable`` can be true only when the admin set it true.
   - A ``.claude`` folder inside the workspace is never writable.
   - ``agent.approval_mode`` must be one of ``agent.allowed_approval_modes``; otherwise the
     strictest allowed mode is used.
   - Without ``egress.allow_websockets``, no grant keeps ``websocket = true``.
   - A grant for the model API's host (the host of ``agent.base_url``, or
     ``api.anthropic.com`` when it is unset) that sets no ``body_policy`` gets
     ``body_policy = "anthropic-messages"``: the model API can itself fetch URLs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cowork.host.egress.grants import Grant
from cowork.host.policy.load import Layer, PolicySource
from cowork.host.policy.schema import (
    ALL_KEYS,
    APPROVAL_RANK,
    AgentSection,
    AuditSection,
    EgressSection,
    McpSection,
    MountsSection,
    PolicyDocument,
    VMSection,
    WorkspaceSection,
    expand_locks,
    get_value,
)

OriginLayer = Literal["floor", "admin", "user", "workspace", "default"]

LOWER_IS_NARROWER = frozenset(
    {"vm.cpus", "vm.memory_mib", "egress.max_body_mib", "agent.max_turns", "agent.max_tokens"}
)
FALSE_IS_NARROWER = frozenset(
    {"mounts.workspace_writable", "mounts.claude_writable", "egress.allow_websockets"}
)
#: ``workspace.changes``: unset (None) means "the command's default", between the two.
CHANGES_RANK: dict[str | None, int] = {"direct": 0, None: 1, "staged": 2}
NARROWABLE = LOWER_IS_NARROWER | FALSE_IS_NARROWER | {"agent.approval_mode", "workspace.changes"}
LISTS = frozenset({"egress.grants", "egress.deny_hosts", "agent.allowed_approval_modes"})
MAPS = frozenset({"mcp.servers"})
PLAIN = frozenset(ALL_KEYS) - NARROWABLE - LISTS - MAPS


@dataclass(frozen=True)
class Origin:
    layer: OriginLayer
    locked: bool


@dataclass(frozen=True)
class Policy:
    """The effective policy: values, where each came from, and what was ignored."""

    doc: PolicyDocument
    origins: Mapping[str, Origin]
    notes: tuple[str, ...] = ()
    sources: tuple[PolicySource, ...] = ()
    #: Why admin policy was refused; non-empty means lockdown (defaults + every lock).
    problems: tuple[str, ...] = ()
    workspace: Path | None = None
    #: ``mcp.servers``: which layer named each server (``admin`` or ``user``).
    server_origins: Mapping[str, OriginLayer] = field(default_factory=dict)

    @property
    def vm(self) -> VMSection:
        return self.doc.vm

    @property
    def mounts(self) -> MountsSection:
        return self.doc.mounts

    @property
    def egress(self) -> EgressSection:
        return self.doc.egress

    @property
    def agent(self) -> AgentSection:
        return self.doc.agent

    @property
    def audit(self) -> AuditSection:
        return self.doc.audit

    @property
    def mcp(self) -> McpSection:
        return self.doc.mcp

    @property
    def workspace_settings(self) -> WorkspaceSection:
        return self.doc.workspace

    def changes_mode(self, command_default: Literal["staged", "direct"]) -> str:
        """``staged`` or ``direct`` for a command whose own default is ``command_default``.

        Each command states its default when it asks (``cowork run`` and the app say
        ``staged``; ``cowork exec`` and ``cowork shell`` say ``direct``); a value set in
        policy (``workspace.changes``) overrides every command's default.
        """
        value = self.doc.workspace.changes
        return value if value is not None else command_default

    @property
    def locked_down(self) -> bool:
        return bool(self.problems)

    def value(self, key: str) -> Any:
        if key not in ALL_KEYS:
            raise KeyError(key)
        return get_value(self.doc, key)

    def origin(self, key: str) -> tuple[OriginLayer, bool]:
        """``(layer the value came from, locked)`` for dotted ``key``."""
        o = self.origins[key]
        return o.layer, o.locked

    def is_locked(self, key: str) -> bool:
        return self.origins[key].locked

    def rows(self) -> list[tuple[str, Any, OriginLayer, bool]]:
        """``(key, value, layer, locked)`` for every key, in schema order."""
        return [(k, self.value(k), self.origins[k].layer, self.origins[k].locked) for k in ALL_KEYS]

    def plain_rows(self) -> list[tuple[str, Any, OriginLayer, bool]]:
        """Like :meth:`rows`, with each value as plain JSON data (lists, dicts, strings)."""
        return [(k, plain(v), layer, locked) for k, v, layer, locked in self.rows()]


# --- helpers ------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A policy value as plain JSON data: tuples become lists, grants and paths text."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, Path):
        return str(value)
    return value


def _narrower_or_equal(key: str, new: Any, current: Any) -> bool:
    if key in LOWER_IS_NARROWER:
        return bool(new <= current)
    if key in FALSE_IS_NARROWER:
        return (not new) or bool(current)
    if key == "agent.approval_mode":
        return APPROVAL_RANK[new] >= APPROVAL_RANK[current]
    if key == "workspace.changes":
        return CHANGES_RANK[new] >= CHANGES_RANK[current]
    return bool(new == current)


def grant_narrower_or_equal(lower: Grant, upper: Grant) -> bool:
    """True when ``lower`` allows nothing that ``upper`` does not (syntactically)."""
    return (
        lower.id == upper.id
        and lower.scheme == upper.scheme
        and lower.host == upper.host
        and lower.effective_port == upper.effective_port
        and lower.credential == upper.credential
        and lower.inject_header == upper.inject_header
        and lower.inject_format == upper.inject_format
        and set(lower.methods) <= set(upper.methods)
        and set(lower.paths) <= set(upper.paths)
        and (upper.websocket or not lower.websocket)
        and set(lower.forward_headers) <= set(upper.forward_headers)
        and set(lower.body_types) <= set(upper.body_types)
        and set(lower.allow_server_tools) <= set(upper.allow_server_tools)
        and lower.effective_body_policy in (upper.effective_body_policy, "anthropic-messages")
    )


def model_api_host(base_url: str | None) -> str:
    """The host the model API is reached at: ``agent.base_url``'s, or the Anthropic API's."""
    host = urlsplit(base_url).hostname if base_url else None
    return (host or "api.anthropic.com").lower()


def hosts_overlap(a: str, b: str) -> bool:
    """True when host patterns ``a`` and ``b`` can match a common host name."""
    if a == b:
        return True
    if a.startswith("*.") and b.startswith("*."):
        sa, sb = a[1:], b[1:]
        return sa.endswith(sb) or sb.endswith(sa)
    if a.startswith("*."):
        return b.endswith(a[1:])
    if b.startswith("*."):
        return a.endswith(b[1:])
    return False


def _within(path: Path, root: Path) -> bool:
    try:
        path.expanduser().resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


# --- the merge ----------------------------------------------------------------------------


def lockdown(problems: list[str], sources: tuple[PolicySource, ...] = ()) -> Policy:
    """Built-in defaults with every key locked: what cowork uses when admin policy is refused."""
    return Policy(
        doc=PolicyDocument(),
        origins={k: Origin("default", True) for k in ALL_KEYS},
        notes=("admin policy was refused; using built-in defaults with every key locked",),
        sources=sources,
        problems=tuple(problems),
    )


def merge(
    admin: Layer,
    user: Layer | None = None,
    workspace: Layer | None = None,
    *,
    workspace_root: Path | None = None,
) -> Policy:
    """Apply THE MERGE RULES above to the given layers."""
    locks = expand_locks(admin.doc.locks)
    values: dict[str, Any] = {}
    origins: dict[str, OriginLayer] = {}
    notes: list[str] = []
    default = PolicyDocument()

    for key in ALL_KEYS:
        if key in admin.keys:
            values[key], origins[key] = get_value(admin.doc, key), "admin"
        else:
            values[key], origins[key] = get_value(default, key), "default"

    # Grants universe when the admin did not set a list (rule 4).
    grants_admin_set = "egress.grants" in admin.keys
    server_origins: dict[str, OriginLayer] = {n: "admin" for n in values["mcp.servers"]}

    for layer in (user, workspace):
        if layer is None:
            continue
        name = layer.name
        if "locks" in layer.keys:
            notes.append(f"{name}: 'locks' is read from admin policy only; ignored")
        for key in ALL_KEYS:
            if key not in layer.keys:
                continue
            new = get_value(layer.doc, key)
            if key in locks:
                notes.append(f"{name}: {key} is locked by admin policy; ignored")
                continue
            if key == "egress.deny_hosts":
                values[key] = tuple(dict.fromkeys([*values[key], *new]))
                origins[key] = name if origins[key] == "default" else origins[key]
                continue
            if key == "egress.grants":
                if name == "user" and not grants_admin_set:
                    values[key], origins[key] = new, name
                    continue
                kept = []
                by_id = {g.id: g for g in values[key]}
                for g in new:
                    upper = by_id.get(g.id)
                    if upper is not None and grant_narrower_or_equal(g, upper):
                        kept.append(g)
                    else:
                        notes.append(
                            f"{name}: egress.grants: grant {g.id!r} is not within a grant "
                            "from a stronger layer; ignored (a lower layer can only narrow)"
                        )
                values[key], origins[key] = tuple(kept), name
                continue
            if key == "mcp.servers":
                if name == "workspace":
                    notes.append(
                        f"{name}: mcp.servers cannot be set by a workspace; ignored (a trusted "
                        "workspace names its own servers in .mcp.json)"
                    )
                    continue
                joined = dict(values[key])
                for server, entry in new.items():
                    if server_origins.get(server) == "admin":
                        notes.append(
                            f"{name}: mcp.servers.{server} is named by admin policy; the "
                            "admin's server is used"
                        )
                        continue
                    joined[server] = entry
                    server_origins[server] = name
                if joined != values[key]:
                    values[key], origins[key] = joined, name
                continue
            if key == "agent.allowed_approval_modes":
                if name == "user" and origins[key] == "default":
                    values[key], origins[key] = new, name
                    continue
                both = tuple(m for m in values[key] if m in new)
                if both:
                    values[key], origins[key] = both, name
                else:
                    notes.append(
                        f"{name}: agent.allowed_approval_modes {list(new)} shares no mode "
                        f"with {list(values[key])}; ignored"
                    )
                continue
            if key in PLAIN:
                if name == "workspace":
                    notes.append(f"{name}: {key} cannot be set by a workspace; ignored")
                elif origins[key] == "default":
                    values[key], origins[key] = new, name
                else:
                    notes.append(f"{name}: {key} is set by {origins[key]} policy; ignored")
                continue
            # Narrowable scalars (rule 3).
            if (name == "user" and origins[key] == "default") or _narrower_or_equal(
                key, new, values[key]
            ):
                values[key], origins[key] = new, name
            else:
                notes.append(
                    f"{name}: {key} = {new!r} would widen {values[key]!r} "
                    f"from {origins[key]}; ignored (a lower layer can only narrow)"
                )

    if not grants_admin_set and "egress.grants" in locks:
        values["egress.grants"], origins["egress.grants"] = (), "admin"

    # Floor (rule 6) and deny-list removal (rule 5).
    floor: set[str] = set()
    if values["mounts.claude_writable"] and origins["mounts.claude_writable"] != "admin":
        values["mounts.claude_writable"] = False
        floor.add("mounts.claude_writable")
        notes.append("floor: only admin policy can make the .claude folder writable")
    claude_dir = values["mounts.claude_dir"] or Path("~/.claude")
    if (
        workspace_root is not None
        and values["mounts.claude_writable"]
        and _within(Path(claude_dir), workspace_root)
    ):
        values["mounts.claude_writable"] = False
        floor.add("mounts.claude_writable")
        notes.append("floor: a .claude folder inside the workspace is always read-only")
    if values["agent.approval_mode"] not in values["agent.allowed_approval_modes"]:
        strictest = max(values["agent.allowed_approval_modes"], key=lambda m: APPROVAL_RANK[m])
        notes.append(
            f"floor: agent.approval_mode {values['agent.approval_mode']!r} is not allowed; "
            f"using {strictest!r}"
        )
        values["agent.approval_mode"] = strictest
        floor.add("agent.approval_mode")
    model_host = model_api_host(values["agent.base_url"])
    grants: list[Grant] = []
    for g in values["egress.grants"]:
        denied = [d for d in values["egress.deny_hosts"] if hosts_overlap(g.host, d)]
        if denied:
            notes.append(f"egress.grants: grant {g.id!r} removed: host {denied[0]!r} is denied")
            continue
        if g.websocket and not values["egress.allow_websockets"]:
            g = g.model_copy(update={"websocket": False})
        if g.body_policy is None and g.host == model_host:
            g = g.model_copy(update={"body_policy": "anthropic-messages"})
        grants.append(g)
    values["egress.grants"] = tuple(grants)

    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, name_ = key.split(".", 1)
        sections.setdefault(section, {})[name_] = value
    doc = PolicyDocument(
        locks=admin.doc.locks,
        vm=VMSection(**sections["vm"]),
        mounts=MountsSection(**sections["mounts"]),
        egress=EgressSection(**sections["egress"]),
        agent=AgentSection(**sections["agent"]),
        audit=AuditSection(**sections["audit"]),
        workspace=WorkspaceSection(**sections["workspace"]),
        mcp=McpSection(**sections["mcp"]),
    )
    return Policy(
        doc=doc,
        origins={k: Origin("floor" if k in floor else origins[k], k in locks) for k in ALL_KEYS},
        notes=tuple(notes),
        sources=tuple(
            s for layer in (admin, user, workspace) if layer is not None for s in layer.sources
        ),
        workspace=workspace_root,
        server_origins=server_origins,
    )
