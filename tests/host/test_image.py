import hashlib
import importlib.util
import json
import os
import shutil

import pytest

from cowork.errors import ImageError
from cowork.host import image
from cowork.paths import Paths


def _fake_image(directory, recipe="r" * 64):
    directory.mkdir(parents=True)
    files = {}
    for name, data in (
        (image.KERNEL_FILE, b"kernel"),
        (image.INITRD_FILE, b"initrd"),
        (image.BASE_DISK_FILE, b"disk" * 1000),
    ):
        (directory / name).write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {
        "format": 1,
        "recipe_hash": recipe,
        "built_at": "2026-01-01T00:00:00Z",
        "kernel_cmdline": image.KERNEL_CMDLINE,
        "files": files,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


# --- recipe hash ---------------------------------------------------------------------------
def test_recipe_hash_is_stable_and_covers_every_recipe_file(tmp_path):
    recipe = tmp_path / "images"
    shutil.copytree(image.recipe_dir(), recipe, ignore=shutil.ignore_patterns("__pycache__"))
    first = image.recipe_hash(recipe)
    assert first == image.recipe_hash(recipe)
    assert len(first) == 64
    for path in sorted(p for p in recipe.rglob("*") if p.is_file()):
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert image.recipe_hash(recipe) != first, path
        path.write_bytes(original)
    (recipe / "new-file").write_text("x")
    assert image.recipe_hash(recipe) != first


def test_recipe_hash_ignores_guest_code():
    # Guest code travels on the seed: editing it must not rebuild the image.
    files = {
        p.relative_to(image.recipe_dir()).as_posix()
        for p in image.recipe_dir().rglob("*")
        if p.is_file()
    }
    assert not any("cowork/guest" in f for f in files)
    assert {"packages.txt", "prepare.py", "cowork-boot", "initrd-init"} <= files


def test_recipe_hash_missing_folder_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="recipe folder"):
        image.recipe_hash(tmp_path / "nope")


# --- package list ----------------------------------------------------------------------------
def test_package_list_has_what_the_guest_needs_and_no_sudo():
    pkgs = image.read_packages((image.recipe_dir() / "packages.txt").read_text())
    for needed in ("linux-image-amd64", "python3", "openssh-server", "ca-certificates", "git"):
        assert needed in pkgs
    assert "sudo" not in pkgs
    assert "linux-image-cloud-amd64" not in pkgs  # no 9p in the cloud kernel
    assert "systemd" not in pkgs


def test_read_packages_rejects_garbage():
    assert image.read_packages("# c\n\nbash  # shell\n") == ["bash"]
    with pytest.raises(ImageError, match="not a Debian package name"):
        image.read_packages("bash; rm -rf /\n")
    with pytest.raises(ImageError, match="no packages"):
        image.read_packages("# nothing\n")


# --- mirrors ---------------------------------------------------------------------------------
DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirrors_from_deb822_sources():
    assert image.mirrors_from_sources([("debian.sources", DEB822)]) == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )


def test_mirrors_from_one_line_sources_with_options():
    text = (
        "# comment\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main contrib\n"
    )
    assert image.mirrors_from_sources([("sources.list", text)]) == (
        "http://one.example/debian",
        image.DEFAULT_SECURITY_MIRROR,
    )


def test_mirrors_fall_back_and_skip_disabled_or_other_suites():
    disabled = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n"
    other = "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    assert image.mirrors_from_sources([("a.sources", disabled), ("b.list", other)]) == (
        image.DEFAULT_MIRROR,
        image.DEFAULT_SECURITY_MIRROR,
    )


def test_subordinate_ids():
    text = "alice:100000:65536\nbob:200000:10\n1001:300000:65536\n"
    assert image.has_subordinate_ids("alice", 1000, text)
    assert not image.has_subordinate_ids("bob", 1002, text)  # range too small
    assert image.has_subordinate_ids("carol", 1001, text)  # by uid
    assert not image.has_subordinate_ids("dave", 1003, text)


# --- build command -----------------------------------------------------------------------------
def test_mmdebstrap_argv(tmp_path):
    argv = image.mmdebstrap_argv(
        mode="unshare",
        packages=["python3", "bash"],
        mirror="http://m.example/debian",
        security="http://m.example/debian-security",
        recipe=tmp_path / "images",
        out=tmp_path / "out dir",
        python="/usr/bin/python3",
    )
    assert argv[:4] == ["mmdebstrap", "--mode=unshare", "--variant=minbase", "--format=null"]
    assert "--include=python3,bash" in argv
    assert argv[-5:] == [
        "bookworm",
        "/dev/null",
        "deb http://m.example/debian bookworm main",
        "deb http://m.example/debian bookworm-updates main",
        "deb http://m.example/debian-security bookworm-security main",
    ]
    hooks = [a for a in argv if a.startswith("--customize-hook=")]
    assert len(hooks) == 2
    assert f"'{tmp_path / 'out dir'}'" in hooks[0]  # quoted for the hook's shell
    assert hooks[1].endswith(f"root {image.DISK_SIZE}")


def test_missing_build_tools_name_the_debian_packages():
    with pytest.raises(ImageError) as err:
        image.check_tools(lambda tool: None if tool != "mmdebstrap" else "/usr/bin/mmdebstrap")
    assert "mkfs.ext4, qemu-img" in str(err.value)
    assert "apt-get install --no-install-recommends e2fsprogs qemu-utils" in str(err.value)
    image.check_tools(lambda tool: f"/usr/bin/{tool}")


# --- manifest and verification ---------------------------------------------------------------
def test_verify_accepts_a_good_image(tmp_path):
    d = _fake_image(tmp_path / "img")
    info = image.verify(d)
    assert info.kernel == d / "vmlinuz"
    assert info.base_disk == d / "base.qcow2"
    assert info.size_bytes == len(b"kernel") + len(b"initrd") + 4000
    assert info.kernel_cmdline == image.KERNEL_CMDLINE
    assert image.verify(info) == info


@pytest.mark.parametrize("name", ["vmlinuz", "initrd.img", "base.qcow2"])
def test_verify_names_the_file_that_differs(tmp_path, name):
    d = _fake_image(tmp_path / "img")
    with (d / name).open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(ImageError, match=rf"{name} does not match.*--force"):
        image.verify(d)


def test_verify_names_a_missing_file(tmp_path):
    d = _fake_image(tmp_path / "img")
    os.unlink(d / "initrd.img")
    with pytest.raises(ImageError, match=r"initrd\.img is missing"):
        image.verify(d)


def test_verify_without_or_with_a_broken_manifest(tmp_path):
    with pytest.raises(ImageError, match="cowork image build"):
        image.verify(tmp_path)
    d = _fake_image(tmp_path / "img")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ImageError, match="unreadable"):
        image.verify(d)
    _fake_image(tmp_path / "img2")
    obj = json.loads((tmp_path / "img2" / "manifest.json").read_text())
    del obj["files"]["base.qcow2"]
    (tmp_path / "img2" / "manifest.json").write_text(json.dumps(obj))
    with pytest.raises(ImageError, match=r"does not list base\.qcow2"):
        image.verify(tmp_path / "img2")


def test_write_manifest_round_trip(tmp_path):
    d = _fake_image(tmp_path / "img")
    info = image.write_manifest(d, recipe="abc", kernel_version="6.1.0-1-amd64")
    assert info.recipe_hash == "abc"
    assert info.kernel_version == "6.1.0-1-amd64"
    assert image.verify(d).files == info.files


def test_ensure_verifies_an_existing_image_without_building(tmp_path):
    paths = Paths.under(tmp_path)
    d = _fake_image(paths.image_dir(image.recipe_hash()))
    assert image.ensure(paths).dir == d
    (d / "vmlinuz").write_bytes(b"other")
    with pytest.raises(ImageError, match="vmlinuz"):
        image.ensure(paths)


def _count_hashes(monkeypatch):
    hashed = []
    real = image.sha256_file

    def counting(path):
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(image, "sha256_file", counting)
    return hashed


def test_an_unchanged_image_is_hashed_once(tmp_path, monkeypatch):
    d = _fake_image(tmp_path / "img")
    hashed = _count_hashes(monkeypatch)
    assert image.verify_unchanged(d, settle=0).files == image.load(d).files
    assert sorted(hashed) == sorted(image.IMAGE_FILES)
    assert (d / image.VERIFIED_FILE).is_file()
    assert image.verify_unchanged(d, settle=0) == image.load(d)
    assert len(hashed) == 3


def _set_back_mtime_until_ctime_moves(path, st):
    """Put the modification time back as it was; the change time moves on regardless (file
    systems stamp it at a clock tick: repeat until the tick has passed)."""
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    while path.stat().st_ctime_ns == st.st_ctime_ns:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("how", ["appended", "replaced", "rewritten in place", "manifest"])
def test_a_changed_image_is_hashed_again_and_refused(tmp_path, monkeypatch, how):
    d = _fake_image(tmp_path / "img")
    image.verify_unchanged(d, settle=0)
    hashed = _count_hashes(monkeypatch)
    disk = d / image.BASE_DISK_FILE
    if how == "appended":
        with disk.open("ab") as f:
            f.write(b"x")
    elif how == "replaced":  # same size, another file
        (d / "new").write_bytes(b"DISK" * 1000)
        os.replace(d / "new", disk)
    elif how == "rewritten in place":  # same size, same inode, modification time put back
        st = disk.stat()
        with disk.open("r+b") as f:
            f.write(b"DISK")
        _set_back_mtime_until_ctime_moves(disk, st)
    else:
        manifest = d / "manifest.json"
        obj = json.loads(manifest.read_text())
        obj["files"]["base.qcow2"]["sha256"] = "0" * 64
        manifest.write_text(json.dumps(obj))
    with pytest.raises(ImageError, match=r"base\.qcow2 does not match its manifest"):
        image.verify_unchanged(d, settle=0)
    assert "base.qcow2" in hashed
    with pytest.raises(ImageError, match=r"base\.qcow2 does not match"):
        image.verify_unchanged(d, settle=0)  # and again: a failure is never recorded


def test_a_verification_of_files_changed_just_before_is_not_reused(tmp_path, monkeypatch):
    d = _fake_image(tmp_path / "img")
    hashed = _count_hashes(monkeypatch)
    image.verify_unchanged(d, settle=3600)
    image.verify_unchanged(d, settle=3600)
    assert len(hashed) == 6
    assert not (d / image.VERIFIED_FILE).exists()


def test_ensure_reuses_a_verification_and_refuses_a_changed_file(tmp_path, monkeypatch):
    paths = Paths.under(tmp_path)
    d = _fake_image(paths.image_dir(image.recipe_hash()))
    monkeypatch.setattr(image, "SETTLE_SECONDS", 0.0)
    image.ensure(paths)
    hashed = _count_hashes(monkeypatch)
    assert image.ensure(paths).dir == d
    assert hashed == []
    st = (d / "vmlinuz").stat()
    (d / "vmlinuz").write_bytes(b"KERNEL")
    _set_back_mtime_until_ctime_moves(d / "vmlinuz", st)
    with pytest.raises(ImageError, match="vmlinuz"):
        image.ensure(paths)


# --- recipe hooks (images/prepare.py) ------------------------------------------------------------
def _prepare():
    spec = importlib.util.spec_from_file_location("prepare", image.recipe_dir() / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strip_privileges_removes_setid_bits_and_problems_reports_leftovers(tmp_path):
    prepare = _prepare()
    (tmp_path / "bin").mkdir()
    su = tmp_path / "bin" / "su"
    su.write_text("x")
    os.chmod(su, 0o4755)  # noqa: S103 -- a setuid file to strip
    wall = tmp_path / "bin" / "wall"
    wall.write_text("x")
    os.chmod(wall, 0o2755)  # noqa: S103 -- a setgid file to strip
    (tmp_path / "bin" / "link").symlink_to("su")
    keys = tmp_path / "etc" / "ssh"
    keys.mkdir(parents=True)
    (keys / "ssh_host_ed25519_key").write_text("secret")
    found = prepare.problems(tmp_path)
    assert any("su: still setuid" in p for p in found)
    assert any("ssh_host_ed25519_key" in p for p in found)
    assert any("bootstrap missing" in p for p in found)

    setid, _ = prepare.strip_privileges(tmp_path)
    assert sorted(os.path.basename(p) for p in setid) == ["su", "wall"]
    assert os.stat(su).st_mode & 0o7777 == 0o755
    assert os.stat(wall).st_mode & 0o7777 == 0o755
    assert not any("setuid" in p for p in prepare.problems(tmp_path))


def test_bootstrap_is_a_python_script_for_the_kernel():
    text = (image.recipe_dir() / "cowork-boot").read_text()
    assert text.startswith("#!/usr/bin/python3")
    assert os.access(image.recipe_dir() / "cowork-boot", os.X_OK)
    compile(text, "cowork-boot", "exec")
    assert image.BOOTSTRAP_PATH in image.KERNEL_CMDLINE


MODULES_DEP = """kernel/fs/mbcache.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko
"""


def test_module_closure_orders_dependencies_first_and_dedupes():
    order = _prepare().module_closure(
        ["virtio_blk", "ext4", "virtio_rng", "virtio"], MODULES_DEP, "kernel/fs/9p/9p.ko\n"
    )
    assert order.index("kernel/drivers/virtio/virtio_ring.ko") < order.index(
        "kernel/drivers/virtio/virtio.ko"
    )
    assert order.index("kernel/drivers/virtio/virtio.ko") < order.index(
        "kernel/drivers/block/virtio_blk.ko"
    )
    assert order.index("kernel/fs/jbd2/jbd2.ko") < order.index("kernel/fs/ext4/ext4.ko")
    assert "kernel/drivers/char/hw_random/virtio-rng.ko" in order  # '_' and '-' are one
    assert len(order) == len(set(order)) == 8


def test_module_closure_skips_builtins_and_refuses_unknown_or_compressed():
    prepare = _prepare()
    assert prepare.module_closure(["9p"], MODULES_DEP, "kernel/fs/9p/9p.ko\n") == []
    with pytest.raises(ValueError, match="neither built in nor"):
        prepare.module_closure(["nope"], MODULES_DEP, "")
    with pytest.raises(ValueError, match="compressed"):
        prepare.module_closure(["x"], "kernel/x.ko.xz:\n", "")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
def test_cpio_newc_is_read_by_cpio(tmp_path):
    import stat
    import subprocess

    archive = _prepare().cpio_newc(
        [
            ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
            ("bin/hello", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n", (0, 0)),
            ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
            ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
            ("odd", stat.S_IFREG | 0o644, b"x", (0, 0)),
        ]
    )
    assert len(archive) % 4 == 0
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] for line in lines] == ["bin", "bin/hello", "dev", "dev/console", "odd"]
    assert lines[3].startswith("crw-------") and "5,   1" in lines[3]
    assert lines[1].startswith("-rwxr-xr-x")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "bin/hello", "odd"],
        input=archive,
        cwd=out,
        check=True,
    )
    assert (out / "bin" / "hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "odd").read_bytes() == b"x"


def test_initrd_init_is_a_busybox_script_that_fails_loudly():
    text = (image.recipe_dir() / "initrd-init").read_text()
    assert text.startswith("#!/bin/busybox sh\n")
    assert "COWORK-FAILED" in text
    assert "switch_root /root" in text


def test_build_tools_are_found_in_sbin_even_off_path(monkeypatch):
    # A normal Debian user's PATH has no sbin, where mkfs.ext4 lives.
    from cowork.host import image as image_mod

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert "/usr/sbin" in image_mod.tool_search_path().split(":")
    if image_mod.shutil.which("mkfs.ext4", path="/usr/sbin:/sbin"):
        assert image_mod.find_tool("mkfs.ext4") is not None
