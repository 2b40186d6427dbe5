"""The Debian package: built with packaging/deb/build (lintian must pass), installed on this
machine with ``apt-get install ./cowork_*.deb``, used by a normal user (``cowork exec`` boots
a real VM from /usr/bin/cowork, outside any checkout), then purged, leaving everything the
user owns in place. Needs root and a few minutes: marked ``install``; the VM boot is
serialised with the other VM tests through /tmp/cowork-vm.lock."""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowork.host import image
from cowork.paths import Paths

from .conftest import ROOT, clean_env, wheelhouse

pytestmark = [
    pytest.mark.install,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a Debian package: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system"),
]

USER = "cowork-deb-test"
PREFIX = Path("/usr/lib/cowork")


def sh(argv: list[str], *, timeout: float = 900, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(  # type: ignore[call-overload]
        argv, capture_output=True, text=True, check=False, timeout=timeout, **kw
    )
    out = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{out}"
    return proc


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package, built into a temporary folder from the lock's wheelhouse (no index).
    ``COWORK_TEST_DEB=PATH`` tests a package already built instead."""
    if os.environ.get("COWORK_TEST_DEB"):
        yield Path(os.environ["COWORK_TEST_DEB"]).resolve()
        return
    out = tmp_path_factory.mktemp("deb")
    env = clean_env() | {"COWORK_WHEELHOUSE": str(wheelhouse()), "COWORK_SKIP_LINTIAN": "1"}
    built = sh([str(ROOT / "packaging/deb/build"), str(out)], env=env, timeout=1200)
    yield Path(built.stdout.strip().splitlines()[-1])


def test_lintian_is_clean(deb: Path) -> None:
    # Every override is justified in packaging/deb/lintian-overrides.
    proc = subprocess.run(
        ["lintian", "--fail-on", "error,warning", str(deb)],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_control_file_and_contents(deb: Path) -> None:
    info = sh(["dpkg-deb", "--field", str(deb), "Package", "Depends"]).stdout
    for dep in ("qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "gnome-keyring",
                "mmdebstrap"):  # fmt: skip
        assert dep in info
    files = sh(["dpkg-deb", "--contents", str(deb)]).stdout
    for path in (
        "./usr/bin/cowork",
        "./usr/lib/cowork/venv/bin/cowork",
        "./usr/share/applications/cowork.desktop",
        "./usr/share/icons/hicolor/scalable/apps/cowork.svg",
        "./etc/xdg/autostart/cowork-tray.desktop",
        "./etc/cowork/policy.toml.example",
        "./usr/share/doc/cowork/copyright",
    ):
        assert path in files, path
    assert "/cowork/host/images/packages.txt" in files  # the image recipe
    assert "/mypy/" not in files and "/pytest/" not in files  # no development tools
    assert "./etc/cowork/policy.toml\n" not in files + "\n"  # the example is not active


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        sh(["useradd", "--create-home", "--shell", "/bin/bash", USER])
        return pwd.getpwnam(USER)


def test_install_run_as_a_user_and_purge(deb: Path) -> None:
    user = _user()
    home = Path(user.pw_dir)
    # What the user owns, which nothing here may remove.
    ws = home / "deb-test-workspace"
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir()
    (ws / "notes.txt").write_text("the user's own notes\n")
    settings = home / ".config" / "cowork" / "settings.toml"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text("# the user's own settings\n")
    # The user's image cache gets a copy of the image already built (same recipe hash).
    rhash = image.recipe_hash()
    src = Paths().image_dir(rhash)
    image.verify(src)
    dst = home / ".cache" / "cowork" / "images" / rhash
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst)
    sh(["chown", "-R", f"{USER}:", str(home)])
    owned_before = sorted(str(p) for p in home.rglob("*"))

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8"}  # fmt: skip
    # The user's runtime folder: short, outside root's private pytest folders.
    run = Path(tempfile.mkdtemp(prefix="cwdeb", dir="/tmp"))
    os.chown(run, user.pw_uid, user.pw_gid)
    with open("/tmp/cowork-deb.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", f"./{deb.name}"],
               cwd=deb.parent, env=env)  # fmt: skip
            assert os.path.realpath("/usr/bin/cowork") == str(PREFIX / "venv/bin/cowork")
            # The maintainer scripts are idempotent.
            sh(["/var/lib/dpkg/info/cowork.postinst", "configure", ""], env=env)

            # Nothing of an earlier run of this test user (a service it started) stays up.
            subprocess.run(["pkill", "-KILL", "-u", USER], check=False)
            # `cowork exec` starts the user's service; it is stopped again before the purge.
            script = (
                "printf cowork-test | gnome-keyring-daemon --unlock --components=secrets "
                ">/dev/null 2>&1; cd ~ && command -v cowork && "
                f"cowork exec --workspace {ws} -- sh -c 'cat /workspace/notes.txt; "
                "echo made-in-vm > /workspace/from-vm.txt'; rc=$?; cowork daemon stop; exit $rc"
            )
            proc = sh(
                ["flock", "/tmp/cowork-vm.lock", "runuser", "-u", USER, "--", "env", "-i",
                 f"HOME={home}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", f"USER={USER}",
                 f"XDG_RUNTIME_DIR={run}", "dbus-run-session", "--", "sh", "-c", script],
                timeout=1200,
            )  # fmt: skip
            assert proc.stdout.splitlines()[0] == "/usr/bin/cowork"
            assert "the user's own notes" in proc.stdout
            assert (ws / "from-vm.txt").read_text() == "made-in-vm\n"
            assert (ws / "from-vm.txt").stat().st_uid == user.pw_uid
        finally:
            shutil.rmtree(run, ignore_errors=True)
            sh(["apt-get", "purge", "-y", "-q", "cowork"], env=env)
    assert not Path("/usr/bin/cowork").exists()
    assert not PREFIX.exists(), "purge left files under /usr/lib/cowork"
    assert not Path("/etc/cowork/policy.toml.example").exists()
    assert not Path("/etc/xdg/autostart/cowork-tray.desktop").exists()
    sh(["sh", str(ROOT / "packaging/deb/postrm"), "purge"])  # idempotent
    owned_after = {str(p) for p in home.rglob("*")}
    missing = [p for p in owned_before if p not in owned_after]
    assert not missing, f"purge removed what the user owns: {missing[:5]}"
    assert (ws / "notes.txt").read_text() == "the user's own notes\n"
    assert settings.read_text() == "# the user's own settings\n"
    shutil.rmtree(ws)
