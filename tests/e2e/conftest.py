"""Fixtures for end-to-end tests that boot real guests (libvirt + QEMU, TCG here).

The guest image comes from the user's real cache (built once by `cowork image build`, keyed
by recipe hash); everything else a test writes lives under temporary folders.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cowork.host.events import EventBus, Recorder
from cowork.paths import Paths
from tests.host.egress.conftest import (
    UPSTREAM_IP,
    FakeResolver,
    Upstream,
    UpstreamPKI,
    make_pki,
    server_context,
    test_address_check,
)

#: uid/gid that owns test workspaces when the tests run as root (the agent never runs as root).
ROOT_RUN_WORKSPACE_OWNER = (4321, 4321)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def image_ready() -> None:
    from cowork.host import image

    real = Paths()
    try:
        image.verify(real.image_dir(image.recipe_hash()))
    except Exception as exc:
        pytest.fail(f"the guest image is not built; run `cowork image build` first ({exc})")


def make_paths(root: Path) -> Paths:
    """Temporary locations, but the real image cache and a short socket directory."""
    run = Path(tempfile.mkdtemp(prefix="cw", dir="/tmp"))
    return replace(Paths.under(root), cache=Paths().cache, runtime=run)


def make_workspace(root: Path, name: str = "ws") -> Path:
    ws = root / name
    ws.mkdir(parents=True)
    if os.getuid() == 0:
        os.chown(ws, *ROOT_RUN_WORKSPACE_OWNER)
    return ws


def expected_owner() -> tuple[int, int]:
    return ROOT_RUN_WORKSPACE_OWNER if os.getuid() == 0 else (os.getuid(), os.getgid())


def sample_folders(root: Path) -> tuple[Path, Path, Path]:
    """A workspace with one file, a user ``.claude`` with settings, and a file outside both
    (which no guest may see), under ``root``."""
    ws = make_workspace(root)
    (ws / "hello.txt").write_text("hello from the host\n")
    claude = root / "user-claude"
    claude.mkdir()
    (claude / "settings.json").write_text('{"theme": "dark"}\n')
    outside = root / "outside-secret.txt"
    outside.write_text("OUTSIDE-MARKER-5f2c\n")
    return ws, claude, outside


class Booted:
    def __init__(self, session, workspace: Path, claude: Path, outside: Path, recorder: Recorder):
        self.session = session
        self.workspace = workspace
        self.claude = claude
        self.outside = outside
        self.recorder = recorder

    def run(self, cmd: str, **kw):
        return self.session.channel.run(cmd, **kw)


@pytest.fixture(scope="module")
def booted(image_ready, tmp_path_factory) -> Iterator[Booted]:
    """One sealed VM per test module, with a workspace, a user .claude and an outside file."""
    from cowork.host.session import Session, VMSettings

    root = tmp_path_factory.mktemp("e2e")
    paths = make_paths(root / "cowork")
    ws, claude, outside = sample_folders(root)
    bus = EventBus()
    rec = Recorder()
    bus.subscribe(rec)
    sess = Session.open(
        ws, paths=paths, events=bus, settings=VMSettings(claude_dir=claude, memory_mib=1024)
    )
    try:
        yield Booted(sess, ws, claude, outside, rec)
    finally:
        sess.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory) -> Path:
    """A cache folder for warm-start templates shared by every test module of a run (one
    template build per run), with the real image cache linked in."""
    cache = tmp_path_factory.mktemp("warm-cache")
    (cache / "images").symlink_to(Paths().images, target_is_directory=True)
    return cache


def make_warm_paths(root: Path, cache: Path) -> Paths:
    """Like :func:`make_paths`, with templates in the run's shared ``warm_cache``."""
    return replace(make_paths(root), cache=cache)


U = TypeVar("U", bound=Upstream)


def tls_upstream(root: Path, kind: type[U]) -> tuple[U, UpstreamPKI]:
    """A real TLS upstream of class ``kind`` on host loopback with its own CA in ``root``."""
    pki = make_pki(root)
    return kind(UPSTREAM_IP, server_context(pki.cert_file, pki.key_file)), pki


@contextmanager
def gateway_session(
    ws: Path,
    paths: Paths,
    claude: Path,
    upstream: Upstream,
    pki: UpstreamPKI,
    *,
    grants: list[Any],
    secrets: Any,
    resolver: FakeResolver,
) -> Iterator[tuple[Any, EventBus, Recorder]]:
    """A sealed VM for ``ws`` whose gateway reaches the test ``upstream`` through ``grants``
    (names answered by ``resolver``, the upstream's CA trusted); yields the session, its bus
    and a recorder. The session, the upstream and the runtime folder are closed afterwards."""
    from cowork.host.session import EgressSettings, Session, VMSettings

    bus = EventBus()
    rec = Recorder()
    bus.subscribe(rec)
    egress = EgressSettings(
        grants_provider=lambda: grants,
        secrets=secrets,
        resolver=resolver,
        address_check=test_address_check,
        upstream_ca_file=pki.ca_file,
    )
    try:
        sess = Session.open(
            ws,
            paths=paths,
            events=bus,
            settings=VMSettings(claude_dir=claude, memory_mib=1024),
            egress=egress,
        )
        try:
            yield sess, bus, rec
        finally:
            sess.close()
    finally:
        upstream.close()
        shutil.rmtree(paths.runtime, ignore_errors=True)
