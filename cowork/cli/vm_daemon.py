"""``cowork exec``, ``shell`` and ``vm up|down|list|status`` through the user's cowork service.

The service owns the sessions: a VM started with ``vm up`` keeps its egress gateway and
policy watcher after this command exits, so a later ``exec`` reaches what policy grants.
``--no-daemon`` (in :mod:`cowork.cli.vm`) runs the same library code in this process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from typing import BinaryIO

from cowork.cli.common import start_lines
from cowork.cli.daemon import connect_or_start, recover_if_gone, show_notice
from cowork.daemon import protocol as p
from cowork.daemon.client import Client, DaemonUnavailable
from cowork.errors import UsageError
from cowork.paths import Paths


def _workspace(args: argparse.Namespace, paths: Paths) -> str:
    from cowork.host.workspace import check_workspace

    return str(check_workspace(args.workspace, paths=paths))


def cmd_exec(args: argparse.Namespace) -> int:
    from cowork.cli.vm import _command_text

    command = _command_text(list(args.cmd))
    paths = Paths()
    workspace = _workspace(args, paths)
    out, err = sys.stdout.buffer, sys.stderr.buffer

    def write(stream: BinaryIO) -> Callable[[bytes], None]:
        def fn(data: bytes) -> None:
            stream.write(data)
            stream.flush()

        return fn

    with connect_or_start(paths) as client, recover_if_gone(paths):
        result = client.exec(
            p.Exec(workspace=workspace, command=command, timeout=args.timeout, keep=args.keep),
            on_stdout=write(out),
            on_stderr=write(err),
            on_event=show_notice,
        )
    if result.timed_out:
        print(f"cowork: the command was stopped after {args.timeout} s", file=sys.stderr)
    return result.exit_code


def cmd_shell(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "cowork shell needs a terminal; to run a command without one, use "
            "`cowork exec --workspace DIR -- CMD`"
        )
    paths = Paths()
    workspace = _workspace(args, paths)
    size = shutil.get_terminal_size()
    with connect_or_start(paths) as client, recover_if_gone(paths):
        result = client.shell(
            p.Shell(
                workspace=workspace,
                term=os.environ.get("TERM", "xterm-256color"),
                cols=size.columns,
                rows=size.lines,
                keep=args.keep,
            ),
            sys.stdin.fileno(),
            sys.stdout.fileno(),
        )
    return result.exit_code


def cmd_up(args: argparse.Namespace) -> int:
    paths = Paths()
    workspace = _workspace(args, paths)
    with connect_or_start(paths) as client:
        reply: p.SessionReply = client.call(p.VmUp(workspace=workspace), on_event=show_notice)
    s = reply.session
    if not reply.started:
        print(f"{s.name}\talready up\t{s.accel}")
        return 0
    print(f"{s.name}\tready in {s.boot_seconds:.1f} s\t{s.accel}")
    return 0


def _sessions(client: Client) -> list[p.SessionInfo]:
    reply: p.Sessions = client.call(p.ListSessions())
    return reply.sessions


def _names(args: argparse.Namespace, client: Client, paths: Paths) -> list[str]:
    sessions = _sessions(client)
    if getattr(args, "all", False):
        return [s.name for s in sessions]
    if args.name:
        return [args.name]
    if args.workspace is not None:
        ws = _workspace(args, paths)
        names = [s.name for s in sessions if s.workspace == ws]
        if not names:
            raise UsageError(f"no cowork VM is up for {args.workspace}")
        return names
    raise UsageError("name a VM, or give --workspace DIR (or --all)")


def _running(paths: Paths, args: argparse.Namespace) -> Client:
    """The running service; none running means no VMs (nothing is started to say so)."""
    try:
        return Client.connect(paths.daemon_socket)
    except DaemonUnavailable:
        what = f"no cowork VM named {args.name!r}" if args.name else "no cowork VM"
        raise UsageError(f"there is {what} up (the cowork service is not running)") from None


def cmd_down(args: argparse.Namespace) -> int:
    paths = Paths()
    with _running(paths, args) as client:
        for name in _names(args, client, paths):
            client.call(p.VmDown(name=name))
            print(f"{name}\tdown")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    paths = Paths()
    try:
        client = Client.connect(paths.daemon_socket)
    except DaemonUnavailable:
        sessions = []
    else:
        with client:
            sessions = _sessions(client)
    if not sessions:
        print("no cowork VMs are up")
        return 0
    for s in sessions:
        print("\t".join((s.name, s.state, s.accel, s.workspace)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    paths = Paths()
    with _running(paths, args) as client:
        for name in _names(args, client, paths):
            reply: p.SessionReply = client.call(p.VmStatus(name=name))
            s = reply.session
            print(f"name:        {s.name}")
            print(f"state:       {s.state} ({'busy' if s.busy else 'idle'})")
            print(f"workspace:   {s.workspace}")
            print(*start_lines(s.start_mode, s.boot_seconds), sep="\n")
            print(f"accel:       {s.accel}")
            print(f"changes:     {s.changes}")
            print(f"kept:        {'yes' if s.kept else 'no (removed when its command ends)'}")
            if s.agent_ids:
                print(f"agent uid:   {s.agent_ids}")
            if s.mounts:
                print("mounts:")
            for m in s.mounts:
                mode = "read-only" if m.readonly else "read-write"
                print(f"  {m.target:<28} {mode:<10} {m.source}")
    return 0
