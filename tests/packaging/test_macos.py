"""The macOS packaging files are well-formed and agree with the code (checked on Linux)."""

from __future__ import annotations

import os
import plistlib
import subprocess
from pathlib import Path

MACOS = Path(__file__).resolve().parents[2] / "packaging" / "macos"


def test_launchd_agent_runs_the_daemon_from_the_bundle() -> None:
    with (MACOS / "org.cowork.daemon.plist").open("rb") as fh:
        agent = plistlib.load(fh)
    assert agent["Label"] == "org.cowork.daemon"
    assert agent["ProgramArguments"] == [
        "/Applications/Cowork.app/Contents/MacOS/cowork", "daemon", "run",
    ]  # fmt: skip
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["LimitLoadToSessionType"] == "Aqua"


def test_app_bundle_info_and_entry_point() -> None:
    contents = MACOS / "Cowork.app" / "Contents"
    with (contents / "Info.plist").open("rb") as fh:
        info = plistlib.load(fh)
    assert info["CFBundleIdentifier"] == "org.cowork.Cowork"
    assert info["CFBundlePackageType"] == "APPL"
    assert info["LSMinimumSystemVersion"] == "13.0"
    entry = contents / "MacOS" / info["CFBundleExecutable"]
    assert os.access(entry, os.X_OK)
    subprocess.run(["sh", "-n", str(entry)], check=True)
    with (MACOS / "vfkit.entitlements").open("rb") as fh:
        assert plistlib.load(fh) == {"com.apple.security.virtualization": True}
