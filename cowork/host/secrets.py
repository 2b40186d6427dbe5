"""Credentials by id, kept in the OS keychain. The only module that imports keyring.

Contract:
- values live only in the keychain (service :data:`SERVICE`, user name = credential id);
  cowork keeps no copy on disk. An index entry (user name :data:`INDEX_USER`, which no valid
  id can equal) lists the ids so ``cowork creds list`` works on every backend;
- a value is read per use (:meth:`KeyringSecrets.get`) and never appears in an exception,
  log line or event: messages name the credential id only;
- a value MUST be one line of printable text (it goes into an HTTP header);
- keyring failures become :class:`cowork.errors.SecretError` with what to do next.

:class:`MemoryKeyring` is a keyring backend for fast tests; it is never chosen automatically
(keyring sees it as not viable) and must be passed explicitly.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import keyring
import keyring.backend
import keyring.errors
from keyring.compat import properties

from cowork.errors import SecretError, UsageError

SERVICE = "cowork"
INDEX_USER = ".ids"
CREDENTIAL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_VALUE_BYTES = 16 * 1024


class Secrets(Protocol):
    """What the gateway and the CLI need from a credential store."""

    def get(self, credential_id: str) -> str: ...

    def set(self, credential_id: str, value: str) -> None: ...

    def delete(self, credential_id: str) -> None: ...

    def list_ids(self) -> list[str]: ...


def check_id(credential_id: str) -> str:
    if not isinstance(credential_id, str) or not CREDENTIAL_ID_RE.match(credential_id):
        raise UsageError(
            f"credential id {credential_id!r}: use 1-64 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return credential_id


def check_value(credential_id: str, value: str) -> str:
    """Validate a credential value without ever echoing it."""
    if not value:
        raise UsageError(f"credential {credential_id!r}: the value is empty; nothing was saved")
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise UsageError(f"credential {credential_id!r}: the value is longer than 16 KiB")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise UsageError(
            f"credential {credential_id!r}: the value contains a line break or control "
            "character; paste it as one line"
        )
    return value


@contextmanager
def _translated(action: str, credential_id: str | None = None) -> Iterator[None]:
    what = f"credential {credential_id!r}" if credential_id else "the credential list"
    try:
        yield
    except keyring.errors.NoKeyringError as exc:
        raise SecretError(
            f"Cannot {action} {what}: no OS keychain is available. On Linux start a desktop "
            "session with a Secret Service (GNOME Keyring or KWallet) and unlock it."
        ) from exc
    except keyring.errors.KeyringLocked as exc:
        raise SecretError(
            f"Cannot {action} {what}: the OS keychain is locked. Unlock it and try again."
        ) from exc
    except keyring.errors.KeyringError as exc:
        # The library's message can in principle carry data; show only its type.
        raise SecretError(
            f"Cannot {action} {what}: the OS keychain refused ({type(exc).__name__}). "
            "Check that it is unlocked and that cowork may use it."
        ) from None
    except SecretError:
        raise
    except Exception as exc:  # D-Bus and platform errors surface as arbitrary types
        raise SecretError(
            f"Cannot {action} {what}: the OS keychain failed ({type(exc).__name__})."
        ) from None


class KeyringSecrets:
    """Credentials in the OS keychain through ``keyring``.

    ``backend`` selects a keyring backend explicitly (tests); default is keyring's choice.
    """

    def __init__(
        self, backend: keyring.backend.KeyringBackend | None = None, service: str = SERVICE
    ) -> None:
        self._backend = backend
        self._service = service
        self._lock = threading.Lock()

    def _kr(self) -> keyring.backend.KeyringBackend:
        return self._backend if self._backend is not None else keyring.get_keyring()

    def backend_name(self) -> str:
        with _translated("open"):
            kr = self._kr()
            return f"{type(kr).__module__}.{type(kr).__qualname__}"

    def get(self, credential_id: str) -> str:
        check_id(credential_id)
        with _translated("read", credential_id):
            value = self._kr().get_password(self._service, credential_id)
        if value is None:
            raise SecretError(
                f"credential {credential_id!r} is not in the keychain; "
                f"add it with `cowork creds set {credential_id}`"
            )
        return value

    def set(self, credential_id: str, value: str) -> None:
        check_id(credential_id)
        check_value(credential_id, value)
        with self._lock, _translated("save", credential_id):
            kr = self._kr()
            kr.set_password(self._service, credential_id, value)
            ids = set(self._read_index(kr))
            if credential_id not in ids:
                ids.add(credential_id)
                kr.set_password(self._service, INDEX_USER, json.dumps(sorted(ids)))

    def delete(self, credential_id: str) -> None:
        check_id(credential_id)
        with self._lock, _translated("delete", credential_id):
            kr = self._kr()
            existed = kr.get_password(self._service, credential_id) is not None
            if existed:
                kr.delete_password(self._service, credential_id)
            ids = set(self._read_index(kr))
            if credential_id in ids:
                ids.discard(credential_id)
                kr.set_password(self._service, INDEX_USER, json.dumps(sorted(ids)))
            elif not existed:
                raise SecretError(f"credential {credential_id!r} is not in the keychain")

    def list_ids(self) -> list[str]:
        with _translated("list"):
            kr = self._kr()
            return sorted(
                i for i in self._read_index(kr) if kr.get_password(self._service, i) is not None
            )

    def _read_index(self, kr: keyring.backend.KeyringBackend) -> list[str]:
        raw = kr.get_password(self._service, INDEX_USER)
        if not raw:
            return []
        try:
            data = json.loads(raw)
        except ValueError:
            return []
        if not isinstance(data, list):
            return []
        return [i for i in data if isinstance(i, str) and CREDENTIAL_ID_RE.match(i)]


class MemoryKeyring(keyring.backend.KeyringBackend):
    """An in-memory keyring backend for tests. Never selected automatically."""

    @properties.classproperty
    def priority(cls) -> float:
        # Raising makes keyring treat this backend as not viable for automatic selection.
        raise RuntimeError("MemoryKeyring is only used when passed explicitly")

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._data: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._data.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self._data[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self._data:
            raise keyring.errors.PasswordDeleteError("not found")
        del self._data[(service, username)]

    def raw_items(self) -> dict[tuple[str, str], str]:
        """Everything stored (tests check what reached the keychain)."""
        return dict(self._data)


def default_secrets() -> KeyringSecrets:
    return KeyringSecrets()


def secret_service_backend() -> keyring.backend.KeyringBackend:
    """The freedesktop Secret Service backend, or :class:`SecretError` when unreachable."""
    from keyring.backends import SecretService

    try:
        _ = SecretService.Keyring.priority  # raises when no service is on the bus
    except Exception as exc:
        raise SecretError(
            f"No Secret Service is reachable ({type(exc).__name__}); start GNOME Keyring or "
            "KWallet in this session."
        ) from None
    return SecretService.Keyring()  # type: ignore[no-untyped-call]
