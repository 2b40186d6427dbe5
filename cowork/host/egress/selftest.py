"""The gateway self-test run from inside the guest at every session start.

Contract (what MUST hold):
- It runs after the guest is up and the gateway's port is forwarded into it, before the
  session is handed to anyone. All probes run at once in ONE guest command: a bash script run
  by the shell that already runs the command, using bash's own ``/dev/tcp``, ``printf`` and
  ``/sys/class/net``: no interpreter or other program starts. The probe plan, which holds
  the proxy token, goes on its stdin, never argv, and the token is never exported to any
  process's environment.
- Probes that must fail: a host no grant covers, an IP literal, a loopback name and a
  loopback address, the proxy without its token and with a wrong token (on a granted host if
  there is one), a direct socket to an address outside the guest (and to the address a
  virtual NIC's host would have), a direct socket to a host name (``noproxy``: looked up in
  the guest and connected to directly, the system calls ``curl --noproxy '*'`` makes; the
  end-to-end tests show both see the same on reachable and unreachable targets), and any
  network interface other than loopback. One probe must succeed when an HTTPS grant exists:
  a CONNECT to a granted host, which the gateway accepts without contacting it (upstream
  connections are lazy); the probe closes before sending a byte, so no internet host is ever
  contacted.
- The guest only reports what it saw; the host judges. Any surprise, error, timeout or
  unreadable report raises :class:`SelfTestFailed` with a plain message (fail closed): a
  report must name only planned probes, each once, and end with ``end``; a probe still
  running after :data:`WATCHDOG_S` is killed and counts as unreported.
- Known limit: a foreign credential inside a granted TLS tunnel is not probed here, since
  checking it would send a request to the real upstream host; the gateway's own tests cover
  it against a loopback upstream.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cowork.errors import EgressError
from cowork.host.egress.grants import Grant

#: Generous for a guest under software emulation; the probes themselves take well under 1 s.
TIMEOUT_S = 30.0
#: An address in TEST-NET-1 (RFC 5737): never routed anywhere.
UNROUTABLE_IP = "192.0.2.1"
#: Where the host would be if the guest had a QEMU user-mode NIC (it must not have one).
SLIRP_HOST_IP = "10.0.2.2"
PROXY_USER = "cowork"


class SelfTestFailed(EgressError):
    """A self-test probe did not behave as the gateway's rules say it must."""


class _Runs(Protocol):
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = None,
        input: bytes | str | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class Probe:
    """One observation to make in the guest and the outcome it must have.

    ``kind`` is ``connect`` (a CONNECT through the proxy: ``target``, ``auth`` = ``token``,
    ``wrong`` or ``none``; ``expect`` is the status code), ``absolute`` (a plain-HTTP request
    in absolute form for ``target``; status code), ``socket`` (a direct TCP connection to
    ``target``, an address or a name looked up in the guest; expect ``fail``) or ``nics``
    (the guest's network interfaces; expect ``lo``).
    """

    name: str
    kind: str
    target: str
    expect: str
    auth: str = "token"
    what: str = ""  # plain words for the failure message

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "target": self.target, "auth": self.auth}


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    observed: str
    ok: bool


@dataclass(frozen=True)
class SelfTestReport:
    results: tuple[ProbeResult, ...]
    seconds: float
    positive: bool  # whether a must-succeed probe was part of it

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def failures(self) -> list[ProbeResult]:
        return [r for r in self.results if not r.ok]


def _granted_connect_target(grants: Sequence[Grant]) -> str | None:
    for g in grants:
        if g.scheme != "https":
            continue
        host = g.host[2:] if g.host.startswith("*.") else g.host
        if g.host.startswith("*."):
            host = f"cowork-selftest.{host}"
        return f"{host}:{g.effective_port}"
    return None


def build_plan(grants: Sequence[Grant], proxy_port: int) -> list[Probe]:
    """The probes for a session with ``grants`` (pure; tests may replace it)."""
    nonce = secrets.token_hex(4)
    granted = _granted_connect_target(grants)
    ungranted = f"cowork-selftest-{nonce}.invalid:443"
    probes = [
        Probe("interfaces", "nics", "", "lo", what="the VM has no network card"),
        Probe("ungranted-host", "connect", ungranted, "403",
              what="a host that no grant allows is refused"),
        Probe("ip-literal", "connect", f"{UNROUTABLE_IP}:443", "403",
              what="an IP address instead of a host name is refused"),
        Probe("loopback-name", "connect", f"localhost:{proxy_port}", "403",
              what="the name localhost is refused"),
        Probe("loopback-address", "absolute", f"127.0.0.1:{proxy_port}", "403",
              what="a loopback address is refused"),
        Probe("no-token", "connect", granted or ungranted, "407", auth="none",
              what="a request without the session's proxy token is refused"),
        Probe("wrong-token", "connect", granted or ungranted, "407", auth="wrong",
              what="a request with someone else's proxy token is refused"),
        Probe("raw-socket", "socket", f"{UNROUTABLE_IP}:443", "fail",
              what="a direct connection past the gateway fails"),
        Probe("raw-socket-host", "socket", f"{SLIRP_HOST_IP}:22", "fail",
              what="a direct connection to the host fails"),
        Probe("noproxy", "socket", granted or ungranted, "fail",
              what="a connection by name that bypasses the gateway (as curl --noproxy '*' "
                   "makes) fails"),
    ]  # fmt: skip
    if granted is not None:
        probes.append(
            Probe("granted-host", "connect", granted, "200",
                  what=f"a granted host ({granted}) is accepted")
        )  # fmt: skip
    return probes


#: Runs in the guest with the bash that already runs the command: every probe with bash's own
#: ``/dev/tcp`` and ``printf`` (no interpreter or other program to start), all at once.
#: Reads the plan on stdin: one line ``PORT TOKEN WRONG`` (the two proxy credentials,
#: Basic-encoded; never argv, never exported), then one line per probe ``NAME KIND TARGET
#: AUTH``. Prints ``NAME<TAB>OBSERVED`` per probe, as each finishes, then ``end``. Never
#: judges. A probe still running after WATCHDOG seconds is killed and so reports nothing
#: (the host counts that as a failure).
GUEST_SCRIPT = r"""
read -r port tok wrong || exit 3
say() { printf '%s\t%s\n' "$1" "${2//[$'\t\n\r']/ }"; }
proxy() {
  local h=""
  case $4 in token) h=$tok;; wrong) h=$wrong;; none) ;; *) say "$1" "error:auth $4"; return;; esac
  [ -n "$h" ] && h="Proxy-Authorization: Basic $h"$'\r\n'
  local line="CONNECT $3 HTTP/1.1"
  [ "$2" = absolute ] && line="GET http://$3/ HTTP/1.1"
  exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || { say "$1" error:no-proxy-listening; return; }
  printf '%s\r\nHost: %s\r\n%sConnection: close\r\n\r\n' "$line" "$3" "$h" >&3
  local v code rest
  if IFS=' ' read -r -t READ_TIMEOUT v code rest <&3 && [ -n "$code" ]; then say "$1" "$code"
  else say "$1" no-answer; fi
}
direct() {
  local r
  if r=$( { exec 3<>"/dev/tcp/${2%:*}/${2##*:}"; } 2>&1 ); then say "$1" connected
  else r=${r%%$'\n'*}; say "$1" "fail:${r##*: }"; fi
}
nics() {
  local n="" f
  for f in /sys/class/net/*; do n+=${n:+,}${f##*/}; done
  say "$1" "$n"
}
pids=()
while read -r name kind target auth; do
  case $kind in
    connect|absolute) proxy "$name" "$kind" "$target" "$auth" & ;;
    socket) direct "$name" "$target" & ;;
    nics) nics "$name"; continue ;;
    *) say "$name" unknown-probe; continue ;;
  esac
  pids+=($!)
done
( read -r -t WATCHDOG <> <(:); kill "${pids[@]}" ) >/dev/null 2>&1 &
dog=$!
wait "${pids[@]}"
kill "$dog" 2>/dev/null
printf 'end\n'
"""
#: Seconds after which the guest script stops waiting for its probes.
WATCHDOG_S = 8
#: Seconds a proxy probe waits for the gateway's status line.
_READ_TIMEOUT_S = 5
_FIELD = re.compile(r"[A-Za-z0-9._:/\[\]*@%+=-]+")


def _plan_text(port: int, token: str, wrong: str, probes: Sequence[Probe]) -> str:
    lines = [f"{port} {token} {wrong}"]
    for p in probes:
        fields = (p.name, p.kind, p.target or "-", p.auth)
        if not all(_FIELD.fullmatch(f) for f in fields):
            raise ValueError(f"self-test probe {p.name!r} has a field the guest cannot read")
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


def _parse(stdout: str, probes: Sequence[Probe]) -> dict[str, str]:
    """The guest's report; empty (every probe unreported) unless it is complete and sane."""
    names = {p.name for p in probes}
    lines = stdout.split("\n")
    if len(lines) < 2 or lines[-1] != "" or lines[-2] != "end":
        return {}
    seen: dict[str, str] = {}
    for line in lines[:-2]:
        name, tab, observed = line.partition("\t")
        if not tab or name not in names or name in seen:
            return {}
        seen[name] = observed
    return seen


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def judge(probe: Probe, observed: str) -> bool:
    if probe.expect == "fail":
        return observed.startswith("fail:")
    return observed == probe.expect


def run_selftest(
    channel: _Runs,
    *,
    token: str,
    grants: Sequence[Grant],
    proxy_port: int,
    plan: Callable[[Sequence[Grant], int], list[Probe]] | None = None,
    timeout: float = TIMEOUT_S,
) -> SelfTestReport:
    """Run every probe in one guest command and judge the answers. Never raises for a
    surprise (see :func:`check`), only reports it."""
    probes = (plan or build_plan)(grants, proxy_port)
    wrong = secrets.token_urlsafe(32)
    stdin = _plan_text(proxy_port, _basic(PROXY_USER, token), _basic(PROXY_USER, wrong), probes)
    start = time.monotonic()
    script = GUEST_SCRIPT.replace("WATCHDOG", str(WATCHDOG_S)).replace(
        "READ_TIMEOUT", str(_READ_TIMEOUT_S)
    )
    result = channel.run(script, input=stdin, timeout=timeout)
    seconds = time.monotonic() - start
    observed: Mapping[str, Any] = {}
    if getattr(result, "ok", False):
        out = result.stdout
        try:
            observed = _parse(out.decode() if isinstance(out, bytes) else str(out), probes)
        except UnicodeDecodeError:
            observed = {}
    else:
        why = "timed out" if getattr(result, "timed_out", False) else "failed"
        observed = {p.name: f"error:the probe command {why}" for p in probes}
    results = tuple(
        ProbeResult(
            p, str(observed.get(p.name, "no-report")), judge(p, str(observed.get(p.name, "")))
        )
        for p in probes
    )
    return SelfTestReport(results, seconds, any(p.expect == "200" for p in probes))


def check(
    channel: _Runs,
    *,
    token: str,
    grants: Sequence[Grant],
    proxy_port: int,
    plan: Callable[[Sequence[Grant], int], list[Probe]] | None = None,
    timeout: float = TIMEOUT_S,
) -> SelfTestReport:
    """Run the self-test; raise :class:`SelfTestFailed` on any surprise (fail closed)."""
    try:
        report = run_selftest(
            channel, token=token, grants=grants, proxy_port=proxy_port, plan=plan, timeout=timeout
        )
    except SelfTestFailed:
        raise
    except Exception as exc:
        raise SelfTestFailed(
            "cowork could not check the VM's network protection before starting "
            f"({type(exc).__name__}), so the session was stopped. Try again; if it keeps "
            "happening, report it."
        ) from exc
    if not report.ok:
        lines = "\n".join(
            f"  - expected: {r.probe.what or r.probe.name} (saw {r.observed})"
            for r in report.failures()
        )
        raise SelfTestFailed(
            "The VM's network protection did not behave as it must, so cowork stopped the "
            f"session before the agent could use it:\n{lines}\n"
            "Nothing was shared beyond the VM. Try again; if it keeps happening, do not use "
            "cowork on this computer until it is fixed, and report it."
        )
    return report
