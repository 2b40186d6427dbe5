"""``cowork daemon run|status|stop``, and how the other commands reach the service.

Commands that use sessions (``run``, ``exec``, ``shell``, ``vm …``) talk to the user's cowork
service; if none is running, :func:`connect_or_start` starts one in the background and says
so in one line. The person never has to start it themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from cowork.cli.common import pool_lines, progress
from cowork.daemon import protocol as p
from cowork.daemon.client import Client, DaemonGone, DaemonUnavailable
from cowork.errors import CoworkError
from cowork.paths import Paths

#: How long a freshly started service has to start listening.
START_TIMEOUT_S = 30.0


#: The systemd --user unit scripts/setup installs where systemd runs.
SYSTEMD_UNIT = "cowork-daemon.service"


def _systemd_unit_installed() -> bool:
    import shutil
    from pathlib import Path

    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return (
        Path("/run/systemd/system").is_dir()
        and shutil.which("systemctl") is not None
        and (config / "systemd" / "user" / SYSTEMD_UNIT).is_file()
    )


def start_background(paths: Paths) -> None:
    """Start the service: through its systemd --user unit when installed, else detached from
    this terminal with its output going to its log."""
    if paths == Paths() and _systemd_unit_installed():
        done = subprocess.run(
            ["systemctl", "--user", "start", SYSTEMD_UNIT], capture_output=True, check=False
        )
        if done.returncode == 0:
            return
    paths.daemon_state.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(paths.daemon_log, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "cowork", "daemon", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


@contextlib.contextmanager
def connect_or_start(paths: Paths, *, quiet: bool = False) -> Iterator[Client]:
    """A connection to the user's service, starting one first if none is running."""
    try:
        client = Client.connect(paths.daemon_socket)
    except DaemonUnavailable:
        if not quiet:
            progress("started the cowork service in the background (`cowork daemon stop` stops it)")
        start_background(paths)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client = Client.connect(paths.daemon_socket)
                break
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise CoworkError(
                        f"the cowork service did not start within {START_TIMEOUT_S:.0f} s; "
                        f"see its log at {paths.daemon_log}"
                    ) from None
                time.sleep(0.1)
    with client:
        yield client


@contextlib.contextmanager
def recover_if_gone(paths: Paths) -> Iterator[None]:
    """If the service dies under a request, start it again (which removes the VMs the dead
    one left) before the error reaches the person, so nothing is left running."""
    try:
        yield
    except DaemonGone:
        with contextlib.suppress(CoworkError), connect_or_start(paths, quiet=True):
            pass
        raise


def show_notice(event: p.Event) -> None:
    if isinstance(event, p.Notice):
        progress(event.message)


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.0f} MiB"


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from cowork.daemon.server import serve

    logging.getLogger().setLevel(logging.INFO)
    serve(Paths())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    paths = Paths()
    try:
        client = Client.connect(paths.daemon_socket)
    except DaemonUnavailable:
        print("the cowork service is not running (it starts when a command needs it)")
        return 0
    with client:
        info: p.DaemonInfo = client.call(p.DaemonStatus())
    print(f"pid:       {info.pid}")
    print(f"uptime:    {info.uptime_s:.0f} s")
    print(f"memory:    {_kib(info.rss_kib)}")
    print(f"socket:    {paths.daemon_socket}")
    for line in pool_lines(info.pool_size, info.pools):
        print(line)
    if not info.sessions:
        print("sessions:  none")
    for s in info.sessions:
        print(f"session:   {s.name}\t{s.state}\t{'busy' if s.busy else 'idle'}\t{s.workspace}")
        print(f"  VM (QEMU pid {s.qemu_pid or '-'}):  {_kib(s.qemu_rss_kib)}")
        print(f"  gateway (pid {s.gateway_pid or '-'}): {_kib(s.gateway_rss_kib)}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    paths = Paths()
    try:
        client = Client.connect(paths.daemon_socket)
    except DaemonUnavailable:
        print("the cowork service is not running")
        return 0
    with client:
        client.call(p.Shutdown())
    deadline = time.monotonic() + 60
    while paths.daemon_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    print("the cowork service stopped; its VMs were stopped and their disks deleted")
    return 0


def register(sub: Any) -> None:
    d = sub.add_parser("daemon", help="the per-user cowork service (started when needed)")
    dsub = d.add_subparsers(dest="daemon_command", metavar="ACTION")
    d.set_defaults(func=lambda _a: (d.print_help(), 2)[1])
    dsub.add_parser("run", help="run the service in the foreground").set_defaults(func=cmd_run)
    dsub.add_parser("status", help="sessions, uptime and memory").set_defaults(func=cmd_status)
    dsub.add_parser("stop", help="stop the service and its VMs").set_defaults(func=cmd_stop)


__all__ = ["connect_or_start", "register", "start_background"]
