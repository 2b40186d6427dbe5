"""Pre-trust canaries: cowork commands that take a workspace never act on its config on the
host, before or after trust (hooks and MCP servers run only inside the VM)."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

import cowork.cli.policy as policy_cli
import cowork.cli.trust as trust_cli
from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.policy import load_effective
from cowork.host.trust import TrustStore


def run_cli(monkeypatch, paths, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(policy_cli, "default_paths", lambda: paths)
    monkeypatch.setattr(trust_cli, "default_paths", lambda: paths)
    parser = argparse.ArgumentParser(prog="cowork")
    sub = parser.add_subparsers()
    policy_cli.register(sub)
    trust_cli.register(sub)
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = args.func(args)
        except Exception as exc:
            code = getattr(exc, "exit_code", 99)
            out.write(str(exc))
    return code, out.getvalue()


def test_untrusted_canary_is_not_acted_on(monkeypatch, paths, canary):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal: trust must refuse
    code, out = run_cli(monkeypatch, paths, "policy", "show", "--workspace", str(canary.workspace))
    assert code == 0
    assert canary.listener.url not in out.split("notes:")[0]
    assert "not trusted; ignored" in out
    code, out = run_cli(monkeypatch, paths, "trust", str(canary.workspace))
    assert code == 2 and "--yes" in out
    assert "runs the command" in out  # the summary was shown
    assert TrustStore(paths.trust_store).records() == []
    canary.assert_untouched()


def test_untrusted_canary_config_is_not_even_opened(monkeypatch, paths, canary):
    opened: list[str] = []
    real_open = __import__("os").open

    def spy(path, *a, **kw):
        opened.append(str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr("os.open", spy)
    policy = load_effective(paths, canary.workspace, TrustStore(paths.trust_store))
    assert not any(str(canary.workspace) in p for p in opened)
    assert policy.agent.base_url is None
    canary.assert_untouched()


def test_trusted_canary_only_narrows_and_runs_nothing_on_the_host(monkeypatch, paths, canary):
    code, out = run_cli(monkeypatch, paths, "trust", "--yes", str(canary.workspace))
    assert code == 0, out
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    policy = load_effective(paths, canary.workspace, TrustStore(paths.trust_store), bus)
    assert [s.layer for s in policy.sources] == ["workspace"]
    assert policy.agent.base_url is None
    assert policy.audit.otel_endpoint is None and policy.audit.log_path is None
    assert policy.mounts.claude_dir is None and policy.mounts.claude_writable is False
    assert policy.egress.grants == ()
    assert rec.of(Kind.POLICY_LOADED)
    code, out = run_cli(monkeypatch, paths, "policy", "show", "--workspace", str(canary.workspace))
    assert code == 0
    canary.assert_untouched()


def test_changed_canary_lapses_and_is_ignored_again(monkeypatch, paths, canary):
    store = TrustStore(paths.trust_store)
    run_cli(monkeypatch, paths, "trust", "--yes", str(canary.workspace))
    (canary.workspace / ".cowork.toml").write_text("[vm]\ncpus = 1\n")
    policy = load_effective(paths, canary.workspace, store)
    assert policy.sources == () and policy.vm.cpus == 2
    _, out = run_cli(monkeypatch, paths, "trust", "--list")
    assert "lapsed" in out
    canary.assert_untouched()


@pytest.mark.parametrize("answer", ["n\n", "\n", "maybe\n"])
def test_only_an_explicit_yes_trusts(monkeypatch, paths, canary, answer):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty(answer))
    code, _ = run_cli(monkeypatch, paths, "trust", str(canary.workspace))
    assert code == 1
    assert TrustStore(paths.trust_store).records() == []
    monkeypatch.setattr("sys.stdin", Tty("yes\n"))
    code, _ = run_cli(monkeypatch, paths, "trust", str(canary.workspace))
    assert code == 0 and len(TrustStore(paths.trust_store).records()) == 1
    canary.assert_untouched()


def test_policy_check_and_schema_commands(monkeypatch, paths, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[vm]\ncpus = 0\n")
    code, out = run_cli(monkeypatch, paths, "policy", "check", str(bad))
    assert code == 1 and f"{bad}:2: vm.cpus" in out
    good = tmp_path / "good.toml"
    good.write_text("[vm]\ncpus = 1\n")
    assert run_cli(monkeypatch, paths, "policy", "check", str(good))[0] == 0
    code, out = run_cli(monkeypatch, paths, "policy", "schema")
    assert code == 0 and '"title": "cowork policy"' in out
    code, out = run_cli(monkeypatch, paths, "policy", "show", "--json")
    assert code == 0 and '"layer": "default"' in out
