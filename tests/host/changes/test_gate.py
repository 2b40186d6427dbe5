"""The apply gate against crafted (hostile) change sets, on real folders; no VM."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cowork.guest.changes import MAGIC, TRAILER, export
from cowork.host import changes
from cowork.host.changes import store
from cowork.host.changes.wire import ChangeSetError
from cowork.paths import Paths


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def entry(path: bytes, kind: str = "file", size: int = 0, mode: int = 0o644, target=None):
    return {"path": b64(path), "kind": kind, "mode": mode, "size": size,
            "target": b64(target) if target else None, "opaque": False}  # fmt: skip


def stream(entries: list[dict], contents: list[bytes], contents_ok: bool = True) -> io.BytesIO:
    head = {"entries": entries, "truncated": False, "contents": contents_ok}
    data = MAGIC + json.dumps(head).encode() + b"\n" + b"".join(contents) + TRAILER
    return io.BytesIO(data)


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "->" + os.readlink(p)
        elif p.is_dir():
            out[rel] = f"dir {p.stat().st_mode & 0o777:o}"
        else:
            out[rel] = f"{p.stat().st_mode & 0o777:o} " + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def env(tmp_path):
    paths = Paths.under(tmp_path / "cowork")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("old a\n")
    (ws / "b.txt").write_text("old b\n")
    (ws / "dir").mkdir()
    (ws / "dir" / "c.txt").write_text("old c\n")
    (ws / ".claude").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    store.begin(paths, "s1", ws)
    return paths, ws, outside


def load(paths, s: io.BytesIO, max_bytes: int = 1 << 30):
    return store.store_stream(paths, "s1", s, max_bytes)


def test_a_real_upper_layer_round_trips_and_applies(env, tmp_path):
    paths, ws, _ = env
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "a.txt").write_text("new a\n")
    (upper / "new").mkdir()
    (upper / "new" / "n.txt").write_text("fresh\n")
    os.mknod(upper / "b.txt", 0o600 | 0o020000, 0)  # a whiteout: b.txt deleted
    buf = io.BytesIO()
    export(str(upper), 1 << 20, buf.write)
    buf.seek(0)
    cs = load(paths, buf)
    assert {(c.kind, c.path) for c in cs.changes} == {
        ("modified", "a.txt"),
        ("added", "new"),
        ("added", "new/n.txt"),
        ("deleted", "b.txt"),
    }
    assert changes.summary(cs.changes) == "edited 1 file, added 1, deleted 1"
    assert "+new a" in changes.diff(paths, "s1", next(c for c in cs.changes if c.path == "a.txt"))
    before = tree(ws)
    result = changes.apply(paths, "s1")
    assert set(result.applied) == {"a.txt", "new", "new/n.txt", "b.txt"}
    assert (ws / "a.txt").read_text() == "new a\n" and not (ws / "b.txt").exists()
    assert (ws / "new" / "n.txt").read_text() == "fresh\n"
    undone = changes.undo(paths)
    assert not undone.refused
    assert tree(ws) == before


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (b"../escape.txt", "'..'"),
        (b"/etc/passwd", "absolute"),
        (b"dir/../../x", "'..'"),
        (b".claude/settings.json", ".claude"),
        (b".CLAUDE/hooks.json", ".claude"),
        (b"dir/.Claude/x", ".claude"),
        (b"bad\nname", "control character"),
        (b"bad\xffname", "UTF-8"),
    ],
)
def test_hostile_paths_are_refused_and_nothing_is_written(env, path, why):
    paths, ws, outside = env
    before, out_before = tree(ws), tree(outside)
    cs = load(paths, stream([entry(b"dir", "dir", mode=0o755), entry(path, size=4)], [b"EVIL"]))
    assert any(why in r.reason for r in cs.refused), cs.refused
    assert all(c.path != path.decode("utf-8", "replace") for c in cs.changes)
    changes.apply(paths, "s1")
    assert tree(ws) == before and tree(outside) == out_before
    assert not (ws.parent / "escape.txt").exists()


def test_symlink_planted_then_file_inside_is_refused(env):
    paths, ws, outside = env
    s = stream(
        [entry(b"link", "symlink", target=str(outside).encode()), entry(b"link/pwned", size=3)],
        [b"bad"],
    )
    cs = load(paths, s)
    assert any(r.path == "link" and "points outside" in r.reason for r in cs.refused)
    assert any(r.path == "link/pwned" for r in cs.refused)
    changes.apply(paths, "s1")
    assert tree(outside) == {}
    assert not (ws / "link").exists()


def test_links_inside_the_folder_are_kept_and_never_followed(env):
    paths, ws, _outside = env
    s = stream(
        [entry(b"in", "symlink", target=b"dir/c.txt"), entry(b"up", "symlink", target=b"../x"),
         entry(b"in/x", size=1)],
        [b"x"],
    )  # fmt: skip
    cs = load(paths, s)
    assert {r.path for r in cs.refused} == {"up", "in/x"}
    changes.apply(paths, "s1")
    assert os.readlink(ws / "in") == "dir/c.txt"
    assert (ws / "dir" / "c.txt").read_text() == "old c\n"


def test_a_symlink_planted_on_the_host_is_never_followed(env):
    paths, ws, outside = env
    cs = load(paths, stream([entry(b"dir", "dir", mode=0o755), entry(b"dir/c.txt", size=3)],
                            [b"new"]))  # fmt: skip
    # After the session started, something replaces the folder with a link outside.
    (ws / "dir" / "c.txt").unlink()
    (ws / "dir").rmdir()
    (ws / "dir").symlink_to(outside)
    assert cs.changes
    with pytest.raises(changes.ApplyError, match="symbolic link"):
        changes.apply(paths, "s1", overwrite=True)
    assert tree(outside) == {}


def test_host_file_changed_since_start_is_a_conflict(env):
    paths, ws, _ = env
    load(paths, stream([entry(b"a.txt", size=5)], [b"guest"]))
    (ws / "a.txt").write_text("the user edited this meanwhile\n")
    result = changes.apply(paths, "s1")
    assert [c.path for c in result.conflicts] == ["a.txt"]
    assert "changed on the host" in (result.conflicts[0].conflict or "")
    assert (ws / "a.txt").read_text() == "the user edited this meanwhile\n"


def test_huge_sparse_file_is_refused_before_reading(env):
    paths, ws, _ = env
    s = stream([entry(b"big.img", size=10 * 2**30)], [], contents_ok=False)
    with pytest.raises(ChangeSetError, match="bytes"):
        load(paths, s, max_bytes=2**30)
    assert not (ws / "big.img").exists()


def test_cut_short_stream_is_refused(env):
    paths, _, _ = env
    with pytest.raises(ChangeSetError, match="cut short"):
        load(paths, io.BytesIO(stream([entry(b"x", size=100)], [b"short"]).getvalue()[:-8]))


def test_hundred_thousand_tiny_files(env):
    paths, ws, _ = env
    n = 100_000
    entries = [entry(b"many", "dir", mode=0o755)] + [
        entry(b"many/f%d" % i, size=1) for i in range(n)
    ]
    cs = load(paths, stream(entries, [b"x"] * n))
    assert len(cs.changes) == n + 1
    result = changes.apply(paths, "s1")
    assert len(result.applied) == n + 1
    assert len(os.listdir(ws / "many")) == n


def test_discard_leaves_the_host_untouched(env):
    paths, ws, _ = env
    before = tree(ws)
    load(paths, stream([entry(b"a.txt", size=3)], [b"new"]))
    changes.discard(paths, "s1")
    assert tree(ws) == before
    with pytest.raises(changes.ApplyError, match="discarded"):
        changes.apply(paths, "s1")


def test_undo_refuses_files_changed_since(env):
    paths, ws, _ = env
    load(paths, stream([entry(b"a.txt", size=3), entry(b"b.txt", size=3)], [b"AAA", b"BBB"]))
    changes.apply(paths, "s1")
    (ws / "b.txt").write_text("user again\n")
    result = changes.undo(paths)
    assert result.restored == ("a.txt",)
    assert [r.path for r in result.refused] == ["b.txt"]
    assert (ws / "a.txt").read_text() == "old a\n"
    assert (ws / "b.txt").read_text() == "user again\n"


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from cowork.host import changes
from cowork.paths import Paths
paths = Paths.under(Path(sys.argv[1]))
at = sys.argv[2]
def hook(step):
    if step == at:
        os.kill(os.getpid(), signal.SIGKILL)
changes.apply(paths, "s1", hook=hook)
"""


@pytest.mark.parametrize("point", ["planned", "saved", "prepared", "op:0", "op:2", "committed"])
def test_sigkill_part_way_leaves_old_or_new_and_recovery_rolls_back(env, tmp_path, point):
    paths, ws, _ = env
    load(paths, stream(
        [entry(b"a.txt", size=3), entry(b"b.txt", "whiteout"), entry(b"z.txt", size=3)],
        [b"AAA", b"ZZZ"],
    ))  # fmt: skip
    before = tree(ws)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "cowork"), point],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        check=False,
    )
    assert proc.returncode == -9
    for name in ("a.txt", "z.txt"):
        if (ws / name).exists():
            assert (ws / name).read_text() in ("old a\n", "AAA", "ZZZ")
    changes.recover(paths)
    assert not list(ws.rglob(".cowork-tmp-*"))
    if point == "committed":  # the apply had finished: recovery keeps it
        assert (ws / "a.txt").read_text() == "AAA"
    else:
        assert tree(ws) == before
        assert changes.show(paths, "s1").state == "pending"


def test_full_disk_during_apply_rolls_back(tmp_path):
    if os.getuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        paths = Paths.under(tmp_path / "cowork")
        ws = mnt / "ws"
        ws.mkdir()
        (ws / "a.txt").write_text("old a\n")
        (ws / "pad").write_bytes(b"p" * 300_000)
        store.begin(paths, "s1", ws)
        load(paths, stream(
            [entry(b"a.txt", size=3), entry(b"big", size=900_000)], [b"AAA", b"b" * 900_000]
        ))  # fmt: skip
        before = tree(ws)
        with pytest.raises(changes.ApplyError, match="space"):
            changes.apply(paths, "s1")
        assert tree(ws) == before
        assert not list(ws.glob(".cowork-tmp-*"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_end_of_run_without_a_terminal_keeps_nothing(env):
    paths, ws, _ = env
    before = tree(ws)
    load(paths, stream([entry(b"a.txt", size=3), entry(b"n.txt", size=1)], [b"new", b"n"]))
    out = io.StringIO()
    assert changes.end_of_run(paths, "s1", stdin=io.StringIO(""), out=out) is None
    text = out.getvalue()
    assert "edited 1 file, added 1" in text
    assert "Nothing was changed" in text and "cowork changes apply s1" in text
    assert tree(ws) == before


def test_end_of_run_on_a_terminal_keeps_when_asked(env):
    paths, ws, _ = env
    load(paths, stream([entry(b"a.txt", size=3)], [b"new"]))
    out = io.StringIO()
    result = changes.end_of_run(paths, "s1", stdin=io.StringIO("k\n"), out=out, interactive=True)
    assert result is not None and result.applied == ("a.txt",)
    assert (ws / "a.txt").read_text() == "new"


def test_change_set_serialises_to_json(env):
    paths, _, _ = env
    cs = load(paths, stream([entry(b"a.txt", size=3)], [b"new"]))
    again = json.loads(json.dumps(cs.to_json()))
    assert again["changes"][0]["path"] == "a.txt" and again["changes"][0]["kind"] == "modified"


def test_a_real_10_gb_sparse_file_in_the_upper_layer_is_refused_unread(env, tmp_path):
    paths, ws, _ = env
    upper = tmp_path / "upper-sparse"
    upper.mkdir()
    with open(upper / "huge.img", "wb") as f:
        f.truncate(10 * 2**30)
    buf = io.BytesIO()
    export(str(upper), 2**30, buf.write)
    assert len(buf.getvalue()) < 4096  # the guest did not send the bytes either
    buf.seek(0)
    with pytest.raises(ChangeSetError, match="more than"):
        load(paths, buf, max_bytes=2**30)
    assert not (ws / "huge.img").exists()
