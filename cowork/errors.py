"""The errors callers act on.

Every message is written for a person: it names the object (file, key, folder, value) and
says what to do next. Library exceptions from third-party systems are translated into this
tree in the one module that owns that system (``raise BackendError(...) from exc``).

    CoworkError
    ├── UsageError          bad input from the user: a folder, a flag, a value (CLI exit 2)
    │   └── WorkspaceError  a workspace or .claude folder that must not be shared
    ├── ConfigError         a policy or settings file is invalid (carries every problem)
    ├── TrustError          a workspace's config is not (or no longer) trusted
    ├── ImageError          the guest image is missing, corrupt or cannot be built
    ├── BackendError        the hypervisor refused or failed (libvirt, vfkit)
    │   └── BootTimeout     the guest did not become ready in time (it was destroyed)
    ├── ChannelError        the private channel to the guest failed
    │   └── CommandFailed   a guest command exited non-zero with check=True (has .result)
    ├── EgressError         the egress gateway could not start or was misconfigured
    ├── SecretError         the keychain is unavailable or a credential is missing
    └── AgentError          the agent loop could not continue
"""

from __future__ import annotations

from typing import Any


class CoworkError(Exception):
    """Base of every error cowork raises on purpose. ``str(err)`` is shown to the user."""

    #: Exit status the CLI uses for this error.
    exit_code: int = 1


class UsageError(CoworkError):
    """The user asked for something that cannot be done as asked; nothing was started."""

    exit_code = 2


class WorkspaceError(UsageError):
    """A folder that must not be shared with the VM (missing, a file, ``/``, home, system dir,
    or a ``.claude`` folder holding credentials)."""


class ConfigError(CoworkError):
    """One or more configuration problems. ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        text = message
        if self.problems:
            text += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class TrustError(CoworkError):
    """A workspace's own configuration has not been trusted by the user."""

    exit_code = 2


class ImageError(CoworkError):
    """The guest image is missing, fails verification, or cannot be built."""


class BackendError(CoworkError):
    """The VM backend (libvirt, vfkit) failed."""


class BootTimeout(BackendError):
    """The guest did not become ready in time; it has been destroyed."""


class ChannelError(CoworkError):
    """The private SSH channel to the guest failed."""


class CommandFailed(ChannelError):
    """A guest command exited non-zero (raised only when ``check=True``)."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class EgressError(CoworkError):
    """The egress gateway could not start or is misconfigured."""


class SecretError(CoworkError):
    """The OS keychain is unavailable, or a credential id is unknown."""


class AgentError(CoworkError):
    """The agent loop could not continue."""
