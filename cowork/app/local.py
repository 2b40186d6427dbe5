"""The parts of :class:`cowork.app.service.Service` done on this machine with cowork's host
library: readiness of libvirt, the image and the model key; the image build; storing the
key; folder checks; trust; the effective policy and the user's own settings.

The daemon adapter (:mod:`cowork.app.daemon_service`) adds sessions, events and approvals on
top. Key checks talk to the model API; everything else is local files and the keychain.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cowork.app import folders
from cowork.app.service import (
    BuildProgress,
    CheckId,
    EffectivePolicy,
    FolderReport,
    KeyRejected,
    PolicyRow,
    ProgressFn,
    ReadinessCheck,
    TrustInfo,
    TrustItem,
    TrustState,
)
from cowork.errors import ConfigError, CoworkError, SecretError, UsageError
from cowork.host import trust as host_trust
from cowork.host.secrets import Secrets, check_value
from cowork.paths import Paths

#: The keychain id of the model key (the same one ``cowork creds set anthropic`` uses).
MODEL_KEY_ID = "anthropic"
#: A file beside the user's settings that records "use the demo model" (no secret in it).
DEMO_FILE = "app-demo-model"
_STEP = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")

#: Checks a key with the model API: returns None when accepted, raises KeyRejected when the
#: API refuses it, and raises another CoworkError when it cannot tell (offline).
KeyChecker = Callable[[str], None]


def parse_build_line(line: str, started: float, now: float) -> BuildProgress | None:
    """A progress record from a line of the image build (``"[2/6] installing…"``)."""
    m = _STEP.match(line.strip())
    if m is None:
        return None
    n, total, step = int(m.group(1)), max(1, int(m.group(2))), m.group(3).rstrip("…. ")
    elapsed = max(0.0, now - started)
    done = n >= total and step.startswith(("done", "image already built"))
    percent = 100.0 if done else 100.0 * (n - 1) / total
    remaining = None
    if done:
        remaining = 0.0
    elif n > 1 and elapsed > 0:
        remaining = elapsed / (n - 1) * (total - n + 1)
    return BuildProgress(step or "…", n, total, percent, elapsed, remaining)


def anthropic_key_checker(
    base_url: str = "https://api.anthropic.com", timeout: float = 15.0
) -> KeyChecker:
    """Asks the model API to list models with the key (a read that costs nothing). The key
    travels only in the request header, never in a URL, a log or an error message."""

    if not base_url.startswith(("https://", "http://")):
        raise UsageError(f"the model service address {base_url!r} must start with https://")

    def check(key: str) -> None:
        req = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            base_url.rstrip("/") + "/v1/models?limit=1",
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                resp.read(1)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 401:
                raise KeyRejected(
                    "The model service refused this key (it is not valid or was revoked). "
                    "Check that you copied the whole key, or create a new one; nothing was "
                    "saved and your previous setup is unchanged."
                ) from None
            if exc.code == 403:
                raise KeyRejected(
                    "The model service knows this key but it may not use the models. Ask the "
                    "key's owner for access; nothing was saved."
                ) from None
            raise CoworkError(
                f"the model service answered {exc.code} while checking the key; try again "
                "later (nothing was saved)"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CoworkError(
                f"could not reach the model service to check the key ({reason}); check the "
                "internet connection and try again (nothing was saved)"
            ) from None

    return check


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise UsageError(f"cowork cannot write the value {value!r} into settings")


def dump_settings(table: dict[str, Any]) -> str:
    """Settings (top-level values and one level of sections) as TOML."""
    top = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = top + ([""] if top else [])
    for section, values in table.items():
        if isinstance(values, dict):
            out.append(f"[{section}]")
            for k, v in values.items():
                if isinstance(v, dict):
                    raise UsageError(f"settings section {section}.{k} is too deep to edit here")
                out.append(f"{k} = {_toml_value(v)}")
            out.append("")
    return "\n".join(out)


class LocalParts:
    def __init__(
        self,
        paths: Paths,
        secrets: Secrets | None = None,
        *,
        key_checker: KeyChecker | None = None,
        libvirt_check: Callable[[], str | None] | None = None,
        image_find: Callable[[Paths], object] | None = None,
        image_build: Callable[..., object] | None = None,
    ) -> None:
        self.paths = paths
        self._secrets = secrets
        self.key_checker = key_checker or anthropic_key_checker()
        self.libvirt_check = libvirt_check or _libvirt_problem
        self.image_find = image_find or _image_find
        self.image_build = image_build or _image_build

    @property
    def secrets(self) -> Secrets:
        if self._secrets is None:
            from cowork.host.secrets import default_secrets

            self._secrets = default_secrets()
        return self._secrets

    # readiness
    def local_checks(self) -> list[ReadinessCheck]:
        out = []
        problem = self.libvirt_check()
        out.append(ReadinessCheck(CheckId.LIBVIRT, problem is None, problem or "ready"))
        try:
            self.image_find(self.paths)
            out.append(ReadinessCheck(CheckId.IMAGE, True, "ready"))
        except CoworkError as exc:
            out.append(ReadinessCheck(CheckId.IMAGE, False, str(exc)))
        out.append(self._key_check())
        return out

    def _key_check(self) -> ReadinessCheck:
        if self.demo_file.exists():
            return ReadinessCheck(CheckId.MODEL_KEY, True, "demo model (not an AI)")
        try:
            ok = MODEL_KEY_ID in self.secrets.list_ids()
        except CoworkError as exc:
            return ReadinessCheck(CheckId.MODEL_KEY, False, str(exc))
        return ReadinessCheck(CheckId.MODEL_KEY, ok, "ready" if ok else "no key saved yet")

    @property
    def demo_file(self) -> Path:
        return self.paths.config / DEMO_FILE

    @property
    def demo(self) -> bool:
        return self.demo_file.exists()

    def build_image(self, on_progress: ProgressFn) -> None:
        started = time.monotonic()

        def line(text: str) -> None:
            p = parse_build_line(text, started, time.monotonic())
            if p is not None:
                on_progress(p)

        self.image_build(self.paths, progress=line)

    def set_api_key(self, key: str) -> None:
        key = key.strip()
        check_value(MODEL_KEY_ID, key)
        self.key_checker(key)  # KeyRejected: nothing stored, the previous key stays
        self.secrets.set(MODEL_KEY_ID, key)
        self.demo_file.unlink(missing_ok=True)

    def use_demo_model(self) -> None:
        self.demo_file.parent.mkdir(parents=True, exist_ok=True)
        self.demo_file.write_text("the app uses the scripted demo model\n")

    # folders and trust
    def check_folder(self, folder: Path) -> FolderReport:
        return folders.check_folder(folder, paths=self.paths)

    def _store(self) -> host_trust.TrustStore:
        return host_trust.TrustStore(self.paths.trust_store)

    def trust_info(self, folder: Path) -> TrustInfo:
        snap = host_trust.snapshot(folder)
        if not any(f.present for f in snap.files):
            return TrustInfo(snap.root, TrustState.NO_CONFIG)
        summary = host_trust.summarize(snap)
        status = self._store().status(folder, snap)
        state = {
            host_trust.TrustState.TRUSTED: TrustState.TRUSTED,
            host_trust.TrustState.LAPSED: TrustState.LAPSED,
        }.get(status.state, TrustState.UNTRUSTED)
        items = tuple(TrustItem(i.file, i.kind, i.text) for i in summary.items)
        return TrustInfo(snap.root, state, items, summary.problems)

    def trust(self, folder: Path) -> None:
        summary = host_trust.summarize(host_trust.snapshot(folder))
        if summary.problems:
            raise UsageError("this folder's settings have problems and cannot be trusted")
        self._store().trust(summary)

    def untrust(self, folder: Path) -> None:
        self._store().untrust(folder)

    def trusted_folders(self) -> list[Path]:
        return sorted(r.workspace for r in self._store().records())

    # policy and settings
    def effective_policy(self, folder: Path | None = None) -> EffectivePolicy:
        from cowork.host.policy import load_effective

        store = self._store() if folder is not None else None
        policy = load_effective(self.paths, folder, store)
        rows = tuple(
            PolicyRow(k, json.dumps(v), str(layer), bool(locked))
            for k, v, layer, locked in policy.plain_rows()
        )
        return EffectivePolicy(rows, tuple(policy.notes), tuple(policy.problems))

    def set_user_setting(self, key: str, value: str) -> None:
        """Validate-then-swap: the new settings file is checked before it replaces the old."""
        from cowork.host.policy import check_file

        if self.effective_policy().rows and any(
            r.key == key and r.locked for r in self.effective_policy().rows
        ):
            raise UsageError(f"{key} is set by your organisation and cannot be changed.")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # plain words are a string
        path = self.paths.user_settings_file
        table: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
        section, _, name = key.partition(".")
        if name:
            table.setdefault(section, {})[name] = parsed
        else:
            table[section] = parsed
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(dump_settings(table))
        problems = check_file(tmp, self.paths)
        if problems:
            tmp.unlink()
            raise ConfigError(f"{key} = {value} was not saved", problems)
        tmp.replace(path)


def _libvirt_problem() -> str | None:
    try:
        from cowork.host.vm.libvirt import LibvirtBackend

        with LibvirtBackend() as backend:
            backend.list()
    except CoworkError as exc:
        return str(exc)
    except ImportError:
        return "libvirt's Python module is not installed; run cowork's installer again"
    return None


def _image_find(paths: Paths) -> object:
    from cowork.host.image import find

    return find(paths)


def _image_build(paths: Paths, progress: Callable[[str], None]) -> object:
    from cowork.host.image import build

    return build(paths, progress=progress)


__all__ = ["LocalParts", "SecretError", "anthropic_key_checker", "parse_build_line"]
