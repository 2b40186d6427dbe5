"""``cowork doctor`` (disk use and readiness) and ``cowork reset`` (delete cowork's VM state).

The work is done by :mod:`cowork.host.doctor`; this module only asks and prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cowork.host import doctor
from cowork.paths import Paths


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="disk space used by images, sessions and overlays; can cowork start a VM here?",
    )
    p.add_argument("--disk", action="store_true", help="only the disk report, no checks")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "reset",
        help="delete cowork's VM state: every cowork VM, images, sessions, kept overlays",
        description=(
            "Stops and deletes every VM cowork recorded, then deletes guest images, session "
            "folders and kept overlays. Your folders, settings, audit log, staged changes, "
            "trash and keychain credentials are never touched; trusted folders are kept "
            "unless --forget-trust is given."
        ),
    )
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--forget-trust", action="store_true", help="also forget which folders you trusted"
    )
    p.set_defaults(func=cmd_reset)


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def print_disk(report: doctor.DiskReport) -> None:
    print("Disk space used by cowork:")
    for u in report.usages:
        line = f"  {u.kind:<15} {human(u.bytes):>10}  {u.path}"
        if u.reclaimable:
            line += f"\n  {'':<15} {human(u.reclaimable):>10}  reclaimable with `{u.how}`"
        print(line)
    print(f"  {'total':<15} {human(report.total):>10}")
    print(f"  {'reclaimable':<15} {human(report.reclaimable):>10}")


def cmd_doctor(args: argparse.Namespace) -> int:
    paths = Paths()
    print_disk(doctor.disk_usage(paths))
    if args.disk:
        return 0
    print("\nReadiness:")
    failed = 0
    for check in doctor.checks(paths):
        mark = "ok  " if check.ok else "FAIL"
        print(f"  [{mark}] {check.name}: {check.detail}")
        if not check.ok:
            failed += 1
            if check.fix:
                print(f"         fix: {check.fix}")
    return 1 if failed else 0


def cmd_reset(args: argparse.Namespace) -> int:
    paths = Paths()
    report = doctor.disk_usage(paths)
    vm_state = sum(u.bytes for u in report.usages if u.kind in doctor.RESET_KINDS)
    what = "every cowork VM, guest images, session folders and kept overlays"
    if args.forget_trust:
        what += ", and the list of trusted folders"
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "cowork: reset deletes " + what + "; run it on a terminal to confirm, "
                "or pass --yes",
                file=sys.stderr,
            )
            return 2
        answer = input(f"Delete {what} ({human(vm_state)})? Your folders are kept. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
    result = doctor.reset(paths, include_trust=args.forget_trust)
    for name in result.destroyed_vms:
        print(f"stopped and deleted VM {name}")
    for path in result.removed:
        print(f"deleted {path}")
    print(f"freed {human(result.freed)}")
    for error in result.errors:
        print(f"cowork: could not delete {error}", file=sys.stderr)
    return 1 if result.errors else 0
