"""Every on-disk location cowork uses, per operating system, in one place.

Nothing else in cowork builds a path to one of its own files: it asks a :class:`Paths`.
Tests construct a ``Paths`` over a temporary directory through the Python API; there is
deliberately no environment variable that moves the admin policy location (an attacker who
can set the environment must not be able to point cowork at a policy of their choosing).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

APP_NAME = "cowork"

# File and folder names, each defined once.
USER_SETTINGS_FILE = "settings.toml"
ADMIN_POLICY_FILE = "policy.toml"
ADMIN_POLICY_DROPIN_DIR = "policy.d"
TRUST_STORE_FILE = "trust.json"
AUDIT_LOG_FILE = "audit.jsonl"
TRANSCRIPTS_DIR = "transcripts"
IMAGES_DIR = "images"
SESSIONS_DIR = "sessions"
IMAGE_MANIFEST_FILE = "manifest.json"
SESSION_STATE_FILE = "session.json"
OVERLAY_FILE = "overlay.qcow2"
SEED_FILE = "seed.img"
CONSOLE_LOG_FILE = "console.log"
CHANNEL_SOCKET_FILE = "channel.sock"
CLIENT_KEY_FILE = "client_key"
WORKSPACE_CLAUDE_DIR = ".claude"
DAEMON_SOCKET_FILE = "daemon.sock"
DAEMON_DIR = "daemon"
DAEMON_LOCK_FILE = "daemon.lock"
DAEMON_LOG_FILE = "daemon.log"
DAEMON_RECORDS_DIR = "sessions"
WORKSPACE_CONFIG_FILES = (
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".mcp.json",
    ".cowork.toml",
)


def _admin_dir_for_platform() -> Path:
    if sys.platform == "darwin":
        return Path("/Library/Application Support/Cowork")
    if sys.platform == "win32":
        # Fixed, not read from %ProgramData%: the environment must not move admin policy.
        return Path(r"C:\ProgramData\Cowork")
    return Path("/etc/cowork")


def _runtime_base() -> Path:
    # Unix socket paths are limited to ~104-108 bytes, so sockets live under a short base.
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir() and len(xdg) < 40:
        return Path(xdg) / APP_NAME
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"{APP_NAME}-{uid}"


@dataclass(frozen=True)
class Paths:
    """The locations for one user. Defaults follow the platform's conventions."""

    cache: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir(APP_NAME)))
    config: Path = field(default_factory=lambda: Path(platformdirs.user_config_dir(APP_NAME)))
    data: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)))
    state: Path = field(default_factory=lambda: Path(platformdirs.user_state_dir(APP_NAME)))
    runtime: Path = field(default_factory=_runtime_base)
    admin: Path = field(default_factory=_admin_dir_for_platform)

    @classmethod
    def under(cls, root: Path) -> Paths:
        """Every location below ``root`` (tests, benchmarks); admin policy included."""
        return cls(
            cache=root / "cache",
            config=root / "config",
            data=root / "data",
            state=root / "state",
            runtime=root / "run",
            admin=root / "admin",
        )

    # --- images -------------------------------------------------------------------
    @property
    def images(self) -> Path:
        return self.cache / IMAGES_DIR

    def image_dir(self, recipe_hash: str) -> Path:
        return self.images / recipe_hash

    # --- policy -------------------------------------------------------------------
    @property
    def admin_policy_file(self) -> Path:
        return self.admin / ADMIN_POLICY_FILE

    @property
    def admin_policy_dropins(self) -> Path:
        return self.admin / ADMIN_POLICY_DROPIN_DIR

    @property
    def user_settings_file(self) -> Path:
        return self.config / USER_SETTINGS_FILE

    # --- trust, audit, transcripts ------------------------------------------------
    @property
    def trust_store(self) -> Path:
        return self.data / TRUST_STORE_FILE

    @property
    def audit_log(self) -> Path:
        return self.data / AUDIT_LOG_FILE

    @property
    def transcripts(self) -> Path:
        return self.data / TRANSCRIPTS_DIR

    # --- sessions -----------------------------------------------------------------
    @property
    def sessions(self) -> Path:
        """Per-session state: overlay disk, seed disk, console log, session.json."""
        return self.state / SESSIONS_DIR

    def session_dir(self, name: str) -> Path:
        return self.sessions / name

    def session_runtime(self, name: str) -> Path:
        """Short directory for the session's unix sockets."""
        return self.runtime / name

    # --- the per-user service (coworkd) -------------------------------------------
    @property
    def daemon_socket(self) -> Path:
        """The service's Unix socket (0600, in the user's runtime directory)."""
        return self.runtime / DAEMON_SOCKET_FILE

    @property
    def daemon_state(self) -> Path:
        """The service's own files: its lock, its log and its records of sessions."""
        return self.state / DAEMON_DIR

    @property
    def daemon_lock(self) -> Path:
        return self.daemon_state / DAEMON_LOCK_FILE

    @property
    def daemon_log(self) -> Path:
        return self.daemon_state / DAEMON_LOG_FILE

    @property
    def daemon_records(self) -> Path:
        """One record per session the service owns; reconciled with libvirt on start."""
        return self.daemon_state / DAEMON_RECORDS_DIR


def default_paths() -> Paths:
    return Paths()
