"""The guest command runner: its own process group, a private job directory, kill by id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowork.guest import runner

RUNNER = str(Path(runner.__file__).resolve())


@pytest.fixture
def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    template = str(tmp_path / "jobs-{uid}")
    monkeypatch.setattr(runner, "JOBS_DIR_TEMPLATE", template)
    yield Path(template.format(uid=os.getuid()))


def _run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", RUNNER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,  # type: ignore[call-overload]
    )


def test_runs_in_its_own_process_group_and_reports_the_status(tmp_path: Path) -> None:
    job = "ab" * 8
    r = _run(
        "run",
        "--id",
        job,
        "--cwd",
        str(tmp_path),
        "--env",
        "X=1 2",
        "--",
        'echo "$X"; pwd; ps -o pgid= -p $$; ps -o pgid= -p $PPID; exit 9',
    )
    assert r.returncode == 9
    x, cwd, own_group, parent_group = r.stdout.split("\n")[:4]
    assert (x, cwd) == ("1 2", str(tmp_path))
    assert own_group.strip() != parent_group.strip()
    # The job file is gone once the command has finished.
    assert not os.path.exists(f"/tmp/.cowork-jobs-{os.getuid()}/{job}")


def test_a_signal_becomes_128_plus_n() -> None:
    assert _run("run", "--id", "cd" * 8, "--", "kill -TERM $$").returncode == 128 + 15


def test_kill_ends_the_whole_group(tmp_path: Path) -> None:
    job = "ef" * 8
    pids = tmp_path / "pids"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            RUNNER,
            "run",
            "--id",
            job,
            "--",
            f"sleep 1000 & echo $! > {pids}; sleep 1000",
        ],
    )
    try:
        deadline = time.monotonic() + 30
        while not (pids.exists() and pids.read_text().strip()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _run("kill", job).returncode == 0
        assert proc.wait(timeout=30) in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
        assert not runner._group_alive(int(pids.read_text()))
    finally:
        proc.kill()
        proc.wait()


def test_kill_of_an_unknown_job_is_a_no_op() -> None:
    assert _run("kill", "0" * 16).returncode == 0


@pytest.mark.parametrize("job", ["../../etc/passwd", "ABCDEF0123456789", "abc", "a" * 65, ""])
def test_job_ids_that_are_not_plain_hex_are_refused(job: str) -> None:
    with pytest.raises(SystemExit, match="job id"):
        runner._job_file(job)


def test_a_job_directory_someone_else_could_write_is_refused(jobs: Path) -> None:
    jobs.mkdir(mode=0o777)
    os.chmod(jobs, 0o777)  # noqa: S103 - the unsafe case under test
    with pytest.raises(SystemExit, match="not a private directory"):
        runner.jobs_dir()


def test_a_symlinked_job_directory_is_refused(jobs: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    jobs.symlink_to(target)
    with pytest.raises(SystemExit, match="not a private directory"):
        runner.jobs_dir()


def test_the_job_directory_is_created_private(jobs: Path) -> None:
    assert runner.jobs_dir() == str(jobs)
    assert (jobs.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["run"],
        ["run", "--id", "ab" * 8],
        ["run", "--bogus", "x", "--", "true"],
        ["run", "--id", "ab" * 8, "--", "a", "b"],
        ["kill"],
    ],
)
def test_bad_usage_exits_2(argv: list[str]) -> None:
    assert runner.main(argv) == 2
