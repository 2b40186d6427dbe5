"""Disk report, image prune, readiness checks and reset, on temporary Paths with real qcow2
overlays (qemu-img) and libvirt's test driver. Nothing outside cowork's own folders is
touched: workspaces, settings, audit log, staged changes and trash survive a reset."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from cowork.host import doctor, image
from cowork.host.session import SessionState
from cowork.paths import OVERLAY_FILE, SESSION_STATE_FILE, Paths

CURRENT = "c" * 64
OLD = "0" * 64
OLD_USED_BY_SESSION = "1" * 64
OLD_USED_BY_KEPT = "2" * 64


def fake_image(paths: Paths, recipe: str, size: int = 1 << 20) -> Path:
    d = paths.image_dir(recipe)
    d.mkdir(parents=True)
    (d / "vmlinuz").write_bytes(b"k" * size)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(d / image.BASE_DISK_FILE), "64M"],
        check=True,
    )
    return d


def overlay_on(base: Path, overlay: Path) -> None:
    overlay.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
        check=True,
    )


def record_session(paths: Paths, name: str, recipe: str, workspace: Path) -> None:
    sdir = paths.session_dir(name)
    sdir.mkdir(parents=True)
    state = SessionState(
        name=name, workspace=str(workspace), created_at=0.0, boot_seconds=0.0, accel="tcg",
        uri="test:///default", mounts=[], host_public_key="", agent_uid=1000, agent_gid=1000,
        image_recipe=recipe,
    )  # fmt: skip
    (sdir / SESSION_STATE_FILE).write_text(json.dumps(asdict(state)))
    (sdir / "console.log").write_bytes(b"x" * 4096)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Paths, Path]:
    paths = Paths.under(tmp_path / "cowork")
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "notes.txt").write_text("mine")
    for recipe in (CURRENT, OLD, OLD_USED_BY_SESSION, OLD_USED_BY_KEPT):
        fake_image(paths, recipe)
    (paths.images / f".build-{OLD[:12]}-x").mkdir()
    (paths.images / f".build-{OLD[:12]}-x" / "disk.raw").write_bytes(b"r" * 8192)
    record_session(paths, "cowork-ws-1", OLD_USED_BY_SESSION, ws)
    overlay_on(
        paths.image_dir(OLD_USED_BY_SESSION) / image.BASE_DISK_FILE,
        paths.session_dir("cowork-ws-1") / OVERLAY_FILE,
    )
    overlay_on(
        paths.image_dir(OLD_USED_BY_KEPT) / image.BASE_DISK_FILE,
        paths.kept_overlays / "cowork-old" / OVERLAY_FILE,
    )
    for keep in (paths.user_settings_file, paths.trust_store, paths.audit_log):
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text("keep me")
    paths.change_sets.mkdir(parents=True)
    (paths.change_sets / "change.diff").write_text("pending")
    paths.change_records.mkdir(parents=True)
    (paths.change_records / "deleted.txt").write_text("restorable")
    return paths, ws


def test_backing_file_is_read_from_the_qcow2_header(world: tuple[Paths, Path]) -> None:
    paths, _ = world
    kept = paths.kept_overlays / "cowork-old" / OVERLAY_FILE
    assert doctor.qcow2_backing_file(kept) == str(
        paths.image_dir(OLD_USED_BY_KEPT) / image.BASE_DISK_FILE
    )
    assert doctor.qcow2_backing_file(paths.image_dir(OLD) / "vmlinuz") is None
    assert doctor.qcow2_backing_file(paths.image_dir(OLD) / "missing") is None


def test_disk_report_counts_each_kind_and_what_can_go(world: tuple[Paths, Path]) -> None:
    paths, _ = world
    report = doctor.disk_usage(paths, current_recipe=CURRENT)
    by = {u.kind: u for u in report.usages}
    assert set(by) == {"images", "image builds", "sessions", "kept overlays", "staged changes",
                       "trash"}  # fmt: skip
    assert by["images"].bytes >= 4 << 20
    assert by["images"].items == (OLD,)  # the only image nothing uses
    assert (1 << 20) <= by["images"].reclaimable < 2 << 20
    assert by["image builds"].reclaimable >= 8192
    assert by["sessions"].items == ("cowork-ws-1",) and by["sessions"].bytes >= 4096
    assert by["kept overlays"].items == ("cowork-old",) and by["kept overlays"].bytes > 0
    assert by["staged changes"].bytes > 0 and by["staged changes"].reclaimable == 0
    assert by["trash"].bytes > 0 and by["trash"].reclaimable == 0
    assert report.total == sum(u.bytes for u in report.usages)
    assert report.reclaimable == sum(u.reclaimable for u in report.usages)


def test_an_empty_paths_reports_zero(tmp_path: Path) -> None:
    report = doctor.disk_usage(Paths.under(tmp_path), current_recipe=CURRENT)
    assert report.total == 0 and report.reclaimable == 0


def test_prune_removes_only_unused_old_images_and_interrupted_builds(
    world: tuple[Paths, Path],
) -> None:
    paths, ws = world
    result = doctor.prune_images(paths, current_recipe=CURRENT)
    assert sorted(p.name for p in result.removed) == sorted([OLD, f".build-{OLD[:12]}-x"])
    assert result.freed >= (1 << 20) + 8192
    assert set(result.kept_in_use) == {OLD_USED_BY_SESSION, OLD_USED_BY_KEPT}
    left = sorted(p.name for p in paths.images.iterdir() if p.is_dir())
    assert left == sorted([CURRENT, OLD_USED_BY_SESSION, OLD_USED_BY_KEPT])
    assert (ws / "notes.txt").read_text() == "mine"
    again = doctor.prune_images(paths, current_recipe=CURRENT)
    assert again.removed == () and again.freed == 0


def test_reset_deletes_vm_state_and_keeps_what_the_user_owns(world: tuple[Paths, Path]) -> None:
    paths, ws = world
    destroyed: list[str] = []
    result = doctor.reset(paths, destroy=destroyed.append)
    assert destroyed == ["cowork-ws-1"] and result.destroyed_vms == ("cowork-ws-1",)
    assert result.errors == ()
    assert not paths.sessions.exists() and not paths.kept_overlays.exists()
    assert [p for p in paths.images.iterdir() if p.is_dir()] == []
    assert result.freed >= 4 << 20
    assert (ws / "notes.txt").read_text() == "mine"
    for kept in (paths.user_settings_file, paths.trust_store, paths.audit_log):
        assert kept.read_text() == "keep me", kept
    assert (paths.change_sets / "change.diff").read_text() == "pending"
    assert (paths.change_records / "deleted.txt").read_text() == "restorable"
    assert doctor.reset(paths, destroy=destroyed.append).removed == ()


def test_reset_forgets_trust_only_when_asked(world: tuple[Paths, Path]) -> None:
    paths, _ = world
    doctor.reset(paths, include_trust=True, destroy=lambda _n: None)
    assert not paths.trust_store.exists()
    assert paths.user_settings_file.read_text() == "keep me"


def test_reset_reports_a_vm_it_could_not_stop_and_goes_on(world: tuple[Paths, Path]) -> None:
    from cowork.errors import BackendError

    paths, _ = world

    def fail(name: str) -> None:
        raise BackendError(f"cannot stop {name}")

    result = doctor.reset(paths, destroy=fail)
    assert result.destroyed_vms == ()
    assert any("cannot stop cowork-ws-1" in e for e in result.errors)
    assert not paths.kept_overlays.exists()


def test_image_check_names_the_fix(tmp_path: Path) -> None:
    check = doctor.check_image(Paths.under(tmp_path))
    assert not check.ok and check.fix == "cowork image build"


def test_libvirt_check_reaches_the_test_driver_and_reports_a_bad_uri() -> None:
    assert doctor.check_libvirt("test:///default").ok
    bad = doctor.check_libvirt("qemu+unix:///system?socket=/nonexistent/sock")
    assert not bad.ok and "not reachable" in bad.detail


def test_checks_never_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> doctor.Check:
        raise RuntimeError("surprise")

    monkeypatch.setattr(doctor, "check_accel", boom)
    results = doctor.checks(Paths.under(tmp_path), uri="test:///default")
    assert results[0].name == "libvirt" and results[0].ok
    assert any(not c.ok and "surprise" in c.detail for c in results)
