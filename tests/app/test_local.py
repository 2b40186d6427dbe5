"""The app's local parts against real files, a real trust store, a real HTTP server on
loopback (key checks) and keyring's in-memory backend (the Secret Service is tested in
tests/host/test_secrets.py)."""

import http.server
import json
import threading
from pathlib import Path

import pytest

from cowork.app.local import LocalParts, anthropic_key_checker, dump_settings, parse_build_line
from cowork.app.service import CheckId, KeyRejected, TrustState
from cowork.errors import ConfigError, CoworkError, ImageError, UsageError
from cowork.host.secrets import KeyringSecrets, MemoryKeyring
from cowork.paths import Paths


class _API(http.server.BaseHTTPRequestHandler):
    good = "sk-ant-good"
    seen: list[str] = []

    def do_GET(self):
        _API.seen.append(self.path)
        key = self.headers.get("x-api-key")
        status = 200 if key == self.good else 401
        body = b'{"data": []}' if status == 200 else b'{"type": "error"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _API)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def parts(tmp_path, api):
    secrets = KeyringSecrets(backend=MemoryKeyring())
    return LocalParts(
        Paths.under(tmp_path / "cw"),
        secrets,
        key_checker=anthropic_key_checker(api, timeout=5),
        libvirt_check=lambda: None,
        image_find=lambda p: None,
    )


def test_build_lines_become_progress_with_time_left():
    assert parse_build_line("not a step", 0, 1) is None
    first = parse_build_line("[1/6] checking build tools", 0, 0.5)
    assert (first.step_number, first.steps, first.percent, first.remaining) == (1, 6, 0, None)
    third = parse_build_line("[3/6] installing packages (about 1-2 minutes)…", 0, 40)
    assert third.percent == pytest.approx(100 * 2 / 6)
    assert third.remaining == pytest.approx(20 * 4)
    done = parse_build_line("[6/6] done in 95 s: /x", 0, 95)
    assert (done.percent, done.remaining) == (100.0, 0.0)


def test_build_reports_progress_from_the_library_lines(parts):
    lines = ["[1/3] checking build tools", "[2/3] installing packages…", "[3/3] done in 1 s"]
    parts.image_build = lambda paths, progress: [progress(x) for x in lines]
    got = []
    parts.build_image(got.append)
    assert [p.step_number for p in got] == [1, 2, 3] and got[-1].percent == 100


def test_a_rejected_key_is_not_stored_and_the_old_one_stays(parts):
    parts.secrets.set("anthropic", "sk-ant-old")
    with pytest.raises(KeyRejected, match="refused this key") as err:
        parts.set_api_key("sk-ant-typo")
    assert "sk-ant-typo" not in str(err.value)
    assert parts.secrets.get("anthropic") == "sk-ant-old"
    assert all("sk-ant" not in p for p in _API.seen)  # never in a URL


def test_an_accepted_key_is_stored_and_ends_demo_mode(parts):
    parts.use_demo_model()
    assert parts.demo
    parts.set_api_key("  sk-ant-good\n")
    assert parts.secrets.get("anthropic") == "sk-ant-good"
    assert not parts.demo
    (key,) = [c for c in parts.local_checks() if c.id is CheckId.MODEL_KEY]
    assert key.ok


def test_unreachable_api_says_so_and_stores_nothing(parts):
    parts.key_checker = anthropic_key_checker("http://127.0.0.1:9", timeout=2)
    with pytest.raises(CoworkError, match="could not reach the model service"):
        parts.set_api_key("sk-ant-good")
    assert parts.secrets.list_ids() == []


def test_bad_base_url_is_refused():
    with pytest.raises(UsageError):
        anthropic_key_checker("file:///etc/passwd")


def test_checks_name_what_is_missing(parts):
    parts.libvirt_check = lambda: "libvirt is not running; start it with systemctl"

    def missing(paths):
        raise ImageError("the guest image is not built")

    parts.image_find = missing
    checks = {c.id: c for c in parts.local_checks()}
    assert not checks[CheckId.LIBVIRT].ok and "systemctl" in checks[CheckId.LIBVIRT].detail
    assert not checks[CheckId.IMAGE].ok and "not built" in checks[CheckId.IMAGE].detail
    assert not checks[CheckId.MODEL_KEY].ok
    parts.use_demo_model()
    assert {c.id: c for c in parts.local_checks()}[CheckId.MODEL_KEY].ok


def test_trust_round_trip_with_the_real_store(parts, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    assert parts.trust_info(work).state is TrustState.NO_CONFIG
    (work / ".mcp.json").write_text('{"mcpServers": {"docs": {"command": "node", "args": ["d"]}}}')
    info = parts.trust_info(work)
    assert info.state is TrustState.UNTRUSTED
    assert info.items[0].kind == "mcp-server" and "node d" in info.items[0].text
    parts.trust(work)
    assert parts.trust_info(work).state is TrustState.TRUSTED
    assert parts.trusted_folders() == [work.resolve()]
    (work / ".mcp.json").write_text('{"mcpServers": {}}')
    assert parts.trust_info(work).state is TrustState.LAPSED
    parts.untrust(work)
    assert parts.trust_info(work).state is TrustState.UNTRUSTED


def test_effective_policy_rows_and_user_settings(parts):
    rows = {r.key: r for r in parts.effective_policy().rows}
    assert rows["vm.memory_mib"].value == "2048" and rows["vm.memory_mib"].layer == "default"
    parts.set_user_setting("vm.memory_mib", "4096")
    parts.set_user_setting("agent.model", "claude-opus-4")
    rows = {r.key: r for r in parts.effective_policy().rows}
    assert rows["vm.memory_mib"].value == "4096" and rows["vm.memory_mib"].layer == "user"
    assert rows["agent.model"].value == '"claude-opus-4"'
    before = parts.paths.user_settings_file.read_text()
    with pytest.raises(ConfigError, match="was not saved"):
        parts.set_user_setting("vm.memory_mib", "1")
    assert parts.paths.user_settings_file.read_text() == before


def test_dump_settings():
    assert dump_settings({"vm": {"cpus": 2, "accel": "tcg"}, "version": 1}) == (
        'version = 1\n\n[vm]\ncpus = 2\naccel = "tcg"\n'
    )
    with pytest.raises(UsageError):
        dump_settings({"a": {"b": {"c": 1}}})


def test_folder_check_uses_these_paths(parts, tmp_path):
    own = parts.paths.config
    own.mkdir(parents=True, exist_ok=True)
    assert "cowork's own folder" in parts.check_folder(own).refusal
    assert isinstance(parts.check_folder(Path(tmp_path)).usable, bool)


def test_effective_policy_shows_connectors(parts):
    settings = parts.paths.user_settings_file
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('[mcp.servers.notes]\ncommand = "notes-mcp"\n')
    rows = {r.key: r for r in parts.effective_policy().rows}
    assert json.loads(rows["mcp.servers"].value) == {"notes": {"command": "notes-mcp"}}
    assert rows["mcp.servers"].layer == "user"
