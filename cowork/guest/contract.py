"""What the host and the guest agree on: names, paths, and the seed disk format.

Standard library only; imported by both sides.

The seed disk is a small raw, read-only virtio disk whose serial is :data:`SEED_SERIAL`.
It holds one header line followed by a JSON payload, zero-padded to a 512-byte multiple:

    b"COWORKSEED <version> <payload length>\\n" + payload + zero padding

The payload (:class:`Seed`) carries everything that is per session: the guest's SSH host key,
the host's client public key, the mounts, the environment for every guest process, extra CA
certificates, and the guest code itself (so the base image does not change when the guest
code does). No secret of the host's (credentials, the CA private key) is ever put in a seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SEED_MAGIC = b"COWORKSEED"
SEED_VERSION = 1
SEED_SERIAL = "cowork-seed"
SEED_ALIGN = 512
SEED_MAX_BYTES = 16 * 1024 * 1024

#: Name of the virtio-serial port that carries the private SSH channel.
CHANNEL_PORT = "org.cowork.channel.0"
#: The vsock port the channel uses where the backend offers vsock instead of virtio-serial
#: (vfkit on macOS). The guest side does not listen on it yet.
CHANNEL_VSOCK_PORT = 2222
#: Name of the root-only virtio-serial port the guest activity monitor writes to.
MONITOR_PORT = "org.cowork.monitor.0"
#: The guest's unprivileged user that runs every command.
AGENT_USER = "agent"
AGENT_HOME = "/home/agent"
WORKSPACE_MOUNT = "/workspace"
#: 9p mount tags (short: QEMU limits tag length).
TAG_WORKSPACE = "cw-ws"
TAG_WORKSPACE_CLAUDE = "cw-wsclaude"
TAG_USER_CLAUDE = "cw-claude"
#: Inside the guest, the egress gateway is reached at this loopback port (a reverse forward).
PROXY_PORT = 3128
#: Where the guest code from the seed is unpacked (tmpfs, root-owned, read-only to the agent).
GUEST_LIB_DIR = "/run/cowork/lib"
#: Where the guest's init writes its own log (root-only).
GUEST_LOG = "/run/cowork/init.log"
#: A template guest prints this line (then the template's session name) on the console when
#: it waits for its session seed: the host saves it from then on.
TEMPLATE_MARKER = "COWORK-TEMPLATE"
#: Bytes of fresh host entropy a session seed for a restored guest carries (at least).
ENTROPY_BYTES = 64
#: Handshake on the channel before SSH starts: host sends SYNC, guest answers ACK.
SYNC_PREFIX = b"SYNC "
ACK_PREFIX = b"ACK "


@dataclass(frozen=True)
class Mount:
    tag: str
    target: str
    readonly: bool


@dataclass(frozen=True)
class Seed:
    session: str
    host_key: str  # OpenSSH private key text of the guest's per-session host key
    authorized_key: str  # "ssh-ed25519 AAAA... comment" of the host's per-session client key
    agent_uid: int
    agent_gid: int
    mounts: tuple[Mount, ...]
    env: dict[str, str] = field(default_factory=dict)
    ca_certs: tuple[str, ...] = ()
    guest_code: dict[str, str] = field(default_factory=dict)  # relative path -> source
    hostname: str = "cowork"
    channel_port: str = CHANNEL_PORT
    #: Warm start. A template seed (``template``) stops the guest before anything
    #: session-specific and makes it wait for a fresh seed on the same disk; a session seed
    #: for a restored guest carries fresh host entropy (base64) and says whether the VM has a
    #: generation ID device, and the guest refuses to serve until both were applied.
    template: bool = False
    entropy: str = ""
    vmgenid: bool = False
    #: The host's clock (epoch seconds) when it wrote the seed: a restored guest's clock
    #: stands still at the template's save time until it is set from this.
    host_time: float = 0.0
    #: Staged changes: the workspace share is read-only and /workspace is an overlay on it.
    staged: bool = False

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> Seed:
        mounts = tuple(Mount(**m) for m in obj.get("mounts", ()))
        rest = {k: v for k, v in obj.items() if k != "mounts"}
        rest["ca_certs"] = tuple(rest.get("ca_certs", ()))
        return cls(mounts=mounts, **rest)


def encode_seed(seed: Seed) -> bytes:
    """The bytes of a seed disk image for ``seed``."""
    payload = json.dumps(seed.to_payload(), sort_keys=True).encode()
    header = SEED_MAGIC + b" %d %d\n" % (SEED_VERSION, len(payload))
    data = header + payload
    if len(data) > SEED_MAX_BYTES:
        raise ValueError(f"seed is {len(data)} bytes; at most {SEED_MAX_BYTES} fit")
    pad = (-len(data)) % SEED_ALIGN
    return data + b"\0" * pad


def decode_seed(data: bytes) -> Seed:
    """Parse seed disk bytes (as read from the device). Raises ValueError if malformed."""
    newline = data.find(b"\n", 0, 64)
    if newline < 0 or not data.startswith(SEED_MAGIC + b" "):
        raise ValueError("not a cowork seed disk")
    try:
        _, version, length = data[:newline].split(b" ")
        n = int(length)
    except ValueError as exc:
        raise ValueError("malformed seed header") from exc
    if int(version) != SEED_VERSION:
        raise ValueError(f"seed version {int(version)} is not {SEED_VERSION}")
    payload = data[newline + 1 : newline + 1 + n]
    if len(payload) != n:
        raise ValueError("seed payload is truncated")
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise ValueError("seed payload is not an object")
    return Seed.from_payload(obj)


def guest_code_files() -> dict[str, str]:
    """The guest package's source files, keyed by path relative to the import root.

    Run on the host to build a seed: every ``cowork/guest/*.py`` plus the empty
    ``cowork/__init__.py`` the package needs.
    """
    from pathlib import Path

    here = Path(__file__).resolve().parent
    files = {"cowork/__init__.py": ""}
    for path in sorted(here.glob("*.py")):
        files[f"cowork/guest/{path.name}"] = path.read_text(encoding="utf-8")
    return files
