import os
from pathlib import Path

import pytest

from cowork.app import folders
from cowork.app.folders import RecentFolders, check_folder, is_secret_name, mount_fstype
from cowork.app.service import WarningKind
from cowork.paths import Paths


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths.under(tmp_path / "cowork-state")


def kinds(report):
    return {w.kind for w in report.warnings}


def test_plain_folder_has_real_path_size_and_count(tmp_path, paths):
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("hello")
    (work / "sub").mkdir()
    (work / "sub" / "b.txt").write_text("hi")
    link = tmp_path / "link"
    link.symlink_to(work)
    report = check_folder(link, paths=paths, mounts=[])
    assert report.usable
    assert report.real_path == work.resolve()
    assert (report.file_count, report.size_bytes) == (2, 7)
    assert report.warnings == ()
    assert not report.has_config


def test_home_is_refused_with_what_to_do(paths):
    report = check_folder(Path.home(), paths=paths)
    assert not report.usable
    assert "home folder" in report.refusal and "pick a project folder" in report.refusal


def test_missing_folder_is_refused(tmp_path, paths):
    report = check_folder(tmp_path / "nope", paths=paths)
    assert not report.usable and "does not exist" in report.refusal


def test_claude_symlink_is_refused_as_a_session_would(tmp_path, paths):
    work = tmp_path / "w"
    (work / ".claude").mkdir(parents=True)
    (work / ".claude").rmdir()
    (work / ".claude").symlink_to(tmp_path)
    report = check_folder(work, paths=paths)
    assert not report.usable and "symbolic link" in report.refusal


def test_claude_folder_with_credentials_is_refused(tmp_path, paths):
    work = tmp_path / "w"
    (work / ".claude").mkdir(parents=True)
    (work / ".claude" / ".credentials.json").write_text("{}")
    report = check_folder(work, paths=paths, mounts=[])
    assert not report.usable and "holds credentials" in report.refusal


def test_likely_secrets_are_warned_with_their_names(tmp_path, paths):
    work = tmp_path / "w"
    (work / "keys").mkdir(parents=True)
    (work / ".env").write_text("X=1")
    (work / "keys" / "server.pem").write_text("x")
    (work / "node_modules").mkdir()
    (work / "node_modules" / "credentials.json").write_text("{}")
    report = check_folder(work, paths=paths, mounts=[])
    (secrets,) = [w for w in report.warnings if w.kind is WarningKind.SECRETS]
    assert secrets.files == (".env", "keys/server.pem")


def test_large_folder_is_warned(tmp_path, paths, monkeypatch):
    work = tmp_path / "w"
    work.mkdir()
    for i in range(5):
        (work / f"{i}.txt").write_text("x")
    monkeypatch.setattr(folders, "LARGE_FILES", 5)
    assert WarningKind.LARGE in kinds(check_folder(work, paths=paths, mounts=[]))
    monkeypatch.setattr(folders, "COUNT_LIMIT", 3)
    report = check_folder(work, paths=paths, mounts=[])
    assert not report.counted_all and report.file_count == 3


def test_cloud_folder_by_name_and_by_marker(tmp_path, paths):
    box = tmp_path / "Dropbox" / "project"
    box.mkdir(parents=True)
    assert WarningKind.CLOUD in kinds(check_folder(box, paths=paths, mounts=[]))
    other = tmp_path / "plain"
    other.mkdir()
    assert WarningKind.CLOUD not in kinds(check_folder(other, paths=paths, mounts=[]))
    (other / ".dropbox").write_text("")
    assert WarningKind.CLOUD in kinds(check_folder(other, paths=paths, mounts=[]))


def test_network_folder_from_mount_table(tmp_path, paths):
    work = tmp_path / "share"
    work.mkdir()
    mounts = ["/dev/sda1 / ext4 rw 0 0", f"server:/x {tmp_path} nfs4 rw 0 0"]
    assert mount_fstype(work, mounts) == "nfs4"
    assert WarningKind.NETWORK in kinds(check_folder(work, paths=paths, mounts=mounts))
    assert mount_fstype(work, ["/dev/sda1 / ext4 rw 0 0"]) == "ext4"


def test_folder_with_own_configuration_is_noticed(tmp_path, paths):
    work = tmp_path / "w"
    (work / ".claude").mkdir(parents=True)
    (work / ".claude" / "settings.json").write_text('{"hooks": {}}')
    assert check_folder(work, paths=paths, mounts=[]).has_config


def test_unreadable_subfolder_does_not_break_the_check(tmp_path, paths):
    work = tmp_path / "w"
    (work / "locked").mkdir(parents=True)
    (work / "a").write_text("x")
    os.chmod(work / "locked", 0)
    try:
        assert check_folder(work, paths=paths, mounts=[]).usable
    finally:
        os.chmod(work / "locked", 0o700)


def test_secret_names():
    assert is_secret_name(".env") and is_secret_name("ID_RSA") and is_secret_name("x.key")
    assert not is_secret_name("notes.txt") and not is_secret_name("keyboard.md")


def test_recent_folders_newest_first_without_duplicates(tmp_path):
    recent = RecentFolders(tmp_path / "recent.json")
    assert recent.load() == []
    recent.add(Path("/a"))
    recent.add(Path("/b"))
    assert recent.add(Path("/a")) == [Path("/a"), Path("/b")]
    assert RecentFolders(tmp_path / "recent.json").load() == [Path("/a"), Path("/b")]
    (tmp_path / "recent.json").write_text("not json")
    assert recent.load() == []
