"""Run one guest command in its own process group, so the host can kill all of it.

Standard library only and self-contained (run as a script by the agent user's sshd session:
``python3 /run/cowork/lib/cowork/guest/runner.py ...``), so it imports nothing from cowork.

    runner.py run --id ID [--cwd DIR] [--env K=V]... -- COMMAND
        Fork; the child starts a new session (so a new process group), changes to DIR, sets
        the variables, and execs ``bash -c COMMAND``. Its process group id is recorded in
        the job directory under ID while it runs. The runner exits with the command's status
        (128+N if a signal N ended it).
    runner.py kill ID
        Send SIGTERM to that process group, then SIGKILL to whatever is left after a grace
        period. Exits 0 if the job is gone (or was never there).

Contract:
- ID is 8-64 lowercase hex characters; anything else is refused (it names a file).
- The job directory belongs to the invoking user, mode 0700; one owned by anyone else, or a
  symlink, is refused, so another local user cannot point a kill at their choice of group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import sys
import time

JOBS_DIR_TEMPLATE = "/tmp/.cowork-jobs-{uid}"
KILL_GRACE = 1.0
_ID = re.compile(r"[0-9a-f]{8,64}\Z")


def jobs_dir() -> str:
    """The invoking user's job directory, created if missing, refused if not theirs."""
    path = JOBS_DIR_TEMPLATE.format(uid=os.getuid())
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SystemExit(f"runner: {path} is not a private directory of this user; remove it")
    return path


def _job_file(job_id: str) -> str:
    if not _ID.match(job_id):
        raise SystemExit(f"runner: job id {job_id!r} is not 8-64 lowercase hex characters")
    return os.path.join(jobs_dir(), job_id)


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def run(job_id: str, cwd: str | None, env: dict[str, str], command: str) -> int:
    path = _job_file(job_id)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or exits
        try:
            os.close(read_end)
            os.setsid()
            os.close(write_end)  # tells the parent the new group exists
            if cwd:
                os.chdir(cwd)
            os.environ.update(env)
            os.execvp("bash", ["bash", "-c", command])  # noqa: S606 - the command is the point
        except BaseException as exc:
            sys.stderr.write(f"runner: cannot start the command: {exc}\n")
        os._exit(127)
    os.close(write_end)
    os.read(read_end, 1)  # returns at EOF, once the child has its own group
    os.close(read_end)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)
    # The host's kill must end the command, not the runner that reports its status.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return _status(os.waitstatus_to_exitcode(status))


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = []
    if entries:
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat_line = fh.read()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat_line[stat_line.rfind(b")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill(job_id: str) -> int:
    path = _job_file(job_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0
    try:
        pgid = int(os.read(fd, 32).decode() or "0")
    finally:
        os.close(fd)
    if pgid <= 1:
        return 1
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return 0
        deadline = time.monotonic() + KILL_GRACE
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.02)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "kill":
        return kill(argv[1])
    if not argv or argv[0] != "run" or "--" not in argv:
        sys.stderr.write(
            "usage: runner.py run --id ID [--cwd DIR] [--env K=V]... -- COMMAND\n"
            "       runner.py kill ID\n"
        )
        return 2
    split = argv.index("--")
    opts, rest = argv[1:split], argv[split + 1 :]
    job_id: str | None = None
    cwd: str | None = None
    env: dict[str, str] = {}
    i = 0
    while i + 1 < len(opts):
        key, value = opts[i], opts[i + 1]
        if key == "--id":
            job_id = value
        elif key == "--cwd":
            cwd = value
        elif key == "--env" and "=" in value:
            k, _, v = value.partition("=")
            env[k] = v
        else:
            break
        i += 2
    if i != len(opts) or job_id is None or len(rest) != 1:
        sys.stderr.write("runner: bad arguments\n")
        return 2
    return run(job_id, cwd, env, rest[0])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
