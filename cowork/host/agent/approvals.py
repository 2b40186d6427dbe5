"""Approvals: which actions run, which are asked about, which are refused.

A risk assessment first (:class:`RuleAssessor`: deterministic rules; optionally
:class:`ClassifierAssessor` adds a model-based opinion that can only raise the risk), then the
approval mode turns the risk into a verdict (:class:`Approvals`):

    risk \\ mode       ask                      auto      deny-risky
    routine           run if read-only, else ask  run       run
    risky             ask                      ask       refuse
    forbidden         refuse                   refuse    refuse

Forbidden: reaching credentials, file tools outside /workspace, workspace configuration, and
network requests the egress policy would deny (asking cannot make them work).

Every reason is one plain-language sentence a non-technical person can judge. Any exception
while assessing refuses the action (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import enum
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit

from cowork.host.agent.loop import Decision, ToolCall, Verdict
from cowork.host.agent.settings import ApprovalMode
from cowork.host.agent.tools import READ_ONLY_TOOLS, TOOL_NAMES

#: ``egress_check(method, url) -> (allowed, reason)``: would the egress gateway allow it?
EgressCheck = Callable[[str, str], tuple[bool, str]]


class Risk(enum.IntEnum):
    ROUTINE = 0
    RISKY = 1
    FORBIDDEN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Assessment:
    risk: Risk
    reason: str
    rule: str


class Assessor(Protocol):
    def assess(self, call: ToolCall) -> Assessment: ...


ROUTINE = Assessment(Risk.ROUTINE, "This is routine work inside your folder.", "routine")

# --- patterns ------------------------------------------------------------------------

_CREDENTIAL_PATH = re.compile(
    r"(\.aws\b|\.ssh\b|\bid_(rsa|dsa|ecdsa|ed25519)\b|\.netrc\b|\.git-credentials\b|"
    r"\.docker/config\.json|\.kube/config|\.gnupg\b|\.config/gcloud|\.azure\b|"
    r"\.password-store|\.pgpass\b|\.npmrc\b|\.pypirc\b|/etc/(g)?shadow\b|/etc/sudoers|"
    r"\bkeychain\b|\bsecret-tool\b|find-generic-password|find-internet-password|"
    r"\bkeyring\s+get\b|/proc/[^/\s]+/environ|\bgnome-keyring)",
    re.IGNORECASE,
)
#: Well-known credential files, as a glob in a command might name them (``~/.a?s/c*``).
_CREDENTIAL_FILES = (
    ".aws/credentials", ".aws/config", ".ssh/id_rsa", ".ssh/id_ecdsa", ".ssh/id_ed25519",
    ".ssh/id_dsa", ".netrc", ".git-credentials", ".docker/config.json", ".kube/config",
    ".config/gcloud/credentials.db", ".pgpass", ".npmrc", ".pypirc", ".claude/.credentials.json",
)  # fmt: skip
_GLOB_CHARS = re.compile(r"[*?\[]")
#: A file search by a credential-like name (``find / -name credentials``).
_CREDENTIAL_SEARCH = re.compile(
    r"\bfind\s+(/|~|\$\{?HOME)\S*\s.*-i?(name|path|wholename|regex)\s+\S*(aws|ssh|credential|"
    r"id_rsa|id_ed25519|id_ecdsa|netrc|keyring)|\blocate\s+\S*(credential|id_rsa|\.aws|\.ssh)",
    re.IGNORECASE,
)
_HOME_ANCHOR = re.compile(r"^(~|\$\{?HOME\}?)(?=/|$)")
_HOMES = ("/home/agent", "/root", "/home/user")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{8,}={0,2}")
_SECRET_ENV = re.compile(
    r"\$\{?[A-Z0-9_]*(API_KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY)[A-Z0-9_]*",
    re.IGNORECASE,
)
_HOME_REF = re.compile(
    r"(^|[\s=:;|&(<>`'\"+,\[])~(/|\s|$|[a-z_])|\$\{?HOME\b|\bexpanduser\b|\bPath\.home\b|"
    r"getenv\(\s*HOME|environ\[\s*HOME|\bos\.homedir\b|(^|[\s=:'\"(])/(root|home|Users)(/|\b)",
    re.IGNORECASE,
)
_ALLOWED_ABS = (
    "/workspace",
    "/tmp",
    "/var/tmp",
    "/dev/null",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/dev/fd",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/opt",
    "/etc",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/self/fd",
)
_CURL_PIPE_SHELL = re.compile(
    r"\b(curl|wget|fetch)\b[^|;&]*\|\s*(sudo\s+)?(env\s+)?(ba|z|da|k|fi)?sh\b|"
    r"\b(curl|wget)\b[^|;&]*\|\s*(sudo\s+)?(python[0-9.]*|perl|ruby|node)\b|"
    r"(ba|z|da)?sh\s+<\(\s*(curl|wget)|(ba|z|da)?sh\s+-c\s+\$\(\s*(curl|wget)|"
    r"\b(iex|Invoke-Expression)\b.*\b(iwr|Invoke-WebRequest|DownloadString)",
    re.IGNORECASE,
)
_DECODE_EXEC = re.compile(
    r"(base64\s+(-d|--decode|-D)|xxd\s+-r|\bopenssl\s+(enc|base64)\s+-d|b64decode|"
    r"fromhex|\$'\\x|printf\s+['\"]?(\\x|%b))",
    re.IGNORECASE,
)
_EXEC_SINK = re.compile(r"\|\s*(sudo\s+)?(ba|z|da)?sh\b|\beval\b|\$\(|`|\bexec\(|\bsource\b")
_RAW_NET = re.compile(
    r"(^|[\s;|&(])(nc|ncat|netcat|socat|telnet)\s|/dev/(tcp|udp)/|\bsocket\.(socket|create_"
    r"connection)",
    re.IGNORECASE,
)
_DNS_TOOL = re.compile(r"(^|[\s;|&(])(dig|nslookup|host|ping|drill|resolvectl)\s", re.IGNORECASE)
_NET_TOOL = re.compile(
    r"(^|[\s;|&(])(curl|wget|http|httpie|aria2c|scp|sftp|rsync|ssh|ftp)\s|requests\.(get|post|"
    r"put|patch|delete)|urllib\.request|urlopen|http\.client|\bfetch\(|Invoke-WebRequest",
    re.IGNORECASE,
)
_UPLOAD = re.compile(
    r"(\s-d\s|\s-d['\"@]|\s--data(-binary|-raw|-urlencode)?[\s=]|\s-F\s|\s--form[\s=]|"
    r"\s-T\s|\s--upload-file[\s=]|\s--post-(data|file)[\s=]|-X\s*(POST|PUT|PATCH)|"
    r"--request[\s=](POST|PUT|PATCH)|--method[\s=](POST|PUT)|requests\.(post|put|patch)|"
    r"data\s*=|method\s*=\s*['\"]?(POST|PUT))",
    re.IGNORECASE,
)
_URL = re.compile(r"(?i)\b(https?|ftp)://[^\s'\"<>|;)]+")
_BARE_HOST_URL = re.compile(r"(?i)(?:^|\s)(?:curl|wget)\s+(?:-\S+\s+)*([a-z0-9.-]+\.[a-z]{2,}\S*)")

_REGENERABLE = {
    "build",
    "dist",
    "node_modules",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".tox",
    ".nox",
    "target",
    ".venv",
    "venv",
    ".cache",
    "coverage",
    "htmlcov",
    ".coverage",
    ".next",
    ".parcel-cache",
    "out",
}
_REGENERABLE_GLOB = re.compile(r"^(\*\.(pyc|pyo|o|class|tmp|log|orig|rej)|\.DS_Store)$")

# (pattern, reason, rule) checked on the normalised command: destructive or irreversible.
_DESTRUCTIVE: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"\bgit\s+push\b[^;&|]*(\s(-f|--force|--force-with-lease)\b|\s\+\S)"),
        "It would force-push, which can permanently erase other people's work on the server.",
        "git-force-push",
    ),
    (
        re.compile(r"\bgit\s+push\b[^;&|]*\s(--delete|-d|--mirror|--prune)\b"),
        "It would delete branches or tags on the shared server.",
        "git-push-delete",
    ),
    (
        re.compile(r"\bgit\s+push\b"),
        "It would publish commits from your folder to a server other people can see.",
        "git-push",
    ),
    (
        re.compile(
            r"\bgit\s+(reset\s+--hard|clean\s+-[a-z]*f|checkout\s+(--\s+)?\.(\s|$)|"
            r"restore\s+(--\S+\s+)*\.(\s|$)|branch\s+-D|stash\s+(drop|clear)|filter-branch|"
            r"filter-repo|reflog\s+expire|update-ref\s+-d|gc\s+--prune)"
        ),
        "It would throw away changes or history in your project that may not be recoverable.",
        "git-discard",
    ),
    (
        re.compile(r"(^|[\s;&|(])(sudo|su|doas|pkexec)(\s|$)"),
        "It asks for administrator rights, which routine work in your folder never needs.",
        "admin-rights",
    ),
    (
        re.compile(
            r"\b(mkfs(\.\w+)?|wipefs|shred|fdisk|parted|dd\s+[^;|&]*of=|shutdown|reboot|"
            r"poweroff|halt|killall|pkill|kill\s+-9\s+-1)\b"
        ),
        "It would erase data or stop the system, which cannot be undone.",
        "system-destructive",
    ),
    (
        re.compile(r"\bchmod\s+(-R\s+)?[0-7]*777\b|\bchmod\s+-R\b|\bchown\s+-R\b"),
        "It would change who may read or change many files at once.",
        "mass-permissions",
    ),
    (
        re.compile(r"\bcrontab\b|\bat\s+now\b|\bsystemctl\s+(enable|start)|nohup\b.*&\s*$"),
        "It would set up something to keep running or start again later without you.",
        "persistence",
    ),
    (
        re.compile(r"\btruncate\s+-s\s*0\b"),
        "It would empty the contents of a file.",
        "truncate",
    ),
)


def _normalise(command: str) -> str:
    """The command with quotes and backslashes removed, so ``.a""ws`` reads as ``.aws``."""
    return re.sub(r"[\"'\\]", "", command)


def _decoded_runs(text: str) -> list[str]:
    """Text hidden in base64 runs of ``text`` (what ``echo … | base64 -d`` would produce)."""
    out = []
    for run in _BASE64_RUN.findall(text):
        padded = run + "=" * (-len(run) % 4)
        try:
            decoded = base64.b64decode(padded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        if decoded.isprintable():
            out.append(decoded)
    return out


def _globs_a_credential_file(text: str) -> bool:
    """True when a path glob (``~/.a?s/c*``) could match a well-known credential file."""
    for token in _tokens(text):
        if not _GLOB_CHARS.search(token):
            continue
        pattern = _HOME_ANCHOR.sub(_HOMES[0], token)
        if not pattern.startswith("/"):
            continue  # relative to /workspace: the agent's own files
        for home in _HOMES:
            for cred in _CREDENTIAL_FILES:
                # PurePath.match: '*' stays within one path segment, as in the shell.
                if PurePosixPath(f"{home}/{cred}").match(pattern):
                    return True
    return False


def _reaches_credentials(command: str) -> bool:
    norm = _normalise(command)
    texts = [command, norm, *_decoded_runs(norm)]
    return any(
        _CREDENTIAL_PATH.search(t)
        or _SECRET_ENV.search(t)
        or _CREDENTIAL_SEARCH.search(t)
        or _globs_a_credential_file(t)
        for t in texts
    )


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[\s;&|()<>`=]+", text) if t]


def _hosts(urls: Iterable[str]) -> str:
    hosts = sorted({urlsplit(u).hostname or u for u in urls})
    return ", ".join(hosts[:3]) + (" and others" if len(hosts) > 3 else "")


class RuleAssessor:
    """Deterministic rules over a tool call; fast, explainable, no I/O except ``egress_check``."""

    def __init__(self, *, egress_check: EgressCheck | None = None) -> None:
        self.egress_check = egress_check

    def assess(self, call: ToolCall) -> Assessment:
        if call.name.startswith("mcp__"):  # a connector: asked, whatever its own hints say
            return Assessment(
                Risk.RISKY,
                "It uses a connector tool, which can act outside this computer.",
                "connector",
            )
        if call.name not in TOOL_NAMES:
            return Assessment(Risk.FORBIDDEN, f"cowork has no tool named {call.name}.", "unknown")
        if call.name == "bash":
            return self._bash(str(call.input.get("command", "")))
        if call.name == "web_fetch":
            return self._web_fetch(str(call.input.get("url", "")))
        return self._file(call)

    def _web_fetch(self, url: str) -> Assessment:
        host = urlsplit(url).hostname or url
        if self.egress_check is not None and not self.egress_check("GET", url)[0]:
            return Assessment(
                Risk.FORBIDDEN,
                f"The policy does not allow {host}; an administrator can grant it.",
                "egress-policy",
            )
        return ROUTINE

    # --- file tools ------------------------------------------------------------------
    def _file(self, call: ToolCall) -> Assessment:
        path = str(call.input.get("path") or ".")
        for text in (path, str(call.input.get("pattern") or ""), str(call.input.get("glob") or "")):
            if _CREDENTIAL_PATH.search(text):
                return Assessment(
                    Risk.FORBIDDEN,
                    "It tries to reach stored passwords or keys, which the agent never needs.",
                    "credentials",
                )
        if not _inside_workspace(path):
            return Assessment(
                Risk.FORBIDDEN,
                f"It tries to use {path}, which is outside the folder you shared.",
                "outside-workspace",
            )
        rel = _workspace_relative(path)
        first = rel.split("/", 1)[0]
        if call.name not in READ_ONLY_TOOLS:
            if first == ".claude":
                return Assessment(
                    Risk.FORBIDDEN,
                    "It would change the folder's agent settings, which only you may change.",
                    "workspace-config",
                )
            if first == ".git":
                return Assessment(
                    Risk.RISKY,
                    "It would edit version-control internals directly, which can corrupt history.",
                    "git-internals",
                )
            if rel.startswith(".github/workflows/") or rel.startswith(".gitlab-ci"):
                return Assessment(
                    Risk.RISKY,
                    "It would change automation that runs on a server when you publish.",
                    "ci-config",
                )
        base = posixpath.basename(rel)
        if re.fullmatch(
            r"\.env(\..+)?|.*\.(pem|key|p12|pfx|keystore|jks)|credentials.*|secrets?\..*", base
        ) and base not in {".env.example", ".env.sample", ".env.template"}:
            return Assessment(
                Risk.RISKY,
                f"The file {rel} may contain passwords or keys.",
                "secret-file",
            )
        return ROUTINE

    # --- bash ------------------------------------------------------------------------
    def _bash(self, command: str) -> Assessment:
        if not command.strip():
            return ROUTINE
        norm = _normalise(command)
        if _reaches_credentials(command):
            return Assessment(
                Risk.FORBIDDEN,
                "It tries to reach stored passwords, keys or secrets, which the agent never needs.",
                "credentials",
            )
        urls = [m.group(0) for m in _URL.finditer(command)]
        if not urls:
            urls = [f"https://{m}" for m in _BARE_HOST_URL.findall(norm)]
        uploads = bool(_UPLOAD.search(" " + norm))
        if urls and self.egress_check is not None:
            method = "POST" if uploads else "GET"
            for url in urls:
                allowed, why = self.egress_check(method, url)
                if not allowed:
                    host = urlsplit(url).hostname or url
                    return Assessment(
                        Risk.FORBIDDEN,
                        f"The network rules set by your administrator do not allow reaching "
                        f"{host} ({why}).",
                        "egress-denied",
                    )
        if _CURL_PIPE_SHELL.search(norm):
            return Assessment(
                Risk.RISKY,
                "It would download a script from the internet and run it without checking it.",
                "download-exec",
            )
        if _DECODE_EXEC.search(command) and (_EXEC_SINK.search(command) or _NET_TOOL.search(norm)):
            return Assessment(
                Risk.RISKY,
                "It runs or sends hidden (encoded) content, so what it really does is not visible.",
                "encoded-exec",
            )
        if _RAW_NET.search(norm):
            return Assessment(
                Risk.RISKY,
                "It opens a direct network connection that bypasses the usual web rules.",
                "raw-network",
            )
        if _DNS_TOOL.search(norm) and ("$(" in command or "`" in command or "$" in norm):
            return Assessment(
                Risk.RISKY,
                "It would leak information hidden inside network name lookups.",
                "dns-exfiltration",
            )
        if _NET_TOOL.search(norm) and ("$(" in command or "`" in command):
            return Assessment(
                Risk.RISKY,
                "It would send the output of another command over the internet.",
                "network-substitution",
            )
        if uploads and (_NET_TOOL.search(norm) or urls):
            granted = bool(urls) and self.egress_check is not None
            if not granted:
                where = _hosts(urls) if urls else "a server on the internet"
                return Assessment(
                    Risk.RISKY,
                    f"It would send data from your folder to {where}.",
                    "upload",
                )
        if _HOME_REF.search(command) or _HOME_REF.search(norm):
            return Assessment(
                Risk.RISKY,
                "It reaches into a home folder outside the folder you shared.",
                "outside-workspace",
            )
        outside = _outside_paths(norm)
        if outside:
            return Assessment(
                Risk.RISKY,
                f"It uses {outside[0]}, which is outside the folder you shared.",
                "outside-workspace",
            )
        for pattern, reason, rule in _DESTRUCTIVE:
            if pattern.search(norm):
                return Assessment(Risk.RISKY, reason, rule)
        deletion = _mass_deletion(norm)
        if deletion:
            return deletion
        return ROUTINE


def _inside_workspace(path: str) -> bool:
    if path.startswith("~") or "$" in path:
        return False
    if path.startswith("/"):
        norm = posixpath.normpath(path)
        return norm == "/workspace" or norm.startswith("/workspace/")
    norm = posixpath.normpath(path)
    return not (norm == ".." or norm.startswith("../"))


def _workspace_relative(path: str) -> str:
    norm = posixpath.normpath(path)
    if norm.startswith("/workspace"):
        norm = posixpath.relpath(norm, "/workspace")
    return "" if norm == "." else norm


def _outside_paths(norm: str) -> list[str]:
    found: list[str] = []
    has_cd = re.search(r"(^|[\s;&|(])cd\s", norm) is not None
    for word in _tokens(norm):
        if "://" in word:
            continue
        if word.startswith("/"):
            path = posixpath.normpath(word)
            if not any(path == p or path.startswith(p + "/") for p in _ALLOWED_ABS):
                found.append(word)
        elif (word == ".." or word.startswith("../")) and not has_cd:
            found.append(word)
    return found


def _mass_deletion(norm: str) -> Assessment | None:
    for segment in re.split(r"[;&|]+", norm):
        words = segment.split()
        if not words:
            continue
        if words[0] in {"rm", "rmdir"} or words[:2] == ["xargs", "rm"]:
            flags = "".join(w for w in words[1:] if w.startswith("-"))
            targets = [w for w in words[1:] if not w.startswith("-")]
            recursive = "r" in flags.lower() or "--recursive" in segment
            for target in targets:
                clean = target.rstrip("/")
                name = posixpath.basename(clean)
                if clean in {"", ".", "*", ".*", "/workspace", "~", "..", "./*", "/"}:
                    return _many_files()
                if recursive and name not in _REGENERABLE and not name.endswith(".egg-info"):
                    return _many_files()
                if "*" in name and not _REGENERABLE_GLOB.match(name) and recursive:
                    return _many_files()
                if name in {"*", "*.*"}:
                    return _many_files()
            if words[:2] == ["xargs", "rm"]:
                return _many_files()
        if words[0] == "find" and (" -delete" in segment or "-exec rm" in segment):
            names = re.findall(r"-name\s+(\S+)", segment)
            if not names or not all(_REGENERABLE_GLOB.match(n) or n in _REGENERABLE for n in names):
                return _many_files()
    return None


def _many_files() -> Assessment:
    return Assessment(
        Risk.RISKY,
        "It would delete a folder or many files at once, which cannot be undone.",
        "mass-delete",
    )


#: ``classify(call) -> (risk, reason)`` — an opinion from a model; see ClassifierAssessor.
Classifier = Callable[[ToolCall], tuple[Risk, str]]


class ClassifierAssessor:
    """Rules first; then a model-based classifier may raise (never lower) the risk of an
    action the rules found routine. A failing classifier makes the action risky (asked)."""

    def __init__(self, rules: Assessor, classify: Classifier) -> None:
        self.rules = rules
        self.classify = classify

    def assess(self, call: ToolCall) -> Assessment:
        first = self.rules.assess(call)
        if first.risk is not Risk.ROUTINE or call.name in READ_ONLY_TOOLS:
            return first
        try:
            risk, reason = self.classify(call)
            risk = Risk(risk)
        except Exception:
            return Assessment(
                Risk.RISKY, "cowork could not double-check this action, so it asks.", "classifier"
            )
        if risk > first.risk:
            return Assessment(risk, reason, "classifier")
        return first


class Approvals:
    """The gate: turns an assessment into run / ask / refuse for one approval mode."""

    def __init__(self, mode: ApprovalMode, assessor: Assessor) -> None:
        self.mode = ApprovalMode(mode)
        self.assessor = assessor

    def decide(self, call: ToolCall) -> Decision:
        try:
            return self._decide(call)
        except Exception as exc:  # fail closed
            return Decision(
                Verdict.REFUSE,
                "cowork could not check whether this action is safe, so it was not run.",
                risk="unknown",
                rule=f"error:{type(exc).__name__}",
            )

    def _decide(self, call: ToolCall) -> Decision:
        a = self.assessor.assess(call)
        risk = Risk(a.risk)
        if risk is Risk.FORBIDDEN:
            verdict = Verdict.REFUSE
        elif risk is Risk.RISKY:
            verdict = Verdict.REFUSE if self.mode is ApprovalMode.DENY_RISKY else Verdict.ASK
        elif self.mode is ApprovalMode.ASK and call.name not in READ_ONLY_TOOLS:
            verdict = Verdict.ASK
        else:
            verdict = Verdict.RUN
        reason = a.reason
        if verdict is Verdict.ASK and risk is Risk.ROUTINE:
            reason = "You chose to approve every action that changes something."
        return Decision(verdict, reason, risk=risk.label, rule=a.rule)
