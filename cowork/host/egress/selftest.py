"""The gateway self-test run from inside the guest at every session start.

Contract (what MUST hold):
- It runs after the guest is up and the gateway's port is forwarded into it, before the
  session is handed to anyone. All probes run in ONE guest command (a small standard-library
  Python script; the probe plan, which holds the proxy token, goes on its stdin, never argv).
- Probes that must fail: a host no grant covers, an IP literal, a loopback name and a
  loopback address, the proxy without its token and with a wrong token (on a granted host if
  there is one), a direct socket to an address outside the guest (and to the address a
  virtual NIC's host would have), ``curl --noproxy '*'``, and any network interface other
  than loopback. One probe must succeed when an HTTPS grant exists: a CONNECT to a granted
  host, which the gateway accepts without contacting it (upstream connections are lazy);
  the probe closes before sending a byte, so no internet host is ever contacted.
- The guest only reports what it saw; the host judges. Any surprise, error, timeout or
  unreadable report raises :class:`SelfTestFailed` with a plain message (fail closed).
- Known limit: a foreign credential inside a granted TLS tunnel is not probed here, since
  checking it would send a request to the real upstream host; the gateway's own tests cover
  it against a loopback upstream.
"""

from __future__ import annotations

import base64
import json
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
    ``target``; expect ``fail``), ``noproxy`` (curl with --noproxy '*' to ``target``; expect
    ``fail``) or ``nics`` (the guest's network interfaces; expect ``lo``).
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
        Probe("curl-noproxy", "noproxy", f"https://{(granted or ungranted).split(':')[0]}/", "fail",
              what="curl --noproxy '*' (bypassing the gateway) fails"),
    ]  # fmt: skip
    if granted is not None:
        probes.append(
            Probe("granted-host", "connect", granted, "200",
                  what=f"a granted host ({granted}) is accepted")
        )  # fmt: skip
    return probes


#: Runs in the guest with its own python3 (standard library only). Reads the plan on stdin,
#: prints one JSON object: probe name -> what was observed. Never judges.
GUEST_SCRIPT = r"""
import json, os, socket, subprocess, sys, threading
plan = json.loads(sys.stdin.read())
port, auth = plan["proxy_port"], plan["auth"]
out = {}
def status(sock):
    data = b""
    while b"\r\n" not in data and len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    parts = data.split(b" ", 2)
    return parts[1].decode("ascii", "replace") if len(parts) > 1 else "no-answer"
def through_proxy(p):
    head = {"token": auth["token"], "wrong": auth["wrong"], "none": None}[p["auth"]]
    extra = ("Proxy-Authorization: Basic " + head + "\r\n") if head else ""
    if p["kind"] == "connect":
        line = "CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (p["target"], p["target"])
    else:
        line = "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n" % (p["target"], p["target"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((line + extra + "Connection: close\r\n\r\n").encode())
        return status(s)
def one(p):
    try:
        k = p["kind"]
        if k == "nics":
            out[p["name"]] = ",".join(sorted(os.listdir("/sys/class/net")))
        elif k in ("connect", "absolute"):
            out[p["name"]] = through_proxy(p)
        elif k == "socket":
            host, _, prt = p["target"].rpartition(":")
            try:
                socket.create_connection((host, int(prt)), timeout=1.5).close()
                out[p["name"]] = "connected"
            except OSError as e:
                out[p["name"]] = "fail:" + type(e).__name__
        elif k == "noproxy":
            r = subprocess.run(["curl", "--noproxy", "*", "-sS", "-o", "/dev/null",
                                "--max-time", "3", p["target"]], capture_output=True)
            out[p["name"]] = "fail:exit%d" % r.returncode if r.returncode else "succeeded"
        else:
            out[p["name"]] = "unknown-probe"
    except Exception as e:
        out[p["name"]] = "error:" + type(e).__name__
threads = [threading.Thread(target=one, args=(p,)) for p in plan["probes"]]
for t in threads:
    t.start()
for t in threads:
    t.join(20)
print(json.dumps(out))
"""


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
    stdin = json.dumps(
        {
            "proxy_port": proxy_port,
            "auth": {"token": _basic(PROXY_USER, token), "wrong": _basic(PROXY_USER, wrong)},
            "probes": [p.to_json() for p in probes],
        }
    )
    start = time.monotonic()
    # -I -S: no site packages, no user paths, a faster start under emulation.
    result = channel.run(["python3", "-I", "-S", "-c", GUEST_SCRIPT], input=stdin, timeout=timeout)
    seconds = time.monotonic() - start
    observed: Mapping[str, Any] = {}
    if getattr(result, "ok", False):
        try:
            parsed = json.loads(
                result.stdout.decode() if isinstance(result.stdout, bytes) else result.stdout
            )
            observed = parsed if isinstance(parsed, dict) else {}
        except (ValueError, UnicodeDecodeError):
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
