"""THE MERGE RULES (cowork.host.policy.merge), pair of layers by pair of layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowork.host.policy.load import Layer, parse_toml, validate_table
from cowork.host.policy.merge import grant_narrower_or_equal, hosts_overlap, lockdown, merge
from cowork.host.policy.schema import ALL_KEYS


def layer(name: str, text: str) -> Layer:
    path = Path(f"/{name}.toml")
    table, lines = parse_toml(path, text.encode())
    doc, keys = validate_table(path, table, lines)
    return Layer(name, doc, keys, ())  # type: ignore[arg-type]


ADMIN_NONE = layer("admin", "")
GRANT = """
[[egress.grants]]
id = "{id}"
host = "{host}"
methods = {methods}
paths = {paths}
"""


def grant(
    id: str = "api", host: str = "api.example.com", methods=("GET", "POST"), paths=("/v1/**",)
):
    return GRANT.format(id=id, host=host, methods=list(methods), paths=list(paths)).replace(
        "'", '"'
    )


# --- defaults against each layer ----------------------------------------------------------


def test_nothing_set_gives_defaults_and_no_grants():
    p = merge(ADMIN_NONE, layer("user", ""), layer("workspace", ""))
    assert p.vm.cpus == 2 and p.agent.model == "claude-sonnet-4-5"
    assert p.egress.grants == ()
    assert all(p.origin(k) == ("default", False) for k in ALL_KEYS)


def test_admin_over_default():
    p = merge(layer("admin", "[vm]\ncpus = 6\n[agent]\nmodel = 'm-admin'\n"))
    assert (p.vm.cpus, p.origin("vm.cpus")) == (6, ("admin", False))
    assert (p.agent.model, p.origin("agent.model")) == ("m-admin", ("admin", False))


def test_user_over_default_may_widen_and_set_plain_keys():
    p = merge(
        ADMIN_NONE, layer("user", "[vm]\ncpus = 8\n[agent]\nbase_url = 'https://gw.example'\n")
    )
    assert (p.vm.cpus, p.origin("vm.cpus")) == (8, ("user", False))
    assert p.agent.base_url == "https://gw.example"


def test_workspace_over_default_only_narrows():
    ws = layer("workspace", "[vm]\ncpus = 1\nmemory_mib = 65536\n")
    p = merge(ADMIN_NONE, None, ws)
    assert (p.vm.cpus, p.origin("vm.cpus")) == (1, ("workspace", False))
    assert (p.vm.memory_mib, p.origin("vm.memory_mib")) == (2048, ("default", False))
    assert any("vm.memory_mib" in n and "widen" in n for n in p.notes)


# --- admin vs user ------------------------------------------------------------------------


def test_admin_vs_user_plain_scalar_strongest_wins():
    p = merge(
        layer("admin", "[agent]\nmodel = 'm-admin'\n"), layer("user", "[agent]\nmodel = 'm-user'\n")
    )
    assert (p.agent.model, p.origin("agent.model")) == ("m-admin", ("admin", False))
    assert any("agent.model is set by admin" in n for n in p.notes)


def test_admin_vs_user_user_may_narrow_but_not_widen():
    admin = layer("admin", "[vm]\ncpus = 4\nmemory_mib = 4096\n")
    p = merge(admin, layer("user", "[vm]\ncpus = 2\nmemory_mib = 8192\n"))
    assert (p.vm.cpus, p.origin("vm.cpus")) == (2, ("user", False))
    assert (p.vm.memory_mib, p.origin("vm.memory_mib")) == (4096, ("admin", False))


def test_admin_vs_user_booleans_false_is_narrower():
    admin = layer(
        "admin", "[mounts]\nworkspace_writable = false\n[egress]\nallow_websockets = true\n"
    )
    user = layer(
        "user", "[mounts]\nworkspace_writable = true\n[egress]\nallow_websockets = false\n"
    )
    p = merge(admin, user)
    assert p.mounts.workspace_writable is False
    assert p.origin("mounts.workspace_writable") == ("admin", False)
    assert (p.egress.allow_websockets, p.origin("egress.allow_websockets")[0]) == (False, "user")


def test_admin_vs_user_approval_mode_only_stricter():
    admin = layer("admin", "[agent]\napproval_mode = 'ask'\n")
    assert (
        merge(admin, layer("user", "[agent]\napproval_mode = 'auto'\n")).agent.approval_mode
        == "ask"
    )
    assert (
        merge(admin, layer("user", "[agent]\napproval_mode = 'deny-risky'\n")).agent.approval_mode
        == "deny-risky"
    )


# --- admin vs workspace -------------------------------------------------------------------


def test_admin_vs_workspace_plain_keys_never_from_workspace():
    ws = layer(
        "workspace", "[agent]\nbase_url = 'http://127.0.0.1:9'\nmodel = 'x'\n[vm]\naccel = 'tcg'\n"
    )
    p = merge(layer("admin", ""), None, ws)
    assert p.agent.base_url is None and p.agent.model == "claude-sonnet-4-5"
    assert p.vm.accel == "auto"
    assert p.origin("agent.base_url") == ("default", False)
    assert any("agent.base_url cannot be set by a workspace" in n for n in p.notes)


def test_admin_vs_workspace_narrow_applies_widen_ignored():
    admin = layer("admin", "[agent]\nmax_turns = 20\nmax_tokens = 4000\n")
    ws = layer("workspace", "[agent]\nmax_turns = 5\nmax_tokens = 9000\n")
    p = merge(admin, None, ws)
    assert (p.agent.max_turns, p.origin("agent.max_turns")[0]) == (5, "workspace")
    assert (p.agent.max_tokens, p.origin("agent.max_tokens")[0]) == (4000, "admin")


def test_admin_vs_workspace_approval_mode_cannot_loosen():
    admin = layer("admin", "[agent]\napproval_mode = 'ask'\n")
    p = merge(admin, None, layer("workspace", "[agent]\napproval_mode = 'auto'\n"))
    assert p.agent.approval_mode == "ask"


# --- user vs workspace --------------------------------------------------------------------


def test_user_vs_workspace():
    user = layer(
        "user", "[vm]\ncpus = 3\n[agent]\nmodel = 'm-user'\nbase_url = 'https://u.example'\n"
    )
    narrower = layer(
        "workspace", "[vm]\ncpus = 1\n[agent]\nmodel = 'm-ws'\nbase_url = 'https://w.example'\n"
    )
    p = merge(ADMIN_NONE, user, narrower)
    assert (p.vm.cpus, p.origin("vm.cpus")[0]) == (1, "workspace")
    assert (p.agent.model, p.agent.base_url) == ("m-user", "https://u.example")
    wider = merge(ADMIN_NONE, user, layer("workspace", "[vm]\ncpus = 5\n"))
    assert (wider.vm.cpus, wider.origin("vm.cpus")[0]) == (3, "user")


# --- floor vs each layer ------------------------------------------------------------------


def test_floor_vs_admin_approval_mode_outside_allowed_list():
    admin = layer("admin", "[agent]\nallowed_approval_modes = ['ask', 'deny-risky']\n")
    p = merge(admin, layer("user", "[agent]\napproval_mode = 'auto'\n"))
    # the default 'auto' is not allowed and the user cannot choose it: strictest allowed mode
    assert p.agent.approval_mode == "deny-risky"
    assert p.origin("agent.approval_mode") == ("floor", False)


def test_floor_vs_admin_claude_writable_only_outside_workspace(tmp_path):
    admin = layer(
        "admin", f"[mounts]\nclaude_writable = true\nclaude_dir = '{tmp_path / 'ws' / '.claude'}'\n"
    )
    outside = merge(admin, workspace_root=tmp_path / "other")
    assert outside.mounts.claude_writable is True
    assert outside.origin("mounts.claude_writable") == ("admin", False)
    inside = merge(admin, workspace_root=tmp_path / "ws")
    assert inside.mounts.claude_writable is False
    assert inside.origin("mounts.claude_writable") == ("floor", False)


def test_floor_vs_user_claude_writable_needs_admin():
    p = merge(ADMIN_NONE, layer("user", "[mounts]\nclaude_writable = true\n"))
    assert p.mounts.claude_writable is False
    assert p.origin("mounts.claude_writable") == ("floor", False)


def test_floor_vs_workspace_claude_writable_needs_admin():
    p = merge(ADMIN_NONE, None, layer("workspace", "[mounts]\nclaude_writable = true\n"))
    assert p.mounts.claude_writable is False


def test_floor_websocket_flag_needs_allow_websockets():
    admin = layer("admin", grant() + "websocket = true\n")
    assert merge(admin).egress.grants[0].websocket is False
    allowed = layer("admin", "[egress]\nallow_websockets = true\n" + grant() + "websocket = true\n")
    assert merge(allowed).egress.grants[0].websocket is True


# --- locks --------------------------------------------------------------------------------


def test_locked_key_ignores_user_and_workspace_even_narrowing():
    admin = layer("admin", "locks = ['vm.cpus']\n[vm]\ncpus = 4\n")
    p = merge(admin, layer("user", "[vm]\ncpus = 2\n"), layer("workspace", "[vm]\ncpus = 1\n"))
    assert (p.vm.cpus, p.origin("vm.cpus")) == (4, ("admin", True))
    assert sum("vm.cpus is locked" in n for n in p.notes) == 2


def test_lock_without_value_pins_the_default():
    admin = layer("admin", "locks = ['agent.base_url']\n")
    p = merge(admin, layer("user", "[agent]\nbase_url = 'https://evil.example'\n"))
    assert p.agent.base_url is None
    assert p.origin("agent.base_url") == ("default", True)


def test_locking_a_section_locks_each_key():
    admin = layer("admin", "locks = ['vm']\n")
    p = merge(admin, layer("user", "[vm]\nmemory_mib = 1024\naccel = 'tcg'\n"))
    assert (p.vm.memory_mib, p.vm.accel) == (2048, "auto")
    assert all(p.is_locked(k) for k in ALL_KEYS if k.startswith("vm."))
    assert not p.is_locked("agent.model")


def test_locks_from_user_are_ignored():
    p = merge(
        ADMIN_NONE, layer("user", "locks = ['vm.cpus']\n"), layer("workspace", "[vm]\ncpus = 1\n")
    )
    assert not p.is_locked("vm.cpus") and p.vm.cpus == 1
    assert any("'locks' is read from admin policy only" in n for n in p.notes)


def test_lockdown_locks_every_key_with_defaults():
    p = lockdown(["/etc/cowork/policy.toml: owned by uid 1000"])
    assert p.locked_down and p.problems
    assert all(p.origin(k) == ("default", True) for k in ALL_KEYS)
    assert p.egress.grants == ()


# --- grants (allow-list) ------------------------------------------------------------------


def test_admin_grants_are_the_universe_user_cannot_add():
    admin = layer("admin", grant())
    user = layer("user", grant() + grant(id="extra", host="other.example.com"))
    p = merge(admin, user)
    assert [g.id for g in p.egress.grants] == ["api"]
    assert any("'extra'" in n for n in p.notes)


def test_user_may_narrow_an_admin_grant_but_not_widen_it():
    admin = layer("admin", grant())
    narrow = merge(admin, layer("user", grant(methods=("GET",))))
    assert narrow.egress.grants[0].methods == ("GET",)
    wide = merge(admin, layer("user", grant(methods=("GET", "DELETE"))))
    assert wide.egress.grants == ()
    other_host = merge(admin, layer("user", grant(host="api.example.org")))
    assert other_host.egress.grants == ()
    more_paths = merge(admin, layer("user", grant(paths=("/v1/**", "/admin/**"))))
    assert more_paths.egress.grants == ()


def test_empty_admin_grant_list_means_no_grants_at_all():
    p = merge(layer("admin", "[egress]\ngrants = []\n"), layer("user", grant()))
    assert p.egress.grants == ()


def test_user_may_add_grants_when_admin_is_silent_and_unlocked():
    p = merge(ADMIN_NONE, layer("user", grant()))
    assert [g.id for g in p.egress.grants] == ["api"]
    assert p.origin("egress.grants") == ("user", False)


def test_locked_grants_without_admin_list_means_none():
    p = merge(layer("admin", "locks = ['egress.grants']\n"), layer("user", grant()))
    assert p.egress.grants == ()
    assert p.origin("egress.grants") == ("admin", True)


def test_workspace_can_remove_or_narrow_but_never_add_a_grant():
    admin = layer("admin", grant() + grant(id="docs", host="docs.example.com"))
    removed = merge(admin, None, layer("workspace", grant(methods=("GET",))))
    assert [(g.id, g.methods) for g in removed.egress.grants] == [("api", ("GET",))]
    added = merge(ADMIN_NONE, None, layer("workspace", grant()))
    assert added.egress.grants == ()
    user_universe = merge(
        ADMIN_NONE, layer("user", grant()), layer("workspace", grant(id="x", host="x.example.com"))
    )
    assert user_universe.egress.grants == ()


def test_grant_narrowing_compares_credential_and_injection():
    admin = layer("admin", grant() + 'credential = "k"\n').doc.egress.grants[0]
    same = layer("user", grant() + 'credential = "k"\n').doc.egress.grants[0]
    other = layer("user", grant() + 'credential = "other"\n').doc.egress.grants[0]
    none = layer("user", grant()).doc.egress.grants[0]
    assert grant_narrower_or_equal(same, admin)
    assert not grant_narrower_or_equal(other, admin)
    assert not grant_narrower_or_equal(none, admin)


# --- deny-list (union) and allowed approval modes (allow-list) ----------------------------


def test_deny_hosts_union_from_every_layer_removes_grants():
    admin = layer(
        "admin",
        "[egress]\ndeny_hosts = ['a.example.com']\n"
        + grant(id="b", host="b.example.com")
        + grant(id="c", host="c.example.com"),
    )
    ws = layer("workspace", "[egress]\ndeny_hosts = ['*.c.example.com', 'c.example.com']\n")
    user = layer("user", "[egress]\ndeny_hosts = ['z.example.com']\n")
    p = merge(admin, user, ws)
    assert set(p.egress.deny_hosts) == {
        "a.example.com",
        "z.example.com",
        "*.c.example.com",
        "c.example.com",
    }
    assert [g.id for g in p.egress.grants] == ["b"]


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("a.example.com", "a.example.com", True),
        ("*.example.com", "a.example.com", True),
        ("a.example.com", "*.example.com", True),
        ("*.a.example.com", "*.example.com", True),
        ("example.com", "*.example.com", False),
        ("a.example.com", "b.example.com", False),
        ("evilexample.com", "*.example.com", False),
    ],
)
def test_hosts_overlap(a, b, overlap):
    assert hosts_overlap(a, b) is overlap


def test_allowed_approval_modes_intersect():
    admin = layer(
        "admin", "[agent]\nallowed_approval_modes = ['ask', 'deny-risky']\napproval_mode = 'ask'\n"
    )
    user = layer(
        "user",
        "[agent]\nallowed_approval_modes = ['auto', 'deny-risky']\napproval_mode = 'deny-risky'\n",
    )
    p = merge(admin, user)
    assert p.agent.allowed_approval_modes == ("deny-risky",)
    assert p.agent.approval_mode == "deny-risky"
    disjoint = merge(admin, layer("workspace", "[agent]\nallowed_approval_modes = ['auto']\n"))
    assert disjoint.agent.allowed_approval_modes == ("ask", "deny-risky")
    assert any("shares no mode" in n for n in disjoint.notes)


def test_model_api_grant_gets_the_messages_body_policy():
    text = grant(id="model", host="api.anthropic.com") + grant(id="other")
    p = merge(ADMIN_NONE, layer("user", text))
    by_id = {g.id: g for g in p.egress.grants}
    assert by_id["model"].body_policy == "anthropic-messages"
    assert by_id["other"].body_policy is None
    assert by_id["other"].effective_body_policy == "none"


def test_grant_for_the_configured_base_url_gets_the_body_policy():
    text = "[agent]\nbase_url = 'https://llm.example.org/proxy'\n" + grant(
        id="gw", host="llm.example.org"
    )
    p = merge(ADMIN_NONE, layer("user", text))
    assert p.egress.grants[0].body_policy == "anthropic-messages"


def test_explicit_body_policy_is_kept():
    text = grant(id="model", host="api.anthropic.com") + 'body_policy = "none"\n'
    p = merge(ADMIN_NONE, layer("user", text))
    assert p.egress.grants[0].body_policy == "none"


def test_workspace_cannot_widen_the_new_grant_fields():
    admin = layer(
        "admin", grant() + 'credential = "c"\nforward_headers = ["x-a"]\nbody_policy = "none"\n'
    )
    for extra in (
        'credential = "c"\nforward_headers = ["x-a", "x-b"]\nbody_policy = "none"\n',
        'credential = "c"\nforward_headers = ["x-a"]\nbody_policy = "none"\nbody_types = ["*/*"]\n',
        'credential = "c"\nforward_headers = ["x-a"]\nbody_policy = "none"\n'
        'allow_server_tools = ["web_fetch"]\n',
    ):
        p = merge(admin, layer("user", ""), layer("workspace", grant() + extra))
        assert p.egress.grants == ()
    narrower = 'credential = "c"\nforward_headers = []\nbody_policy = "anthropic-messages"\n'
    p = merge(admin, layer("user", ""), layer("workspace", grant() + narrower))
    assert [g.id for g in p.egress.grants] == ["api"]


# --- workspace.changes (staged or direct) --------------------------------------------------


def test_changes_unset_gives_each_command_its_own_default():
    p = merge(ADMIN_NONE, layer("user", ""))
    assert p.doc.workspace.changes is None
    assert p.changes_mode("staged") == "staged"
    assert p.changes_mode("direct") == "direct"


def test_changes_set_overrides_every_command_default():
    p = merge(ADMIN_NONE, layer("user", "[workspace]\nchanges = 'staged'\n"))
    assert p.changes_mode("direct") == "staged"
    p = merge(ADMIN_NONE, layer("user", "[workspace]\nchanges = 'direct'\n"))
    assert p.changes_mode("staged") == "direct"


def test_admin_lock_on_staged_wins_over_user_and_workspace():
    admin = layer("admin", "locks = ['workspace.changes']\n[workspace]\nchanges = 'staged'\n")
    p = merge(
        admin,
        layer("user", "[workspace]\nchanges = 'direct'\n"),
        layer("workspace", "[workspace]\nchanges = 'direct'\n"),
    )
    assert p.changes_mode("direct") == "staged"
    assert p.origin("workspace.changes") == ("admin", True)
    assert any("workspace.changes is locked" in n for n in p.notes)


def test_workspace_may_ask_for_staged_but_not_direct():
    p = merge(
        ADMIN_NONE, layer("user", ""), layer("workspace", "[workspace]\nchanges = 'staged'\n")
    )
    assert p.changes_mode("direct") == "staged"
    p = merge(
        ADMIN_NONE, layer("user", ""), layer("workspace", "[workspace]\nchanges = 'direct'\n")
    )
    assert p.changes_mode("staged") == "staged"
    assert any("would widen" in n for n in p.notes)


def test_undo_limits_are_not_for_a_workspace():
    p = merge(
        ADMIN_NONE, layer("user", ""), layer("workspace", "[workspace]\nundo_quota_mib = 1\n")
    )
    assert p.doc.workspace.undo_quota_mib == 2048
    p = merge(ADMIN_NONE, layer("user", "[workspace]\nundo_max_age_days = 3\n"))
    assert p.doc.workspace.undo_max_age_days == 3


# --- connectors (rule 6) ------------------------------------------------------------------

SERVER = '[mcp.servers.{name}]\ncommand = "{command}"\n'


def test_admin_and_user_servers_are_joined_and_the_admin_wins_a_clash():
    admin = layer("admin", SERVER.format(name="tracker", command="admin-tracker"))
    user = layer(
        "user",
        SERVER.format(name="tracker", command="user-tracker")
        + SERVER.format(name="notes", command="user-notes"),
    )
    p = merge(admin, user)
    assert {n: s.command for n, s in p.mcp.servers.items()} == {
        "tracker": "admin-tracker",
        "notes": "user-notes",
    }
    assert dict(p.server_origins) == {"tracker": "admin", "notes": "user"}
    assert any("mcp.servers.tracker is named by admin policy" in n for n in p.notes)


def test_user_servers_alone():
    p = merge(ADMIN_NONE, layer("user", SERVER.format(name="notes", command="n")))
    assert list(p.mcp.servers) == ["notes"] and p.origin("mcp.servers") == ("user", False)


def test_a_locked_server_list_keeps_only_the_admin_s():
    admin = layer("admin", 'locks = ["mcp.servers"]\n' + SERVER.format(name="t", command="a"))
    p = merge(admin, layer("user", SERVER.format(name="mine", command="m")))
    assert list(p.mcp.servers) == ["t"] and p.origin("mcp.servers") == ("admin", True)
    assert any("mcp.servers is locked" in n for n in p.notes)
    locked_empty = merge(layer("admin", 'locks = ["mcp"]\n'), layer("user", SERVER.format(
        name="mine", command="m")))  # fmt: skip
    assert locked_empty.mcp.servers == {}


def test_a_workspace_can_never_add_a_server():
    p = merge(
        ADMIN_NONE, layer("user", ""), layer("workspace", SERVER.format(name="w", command="x"))
    )
    assert p.mcp.servers == {}
    assert any("mcp.servers cannot be set by a workspace" in n for n in p.notes)


def test_lockdown_starts_no_server():
    assert lockdown(["bad admin file"]).mcp.servers == {}
