"""Helpers shared by the CLI's command modules: progress output and the event bus."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cowork.host.events import AuditLog, EventBus, Kind
from cowork.paths import Paths

if TYPE_CHECKING:
    from cowork.host.export import Exporter


def progress(message: str) -> None:
    """Progress goes to stderr so that a command's own output on stdout stays clean."""
    print(f"cowork: {message}", file=sys.stderr, flush=True)


def audit_log_path(paths: Paths) -> Path:
    """``audit.log_path`` from admin/user policy, else the default in cowork's data folder."""
    from cowork.host.policy import load_policy

    configured = load_policy(paths).audit.log_path
    return Path(configured).expanduser() if configured is not None else paths.audit_log


def audit_log(paths: Paths) -> AuditLog:
    """The audit log, with its anchors, exported to the collector when one is set."""
    audit = AuditLog(audit_log_path(paths), anchors=paths.audit_anchors)
    exporter = _exporter(paths, audit.path)
    if exporter is not None:
        audit.add_listener(exporter.enqueue)
    return audit


def event_bus(paths: Paths, session: str | None = None) -> EventBus:
    """A bus whose events are also appended to the audit log (and exported)."""
    bus = EventBus(session=session)
    audit = audit_log(paths)
    audit.add_listener(_announce_refusal)
    bus.subscribe(audit)
    return bus


_EXPORTERS: dict[Path, Exporter] = {}


def _exporter(paths: Paths, log_path: Path) -> Exporter | None:
    """One exporter per process when ``audit.otel_endpoint`` is set; flushed at exit."""
    import atexit

    from cowork.host.export import Exporter, ExportSettings
    from cowork.host.policy import load_policy

    audit = load_policy(paths).audit
    if audit.otel_endpoint is None:
        return None
    queue = paths.export_queue
    if queue in _EXPORTERS:
        return _EXPORTERS[queue]

    def workspace_of(name: str) -> str | None:
        from cowork.host.session import load_state

        try:
            return load_state(paths, name).workspace
        except Exception:
            return None

    def dropped(count: int, first: int, last: int) -> None:
        bus = EventBus()
        bus.subscribe(AuditLog(log_path, anchors=paths.audit_anchors))
        bus.emit(Kind.EXPORT_DROPPED, count=count, first_seq=first, last_seq=last)

    exporter = Exporter(
        ExportSettings(
            endpoint=audit.otel_endpoint,
            protocol=audit.otel_protocol,
            queue_dir=queue,
            max_bytes=audit.export_queue_mib * 1024 * 1024,
        ),
        workspace_of=workspace_of,
        on_dropped=dropped,
    )
    _EXPORTERS[queue] = exporter
    atexit.register(exporter.close, 3.0)
    return exporter


def _announce_refusal(line: dict[str, Any]) -> None:
    """Beside every refusal, its event number and the commands that explain it."""
    from cowork.host.why import short_notice

    notice = short_notice(line)
    if notice is not None:
        progress(notice)


def add_workspace_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--workspace",
        "-w",
        type=Path,
        required=required,
        metavar="DIR",
        help="the folder to share with the VM (read-write at /workspace)",
    )


def add_daemon_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-daemon",
        action="store_true",
        help="run in this process instead of in the cowork service (scripts, tests)",
    )


def start_lines(mode: str, seconds: float) -> list[str]:
    """The ``boot time`` and ``started by`` lines of ``cowork vm status``; a guest taken
    from the pool booted before it was asked for, so it has no boot time of its own."""
    lines = [] if mode == "pool" else [f"boot time:   {seconds:.1f} s"]
    return [*lines, f"started by:  {started_by(mode, seconds)}"]


def started_by(mode: str, seconds: float) -> str:
    """How a VM started, for ``cowork vm status``: ``pool (taken in 12 ms)``, ``restore
    (3.1 s to ready)``."""
    if mode == "pool":
        return f"pool (taken in {seconds * 1000:.0f} ms)"
    return f"{mode} ({seconds:.1f} s to ready)"


def pool_lines(size: int, pools: list[Any]) -> list[str]:
    """The warm pool lines of ``cowork daemon status``."""
    if not pools:
        if size <= 0:
            return ["pool:      off (vm.pool_size = 0)"]
        return [
            f"pool:      on (vm.pool_size = {size}); nothing waiting yet (a folder gets its "
            "pool after its first session)"
        ]
    out = []
    for pool in pools:
        out.append(
            f"pool:      {pool.waiting} of {pool.size} waiting for {pool.workspace} "
            f"({pool.changes} changes)"
        )
        if pool.guests:
            out.append(f"  waiting VMs: {', '.join(pool.guests)}")
        if pool.failures:
            out.append(
                f"  filling failed {pool.failures} time(s) in a row ({pool.last_error}); "
                f"next try in {pool.retry_in_s:.0f} s"
            )
    return out
