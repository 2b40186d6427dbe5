import os
from pathlib import Path

import pytest

from cowork.errors import WorkspaceError
from cowork.guest import contract
from cowork.host import workspace as ws
from cowork.paths import Paths


@pytest.fixture
def paths(tmp_path):
    return Paths.under(tmp_path / "cowork-home")


def test_a_project_folder_is_accepted(tmp_path, paths):
    proj = tmp_path / "taxes"
    proj.mkdir()
    assert ws.check_workspace(proj, paths=paths) == proj.resolve()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t / "missing", "does not exist"),
        (lambda t: (t / "f.txt").write_text("x") and t / "f.txt", "is a file"),
        (lambda t: Path("/"), "system folder"),
        (lambda t: Path("/etc"), "system folder"),
        (lambda t: Path("/usr/share"), "inside the system folder /usr"),
        (lambda t: Path("/tmp"), "system folder"),
        (lambda t: Path.home(), "home folder"),
    ],
)
def test_refusals_name_the_folder_and_what_to_do(tmp_path, paths, make, message):
    target = make(tmp_path)
    with pytest.raises(WorkspaceError) as err:
        ws.check_workspace(target, paths=paths)
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_an_ancestor_of_home_is_refused(paths):
    home = Path.home().resolve()
    if home.parent == Path("/"):
        pytest.skip("home folder has no ancestor below /")
    with pytest.raises(WorkspaceError, match="home folder"):
        ws.check_workspace(home.parent, paths=paths)


def test_a_symlink_to_a_good_folder_resolves(tmp_path, paths):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert ws.check_workspace(link, paths=paths) == real.resolve()


def test_cowork_own_state_is_never_a_workspace(tmp_path, paths):
    paths.config.mkdir(parents=True)
    with pytest.raises(WorkspaceError, match="cowork's own folder"):
        ws.check_workspace(paths.config, paths=paths)
    with pytest.raises(WorkspaceError, match="cowork's own folder"):
        ws.check_workspace(paths.config.parent, paths=paths)


def test_workspace_claude_symlink_is_refused(tmp_path, paths):
    proj = tmp_path / "proj"
    proj.mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    (proj / ".claude").symlink_to(secret)
    with pytest.raises(WorkspaceError, match="symbolic link"):
        ws.check_workspace(proj, paths=paths)


def test_workspace_claude_file_is_refused(tmp_path, paths):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / ".claude").write_text("x")
    with pytest.raises(WorkspaceError, match="is a file"):
        ws.check_workspace(proj, paths=paths)


def test_claude_dir_missing_is_not_shared(tmp_path):
    assert ws.check_claude_dir(tmp_path / "nope") is None


def test_claude_dir_with_credentials_is_refused_naming_the_file(tmp_path):
    claude = tmp_path / ".claude"
    (claude / "sub").mkdir(parents=True)
    (claude / "settings.json").write_text("{}")
    assert ws.check_claude_dir(claude) == claude.resolve()
    (claude / "sub" / ".credentials.json").write_text("{}")
    with pytest.raises(WorkspaceError) as err:
        ws.check_claude_dir(claude)
    assert str(claude / "sub" / ".credentials.json") in str(err.value)
    assert "cowork creds set" in str(err.value)


def test_claude_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "claude"
    f.write_text("")
    with pytest.raises(WorkspaceError, match="is a file"):
        ws.check_claude_dir(f)


def test_unexpected_errors_refuse(tmp_path, paths, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()

    def boom():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ws, "_home", boom)
    with pytest.raises(WorkspaceError, match="disk on fire"):
        ws.check_workspace(proj, paths=paths)


def test_ensure_workspace_claude_creates_an_empty_folder(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    claude = ws.ensure_workspace_claude(proj)
    assert claude.is_dir() and not any(claude.iterdir())
    assert ws.ensure_workspace_claude(proj) == claude


def test_shares_and_guest_mounts(tmp_path):
    proj = tmp_path / "proj"
    shares = ws.shares_for(proj, tmp_path / "c")
    assert [(s.tag, s.readonly) for s in shares] == [
        (contract.TAG_WORKSPACE, False),
        (contract.TAG_WORKSPACE_CLAUDE, True),
        (contract.TAG_USER_CLAUDE, True),
    ]
    mounts = ws.guest_mounts(shares)
    assert [m.target for m in mounts] == [
        "/workspace",
        "/workspace/.claude",
        "/home/agent/.claude",
    ]
    assert len(ws.shares_for(proj, None)) == 2


def test_agent_identity(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    if os.getuid() != 0:
        assert ws.agent_identity(proj) == ws.AgentIdentity(os.getuid(), os.getgid())
        return
    with pytest.raises(WorkspaceError, match="never runs as root"):
        ws.agent_identity(proj)
    os.chown(proj, 4321, 4322)
    assert ws.agent_identity(proj) == ws.AgentIdentity(4321, 4322)


def test_share_writability_follows_settings_but_workspace_claude_stays_read_only(tmp_path):
    shares = ws.shares_for(
        tmp_path / "p", tmp_path / "c", workspace_writable=False, claude_writable=True
    )
    assert [(s.tag, s.readonly) for s in shares] == [
        (contract.TAG_WORKSPACE, True),
        (contract.TAG_WORKSPACE_CLAUDE, True),
        (contract.TAG_USER_CLAUDE, False),
    ]
