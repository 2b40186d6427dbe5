"""The guest's sshd_config builder: golden text, and the real sshd accepts what it builds."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cowork.guest.sshd import sshd_config

DATA = Path(__file__).resolve().parents[1] / "data" / "sshd"
SSHD = "/usr/sbin/sshd"
ENV = {
    "HTTPS_PROXY": "http://127.0.0.1:3128",
    "HTTP_PROXY": "http://127.0.0.1:3128",
    "NO_PROXY": "localhost,127.0.0.1",
    "NOTE": "spaces  and # and $HOME; `ok`",
    "EMPTY": "",
}


def build(**overrides: object) -> str:
    args: dict[str, object] = {
        "host_key": "/run/cowork/ssh/host_key",
        "authorized_keys": "/run/cowork/ssh/authorized_keys",
        "user": "agent",
        "env": ENV,
        "proxy_port": 3128,
    }
    args.update(overrides)
    return sshd_config(**args)  # type: ignore[arg-type]


def test_matches_golden_file() -> None:
    golden = DATA / "sshd_config.golden"
    if os.environ.get("COWORK_UPDATE_GOLDEN"):
        golden.write_text(build())
    assert build() == golden.read_text()


def test_is_deterministic_whatever_the_env_order() -> None:
    assert build(env=dict(reversed(list(ENV.items())))) == build()


def test_locks_down_the_server() -> None:
    text = build().splitlines()
    for line in (
        "AllowUsers agent",
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AllowTcpForwarding remote",
        "PermitListen 127.0.0.1:3128 localhost:3128",
        "PermitOpen none",
        "GatewayPorts no",
        "AllowAgentForwarding no",
        "AllowStreamLocalForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PermitUserEnvironment no",
        "StrictModes yes",
        "UsePAM no",
    ):
        assert line in text
    assert not any(line.startswith("AcceptEnv") for line in text)
    assert sum(line.startswith("SetEnv") for line in text) == 1  # sshd reads only the first


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("A", "line\nbreak"),
        ("A", 'double"quote'),
        ("A", "single'quote"),
        ("A", "back\\slash"),
        ("A", "tab\there"),
        ("A B", "x"),
        ("1A", "x"),
        ("A=B", "x"),
        ("", "x"),
    ],
)
def test_refuses_env_it_cannot_represent(key: str, value: str) -> None:
    with pytest.raises(ValueError, match="environment variable"):
        build(env={key: value})


@pytest.mark.parametrize(
    "overrides",
    [
        {"host_key": "relative/key"},
        {"host_key": "/with space/key"},
        {"authorized_keys": "/run/%u/keys"},
        {"authorized_keys": "/run/keys\nPermitRootLogin yes"},
        {"user": "agent\nAllowUsers root"},
        {"user": "Agent"},
        {"proxy_port": 0},
        {"proxy_port": 70000},
    ],
)
def test_refuses_paths_users_and_ports_that_would_change_the_meaning(
    overrides: dict[str, object],
) -> None:
    with pytest.raises(ValueError):
        build(**overrides)


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
        pytest.skip("needs openssh-server (/usr/sbin/sshd) and ssh-keygen")
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "authorized_keys").write_text("")
    return key


def _effective(config: Path) -> list[str]:
    if os.getuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    out = subprocess.run(
        [SSHD, "-T", "-f", str(config), "-C", "user=agent,host=guest,addr=127.0.0.1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.splitlines()


def test_real_sshd_accepts_it_and_reads_every_value(keyfile: Path) -> None:
    config = keyfile.parent / "sshd_config"
    config.write_text(
        build(host_key=str(keyfile), authorized_keys=str(keyfile.parent / "authorized_keys"))
    )
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
    effective = _effective(config)
    for key, value in ENV.items():
        assert f"setenv {key}={value}" in effective
    assert "permitlisten 127.0.0.1:3128 localhost:3128" in effective
    assert "permitopen none" in effective
    assert "allowtcpforwarding remote" in effective
    assert "permitrootlogin no" in effective
    assert "allowusers agent" in effective
    assert not [line for line in effective if line.startswith("acceptenv")]
