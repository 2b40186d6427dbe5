"""Which host folders may cross into the VM, and as whom the guest writes to them.

Only two folders are ever shared: the chosen workspace (read-write) and a ``.claude`` folder
(read-only). The workspace's own ``.claude/`` is shared a second time, read-only, on top of
the workspace, so code in the VM cannot plant settings or hooks for later.

Contract: :func:`check_workspace` and :func:`check_claude_dir` MUST raise
:class:`~cowork.errors.WorkspaceError` (CLI exit status 2) before anything is started for:
a workspace that does not exist, is a file, is ``/``, the home folder itself or one of its
ancestors, a system folder, a folder holding cowork's own state or well-known credentials;
a workspace whose ``.claude`` is a symlink or a file; a ``.claude`` folder that holds a
credentials file. Any unexpected error while checking is a refusal too (fail closed).
Credential stores (``~/.claude``, ``~/.ssh``, browser profiles, password managers,
``/var/lib`` …) are refused as workspaces, as is every folder inside or above one.

:func:`check_secret_files` looks inside a workspace (bounded: depth, file count, bytes per
file) for files that hold credentials, by name and by content, and returns the findings as
data; under ``mounts.secret_files = "refuse"`` any finding refuses the workspace.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cowork.errors import WorkspaceError
from cowork.guest import contract
from cowork.host.vm.backend import BackendCapabilities
from cowork.host.vm.spec import Share
from cowork.paths import WORKSPACE_CLAUDE_DIR, Paths

#: Folders that are never a workspace, nor inside one.
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
    "/run", "/sbin", "/sys", "/usr", "/System", "/Library", "/private/etc", "/private/var",
)  # fmt: skip
#: Folders that are never a workspace themselves (their subfolders may be).
SYSTEM_ROOTS = (
    "/", "/home", "/root", "/tmp", "/var", "/opt", "/srv", "/mnt", "/media", "/snap",
    "/Users", "/Volumes", "/Applications", "/private", "/private/tmp", "/var/tmp",
)  # fmt: skip
#: Credential stores under the home folder that must never be shared (nor any folder
#: containing them), with what they hold, in words a person understands.
HOME_SECRETS: tuple[tuple[str, str], ...] = (
    (".claude", "your Claude login and settings"),
    (".ssh", "your SSH keys"),
    (".gnupg", "your GPG keys"),
    (".aws", "your AWS credentials"),
    (".kube", "your Kubernetes credentials"),
    (".docker", "your Docker registry logins"),
    (".azure", "your Azure credentials"),
    (".config/gcloud", "your Google Cloud credentials"),
    (".config/gh", "your GitHub CLI login"),
    (".config/hub", "your GitHub login"),
    (".cargo", "your Rust package registry token"),
    (".terraform.d", "your Terraform Cloud token"),
    (".netrc", "logins for internet services"),
    (".git-credentials", "your Git passwords and tokens"),
    (".pgpass", "your database passwords"),
    (".npmrc", "your npm registry token"),
    (".pypirc", "your Python package index password"),
    (".vault-token", "your Vault token"),
    (".local/share/keyrings", "your desktop keyring (saved passwords)"),
    (".password-store", "your password manager (pass)"),
    (".config/Bitwarden", "your Bitwarden password manager data"),
    (".config/1Password", "your 1Password password manager data"),
    (".config/op", "your 1Password command-line login"),
    (".local/share/KeePass", "your KeePass password manager data"),
    (".config/keepassxc", "your KeePassXC password manager data"),
    (".mozilla", "your Firefox profiles (saved passwords and logins)"),
    (".config/google-chrome", "your Chrome profiles (saved passwords and logins)"),
    (".config/chromium", "your Chromium profiles (saved passwords and logins)"),
    (".config/BraveSoftware", "your Brave profiles (saved passwords and logins)"),
    (".config/microsoft-edge", "your Edge profiles (saved passwords and logins)"),
    ("snap/firefox", "your Firefox profiles (saved passwords and logins)"),
    ("snap/chromium", "your Chromium profiles (saved passwords and logins)"),
    (".var/app/org.mozilla.firefox", "your Firefox profiles (saved passwords and logins)"),
    (".var/app/com.google.Chrome", "your Chrome profiles (saved passwords and logins)"),
    ("Library/Application Support/Firefox", "your Firefox profiles (saved passwords)"),
    ("Library/Application Support/Google/Chrome", "your Chrome profiles (saved passwords)"),
    ("Library/Application Support/Chromium", "your Chromium profiles (saved passwords)"),
    ("Library/Application Support/BraveSoftware", "your Brave profiles (saved passwords)"),
    ("Library/Application Support/Microsoft Edge", "your Edge profiles (saved passwords)"),
    ("Library/Application Support/1Password", "your 1Password password manager data"),
    ("Library/Application Support/Bitwarden", "your Bitwarden password manager data"),
    ("Library/Group Containers/2BUA8C4S2C.com.1password", "your 1Password data"),
    ("Library/Keychains", "your macOS keychains (saved passwords)"),
    ("Library/Cookies", "your browser cookies (logged-in sessions)"),
)
#: System folders holding other programs' data and secrets: never a workspace, nor inside or
#: above one.
SYSTEM_SECRETS: tuple[tuple[str, str], ...] = (
    ("/var/lib", "system services' data (databases, keys, container images)"),
    ("/var/db", "system services' data"),
    ("/private/var/db", "system services' data"),
)
#: File names that mark a ``.claude`` folder as holding credentials.
CREDENTIAL_FILES = frozenset(
    {".credentials.json", "credentials.json", ".netrc", "auth.json", ".env", "id_rsa",
     "id_ed25519", "id_ecdsa"}
)  # fmt: skip
#: How many entries of a ``.claude`` folder are inspected before giving up (and refusing).
MAX_CLAUDE_ENTRIES = 20000


@dataclass(frozen=True)
class AgentIdentity:
    """The uid/gid the guest's agent user gets: files it writes are owned by it on the host."""

    uid: int
    gid: int


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _home() -> Path:
    return Path.home().resolve()


def check_workspace(workspace: Path, *, paths: Paths | None = None) -> Path:
    """Return the resolved workspace folder, or raise WorkspaceError saying why not."""
    try:
        return _check_workspace(workspace, paths or Paths())
    except WorkspaceError:
        raise
    except Exception as exc:  # fail closed: an unexpected error is a refusal
        raise WorkspaceError(f"cannot check workspace {str(workspace)!r}: {exc}") from exc


def _check_workspace(workspace: Path, paths: Paths) -> Path:
    given = str(workspace)
    if not workspace.exists():
        raise WorkspaceError(
            f"workspace {given!r} does not exist. Create the folder first, or pick another one."
        )
    resolved = workspace.expanduser().resolve(strict=True)
    if not resolved.is_dir():
        raise WorkspaceError(
            f"workspace {given!r} is a file, not a folder. Pick the folder that contains it."
        )
    home = _home()
    shown = given if str(resolved) == given else f"{given} (= {resolved})"
    if resolved == home:
        raise WorkspaceError(
            f"workspace {shown} is your home folder. Sharing all of it would expose every "
            "file and credential you have; pick a project folder inside it instead."
        )
    for root in SYSTEM_ROOTS:
        if resolved == Path(root):
            raise WorkspaceError(
                f"workspace {shown} is a system folder. Pick a project folder instead."
            )
    if _is_within(home, resolved):
        raise WorkspaceError(
            f"workspace {shown} contains your home folder. Pick a project folder instead."
        )
    for tree in SYSTEM_TREES:
        if _is_within(resolved, Path(tree)):
            raise WorkspaceError(
                f"workspace {shown} is inside the system folder {tree}. "
                "Pick a project folder instead."
            )
    _check_secret_stores(resolved, home, shown)
    for own in (paths.config, paths.data, paths.state, paths.cache, paths.admin):
        own_r = own.expanduser().resolve()
        if _is_within(resolved, own_r) or _is_within(own_r, resolved):
            raise WorkspaceError(
                f"workspace {shown} is or contains cowork's own folder {own_r}; "
                "the agent must not be able to change cowork's settings. Pick another folder."
            )
    claude = resolved / WORKSPACE_CLAUDE_DIR
    if claude.is_symlink():
        raise WorkspaceError(
            f"{claude} is a symbolic link. It would share whatever it points to with the VM; "
            "replace it with a real folder (or remove it) and try again."
        )
    if claude.exists() and not claude.is_dir():
        raise WorkspaceError(
            f"{claude} is a file, but cowork shares it read-only as a folder. "
            "Rename or remove it and try again."
        )
    return resolved


def _folded(path: Path) -> str:
    # Compared case-folded: macOS and Windows file systems ignore case, so ~/.SSH is ~/.ssh.
    return os.path.normcase(str(path)).casefold()


def _is_within_folded(path: Path, parent: Path) -> bool:
    p, q = _folded(path), _folded(parent).rstrip("/") or "/"
    return p == q or p.startswith(q if q.endswith("/") else q + "/")


def _check_secret_stores(resolved: Path, home: Path, shown: str) -> None:
    stores = [(home / rel, what) for rel, what in HOME_SECRETS]
    stores += [(Path(abs_), what) for abs_, what in SYSTEM_SECRETS]
    for secret, what in stores:
        if _is_within_folded(resolved, secret):
            where = "is" if _folded(resolved) == _folded(secret) else "is inside"
            raise WorkspaceError(
                f"workspace {shown} {where} {secret}, which holds {what}. The agent in the VM "
                "could read and change it. Pick a project folder that does not hold "
                "credentials, or copy the files you need into one."
            )
    inside = [(s, w) for s, w in stores if _is_within_folded(s, resolved)]
    if inside:
        # Name one that exists if any does; a store not created yet still refuses the folder.
        secret, what = next(((s, w) for s, w in inside if os.path.lexists(s)), inside[0])
        raise WorkspaceError(
            f"workspace {shown} contains {secret}, which holds {what}. The agent in the VM "
            "could read and change it. Pick a smaller folder inside it that does not "
            "hold credentials."
        )


def check_claude_dir(claude_dir: Path) -> Path | None:
    """The resolved ``.claude`` folder to share read-only, or None if it does not exist.

    Raises WorkspaceError if it is a file or holds a credentials file.
    """
    try:
        return _check_claude_dir(claude_dir)
    except WorkspaceError:
        raise
    except Exception as exc:  # fail closed
        raise WorkspaceError(f"cannot check {str(claude_dir)!r}: {exc}") from exc


def _check_claude_dir(claude_dir: Path) -> Path | None:
    path = claude_dir.expanduser()
    if not path.exists():
        return None
    resolved = path.resolve(strict=True)
    if not resolved.is_dir():
        raise WorkspaceError(
            f"{path} is a file, not a folder; cowork shares the .claude folder read-only. "
            "Set mounts.claude_dir to a folder."
        )
    home = _home()
    if resolved == home or _is_within(home, resolved) or resolved == Path("/"):
        raise WorkspaceError(f"{path} resolves to {resolved}, which is too broad to share.")
    seen = 0
    for dirpath, dirnames, filenames in os.walk(resolved):
        seen += len(dirnames) + len(filenames)
        if seen > MAX_CLAUDE_ENTRIES:
            raise WorkspaceError(
                f"{path} has more than {MAX_CLAUDE_ENTRIES} entries; cowork cannot check it "
                "for credentials. Set mounts.claude_dir to a smaller folder."
            )
        for name in sorted(filenames):
            if name in CREDENTIAL_FILES:
                found = Path(dirpath) / name
                raise WorkspaceError(
                    f"{found} holds credentials and would be readable by the agent in the VM. "
                    f"Move it out of {path} (cowork keeps credentials in your keychain: "
                    "`cowork creds set ID`), or set mounts.claude_dir to a folder without it."
                )
    return resolved


def agent_identity(workspace: Path) -> AgentIdentity:
    """As whom the guest's agent writes.

    A normal user: that user (QEMU runs as them; files look like their own). Root: the
    workspace's owner — the agent never gets root's identity, so a root-owned workspace is
    refused.
    """
    uid = os.getuid() if hasattr(os, "getuid") else 1000
    gid = os.getgid() if hasattr(os, "getgid") else 1000
    if uid != 0:
        return AgentIdentity(uid, gid)
    st = workspace.stat()
    if st.st_uid == 0:
        raise WorkspaceError(
            f"cowork is running as root and workspace {workspace} is owned by root; the agent "
            "never runs as root. Run cowork as the folder's owner, or give the folder to the "
            "user who should own the agent's files (chown)."
        )
    return AgentIdentity(st.st_uid, st.st_gid)


def ensure_workspace_claude(workspace: Path) -> Path:
    """Create an empty ``.claude`` folder in the workspace if there is none.

    It is shared read-only on top of the read-write workspace; without it the guest could
    create ``.claude/settings.json`` in the workspace for the host to find later.
    """
    claude = workspace / WORKSPACE_CLAUDE_DIR
    if not claude.exists():
        claude.mkdir(mode=0o755)
    mode = claude.lstat().st_mode
    if not stat.S_ISDIR(mode):
        raise WorkspaceError(f"{claude} is not a folder; rename or remove it and try again.")
    return claude


def shares_for(
    workspace: Path,
    claude_dir: Path | None,
    *,
    workspace_writable: bool = True,
    claude_writable: bool = False,
) -> tuple[Share, ...]:
    """The shares of a session, in mount order. The workspace's own ``.claude`` is always
    read-only; the user's ``.claude`` is writable only if policy (the admin) says so."""
    shares = [
        Share(contract.TAG_WORKSPACE, workspace, readonly=not workspace_writable),
        Share(contract.TAG_WORKSPACE_CLAUDE, workspace / WORKSPACE_CLAUDE_DIR, readonly=True),
    ]
    if claude_dir is not None:
        shares.append(Share(contract.TAG_USER_CLAUDE, claude_dir, readonly=not claude_writable))
    return tuple(shares)


def check_shares_enforceable(shares: tuple[Share, ...], caps: BackendCapabilities) -> None:
    """Refuse (WorkspaceError) a read-only share the backend cannot keep read-only.

    A share marked read-only that the host does not enforce would be writable from the
    guest: it is refused, never mounted writable in its place.
    """
    if caps.readonly_shares_enforced_by_host:
        return
    readonly = [s for s in shares if s.readonly]
    if readonly:
        listed = ", ".join(f"{s.source} ({s.tag})" for s in readonly)
        raise WorkspaceError(
            f"the {caps.name} VM backend cannot keep a shared folder read-only, and this "
            f"session shares read-only: {listed}. cowork refuses to start rather than let the "
            "agent change them. Use a backend that enforces read-only shares (libvirt on Linux)."
        )


def guest_mounts(shares: tuple[Share, ...]) -> tuple[contract.Mount, ...]:
    targets = {
        contract.TAG_WORKSPACE: contract.WORKSPACE_MOUNT,
        contract.TAG_WORKSPACE_CLAUDE: f"{contract.WORKSPACE_MOUNT}/{WORKSPACE_CLAUDE_DIR}",
        contract.TAG_USER_CLAUDE: f"{contract.AGENT_HOME}/{WORKSPACE_CLAUDE_DIR}",
    }
    return tuple(contract.Mount(s.tag, targets[s.tag], s.readonly) for s in shares)


# --- credential files inside a workspace ---------------------------------------------------

SecretFilesMode = Literal["warn", "refuse"]


@dataclass(frozen=True)
class Finding:
    """A file in the workspace that looks like it holds credentials.

    ``reason`` is plain language for a person ("a private key"); ``by`` says whether the
    file's name or its content gave it away.
    """

    path: Path
    reason: str
    by: Literal["name", "content"]

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ScanLimits:
    """Bounds of the look inside a workspace, so a huge folder cannot stall a start."""

    max_depth: int = 8
    max_files: int = 2000
    max_bytes: int = 32 * 1024


@dataclass(frozen=True)
class SecretScan:
    """What the look inside a workspace found. ``complete`` is False when a bound stopped it
    (``skipped`` then says which); the findings are still those of the files looked at."""

    findings: tuple[Finding, ...]
    complete: bool
    files_checked: int
    skipped: str = ""

    def messages(self) -> list[str]:
        """One plain line per finding (and one if the look was cut short), for CLI and app."""
        out = [
            f"{f.path} seems to hold {f.reason}; the agent in the VM could read it."
            for f in self.findings
        ]
        if not self.complete:
            out.append(f"only part of the workspace was checked for credentials ({self.skipped}).")
        return out


#: Folders never looked into: bulky, generated, and not where people keep credentials.
_SKIP_DIRS = frozenset(
    {"node_modules", "__pycache__", ".venv", "venv", ".tox", ".mypy_cache", ".ruff_cache",
     ".pytest_cache", "objects", ".cache", "target", "dist", "build"}
)  # fmt: skip
_PLACEHOLDER_SUFFIXES = (".example", ".sample", ".template", ".dist", ".tmpl")

#: Names that hold credentials whatever their content.
_SECRET_NAMES: dict[str, str] = {
    ".netrc": "logins for internet services (.netrc)",
    "_netrc": "logins for internet services (.netrc)",
    ".pgpass": "database passwords (.pgpass)",
    ".git-credentials": "Git passwords or tokens (.git-credentials)",
    ".pypirc": "a Python package index password (.pypirc)",
    ".vault-token": "a HashiCorp Vault token",
    ".credentials.json": "a Claude login",
    "application_default_credentials.json": "a Google Cloud login",
    "credentials.db": "a cloud command-line login",
    "access_tokens.db": "a cloud command-line login",
    "accesstokens.json": "an Azure login",
    "msal_token_cache.json": "an Azure login",
    "msal_token_cache.bin": "an Azure login",
    "kubeconfig": "a Kubernetes login (kubeconfig)",
    "terraform.tfstate": "Terraform state (it often holds passwords)",
    "credentials.tfrc.json": "a Terraform Cloud token",
}
_SECRET_SUFFIXES: dict[str, str] = {
    ".kdbx": "a KeePass password database",
    ".kdb": "a KeePass password database",
    ".1pif": "a 1Password export",
    ".1pux": "a 1Password export",
    ".opvault": "a 1Password vault",
    ".agilekeychain": "a 1Password vault",
    ".keychain": "a macOS keychain",
    ".keychain-db": "a macOS keychain",
    ".psafe3": "a Password Safe database",
    ".p12": "a private key and certificate (PKCS#12)",
    ".pfx": "a private key and certificate (PKCS#12)",
    ".jks": "a Java keystore",
    ".keystore": "a Java keystore",
    ".kubeconfig": "a Kubernetes login (kubeconfig)",
    ".ppk": "a PuTTY private key",
}
_SSH_KEY = re.compile(r"^id_(rsa|dsa|ecdsa|ed25519)(_sk)?$|^id_ecdsa_sk$")
_IN_FOLDER: dict[tuple[str, str], str] = {
    (".aws", "credentials"): "AWS credentials",
    (".aws", "config"): "an AWS configuration (it may hold keys)",
    (".kube", "config"): "a Kubernetes login (kubeconfig)",
    ("gh", "hosts.yml"): "a GitHub login",
    (".docker", "config.json"): "Docker registry logins",
}

_B = re.compile
#: Content patterns, each with its plain reason. Applied to the first bytes of every file.
_CONTENT: tuple[tuple[re.Pattern[bytes], str], ...] = (
    (_B(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"), "a private key"),
    (_B(rb"PuTTY-User-Key-File-\d"), "a PuTTY private key"),
    (
        _B(rb"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}(?![A-Z0-9])"),
        "an AWS access key",
    ),
    (_B(rb"(?i)aws_secret_access_key\s*[=:]\s*\S{16,}"), "an AWS secret key"),
    (
        _B(rb"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{40,})"),
        "a GitHub token",
    ),
    (_B(rb"glpat-[A-Za-z0-9_-]{20}"), "a GitLab token"),
    (_B(rb"xox[abposr]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (_B(rb"sk-ant-[A-Za-z0-9_-]{20,}"), "an Anthropic API key"),
    (_B(rb"(?:sk|rk)_live_[A-Za-z0-9]{16,}"), "a Stripe secret key"),
    (_B(rb"AIza[0-9A-Za-z_-]{35}"), "a Google API key"),
    (_B(rb"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}"), "an npm token"),
    (_B(rb"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{20,}"), "a PyPI token"),
    (_B(rb"(?m)^\s*//?[^\s]*:_(?:authToken|auth|password)\s*=\s*\S+"), "an npm registry token"),
    (
        _B(rb"(?m)^\s*machine\s+\S+(?:\s+login\s+\S+)?\s+password\s+\S+"),
        "logins for internet services (.netrc format)",
    ),
    (
        _B(rb"(?m)^[a-z][a-z0-9+.-]*://[^\s/:@]+:[^\s/@]{3,}@[^\s/]+/?\s*$"),
        "a web address with a password in it (Git credentials format)",
    ),
    (
        _B(rb"(?m)^[^\s:#]+:(?:\d+|\*):[^\s:]+:[^\s:]+:\S+\s*$"),
        "database passwords (.pgpass format)",
    ),
    (_B(rb"\*\*\*5642bee8-a5ff-11dc-8314-0800200c9a66\*\*\*"), "a 1Password export"),
    (_B(rb'"passwordHistory"\s*:'), "a password manager export (Bitwarden)"),
    (_B(rb'(?s)"login"\s*:\s*\{.{0,400}?"password"\s*:\s*"[^"]+'), "a password manager export"),
    (
        _B(rb'(?s)"type"\s*:\s*"service_account".{0,2000}"private_key"'),
        "a Google Cloud service account key",
    ),
    (
        _B(rb'(?s)"client_secret"\s*:\s*"[^"]+".{0,2000}"refresh_token"\s*:\s*"[^"]+'),
        "a cloud login (refresh token)",
    ),
    (
        _B(rb'(?s)"auths"\s*:\s*\{.{0,2000}?"auth"\s*:\s*"[A-Za-z0-9+/=]{8,}'),
        "Docker registry logins",
    ),
)
_KUBE_CONFIG = _B(rb"(?m)^kind:\s*Config\s*$")
_KUBE_USERS = _B(rb"(?m)^users:\s*$")
_KUBE_CRED = _B(rb"(?m)^\s+(?:token|client-key-data|password|id-token|refresh-token):\s*\S+")
_ENV_LINE = _B(
    rb"(?m)^\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PWD|"
    rb"CREDENTIALS?)[A-Za-z0-9_]*\s*=\s*['\"]?(?![<$])[^\s'\"]{4,}"
)
_AWS_INI = _B(rb"(?im)^\s*aws_access_key_id\s*=\s*\S+")
_KDBX_MAGIC = b"\x03\xd9\xa2\x9a"
#: Suffixes of files where KEY=value lines are settings (not source code).
_SETTINGS_SUFFIXES = frozenset({"", ".env", ".ini", ".cfg", ".conf", ".properties", ".txt", ".sh"})


def _csv_password_header(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").strip()
    fields = [f.strip().strip("\"'").strip().casefold() for f in first.split(",")]
    if len(fields) < 3:
        return False
    return any(f in ("password", "login_password", "pass", "passwort") for f in fields)


def _is_env_name(name: str) -> bool:
    low = name.casefold()
    if low.endswith(_PLACEHOLDER_SUFFIXES):
        return False
    return low == ".env" or low.startswith(".env.") or low.endswith(".env")


def _by_name(parent: str, name: str) -> str | None:
    low = name.casefold()
    if low in _SECRET_NAMES:
        return _SECRET_NAMES[low]
    if (parent.casefold(), low) in _IN_FOLDER:
        return _IN_FOLDER[parent.casefold(), low]
    if _SSH_KEY.match(low):
        return "an SSH private key"
    for suffix, reason in _SECRET_SUFFIXES.items():
        if low.endswith(suffix):
            return reason
    if _is_env_name(name):
        return "environment settings (.env files usually hold passwords and API keys)"
    if low.endswith(".csv") and any(w in low for w in ("password", "bitwarden", "1password")):
        return "a password list (a password manager or browser export)"
    return None


def _by_content(name: str, head: bytes) -> str | None:
    if head.startswith(_KDBX_MAGIC):
        return "a KeePass password database"
    for pattern, reason in _CONTENT:
        if pattern.search(head):
            return reason
    if _KUBE_CONFIG.search(head) and _KUBE_USERS.search(head) and _KUBE_CRED.search(head):
        return "a Kubernetes login (kubeconfig)"
    if _AWS_INI.search(head):
        return "AWS credentials"
    if _csv_password_header(head):
        return "a password list (a password manager or browser export)"
    suffix = os.path.splitext(name)[1].casefold()
    if (suffix in _SETTINGS_SUFFIXES or _is_env_name(name)) and _ENV_LINE.search(head):
        return "passwords or API keys in settings (NAME=value lines)"
    return None


def _read_head(dir_fd: int, name: str, limit: int) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, limit)
    finally:
        os.close(fd)


def scan_for_secrets(root: Path, limits: ScanLimits | None = None) -> SecretScan:
    """Look inside ``root`` for files that hold credentials, by name and by content.

    Breadth first (shallow files first), never following symbolic links, reading at most
    ``limits.max_bytes`` of at most ``limits.max_files`` regular files down to
    ``limits.max_depth``. Unreadable files are findings too (cowork cannot vouch for them).
    """
    lim = limits or ScanLimits()
    findings: list[Finding] = []
    checked = 0
    skipped = ""
    queue: list[tuple[Path, int]] = [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            findings.append(
                Finding(folder, f"a folder cowork could not look into ({exc.strerror})", "name")
            )
            continue
        dir_fd = os.open(
            folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
        )
        try:
            for entry in entries:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if entry.name in _SKIP_DIRS:
                        continue
                    if depth + 1 > lim.max_depth:
                        skipped = f"folders deeper than {lim.max_depth} levels were not checked"
                        continue
                    queue.append((Path(entry.path), depth + 1))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                path = Path(entry.path)
                reason = _by_name(folder.name, entry.name)
                if reason is not None:
                    findings.append(Finding(path, reason, "name"))
                    continue
                if checked >= lim.max_files:
                    skipped = f"only the first {lim.max_files} files were read"
                    queue.clear()
                    break
                checked += 1
                try:
                    head = _read_head(dir_fd, entry.name, lim.max_bytes)
                except OSError as exc:
                    findings.append(
                        Finding(path, f"a file cowork could not read ({exc.strerror})", "content")
                    )
                    continue
                reason = _by_content(entry.name, head)
                if reason is not None:
                    findings.append(Finding(path, reason, "content"))
        finally:
            os.close(dir_fd)
    return SecretScan(tuple(findings), complete=not skipped, files_checked=checked, skipped=skipped)


def check_secret_files(
    workspace: Path, mode: SecretFilesMode = "warn", limits: ScanLimits | None = None
) -> SecretScan:
    """Scan ``workspace`` for credential files and apply ``mounts.secret_files``.

    ``"refuse"`` raises :class:`WorkspaceError` listing what was found; ``"warn"`` returns the
    scan for the caller to show. An error while looking is a refusal in either mode (fail
    closed): the workspace's content cannot be vouched for.
    """
    try:
        scan = scan_for_secrets(workspace, limits)
    except Exception as exc:
        raise WorkspaceError(
            f"cannot check workspace {str(workspace)!r} for credential files: {exc}"
        ) from exc
    if mode == "refuse" and scan.findings:
        shown = "\n".join(f"  - {f}" for f in scan.findings[:20])
        more = f"\n  … and {len(scan.findings) - 20} more" if len(scan.findings) > 20 else ""
        raise WorkspaceError(
            f"workspace {workspace} holds files that look like credentials, and policy "
            f'(mounts.secret_files = "refuse") does not share such folders:\n{shown}{more}\n'
            "Move these files out of the folder (keep credentials in your keychain: "
            "`cowork creds set ID`), or pick another folder."
        )
    return scan
