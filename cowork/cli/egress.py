"""``cowork egress test``: what the egress policy would do with a request, and why."""

from __future__ import annotations

import argparse
from pathlib import Path

from cowork.cli.common import add_workspace_arg
from cowork.errors import UsageError
from cowork.host.egress.gate import explain_url
from cowork.host.egress.grants import HTTP_METHODS, Grant, host_matches
from cowork.host.policy import load_effective
from cowork.host.trust import TrustStore
from cowork.paths import default_paths


def effective_grants(workspace: Path) -> list[Grant]:
    """The grants in force for a session on ``workspace``, minus hosts policy denies."""
    paths = default_paths()
    policy = load_effective(paths, workspace.resolve(), TrustStore(paths.trust_store))
    denied = policy.egress.deny_hosts
    return [
        g
        for g in policy.egress.grants
        if not any(d == g.host or host_matches(d, g.host) for d in denied)
    ]


def cmd_test(args: argparse.Namespace) -> int:
    method = args.method.upper()
    if method not in HTTP_METHODS:
        raise UsageError(f"--method {args.method!r}: use one of {', '.join(sorted(HTTP_METHODS))}")
    if not args.workspace.is_dir():
        raise UsageError(f"--workspace {args.workspace}: not a folder")
    grants = effective_grants(args.workspace)
    decision = explain_url(args.url, method, grants)
    if decision.allowed and decision.grant is not None:
        g = decision.grant
        print(f"ALLOWED  {method} {args.url}")
        print(f"  grant: {g.id} ({g.scheme}://{g.host}:{g.effective_port})")
        if g.credential:
            print(f"  credential: {g.credential!r} injected as header {g.inject_header}")
            print("  any credential the VM sends itself is refused")
        print("  (at connect time the name must also resolve to a public address)")
        return 0
    print(f"DENIED   {method} {args.url}")
    print(f"  reason: {decision.reason}")
    if decision.grant is not None:
        g = decision.grant
        print(
            f"  closest grant: {g.id}: methods {', '.join(g.methods)}; paths {', '.join(g.paths)}"
        )
    if not grants:
        print("  no egress grants are in force for this workspace (deny by default)")
    return 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("egress", help="inspect the egress policy")
    sub = p.add_subparsers(dest="egress_command", metavar="ACTION", required=True)
    t = sub.add_parser(
        "test",
        help="explain what policy would do with a request",
        description="Explain whether the VM could reach URL through the egress gateway, "
        "which grant allows it and which credential would be injected.",
    )
    add_workspace_arg(t)
    t.add_argument("url", metavar="URL")
    t.add_argument("--method", "-X", default="GET", help="HTTP method (default GET)")
    t.set_defaults(func=cmd_test)
