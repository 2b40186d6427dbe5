"""Hot reload: a valid change takes effect and emits an event; a broken change is rejected
and the previous policy stays in force."""

from __future__ import annotations

import os
import threading

from cowork.host.events import EventBus, Kind, Recorder
from cowork.host.policy import PolicyWatcher
from cowork.host.trust import TrustStore, snapshot, summarize

WAIT_S = 10  # upper bound for the watcher to notice; not an assertion on speed


def replace(path, text):
    """Write the way editors and config tools do: a new file renamed into place."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def watch(paths, **kw):
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    done = threading.Event()
    bus.subscribe(
        lambda e: done.set() if e.kind in (Kind.POLICY_RELOADED, Kind.POLICY_REJECTED) else None
    )
    watcher = PolicyWatcher(paths, bus=bus, settle_s=0.05, **kw)
    return watcher, rec, done


def test_valid_change_applies_and_broken_change_keeps_previous(paths, caplog):
    paths.user_settings_file.write_text("[vm]\ncpus = 3\n")
    watcher, rec, done = watch(paths)
    assert watcher.current.vm.cpus == 3
    with watcher:
        replace(paths.user_settings_file, "[vm]\ncpus = 4\n")
        assert done.wait(WAIT_S)
        done.clear()
        assert watcher.current.vm.cpus == 4
        assert rec.of(Kind.POLICY_RELOADED)

        replace(paths.user_settings_file, "[vm]\ncpus = 'lots'\n")
        assert done.wait(WAIT_S)
        assert watcher.current.vm.cpus == 4
        (rejected,) = rec.of(Kind.POLICY_REJECTED)
        assert rejected.fields["kept_previous"] is True
        assert ":2: vm.cpus" in rejected.fields["problems"][0]
    assert "previous policy stays in force" in caplog.text


def test_reload_directly_and_listener(paths):
    watcher, _, _ = watch(paths)
    got = []
    watcher.on_reload(got.append)
    paths.user_settings_file.write_text("[agent]\nmax_turns = 7\n")
    assert watcher.reload() is True and got[0].agent.max_turns == 7
    paths.user_settings_file.write_text("[agent]\nmax_turns = [\n")
    assert watcher.reload() is False and watcher.current.agent.max_turns == 7


def test_workspace_change_lapses_trust_and_drops_its_layer(paths, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".cowork.toml").write_text("[vm]\ncpus = 1\n")
    store = TrustStore(paths.trust_store)
    store.trust(summarize(snapshot(ws)))
    watcher, _, done = watch(paths, workspace=ws, trust=store)
    assert watcher.current.vm.cpus == 1
    with watcher:
        replace(ws / ".cowork.toml", "[vm]\ncpus = 1\nmemory_mib = 512\n")
        assert done.wait(WAIT_S)
        assert watcher.current.vm.cpus == 2 and watcher.current.sources == ()
