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


# --- credential stores as workspaces ---------------------------------------------------------

STORES = [
    ".claude", ".config/gh", ".cargo", ".terraform.d", ".ssh", ".gnupg", ".aws", ".kube",
    ".docker", ".config/gcloud", ".azure", ".mozilla", ".config/google-chrome",
    ".config/chromium", ".config/BraveSoftware", ".config/microsoft-edge",
    "Library/Application Support/Firefox", "Library/Application Support/Google/Chrome",
    "Library/Application Support/Microsoft Edge", ".password-store", ".config/Bitwarden",
    "Library/Keychains", ".local/share/keyrings",
]  # fmt: skip


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    home = tmp_path / "home" / "ann"
    home.mkdir(parents=True)
    monkeypatch.setattr(ws, "_home", lambda: home.resolve())
    return home.resolve()


@pytest.mark.parametrize("store", STORES)
def test_credential_stores_are_refused_as_inside_and_above(fake_home, paths, store):
    folder = fake_home / store
    (folder / "profile" / "deep").mkdir(parents=True)
    for target, word in [
        (folder, " is "),
        (folder / "profile" / "deep", "is inside"),
        (folder.parent, "contains"),
    ]:
        if target == fake_home:
            continue  # the home folder has its own refusal
        with pytest.raises(WorkspaceError) as err:
            ws.check_workspace(target, paths=paths)
        text = str(err.value)
        assert word in text and str(folder) in text, text
        assert "holds" in text and "Pick" in text


def test_case_variants_of_a_store_are_refused(fake_home, paths):
    (fake_home / ".SSH").mkdir()
    with pytest.raises(WorkspaceError, match="SSH keys"):
        ws.check_workspace(fake_home / ".SSH", paths=paths)


def test_a_symlink_into_a_store_is_refused(fake_home, paths, tmp_path):
    (fake_home / ".aws").mkdir()
    link = tmp_path / "innocent"
    link.symlink_to(fake_home / ".aws")
    with pytest.raises(WorkspaceError, match="AWS credentials"):
        ws.check_workspace(link, paths=paths)


def test_var_lib_is_refused():
    with pytest.raises(WorkspaceError, match="/var/lib"):
        ws.check_workspace(Path("/var/lib"), paths=Paths.under(Path("/nonexistent-cowork")))
    sub = next((p for p in Path("/var/lib").iterdir() if p.is_dir()), None)
    if sub is not None:
        with pytest.raises(WorkspaceError, match="is inside /var/lib"):
            ws.check_workspace(sub, paths=Paths.under(Path("/nonexistent-cowork")))


def test_a_project_folder_in_home_is_still_fine(fake_home, paths):
    proj = fake_home / "projects" / "taxes"
    proj.mkdir(parents=True)
    (fake_home / ".ssh").mkdir()
    assert ws.check_workspace(proj, paths=paths) == proj


# --- credential files inside a workspace -------------------------------------------------------

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
)
CONTENT_CASES = {
    "notes/backup-key.txt": PEM,
    "deploy/server.pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n",
    "vault/gpg.asc": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n",
    "misc/keys.md": "my key AKIAIOSFODNN7EXAMPLE is here",
    "old/stuff.ini": "[default]\naws_access_key_id = abc\naws_secret_access_key = x\n",
    "export/mine.csv": "name,url,username,password\nbank,https://b,ann,hunter2\n",
    "export/bw.csv": "folder,favorite,type,name,notes,fields,reprompt,login_uri,login_username,"
    "login_password,login_totp\n",
    "export/data.json": '{"encrypted": false, "items": [{"name": "bank", "login": '
    '{"username": "ann", "password": "hunter2"}, "passwordHistory": null}]}',
    "k8s/prod.yaml": "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: a\n"
    "  user:\n    token: abcdef123456\n",
    "ops/hosts": "machine api.example.com login ann password s3cret\n",
    "ops/creds": "https://ann:ghp_notreallyatoken@github.com\n",
    "ops/db": "db.example.com:5432:prod:ann:s3cret\n",
    "ops/settings.conf": "DATABASE_PASSWORD=correcthorse\n",
    "tok/a.txt": "token ghp_" + "a" * 36,
    "tok/b.yml": "key: sk-ant-api03-" + "b" * 30,
    "gcp/sa.json": '{"type": "service_account", "private_key_id": "1", "private_key": "x"}',
    "bin/vault.dat": "\x03\xd9\xa2\x9a\x67\xfb\x4b\xb5",
}
NAME_CASES = [
    ".netrc", ".pgpass", ".git-credentials", "id_ed25519", "keys/id_rsa", "pw.kdbx",
    "export.1pux", ".env", ".env.production", "cfg/.aws/credentials", "cfg/.kube/config",
    "store.p12", "my-passwords.csv",
]  # fmt: skip


@pytest.mark.parametrize("rel", list(CONTENT_CASES))
def test_credential_files_are_found_by_content(tmp_path, rel):
    root = tmp_path / "proj"
    f = root / rel
    f.parent.mkdir(parents=True)
    f.write_bytes(CONTENT_CASES[rel].encode("latin-1"))
    scan = ws.scan_for_secrets(root)
    assert [(x.path, x.by) for x in scan.findings] == [(f, "content")], scan
    assert scan.complete


@pytest.mark.parametrize("rel", NAME_CASES)
def test_credential_files_are_found_by_name(tmp_path, rel):
    root = tmp_path / "proj"
    f = root / rel
    f.parent.mkdir(parents=True)
    f.write_text("")
    assert [x.path for x in ws.scan_for_secrets(root).findings] == [f]


def test_ordinary_project_files_are_not_findings(tmp_path):
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("API_KEY = os.environ['API_KEY']\npassword = input()\n")
    (root / "README.md").write_text("Set DATABASE_PASSWORD=<yours> in .env (see .env.example)\n")
    (root / ".env.example").write_text("API_TOKEN=changeme\n")
    (root / "data.csv").write_text("date,amount,payee\n2024-01-01,3,shop\n")
    (root / "id_rsa.pub").write_text("ssh-ed25519 AAAA ann@host\n")
    (root / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")
    scan = ws.scan_for_secrets(root)
    assert scan.findings == () and scan.complete and scan.files_checked == 6


def test_scan_is_bounded_and_says_so(tmp_path):
    root = tmp_path / "proj"
    deep = root.joinpath(*["d"] * 5)
    deep.mkdir(parents=True)
    (deep / "key.txt").write_text(PEM)
    for i in range(10):
        (root / f"f{i}.txt").write_text("x")
    big = root / "big.txt"
    big.write_text("x" * 100 + PEM)
    scan = ws.scan_for_secrets(root, ws.ScanLimits(max_depth=3, max_files=100, max_bytes=50))
    assert scan.findings == () and not scan.complete and "deeper" in scan.skipped
    scan = ws.scan_for_secrets(root, ws.ScanLimits(max_depth=9, max_files=5, max_bytes=10**6))
    assert not scan.complete and "first 5 files" in scan.skipped
    assert any("part of the workspace" in m for m in scan.messages())


def test_symlinks_are_not_followed(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "key").write_text(PEM)
    (root / "link").symlink_to(outside)
    (root / "filelink").symlink_to(outside / "key")
    assert ws.scan_for_secrets(root).findings == ()


def test_policy_warns_or_refuses(tmp_path):
    root = tmp_path / "proj"
    (root / "a").mkdir(parents=True)
    (root / "a" / "notes.txt").write_text(PEM)
    scan = ws.check_secret_files(root, "warn")
    assert scan.messages() == [f"{root / 'a' / 'notes.txt'} seems to hold a private key; "
                               "the agent in the VM could read it."]  # fmt: skip
    with pytest.raises(WorkspaceError) as err:
        ws.check_secret_files(root, "refuse")
    text = str(err.value)
    assert "notes.txt: a private key" in text and 'secret_files = "refuse"' in text
    assert "Move these files out" in text and err.value.exit_code == 2
    (root / "a" / "notes.txt").unlink()
    assert ws.check_secret_files(root, "refuse").findings == ()


def test_scan_errors_refuse_in_either_mode(tmp_path, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ws, "_by_content", boom)
    (tmp_path / "x.txt").write_text("x")
    for mode in ("warn", "refuse"):
        with pytest.raises(WorkspaceError, match="disk on fire"):
            ws.check_secret_files(tmp_path, mode)  # type: ignore[arg-type]


@pytest.mark.skipif(os.getuid() == 0, reason="root reads every file")
def test_unreadable_files_are_findings(tmp_path):
    f = tmp_path / "locked.txt"
    f.write_text("x")
    f.chmod(0)
    assert [x.path for x in ws.scan_for_secrets(tmp_path).findings] == [f]
