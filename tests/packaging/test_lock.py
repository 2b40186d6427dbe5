"""The locks and pyproject.toml agree: every declared dependency (runtime, app and dev extras
in requirements/lock.txt; runtime and app in requirements/lock-app.txt, which the Debian
package installs) is pinned to a version its range allows, every pin carries hashes (so
``pip install --require-hashes`` accepts the file), and both locks pin the same versions.
Refresh with ``scripts/lock``."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
APP_LOCK = ROOT / "requirements" / "lock-app.txt"
PYPROJECT = ROOT / "pyproject.toml"
EXTRAS = ("app", "dev")
LOCKS = {LOCK: EXTRAS, APP_LOCK: ("app",)}
#: The platforms the lock must cover: Debian 12 (3.11) and Ubuntu 24.04 (3.12) on x86-64.
ENVIRONMENTS = [
    {"sys_platform": "linux", "python_version": v, "python_full_version": f"{v}.0"}
    for v in ("3.11", "3.12")
]


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]


def parse_lock(text: str) -> list[Pin]:
    """The pins of a pip requirements file in the form ``scripts/lock`` writes."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        current += " " + line.strip().removesuffix("\\")
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    if current.strip():
        logical.append(current.strip())
    pins = []
    for entry in logical:
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
        spec = re.sub(r"--hash=\S+", "", entry).strip()
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*(.+))?", spec)
        if m is None:
            raise AssertionError(f"{LOCK.name}: {entry[:80]!r} is not a pinned requirement")
        pins.append(
            Pin(
                name=canonicalize_name(m.group(1)),
                version=Version(m.group(2)),
                marker=Marker(m.group(3)) if m.group(3) else None,
                hashes=hashes,
            )
        )
    return pins


def declared(extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def applies(marker: Marker | None, env: dict[str, str]) -> bool:
    return marker is None or marker.evaluate(env)


def test_parse_lock_reads_markers_and_hashes() -> None:
    text = (
        "# comment\n"
        "a-b==1.2 ; sys_platform == 'linux' \\\n"
        f"    --hash=sha256:{'0' * 64} \\\n"
        f"    --hash=sha256:{'1' * 64}\n"
        "    # via x\n"
        f"C_d==3 --hash=sha256:{'2' * 64}\n"
    )
    pins = parse_lock(text)
    assert [(p.name, str(p.version), len(p.hashes)) for p in pins] == [
        ("a-b", "1.2", 2),
        ("c-d", "3", 1),
    ]
    assert pins[0].marker is not None and not pins[0].marker.evaluate({"sys_platform": "darwin"})
    with pytest.raises(AssertionError, match="not a pinned requirement"):
        parse_lock("foo>=1\n")


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_pin_has_hashes_and_one_version_per_platform(lock: Path) -> None:
    pins = parse_lock(lock.read_text(encoding="utf-8"))
    assert pins, f"{lock} pins nothing; run scripts/lock"
    unhashed = [p.name for p in pins if not p.hashes]
    assert not unhashed, f"{lock} pins without hashes: {unhashed}; run scripts/lock"
    for env in ENVIRONMENTS:
        seen: dict[str, Version] = {}
        for pin in pins:
            if applies(pin.marker, env):
                assert pin.name not in seen, f"{pin.name} pinned twice for {env}"
                seen[pin.name] = pin.version


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
@pytest.mark.parametrize("env", ENVIRONMENTS, ids=lambda e: e["python_version"])
def test_every_declared_dependency_is_pinned_within_its_range(
    lock: Path, env: dict[str, str]
) -> None:
    pins = {
        p.name: p for p in parse_lock(lock.read_text(encoding="utf-8")) if applies(p.marker, env)
    }
    problems = []
    for req in declared(LOCKS[lock]):
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is declared in pyproject.toml but not in {lock.name}")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req.name}=={pin.version} does not satisfy {req}")
    assert not problems, "; ".join(problems) + " — run scripts/lock and commit the lock"


def test_anthropic_stays_below_the_line_that_conflicts_with_mitmproxy() -> None:
    # anthropic 1.x needs httpx2, which cannot be installed beside mitmproxy 11.0.2's pins.
    (anthropic,) = [r for r in declared() if r.name == "anthropic"]
    assert not anthropic.specifier.contains("1.0.0")
    assert "httpx2" not in {p.name for p in parse_lock(LOCK.read_text(encoding="utf-8"))}


def test_the_app_lock_pins_the_same_versions_as_the_full_lock() -> None:
    full = {(p.name, p.marker and str(p.marker)): p for p in parse_lock(LOCK.read_text())}
    for pin in parse_lock(APP_LOCK.read_text()):
        other = full.get((pin.name, pin.marker and str(pin.marker)))
        assert other is not None, f"{pin.name} is in {APP_LOCK.name} but not {LOCK.name}"
        assert (other.version, set(other.hashes)) == (pin.version, set(pin.hashes)), pin.name
