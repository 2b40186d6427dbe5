"""The hold after outside content: once a session read outside text, data going out is asked.

Pure decisions plus a small thread-safe state; no mitmproxy. The gateway's addon asks
:func:`carries_data_out` for every allowed request and, only for those that can carry data
out, asks the host (over the gateway's service pipe) for :meth:`OutboundHold.decide`.

- Before the session is marked, every request passes unchanged.
- After :meth:`OutboundHold.mark` (outside content entered the model's context), a request
  that can carry data out is, per ``agent.after_outside_content``: ``ask`` — asked about in
  plain words naming the destination and how much would leave; ``deny`` — refused; ``off`` —
  passed. A request the person cannot be asked about (no task attached an asker, the asker
  fails) is refused.

A request can carry data out when its method is anything but GET, HEAD or OPTIONS, when it is
the first step of a ``git push`` (``GET .../info/refs?service=git-receive-pack``), when it
asks for a protocol upgrade (a websocket carries data both ways), or when a read carries a
body anyway.

Not held (a known limit): data a read carries in its URL (a long query or path under a grant
whose paths allow it) or in its headers. A grant's exact paths and methods are the bound there;
a grant with broad paths (``/**``) on a host that logs requests is an exfiltration path after
outside content, and should not be given to sessions that read untrusted text.

What marks the session:

- a tool result from an outside origin (a web page, a connector tool), marked by the task;
- **every response the gateway delivers to the guest from an upstream** (its status line,
  headers and body are all written by that upstream; ``curl -i`` shows headers, and whatever a
  command prints reaches the model as its output), marked by the gateway itself
  (:meth:`OutboundHold.mark_delivered`) before the response leaves for the guest, so it holds
  for ``curl`` in bash, a script, a connector's own requests, or anything else in the VM.
  Responses the gateway writes itself (its refusals, a 502 for an unreachable upstream or a
  reflected credential) carry nothing from outside and do not mark. The model API is called
  from the host, never through the gateway, so the model's own replies do not mark.
  The response to a request that was let out marks too: the next request that can carry data
  out is then asked about.

Gateway marks count only in a session that runs an agent task: the hold is *armed* when a task
first attaches its asker (:meth:`OutboundHold.asking`) and stays armed for the rest of the
session (the agent may leave processes running). Commands a person types in a session where no
agent task ran (``cowork exec``, ``cowork shell``) are not marked and never held.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AfterOutside(enum.StrEnum):
    ASK = "ask"
    DENY = "deny"
    OFF = "off"


@dataclass(frozen=True)
class Outbound:
    """One request that can carry data out, as the gateway saw it."""

    method: str
    host: str
    port: int
    path: str  # already redacted
    nbytes: int
    grant_id: str = ""

    def plain(self) -> str:
        what = "git push" if _is_git_push(self.method, self.path) else f"{self.method} request"
        dest = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        return f"send {_size(self.nbytes)} to {dest} (a {what} to {self.path.split('?')[0]})"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def _is_git_push(method: str, path: str) -> bool:
    return "git-receive-pack" in path


def carries_data_out(
    method: str, path: str, headers: Sequence[tuple[str, str]] = (), nbytes: int = 0
) -> bool:
    """Can this request carry data out of the session? (Unknown shapes: yes.)

    ``nbytes`` is the size of the body as sent; a read with a body carries it out."""
    if method.upper() not in READ_METHODS or nbytes > 0:
        return True
    if _is_git_push(method, path):
        return True
    return any(k.lower() == "upgrade" for k, _ in headers)


@dataclass(frozen=True)
class Mark:
    origin: str
    source: str


#: ``asker(question, reason) -> approved``; may block while the person decides.
Asker = Callable[[str, str], bool]


@dataclass
class HoldVerdict:
    allowed: bool
    reason: str
    asked: bool = False


@dataclass
class OutboundHold:
    """One session's mark and the decision for data going out after it."""

    mode: Callable[[], str] = field(default=lambda: AfterOutside.ASK.value)
    _marks: list[Mark] = field(default_factory=list)
    _asker: Asker | None = None
    _armed: bool = False
    _gateway_sources: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the mark ------------------------------------------------------------------------
    def mark(self, origin: str, source: str) -> bool:
        """Record that outside content entered the session. True the first time."""
        with self._lock:
            first = not self._marks
            self._marks.append(Mark(origin, source))
            return first

    def mark_delivered(self, source: str) -> bool | None:
        """The gateway is delivering a response from ``source`` (a host) to the guest.

        Before any agent task ran in the session (not armed): nothing is recorded, None.
        Armed: the session is marked; True when this is the first response from ``source``
        (an event is due), False otherwise."""
        with self._lock:
            if not self._armed:
                return None
            if source in self._gateway_sources:
                return False
            self._gateway_sources.add(source)
            self._marks.append(Mark("network", source))
            return True

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._armed

    @property
    def marked(self) -> bool:
        with self._lock:
            return bool(self._marks)

    @property
    def marks(self) -> tuple[Mark, ...]:
        with self._lock:
            return tuple(self._marks)

    # --- who answers -----------------------------------------------------------------------
    @contextlib.contextmanager
    def asking(self, asker: Asker) -> Iterator[None]:
        """Route questions to ``asker`` while a task runs; afterwards nobody answers.

        Arms the hold for good: from now on responses delivered by the gateway mark it."""
        with self._lock:
            previous, self._asker = self._asker, asker
            self._armed = True
        try:
            yield
        finally:
            with self._lock:
                self._asker = previous

    # --- the decision ----------------------------------------------------------------------
    def current_mode(self) -> AfterOutside:
        try:
            return AfterOutside(self.mode())
        except Exception:  # an unreadable setting holds
            return AfterOutside.DENY

    def decide(self, request: Outbound) -> HoldVerdict:
        """Allow, ask or refuse ``request`` (which can carry data out). Fails closed."""
        with self._lock:
            marks = tuple(self._marks)
            asker = self._asker
        if not marks:
            return HoldVerdict(True, "no outside content in this session yet")
        mode = self.current_mode()
        if mode is AfterOutside.OFF:
            return HoldVerdict(True, "agent.after_outside_content is off")
        source = marks[0].source or marks[0].origin
        why = (
            f"The agent read outside content (from {source}) that could be trying to make it "
            f"{request.plain()}."
        )
        if mode is AfterOutside.DENY:
            return HoldVerdict(
                False,
                f"after outside content, the policy does not allow sending data out "
                f"({request.plain()}); an administrator can change "
                "agent.after_outside_content",
            )
        if asker is None:
            return HoldVerdict(
                False, f"nobody could be asked whether to {request.plain()}, so it was refused"
            )
        question = f"Allow cowork to {request.plain()}?"
        try:
            approved = asker(question, why) is True
        except Exception:
            log.warning("the approver failed while a request was held; refused")
            approved = False
        if approved:
            return HoldVerdict(True, "the person allowed it", asked=True)
        return HoldVerdict(
            False, f"the person declined to {request.plain()} after outside content", asked=True
        )
