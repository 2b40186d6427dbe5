"""``cowork exec``, ``cowork shell`` and ``cowork vm up|down|list|status``."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from typing import Any

from cowork.cli import vm_daemon as via_daemon
from cowork.cli.common import add_daemon_arg, add_workspace_arg, event_bus, progress, start_lines
from cowork.errors import CoworkError, UsageError
from cowork.host import session as session_mod
from cowork.host import workspace as ws_mod
from cowork.host.session import Session, VMSettings
from cowork.paths import Paths


def register(sub: Any) -> None:
    p = sub.add_parser(
        "exec",
        help="run one command in a sealed VM that sees only the workspace",
        description=(
            "Run CMD inside a freshly booted sealed VM that sees only DIR (at /workspace) and "
            "your ~/.claude folder (read-only), then tear the VM down. If a VM for DIR is "
            "already running (`cowork vm up`), the command runs there. A single CMD argument "
            "is run by the guest's shell; several are quoted and run as one command."
        ),
    )
    add_workspace_arg(p)
    p.add_argument("--keep", action="store_true", help="leave the VM running afterwards")
    p.add_argument("--timeout", type=float, default=None, help="kill the command after N s")
    add_daemon_arg(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("shell", help="an interactive shell in the sealed VM")
    add_workspace_arg(p)
    p.add_argument("--keep", action="store_true", help="leave the VM running afterwards")
    add_daemon_arg(p)
    p.set_defaults(func=cmd_shell)

    vm = sub.add_parser("vm", help="start, stop and inspect sealed VMs")
    vsub = vm.add_subparsers(dest="vm_command", metavar="ACTION")
    vm.set_defaults(func=lambda _a: (vm.print_help(), 2)[1])

    p = vsub.add_parser("up", help="boot a VM for a workspace and leave it running")
    add_workspace_arg(p)
    add_daemon_arg(p)
    p.set_defaults(func=cmd_up)

    p = vsub.add_parser("down", help="stop VMs and delete their disks")
    p.add_argument("name", nargs="?", help="the VM's name (see `cowork vm list`)")
    add_workspace_arg(p, required=False)
    p.add_argument("--all", action="store_true", help="every cowork VM of yours")
    add_daemon_arg(p)
    p.set_defaults(func=cmd_down)

    p = vsub.add_parser("list", help="list your cowork VMs")
    add_daemon_arg(p)
    p.set_defaults(func=cmd_list)

    p = vsub.add_parser("status", help="boot time, acceleration and mounts of a VM")
    p.add_argument("name", nargs="?")
    add_workspace_arg(p, required=False)
    add_daemon_arg(p)
    p.set_defaults(func=cmd_status)


def _command_text(argv: list[str]) -> str:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given: use `cowork exec --workspace DIR -- CMD...`")
    return argv[0] if len(argv) == 1 else shlex.join(argv)


def _session_for(args: argparse.Namespace, paths: Paths) -> tuple[Session, bool]:
    """An attached running session for the workspace, or a freshly booted one (owned)."""
    workspace = ws_mod.check_workspace(args.workspace, paths=paths)
    bus = event_bus(paths)
    state = session_mod.find_for_workspace(paths, workspace)
    if state is not None:
        try:
            return Session.attach(state.name, paths=paths, events=bus), False
        except CoworkError as exc:
            progress(f"not using VM {state.name}: {exc}")
    t0 = time.monotonic()
    sess = session_mod.open_session(workspace, paths=paths, events=bus, progress=progress)
    progress(f"VM {sess.name} ready in {time.monotonic() - t0:.1f} s")
    return sess, True


def _end(sess: Session, owned: bool, keep: bool) -> None:
    if owned and not keep:
        sess.close()
    else:
        if owned:
            progress(f"VM {sess.name} left running; stop it with `cowork vm down {sess.name}`")
        sess.detach()


def cmd_exec(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        return via_daemon.cmd_exec(args)
    command = _command_text(list(args.cmd))
    paths = Paths()
    sess, owned = _session_for(args, paths)
    try:
        out = sys.stdout.buffer
        err = sys.stderr.buffer

        def to_stdout(data: bytes) -> None:
            out.write(data)
            out.flush()

        def to_stderr(data: bytes) -> None:
            err.write(data)
            err.flush()

        # The channel records command.started / command.finished events itself.
        result = sess.channel.run(
            command, timeout=args.timeout, on_stdout=to_stdout, on_stderr=to_stderr
        )
        if result.timed_out:
            progress(f"the command was stopped after {args.timeout} s")
        return result.exited if 0 <= result.exited < 256 else 1
    finally:
        _end(sess, owned, args.keep)


def cmd_shell(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        return via_daemon.cmd_shell(args)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "cowork shell needs a terminal; to run a command without one, use "
            "`cowork exec --workspace DIR -- CMD`"
        )
    paths = Paths()
    sess, owned = _session_for(args, paths)
    try:
        size = shutil.get_terminal_size()
        pty = sess.channel.open_pty(
            term=os.environ.get("TERM", "xterm-256color"), cols=size.columns, rows=size.lines
        )
        try:
            return pty.interactive(sys.stdin.fileno(), sys.stdout.fileno())
        finally:
            pty.close()
    finally:
        _end(sess, owned, args.keep)


def cmd_up(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        return via_daemon.cmd_up(args)
    paths = Paths()
    workspace = ws_mod.check_workspace(args.workspace, paths=paths)
    existing = session_mod.find_for_workspace(paths, workspace)
    if existing is not None:
        raise UsageError(
            f"VM {existing.name} is already up for {workspace}; "
            f"stop it first with `cowork vm down {existing.name}`"
        )
    sess = session_mod.open_session(
        workspace, paths=paths, events=event_bus(paths), progress=progress
    )
    sess.detach()
    print(f"{sess.name}\tready in {sess.state.boot_seconds:.1f} s\t{sess.state.accel}")
    return 0


def _names(args: argparse.Namespace, paths: Paths) -> list[str]:
    if getattr(args, "all", False):
        return [s.name for s in session_mod.iter_states(paths)]
    if args.name:
        return [args.name]
    if args.workspace is not None:
        state = session_mod.find_for_workspace(paths, args.workspace)
        if state is None:
            raise UsageError(f"no cowork VM is up for {args.workspace}")
        return [state.name]
    raise UsageError("name a VM, or give --workspace DIR (or --all)")


def cmd_down(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        return via_daemon.cmd_down(args)
    paths = Paths()
    for name in _names(args, paths):
        session_mod.destroy_session(name, paths=paths, events=event_bus(paths, name))
        print(f"{name}\tdown")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        return via_daemon.cmd_list(args)
    paths = Paths()
    rows = []
    for state in session_mod.iter_states(paths):
        status = session_mod.default_backend(
            VMSettings(libvirt_uri=state.uri or None), event_bus(paths)
        ).status(state.name)
        rows.append((state.name, status.state.value, state.accel, state.workspace))
    if not rows:
        print("no cowork VMs are up")
        return 0
    for row in rows:
        print("\t".join(row))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        return via_daemon.cmd_status(args)
    paths = Paths()
    for name in _names(args, paths):
        state = session_mod.load_state(paths, name)
        status = session_mod.default_backend(
            VMSettings(libvirt_uri=state.uri or None), event_bus(paths)
        ).status(name)
        print(f"name:        {state.name}")
        print(f"state:       {status.state.value}")
        print(f"workspace:   {state.workspace}")
        print(*start_lines(state.start_mode, state.boot_seconds), sep="\n")
        print(f"accel:       {state.accel}")
        print(f"libvirt:     {state.uri}")
        print(f"agent uid:   {state.agent_uid}:{state.agent_gid}")
        print("mounts:")
        for m in state.mounts:
            mode = "read-only" if m["readonly"] else "read-write"
            print(f"  {m['target']:<28} {mode:<10} {m['source']}")
    return 0
