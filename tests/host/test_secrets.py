from __future__ import annotations

import pytest

from cowork.errors import SecretError, UsageError
from cowork.host.secrets import (
    INDEX_USER,
    SERVICE,
    KeyringSecrets,
    MemoryKeyring,
    secret_service_backend,
)

VALUE = "sk-test-value-9d8c7b6a"


def test_set_get_list_delete() -> None:
    kr = MemoryKeyring()
    s = KeyringSecrets(backend=kr)
    assert s.list_ids() == []
    s.set("anthropic", VALUE)
    s.set("github", "ghp_x")
    assert s.get("anthropic") == VALUE
    assert s.list_ids() == ["anthropic", "github"]
    # the index holds ids only
    assert VALUE not in kr.raw_items()[(SERVICE, INDEX_USER)]
    s.delete("anthropic")
    assert s.list_ids() == ["github"]
    with pytest.raises(SecretError) as err:
        s.get("anthropic")
    assert "cowork creds set anthropic" in str(err.value)
    with pytest.raises(SecretError):
        s.delete("anthropic")


@pytest.mark.parametrize("value", ["", "a\nb", "a\rb", "a\x00b"])
def test_bad_values_refused_without_echo(value: str) -> None:
    s = KeyringSecrets(backend=MemoryKeyring())
    with pytest.raises(UsageError) as err:
        s.set("x", value)
    if value:
        assert value not in str(err.value)


@pytest.mark.parametrize("cid", ["", "UPPER", ".ids", "a b", "a/b", "x" * 65])
def test_bad_ids(cid: str) -> None:
    with pytest.raises(UsageError):
        KeyringSecrets(backend=MemoryKeyring()).set(cid, VALUE)


def test_memory_backend_is_never_chosen_automatically() -> None:
    assert not MemoryKeyring.viable


class Broken(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError(f"dbus exploded while reading {VALUE}")


def test_backend_errors_are_translated_without_data() -> None:
    with pytest.raises(SecretError) as err:
        KeyringSecrets(backend=Broken()).get("anthropic")
    assert VALUE not in str(err.value)
    assert err.value.__cause__ is None


@pytest.mark.keyring
def test_real_secret_service_round_trip() -> None:
    try:
        backend = secret_service_backend()
    except SecretError as exc:
        pytest.skip(f"no Secret Service on the session bus: {exc}")
    s = KeyringSecrets(backend=backend, service="cowork-test")
    try:
        s.set("roundtrip", VALUE)
    except SecretError as exc:
        pytest.skip(f"Secret Service present but not usable (locked?): {exc}")
    try:
        assert s.get("roundtrip") == VALUE
        assert "roundtrip" in s.list_ids()
    finally:
        s.delete("roundtrip")
    assert "roundtrip" not in s.list_ids()
