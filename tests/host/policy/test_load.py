"""Parsing and validating policy files: every error names file, line, key path and a hint."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowork.errors import ConfigError
from cowork.host.policy import check_file, json_schema_text, load_effective
from cowork.host.policy.load import (
    MAX_FILE_BYTES,
    admin_files,
    merge_admin_tables,
    parse_json,
    parse_toml,
    read_limited,
    validate_table,
)
from cowork.host.policy.schema import ALL_KEYS

DATA = Path(__file__).parents[2] / "data" / "policy"


def problems_of(tmp_path: Path, text: str, name: str = "policy.toml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        table, lines = parse_toml(path, path.read_bytes())
        validate_table(path, table, lines)
    return info.value.problems


def test_unknown_key_names_file_line_key_and_hint(tmp_path):
    (p,) = problems_of(tmp_path, "version = 1\n\n[vm]\ncpus = 2\ncpu_count = 4\n")
    assert p.startswith(f"{tmp_path / 'policy.toml'}:5: vm.cpu_count:")
    assert "unknown key" in p and "cowork policy schema" in p


def test_wrong_type_and_out_of_range_are_all_reported(tmp_path):
    problems = problems_of(
        tmp_path, "[vm]\ncpus = 'two'\nmemory_mib = 10\n[agent]\nmax_turns = 0\n"
    )
    assert len(problems) == 3
    assert any(":2: vm.cpus:" in p and "whole number" in p for p in problems)
    assert any(":3: vm.memory_mib:" in p and "256" in p and "too small" in p for p in problems)
    assert any(":5: agent.max_turns:" in p for p in problems)


def test_bad_grant_in_array_of_tables_points_at_its_line(tmp_path):
    text = (
        '[[egress.grants]]\nid = "a"\nhost = "a.example.com"\n\n'
        '[[egress.grants]]\nid = "b"\nhost = "10.0.0.1"\n'
    )
    (p,) = problems_of(tmp_path, text)
    assert ":7: egress.grants[1].host:" in p and "IP addresses cannot be granted" in p


def test_duplicate_toml_key_is_an_error_with_its_line(tmp_path):
    (p,) = problems_of(tmp_path, "[vm]\ncpus = 2\ncpus = 4\n")
    assert ":3:" in p and "duplicate keys are not allowed" in p


def test_toml_syntax_error_has_line(tmp_path):
    (p,) = problems_of(tmp_path, "[vm]\ncpus = = 2\n")
    assert p.startswith(f"{tmp_path / 'policy.toml'}:2:")


def test_unsupported_version(tmp_path):
    (p,) = problems_of(tmp_path, "version = 2\n")
    assert ":1: version:" in p and "upgrade cowork" in p


def test_unknown_lock_key(tmp_path):
    (p,) = problems_of(tmp_path, "locks = ['vm.cpu']\n")
    assert "locks" in p and "unknown key 'vm.cpu'" in p


def test_base_url_with_credentials_is_refused(tmp_path):
    (p,) = problems_of(tmp_path, "[agent]\nbase_url = 'https://u:secret@x.example'\n")
    assert "keychain" in p and "secret" not in p


def test_approval_mode_must_be_allowed_in_the_same_file(tmp_path):
    (p,) = problems_of(
        tmp_path, "[agent]\napproval_mode = 'auto'\nallowed_approval_modes = ['ask']\n"
    )
    assert "agent.approval_mode 'auto' is not in" in p


def test_json_duplicate_key_is_an_error_with_its_line(tmp_path):
    path = tmp_path / "settings.json"
    data = b'{\n  "hooks": {},\n  "env": {},\n  "hooks": {"Stop": []}\n}\n'
    with pytest.raises(ConfigError) as info:
        parse_json(path, data)
    (p,) = info.value.problems
    assert p.startswith(f"{path}:4:") and "'hooks' appears more than once" in p


def test_json_syntax_error_and_constants(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_json(tmp_path / "a.json", b'{\n "a": 1,\n}')
    assert ":3:" in info.value.problems[0]
    with pytest.raises(ConfigError):
        parse_json(tmp_path / "a.json", b'{"a": NaN}')


def test_deep_nesting_is_a_clean_error(tmp_path):
    with pytest.raises(ConfigError, match="nested"):
        parse_json(tmp_path / "a.json", b"[" * 100000 + b"]" * 100000)
    with pytest.raises(ConfigError, match="nested"):
        parse_toml(tmp_path / "a.toml", b"a = " + b"[" * 50 + b"]" * 50)


def test_size_limit_symlink_and_fifo_are_refused_unread(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="limit"):
        read_limited(big)
    link = tmp_path / "link.toml"
    link.symlink_to(big)
    with pytest.raises(ConfigError, match="symbolic link"):
        read_limited(link)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_limited(fifo)  # must not block
    assert read_limited(tmp_path / "absent.toml") is None


def test_invalid_utf8_names_the_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_toml(tmp_path / "a.toml", b"a = 1\nb = '\xff'\n")
    assert ":2:" in info.value.problems[0]


def test_admin_dropins_join_grants_and_locks_and_refuse_duplicate_ids(tmp_path):
    a = {"locks": ["vm.cpus"], "egress": {"grants": [{"id": "x", "host": "x.example.com"}]}}
    b = {"locks": ["agent"], "egress": {"grants": [{"id": "y", "host": "y.example.com"}]}}
    merged = merge_admin_tables([(tmp_path / "a", a), (tmp_path / "b", b)])
    assert merged["locks"] == ["vm.cpus", "agent"]
    assert [g["id"] for g in merged["egress"]["grants"]] == ["x", "y"]
    with pytest.raises(ConfigError, match="already defined"):
        merge_admin_tables([(tmp_path / "a", a), (tmp_path / "c", a)])


def test_check_file_reports_ok_and_problems(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("version = 1\n[vm]\ncpus = 2\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[vm]\ncpus = 0\n")
    assert check_file(good) == []
    assert check_file(bad)[0].startswith(f"{bad}:2: vm.cpus")
    assert check_file(tmp_path / "none.toml") == [f"{tmp_path / 'none.toml'}: does not exist"]


def test_json_schema_matches_golden_file():
    assert json_schema_text() == (DATA / "schema.json").read_text()


def test_example_policies_in_data_are_valid():
    for path in sorted(DATA.glob("*.toml")):
        assert check_file(path) == [], path


def test_user_settings_errors_raise(paths):
    paths.user_settings_file.write_text("[vm]\ncpus = 999\n")
    with pytest.raises(ConfigError) as info:
        load_effective(paths)
    assert str(paths.user_settings_file) in str(info.value)


# --- admin files: owner, mode, symlink (needs root to chown) -------------------------------

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="creating files owned by another user needs root",
)


def _admin(paths, text="[vm]\ncpus = 3\n"):
    paths.admin.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.admin, 0o755)  # noqa: S103 - the mode an admin folder has
    paths.admin_policy_file.write_text(text)
    os.chmod(paths.admin_policy_file, 0o644)
    return paths.admin_policy_file


@needs_root
def test_root_owned_admin_policy_is_used(paths):
    _admin(paths)
    p = load_effective(paths)
    assert not p.locked_down and p.vm.cpus == 3 and p.origin("vm.cpus") == ("admin", False)


@needs_root
def test_admin_file_not_owned_by_root_locks_down(paths):
    os.chown(_admin(paths), 1000, 0)
    p = load_effective(paths)
    assert p.locked_down and p.vm.cpus == 2 and all(p.is_locked(k) for k in ALL_KEYS)
    assert "owned by uid 1000, not root" in p.problems[0] and "chown" in p.problems[0]


@needs_root
def test_group_or_world_writable_admin_file_locks_down(paths):
    for mode in (0o664, 0o646):
        os.chmod(_admin(paths), mode)
        p = load_effective(paths)
        assert p.locked_down and "writable by group or others" in p.problems[0]


@needs_root
def test_symlinked_admin_file_locks_down(paths, tmp_path):
    real = tmp_path / "real.toml"
    real.write_text("[vm]\ncpus = 3\n")
    paths.admin.mkdir(parents=True)
    paths.admin_policy_file.symlink_to(real)
    p = load_effective(paths)
    assert p.locked_down and "symbolic link" in p.problems[0]


@needs_root
def test_admin_dir_and_dropins_are_checked_and_read_in_name_order(paths):
    _admin(paths, "[vm]\ncpus = 3\n")
    paths.admin_policy_dropins.mkdir()
    (paths.admin_policy_dropins / "20-b.toml").write_text("[vm]\ncpus = 5\n")
    (paths.admin_policy_dropins / "10-a.toml").write_text("[vm]\ncpus = 4\nmemory_mib = 1024\n")
    (paths.admin_policy_dropins / "ignored.txt").write_text("not toml")
    files, problems = admin_files(paths.admin, paths.admin_policy_file, paths.admin_policy_dropins)
    assert [f.name for f in files] == ["policy.toml", "10-a.toml", "20-b.toml"] and problems == []
    p = load_effective(paths)
    assert (p.vm.cpus, p.vm.memory_mib) == (5, 1024)
    os.chown(paths.admin_policy_dropins, 1000, 0)
    assert load_effective(paths).locked_down
    os.chown(paths.admin_policy_dropins, 0, 0)
    os.chmod(paths.admin, 0o777)  # noqa: S103 - the flaw under test
    assert load_effective(paths).locked_down


@needs_root
def test_invalid_admin_content_locks_down_and_emits(paths):
    from cowork.host.events import EventBus, Kind, Recorder

    _admin(paths, "[vm]\ncpus = 'many'\n")
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    p = load_effective(paths, bus=bus)
    assert p.locked_down and ":2: vm.cpus" in p.problems[0]
    assert rec.of(Kind.POLICY_REJECTED) and rec.of(Kind.POLICY_LOADED)


def test_no_environment_variable_moves_the_admin_location(monkeypatch):
    from cowork.paths import Paths

    before = Paths().admin
    for var in (
        "COWORK_ADMIN",
        "COWORK_POLICY",
        "COWORK_ADMIN_DIR",
        "ProgramData",
        "XDG_CONFIG_DIRS",
    ):
        monkeypatch.setenv(var, "/tmp/evil")
    assert Paths().admin == before


# --- fuzz ---------------------------------------------------------------------------------


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=400))
def test_fuzz_toml_loader_only_raises_config_error(tmp_path, data):
    with contextlib.suppress(ConfigError):
        table, lines = parse_toml(tmp_path / "f.toml", data)
        validate_table(tmp_path / "f.toml", table, lines)


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
sections = st.sampled_from(["vm", "mounts", "egress", "agent", "audit", "locks", "version", "x"])
keys = st.sampled_from([k.split(".")[1] for k in ALL_KEYS] + ["id", "host", "grants", "?"])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        sections, st.dictionaries(keys, toml_values, max_size=4) | toml_values, max_size=4
    )
)
def test_fuzz_structured_tables_only_raise_config_error(table):
    try:
        validate_table(Path("/f.toml"), table, {})
    except ConfigError as exc:
        assert exc.problems or str(exc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_json_loader_only_raises_config_error(data):
    with contextlib.suppress(ConfigError):
        parse_json(Path("/f.json"), data)


@pytest.mark.parametrize(
    ("extra", "hint"),
    [
        ('host = "*.example.com"\ncredential = "gh"\n', "must name one exact host"),
        ('host = "api.example.com"\nscheme = "http"\ncredential = "gh"\n', "in clear"),
    ],
)
def test_credential_bound_grant_on_wildcard_or_http_is_refused(tmp_path, extra, hint):
    text = '[[egress.grants]]\nid = "a"\nhost = "a.example.com"\n\n[[egress.grants]]\nid = "b"\n'
    text += extra
    (p,) = problems_of(tmp_path, text)
    assert str(tmp_path / "policy.toml") in p
    assert "egress.grants[1]" in p and hint in p and "'b'" in p


def test_grant_header_and_body_fields_are_validated(tmp_path):
    base = '[[egress.grants]]\nid = "a"\nhost = "a.example.com"\ncredential = "gh"\n'
    (p,) = problems_of(tmp_path, base + 'forward_headers = ["Authorization"]\n')
    assert "forward_headers" in p and "carries credentials" in p
    (p,) = problems_of(tmp_path, base + 'body_types = ["json"]\n')
    assert "body_types" in p and "media type" in p
    (p,) = problems_of(tmp_path, base + 'body_policy = "open"\n')
    assert "body_policy" in p


def test_mcp_servers_are_validated_naming_file_line_key_and_value(tmp_path):
    text = (
        "[mcp.servers.tracker]\n"
        'command = "python3"\n'
        'args = ["/opt/tracker/server.py"]\n'
        'env = { TRACKER_URL = "https://tracker.example.com", GITHUB_TOKEN = "ghp_x" }\n'
    )
    (token,) = problems_of(tmp_path, text)
    assert token.startswith(f"{tmp_path / 'policy.toml'}:4: mcp.servers.tracker.env: ")
    assert "GITHUB_TOKEN looks like a credential" in token
    assert "cowork creds set" in token and "cowork-managed" in token
    assert "ghp_x" not in token  # a credential's value is never repeated back
    (name,) = problems_of(tmp_path, '[mcp.servers."bad name"]\ncommand = "x"\n')
    assert "mcp.servers" in name and "'bad name'" in name and "letters, digits" in name


def test_mcp_server_needs_a_command_and_may_hold_the_placeholder(tmp_path):
    (p,) = problems_of(tmp_path, "[mcp.servers.t]\nargs = []\n")
    assert "mcp.servers.t.command" in p
    ok = tmp_path / "ok.toml"
    ok.write_text(
        '[mcp.servers.gh]\ncommand = "gh-mcp"\n'
        'env = { GITHUB_PERSONAL_ACCESS_TOKEN = "cowork-managed", KEYBOARD = "x" }\n'
    )
    assert check_file(ok) == []


def test_admin_dropins_join_mcp_servers_and_refuse_a_repeated_name(tmp_path):
    a = {"mcp": {"servers": {"one": {"command": "a"}}}}
    b = {"mcp": {"servers": {"two": {"command": "b"}}}}
    merged = merge_admin_tables([(tmp_path / "a", a), (tmp_path / "b", b)])
    assert sorted(merged["mcp"]["servers"]) == ["one", "two"]
    with pytest.raises(ConfigError) as info:
        merge_admin_tables([(tmp_path / "a", a), (tmp_path / "c", a)])
    assert any("mcp.servers.one" in p and str(tmp_path / "c") in p for p in info.value.problems)
