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
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

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
#: containing them).
HOME_SECRETS = (
    ".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", ".config/gcloud",
    ".local/share/keyrings", ".password-store", ".netrc", ".git-credentials", ".pgpass",
)  # fmt: skip
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
    for name in HOME_SECRETS:
        secret = home / name
        if _is_within(resolved, secret) or _is_within(secret, resolved):
            raise WorkspaceError(
                f"workspace {shown} is or contains {secret}, which holds credentials. "
                "Pick a folder without credentials."
            )
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
