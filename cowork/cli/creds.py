"""``cowork creds``: credentials in the OS keychain, by id. Values never travel in argv."""

from __future__ import annotations

import argparse
import getpass
import sys

from cowork.errors import UsageError
from cowork.host.secrets import KeyringSecrets, Secrets, check_id


def _store() -> Secrets:
    return KeyringSecrets()


def _read_value(credential_id: str) -> str:
    if sys.stdin.isatty():
        value = getpass.getpass(f"Value for credential {credential_id!r} (input hidden): ")
    else:
        value = sys.stdin.read()
        if value.endswith("\n"):
            value = value[:-1]
        if value.endswith("\r"):
            value = value[:-1]
    if not value:
        raise UsageError(f"credential {credential_id!r}: no value given; nothing was saved")
    return value


def cmd_set(args: argparse.Namespace) -> int:
    cid = check_id(args.id)
    value = _read_value(cid)
    _store().set(cid, value)
    print(f"Saved credential {cid!r} in the OS keychain.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for cid in _store().list_ids():
        print(cid)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    cid = check_id(args.id)
    _store().delete(cid)
    print(f"Deleted credential {cid!r}.")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "creds",
        help="manage credentials the egress gateway injects (kept in the OS keychain)",
        description="Credentials are stored in the OS keychain by id and added to requests "
        "by the host; the VM never sees them. Values are read from a hidden prompt, or from "
        "standard input when it is not a terminal - never from the command line.",
    )
    sub = p.add_subparsers(dest="creds_command", metavar="ACTION", required=True)
    s = sub.add_parser("set", help="save a credential (prompts for the value)")
    s.add_argument("id", help="credential id, e.g. anthropic")
    s.set_defaults(func=cmd_set)
    ls = sub.add_parser("list", help="list credential ids (never values)")
    ls.set_defaults(func=cmd_list)
    d = sub.add_parser("delete", help="delete a credential")
    d.add_argument("id")
    d.set_defaults(func=cmd_delete)
