"""Approvals: which actions run, which are asked about, which are refused.

A risk assessment first (:class:`RuleAssessor`: deterministic rules; optionally
:class:`ClassifierAssessor` adds a model-based opinion that can only raise the risk), then the
approval mode turns the risk into a verdict (:class:`Approvals`):

    risk \\ mode       ask                      auto      deny-risky
    routine           run if read-only, else ask  run       run
    risky             ask                      ask       refuse
    forbidden         refuse                   refuse    refuse

Forbidden: reaching credentials, file tools outside /workspace, workspace configuration,
network requests the egress policy would deny (asking cannot make them work), and what only an
attacker needs whatever host it goes to: the environment or the folder's files sent to a paste
service, an archive of the whole folder sent to another computer, a CI step that sends the CI
service's secrets, access to an account given to a person or a key, code fetched and run
unseen, the network settings or the shell history changed, tunnels, commands read out of a
file and run, a skill asked for by a path instead of a name.

A push is a push however it is spelled (``git -C dir push``, ``git -c k=v push``, ``git
subtree push``, ``git lfs push``, ``hg push``): asked. A CI configuration is judged by the
commands it would run on the server, with the rules for scripts written into the folder.

A shell command is judged as written and as the shell would read it
(:mod:`cowork.host.agent.shellwords`: dequoted, ANSI-C strings decoded, variables set in the
same command substituted, ``eval``/``sh -c`` text read again); the worse verdict wins. What
cannot be read with confidence (a computed program name, text piped into a shell, aliases,
``IFS`` tricks) is risky, and decoding hidden text into a shell is forbidden. Writing the
workspace configuration (``.claude/``, ``.cowork.toml``, ``.mcp.json``, in any letter case)
is forbidden, from the file tools and from the shell.

Every reason is one plain-language sentence a non-technical person can judge. Any exception
while assessing refuses the action (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import enum
import posixpath
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit

from cowork.host.agent import shellwords
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
    #: Its effects stay inside the shared folder, so staged changes make it reviewable and
    #: undoable (auto mode then runs it without asking). Never true for anything that reaches
    #: the network, another machine, or files outside the folder.
    reversible: bool = False


class Assessor(Protocol):
    def assess(self, call: ToolCall) -> Assessment: ...


ROUTINE = Assessment(Risk.ROUTINE, "This is routine work inside your folder.", "routine")

# --- patterns ------------------------------------------------------------------------

_CREDENTIAL_PATH = re.compile(
    r"(\.aws\b|\.ssh\b|\bid_(rsa|dsa|ecdsa|ed25519)\b|\.netrc\b|\.git-credentials\b|"
    r"\.docker/config\.json|\.kube/config|\.gnupg\b|\.config/gcloud|\.azure\b|"
    r"\.password-store|\.pgpass\b|\.credentials\.json\b|\.vault-token\b|\.config/(gh|hub|op|"
    r"Bitwarden|1Password|google-chrome|chromium|BraveSoftware|microsoft-edge|keepassxc)\b|"
    r"\.cargo/credentials|\.terraform\.d/credentials|\.mozilla\b|\.local/share/keyrings|"
    r"\.npmrc\b|\.pypirc\b|/etc/(g)?shadow\b|/etc/sudoers|"
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
    r"id_rsa|id_ed25519|id_ecdsa|netrc|keyring|\.pem|\.key\b|\.p12|\.kdbx|secret|token|passw)|"
    r"\b(grep|egrep|rg|ag|ack)\b[^;&|]*(PRIVATE KEY|AKIA|passw|secret|token|api.?key)[^;&|]*"
    r"\s(/(?!workspace\b|tmp\b)|~|\$\{?HOME\}?)\S*(\s|$)|"
    r"\blocate\s+\S*(credential|id_rsa|\.aws|\.ssh)",
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
    r"\b(curl|wget)\b[^|;&]*\|\s*(sudo\s+)?(python[0-9.]*|perl|ruby|node|php)\b"
    r"(?!\s+(-[A-Za-z]*[cemnpEr]\b|[\w./-]+\.(py|pl|rb|js|php)\b)(?![^;&|]*\b(exec|eval)\s*\())|"
    r"\b(eval|source|\.)\s+(<\(\s*|\$\(\s*)(curl|wget)\b|"
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
    r"\s-T\s|\s--upload-file[\s=]|\s--post-(data|file)[\s=]|-X\s*(POST|PUT|PATCH|DELETE)|"
    r"--request[\s=](POST|PUT|PATCH|DELETE)|--method[\s=](POST|PUT|DELETE)|"
    r"requests\.(post|put|patch|delete)|\shttps?\s+(POST|PUT|PATCH|DELETE)\s|"
    r"data\s*=|method\s*=\s*['\"]?(POST|PUT))",
    re.IGNORECASE,
)
_URL = re.compile(r"(?i)\b(https?|ftp)://[^\s'\"<>|;)]+")
_BARE_HOST_URL = re.compile(r"(?i)(?:^|\s)(?:curl|wget)\s+(?:-\S+\s+)*([a-z0-9.-]+\.[a-z]{2,}\S*)")

#: Looking through the environment for secrets (``env | grep -i token``).
_ENV_HUNT = re.compile(
    r"(^|[\s;&|(])(env|printenv|set|export\s+-p|declare\s+-x|compgen\s+-v)\s*(\||$|;)"
    r"[^;&]*\b(key|token|secret|passw|cred|auth)",
    re.IGNORECASE,
)
#: Actions whose effect on the world cannot be taken back: (pattern, reason, rule).
_IRREVERSIBLE: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(
            r"(^|[\s;&|(])(npm|yarn|pnpm)\s+((npm\s+)?publish|unpublish|deprecate|undeprecate|"
            r"dist-tags?\s+(add|rm|set)|owner\s+(rm|remove)|access\s+(set|public|restricted|"
            r"revoke|2fa)|team\s+(create|destroy|rm)|org\s+rm|hook\s+(add|rm|update)|"
            r"star|unstar|tag)\b|\btwine\s+(upload|register)\b|"
            r"\b(cargo|poetry|flit|hatch|pdm)\s+publish\b|\bcargo\s+yank\b|"
            r"\bcargo\s+owner\s+(-r|--remove)\b|\bgem\s+(push|yank)\b|"
            r"\bgem\s+owner\s+\S+\s+(-r|--remove)\b|\b(docker|podman|helm)\s+push\b|"
            r"\bpython[0-9.]*\s+(-m\s+)?twine\s+(upload|register)\b|\buv\s+publish\b|"
            r"\bpython[0-9.]*\s+setup\.py\s+(upload|register)\b"
        ),
        "It would change a package published for everyone to download, which cannot be taken back.",
        "publish",
    ),
    (
        re.compile(
            r"(^|[\s;&|(])(mail|mailx|sendmail|swaks|msmtp|mutt|s-nail|ssmtp)(\s|$)|\bsmtplib\b|"
            r"\bnodemailer\b|\bsendgrid\b|\bgit\s+(send-email|imap-send)\b"
        ),
        "It would send an email, which cannot be unsent.",
        "send-mail",
    ),
    (
        re.compile(
            r"\bgh\s+(pr\s+(create|merge|comment|close|review|edit)|issue\s+(create|comment|"
            r"close|edit|delete)|release\s+(create|upload|delete|edit)|repo\s+(create|delete|"
            r"edit|rename|archive)|gist\s+(create|edit|delete)|api\s+.*(-X\s*(POST|PUT|PATCH|"
            r"DELETE)|--method\s+(POST|PUT|PATCH|DELETE)|\s-[fF]\s))",
            re.IGNORECASE,
        ),
        "It would change something on GitHub that other people can see.",
        "network-write",
    ),
    (
        re.compile(
            r"\b(scp|sftp)\s|\brsync\s[^;&|]*\S+@?[\w.-]+:|\baws\s+s3\s+(cp|mv|sync|rm|rb|mb)\b|"
            r"\bgsutil\s+(cp|mv|rm|rsync)\b|\brclone\s+(copy|sync|move|delete|purge)\b|"
            r"\bkubectl\s+(apply|delete|create|patch|edit|scale|replace)\b|"
            r"\bterraform\s+(apply|destroy)\b|(^|[\s;&|(])ssh\s+\S+\s+\S"
        ),
        "It would change files or services on another computer, which cannot be undone from here.",
        "remote-write",
    ),
)
#: Acts that only an attacker needs, whatever the host: (pattern, reason, rule).
_FORBIDDEN_ACTS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(
            r"(^|[\s;&|(])(iptables|ip6tables|nft|ufw|firewall-cmd|iptables-restore)\b|"
            r"(^|[\s;&|(])ip\s+(-\S+\s+)*(route|rule|link|addr|address|neigh|tunnel|netns)\s+"
            r"(add|del|delete|replace|change|set|flush|append)\b|"
            r"(^|[\s;&|(])route\s+(add|del)\b|\bsysctl\s+(-w|--write)\b|"
            r"(^|[\s;&|(])(resolvectl|systemd-resolve)\s+(dns|domain|set-dns)\b|"
            r"\bgit\s+config\s(?![^;&|]*--(get|list|show))[^;&|]*\b(https?\.)?proxy\b|\bnpm\s+config\s+set\s+(https-)?proxy\b",
            re.IGNORECASE,
        ),
        "It would change how this computer reaches the network, which is how your "
        "administrator's rules are kept.",
        "network-tamper",
    ),
    (
        re.compile(
            r"\bhistory\s+-[cwd]|\bunset\s+HISTFILE\b|\bHISTFILE=(/dev/null)?(\s|$|;)|"
            r"\bHISTSIZE=0\b|\bset\s+\+o\s+history\b|"
            r"\b(rm|shred|truncate|ln)\s[^;&|]*\.(bash|zsh|sh|python|node_repl|psql|mysql|"
            r"lesshst|sqlite)_?history\b|>\s*\S*\.(bash|zsh|python)_history\b",
            re.IGNORECASE,
        ),
        "It would erase the record of what was run, as only someone hiding their tracks would.",
        "history-wipe",
    ),
    (
        re.compile(
            r"(^|[\s;&|(])(ssh|autossh)(?=\s)[^;&|]*?(\s-[A-Za-z]*[RDLw]\s*\S|"
            r"-o\s*(Remote|Local|Dynamic)Forward|-o\s*(ProxyCommand|PermitLocalCommand|"
            r"LocalCommand))",
        ),
        "It would open a tunnel between this computer and another, as a backdoor would.",
        "tunnel",
    ),
    (
        re.compile(
            r"\b(os\.(system|popen|exec\w*|spawn\w*)|subprocess\.\w+|pty\.spawn|commands\."
            r"getoutput)\s*\(\s*(?![\['\"\s]|f['\"])[^)]*\)[^;]*\b(open\(|read\(|readlines\(|"
            r"read_text\(|sys\.stdin)|\b(open\([^)]*\)|read_text\(\))[^\n]*\b(os\.(system|popen)|"
            r"subprocess\.\w+)\s*\(\s*(?![\['\"\s]|f['\"])",
        ),
        "It would run commands written inside a file, as instructions planted in a document would.",
        "runs-file-text",
    ),
)
#: System files that decide where network names and requests go.
_NETWORK_FILES = re.compile(
    r"/etc/(hosts|resolv\.conf|nsswitch\.conf|gai\.conf|environment|apt/apt\.conf\S*|"
    r"pip\.conf|npmrc|wgetrc|curlrc|profile\.d|systemd/resolved\.conf)\b|"
    r"(^|[\s/])\.(curlrc|wgetrc)\b|\.config/pip/pip\.conf|\.pip/pip\.conf"
)
_NETWORK_TAMPER = Assessment(
    Risk.FORBIDDEN,
    "It would change how this computer reaches the network, which is how your administrator's "
    "rules are kept.",
    "network-tamper",
)
#: The whole environment (not one named setting) used as data.
_ENV_DUMP = re.compile(
    r"\$\(\s*(env|printenv|set|export(\s+-p)?|declare\s+-[px]+|compgen\s+-v)\s*\)|"
    r"`\s*(env|printenv|set|export(\s+-p)?)\s*`|"
    r"(^|[\s;&(])(env|printenv|export\s+-p|declare\s+-[px]+)\s*(\||>)|"
    r"\bos\.environ\b(?!\s*(\[|\.(get|setdefault|pop)\b))|\bprocess\.env\b(?!\s*(\.|\[))|"
    r"\bENV\.to_h\b|%ENV\b(?!\s*\{)"
)
#: Services that publish whatever they are sent at a link.
_PASTE_HOST = re.compile(
    r"api\.github\.com/gists|gist\.github\.com|\bgh\s+gist\s+create|pastebin\.|paste\.|"
    r"hastebin|termbin|ix\.io|0x0\.st|transfer\.sh|file\.io|dpaste|ghostbin|sprunge|"
    r"privatebin|rentry\.",
    re.IGNORECASE,
)
#: A request body filled from files at run time (not typed into the command).
_BODY_FROM_FILES = re.compile(r"@(?!\s)\S|\$\(|`|--upload-file|\s-T\s|\bopen\(|\|\s*curl\b")
#: API paths that give a person, a key or a token access to an account or project.
_ACCESS_PATH = re.compile(
    r"/(collaborators|invitations|memberships|members|outside_collaborators|"
    r"authorizations|installations|deploy_keys|keys|gpg_keys|ssh_signing_keys|tokens|"
    r"personal-access-tokens|access_tokens|applications)(/|\b|$)",
    re.IGNORECASE,
)
_ACCESS_TOOL = re.compile(
    r"\bgh\s+(ssh-key|gpg-key)\s+add\b|\bgh\s+repo\s+deploy-key\s+add\b|"
    r"\bgh\s+api\s[^;&|]*/(collaborators|keys|invitations|memberships|authorizations)\b"
    r"[^;&|]*(-X\s*(PUT|POST|PATCH)|--method\s+(PUT|POST|PATCH)|\s-[fF]\s)|"
    r"\b(npm|yarn|pnpm)\s+(owner\s+add|access\s+grant|team\s+add|org\s+set|token\s+create)\b|"
    r"\bcargo\s+owner\s+(-a|--add)\b|\bgem\s+owner\s+\S+\s+(-a|--add)\b",
    re.IGNORECASE,
)
#: Files in the folder that the person's own computer runs (outside the VM) when they use
#: the folder: git hooks and config, direnv, editor tasks.
_HOST_EXEC_FILE = re.compile(
    r"(^|/)\.git/(hooks(/|$)|config$)|(^|/)\.envrc$|(^|/)\.vscode/(tasks|launch)\.json$"
)
_HOST_EXEC_IN_TEXT = re.compile(
    r"\.git/hooks\b|\.git/config\b|(^|[\s/'\"=])\.envrc\b|\.vscode/(tasks|launch)\.json\b"
)
_GIT_CONFIG_EXEC = re.compile(
    r"\bgit\s+(-C\s+\S+\s+)?config\b[^;&|]*\b(core\.(hookspath|fsmonitor|sshcommand|editor|"
    r"pager|askpass|gitproxy)|alias\.|filter\.|diff\.\S*textconv|credential\.helper|"
    r"include\.path|includeif)",
    re.IGNORECASE,
)
_STARTUP_FILES = re.compile(
    r"\.(bashrc|bash_profile|bash_login|profile|zshrc|zprofile|zshenv|inputrc)\b|"
    r"\.config/(fish|autostart|systemd)\b|authorized_keys\b|\.ssh/rc\b"
)
_PERSIST = re.compile(
    r"(^|[\s;&|(])crontab(\s|$)|\bsystemctl\s+(--user\s+)?(enable|start)\b|\bat\s+now\b"
)
_HOST_EXEC = Assessment(
    Risk.FORBIDDEN,
    "It would plant something your own computer runs outside the VM when you use this folder.",
    "host-exec",
)
#: git's own options before its subcommand (``git -C dir``, ``-c k=v``, ``--git-dir=…``,
#: ``--no-pager``): they do not change what the subcommand does to the server.
_GIT_VALUE = r"""(?:"[^"]*"|'[^']*'|[^\s;&|'"])+"""
_GIT_GLOBAL_OPTS = re.compile(
    r"\bgit((?:\s+(?:-[cC]\s*" + _GIT_VALUE + r"|--(?:git-dir|work-tree|namespace|exec-path|"
    r"config-env|super-prefix|attr-source)(?:=|\s+)" + _GIT_VALUE + r"|-[pP](?=\s)|"
    r"--[a-z][\w-]*(?:=" + _GIT_VALUE + r")?))+)(?=\s)"
)
#: Other ways git sends commits or objects to a server: each is a push, whatever it is called.
_GIT_PUSH_LIKE = re.compile(
    r"\bgit(?:\s+|-)(?:subtree\s+push|lfs\s+push|send-pack|http-push|svn\s+dcommit|"
    r"p4\s+submit|annex\s+(?:sync|push|copy\s[^;&|]*--to|move\s[^;&|]*--to))\b"
)
#: Pushes of other version-control tools.
_OTHER_VCS_PUSH = re.compile(
    r"(^|[\s;&|(])(?:(?:hg|bzr|brz|fossil|sl|dvc)\s+push|jj\s+git\s+push|"
    r"svn\s+(?:commit|ci|import)|gh\s+repo\s+sync)\b"
)
#: ``git -c alias.x=...``: a subcommand name defined on the spot, which can hide a push.
_GIT_ALIAS_OPT = re.compile(r"\bgit\s+(?:-\S+\s+)*-c\s*alias\.", re.IGNORECASE)


def _canonical_git(norm: str) -> str:
    """``norm`` with git's own options dropped and every way of pushing spelled ``git push``,
    so the push rules see ``git -C sub push``, ``git subtree push`` or ``hg push`` as one."""
    text = _GIT_GLOBAL_OPTS.sub("git", norm)
    text = _GIT_PUSH_LIKE.sub("git push", text)
    return _OTHER_VCS_PUSH.sub(lambda m: f"{m.group(1)}git push", text)


#: Pushing to an address typed into the command, or to a remote added on the spot.
_PUSH_TO_TYPED = re.compile(
    r"\bgit\s+push\s+(-\S+\s+)*(https?|ssh|git)://|\bgit\s+push\s+(-\S+\s+)*[\w.-]+@[\w.-]+:|"
    r"\bgit\s+remote\s+(add|set-url)\b.*\bgit\s+push\b"
)
_SECRET_NAME = re.compile(
    r"(^|[\s@/'\"=<(])(\.env(?!\.(example|sample|template))(\.\w+)?|[\w.-]*\.pem|[\w.-]*\.key|"
    r"id_(rsa|ed25519|ecdsa|dsa)|credentials[\w.]*|secrets?\.\w+|\.netrc)(\s|$|[\s'\")|;&])"
)
_WHOLE_SYSTEM_DELETE = re.compile(r"\brm\s+(-\S+\s+)*(/|/\*|/\.\*)(\s|$)|--no-preserve-root")
_LOOPBACK = re.compile(r"\b(127\.\d+\.\d+\.\d+|localhost|::1)\b")
_IP_OR_HOST_TARGET = re.compile(r"/dev/(tcp|udp)/|\b\d{1,3}(\.\d{1,3}){3}\b|connect\(\(")
#: Rules about work confined to the folder: undoable when changes are staged.
STAGED_REVERSIBLE = frozenset(
    {"mass-delete", "git-discard", "truncate", "mass-permissions", "git-internals", "ci-config",
     "secret-file", "bulk-overwrite", "overwrite"}
)  # fmt: skip

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


_PASTE_FILES = Assessment(
    Risk.FORBIDDEN,
    "It would put the contents of files from your folder on a paste or gist service where "
    "anyone with the link can read them.",
    "paste-files",
)


def _gists_files(words: tuple[str, ...]) -> bool:
    """``gh gist create FILE ...``: files of the folder published as a gist (``-`` reads the
    text typed into the command instead)."""
    w = list(_command_words(list(words)))
    if w[:3] != ["gh", "gist", "create"]:
        return False
    takes_value = {"-d", "--desc", "--description", "-f", "--filename"}
    rest = iter(w[3:])
    for arg in rest:
        if arg in takes_value:
            next(rest, None)
        elif not arg.startswith("-"):
            return True
    return False


_SEARCHERS = frozenset({"grep", "egrep", "fgrep", "rg", "ag", "ack", "find", "locate", "fd"})
#: What a search for secrets looks for: key headers, cloud key names, key and vault files.
_SECRET_WORDS = re.compile(
    r"PRIVATE KEY|BEGIN (RSA|DSA|EC|OPENSSH|PGP)|aws_(secret|access)|AKIA|ASIA\[|secret|"
    r"passw|token|api.?key|credential|id_(rsa|dsa|ecdsa|ed25519)|\.pem\b|\.key\b|\.p12\b|"
    r"\.pfx\b|\.kdbx\b|\.ppk\b|\.netrc|\.npmrc|\.pypirc|ghp_|xox[bp]-",
    re.IGNORECASE,
)


def _scans_for_secrets(words: tuple[str, ...]) -> bool:
    """A search (grep, find, locate ...) for secret-looking text or key files that starts
    outside the folder: the whole disk, the home folders, the system."""
    idx = next((i for i, w in enumerate(words) if "=" not in w), len(words))
    if idx >= len(words) or posixpath.basename(words[idx]) not in _SEARCHERS:
        return False
    args = words[idx + 1 :]
    if not any(_SECRET_WORDS.search(a) for a in args):
        return False
    if posixpath.basename(words[idx]) == "locate":
        return True  # locate always searches the whole disk
    for a in args:
        if a.startswith("-"):
            continue
        if a.startswith(("~", "$HOME", "${HOME", "$?")) or a == "..":
            return True
        if a.startswith("/") and not _inside_workspace(a) and not a.startswith(("/tmp", "/dev")):
            return True
    return False


#: A skill is named, never located: a separator, a parent step, a home anchor or their
#: encodings turn a name into a path.
_PATH_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]|\.\.|^~|%(2f|5c|00)|%2e%2e", re.I)


def _skill_name(name: str) -> Assessment:
    if _PATH_IN_NAME.search(unicodedata.normalize("NFKC", name)):
        return Assessment(
            Risk.FORBIDDEN,
            "It asks for a skill by a file path instead of a name, as only a trick to read "
            "other files would.",
            "skill-path",
        )
    return ROUTINE


#: Operands that name the whole shared folder.
_WHOLE_FOLDER = frozenset(
    {".", "./", "./.", "*", "./*", ".*", "/workspace", "/workspace/", "/workspace/.",
     "/workspace/*", "$PWD", "${PWD}", "$(pwd)", "`pwd`"}
)  # fmt: skip
_ARCHIVERS = frozenset({"zip", "tar", "gtar", "bsdtar", "7z", "7za", "7zz", "rar"})


#: Lists every file of the folder (``find .``, ``git ls-files``), for an archiver to read.
_LISTS_FOLDER = re.compile(
    r"^\s*(find\s+(\.|\./|/workspace/?)(\s|$)|git\s+ls-files\b|ls\s+-\w*R|rg\s+--files\b|"
    r"fd(find)?(\s|$))"
)


def _archive_of_folder(words: list[str], *, fed_folder: bool = False) -> str | None:
    """Where an archive of the whole folder goes (``-`` for standard output), if ``words``
    make one: ``zip -r x.zip .``, ``tar czf - .``, ``7z a x.7z *``, ``git archive``,
    ``git bundle create x --all``, or an archiver reading the names of every file
    (``find . | zip -@ x.zip``) when ``fed_folder``."""
    core = _command_words(words)
    if core[:2] == ["git", "archive"]:
        for i, w in enumerate(core):
            if w in ("-o", "--output") and i + 1 < len(core):
                return core[i + 1]
            if w.startswith("--output="):
                return w.split("=", 1)[1]
        return "-"
    if core[:3] == ["git", "bundle", "create"] and len(core) > 3:
        return core[3]
    if not core or posixpath.basename(core[0]) not in _ARCHIVERS:
        return None
    prog = posixpath.basename(core[0])
    args = core[1:]
    out: str | None = None
    operands: list[str] = []
    if prog in ("zip", "7z", "7za", "7zz", "rar"):
        rest = [w for w in args if not w.startswith("-") or w == "-"]
        if prog != "zip":
            if not rest or rest[0] not in ("a", "u"):
                return None
            rest = rest[1:]
            if "-so" in args:
                rest = ["-", *rest]
        if not rest:
            return None
        out, operands = rest[0], rest[1:]
        if fed_folder and "-@" in args:
            operands.append(".")
    else:  # tar: old-style letters (czf), short clusters (-czf) or long options
        create, folder = False, "."
        it = iter(enumerate(args))
        for i, w in it:
            letters = w.lstrip("-") if not w.startswith("--") else ""
            if w.startswith("--"):
                create = create or w == "--create"
                if w.startswith("--file="):
                    out = w.split("=", 1)[1]
                elif w.startswith("--directory="):
                    folder = w.split("=", 1)[1]
                elif w.startswith("--files-from="):
                    operands.append("." if fed_folder and w.endswith(("=-", "=/dev/stdin")) else "")
                elif w in ("--file", "--directory", "--files-from"):
                    value = next(it, (0, ""))[1]
                    if w == "--files-from":
                        operands.append("." if fed_folder and value in ("-", "/dev/stdin") else "")
                    else:
                        out, folder = (value, folder) if w == "--file" else (out, value)
            elif (w.startswith("-") or i == 0) and re.fullmatch(r"[A-Za-z]+", letters):
                create = create or "c" in letters
                for letter in letters:
                    if letter in "fCT":
                        value = next(it, (0, ""))[1]
                        if letter == "T":
                            fed = fed_folder and value in ("-", "/dev/stdin")
                            operands.append("." if fed else "")
                        else:
                            out, folder = (value, folder) if letter == "f" else (out, value)
            else:
                operands.append(w)
        if not create or posixpath.normpath(folder) not in (".", "/workspace"):
            return None
        out = out or "-"
    return out if any(o in _WHOLE_FOLDER for o in operands) else None


def _sends_out(segment: str) -> bool:
    """One command that sends what it is given to another computer."""
    net = _NET_TOOL.search(segment) or _URL.search(segment)
    return bool(
        (_UPLOAD.search(" " + segment) and net)
        or _RAW_NET.search(segment)
        or _IRREVERSIBLE[1][0].search(segment)  # mail
        or _IRREVERSIBLE[3][0].search(segment)  # scp, rsync to a host, cloud storage
    )


def _folder_sent(norm: str) -> bool:
    """An archive of the whole folder piped, or written and then given, to a command that
    sends it to another computer (``zip -r - . | curl -T -``, ``tar czf /tmp/a.tgz . && scp
    /tmp/a.tgz h:``)."""
    parts = re.split(r"(\|\||&&|\|&?|;|&|\n)", norm)
    segments, ops = parts[0::2], [*parts[1::2], ""]
    for i, segment in enumerate(segments):
        fed = i > 0 and ops[i - 1] in ("|", "|&") and bool(_LISTS_FOLDER.match(segments[i - 1]))
        out = _archive_of_folder(segment.split(), fed_folder=fed)
        if out is None:
            continue
        if out == "-":
            j = i
            while ops[j] in ("|", "|&") and j + 1 < len(segments):
                j += 1
                if _sends_out(segments[j]):
                    return True
        else:
            name = posixpath.basename(out)
            if any(name in later and _sends_out(later) for later in segments[i + 1 :]):
                return True
    return False


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[\s;&|()<>`=]+", text) if t]


def _hosts(urls: Iterable[str]) -> str:
    hosts = sorted({urlsplit(u).hostname or u for u in urls})
    return ", ".join(hosts[:3]) + (" and others" if len(hosts) > 3 else "")


class RuleAssessor:
    """Deterministic rules over a tool call; fast, explainable, no I/O except ``egress_check``."""

    def __init__(self, *, egress_check: EgressCheck | None = None) -> None:
        self.egress_check = egress_check
        #: Judging the commands of a CI configuration (not again as a write of one).
        self.in_ci = False

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
        if call.name == "use_skill":
            return _skill_name(str(call.input.get("name", "")))
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
            if _is_workspace_config(rel):
                return Assessment(
                    Risk.FORBIDDEN,
                    "It would change the folder's agent settings, which only you may change.",
                    "workspace-config",
                )
            if _HOST_EXEC_FILE.search(_fold(rel)):
                return _HOST_EXEC
            if first == ".git":
                return Assessment(
                    Risk.RISKY,
                    "It would edit version-control internals directly, which can corrupt history.",
                    "git-internals",
                    reversible=True,
                )
            if _CI_FILE.search(_fold(rel)):
                text = str(call.input.get("content") or call.input.get("new_string") or "")
                return _ci_assess(text, jenkins=_fold(rel).endswith("jenkinsfile")) or _CI_CONFIG
        if call.name in ("write_file", "edit_file"):
            text = str(call.input.get("content") or call.input.get("new_string") or "")
            if _is_script(rel, text):
                # A script is run later, by the agent or by the person: judge what it would do
                # now, with the shell's rules (not the egress policy: writing is not reaching).
                inner = RuleAssessor().assess(ToolCall(call.id, "bash", {"command": text}))
                if inner.risk is Risk.FORBIDDEN:
                    return Assessment(
                        Risk.FORBIDDEN,
                        f"It would write a script that, once run, does this: {inner.reason}",
                        f"script:{inner.rule}",
                    )
            wipe = _wipes_or_rewrites(call, rel)
            if wipe is not None:
                return wipe
        base = posixpath.basename(rel)
        if re.fullmatch(
            r"\.env(\..+)?|.*\.(pem|key|p12|pfx|keystore|jks)|credentials.*|secrets?\..*", base
        ) and base not in {".env.example", ".env.sample", ".env.template"}:
            return Assessment(
                Risk.RISKY,
                f"The file {rel} may contain passwords or keys.",
                "secret-file",
                reversible=call.name not in READ_ONLY_TOOLS,  # reading it shows it to the model
            )
        return ROUTINE

    # --- bash ------------------------------------------------------------------------
    def _bash(self, command: str) -> Assessment:
        """Judge the command as written and as the shell would read it (dequoted, decoded,
        variables substituted); the worse verdict wins. What cannot be read is never routine.
        """
        if not command.strip():
            return ROUTINE
        read = shellwords.normalise(command)
        worst = self._bash_text(command)
        if worst.risk is not Risk.FORBIDDEN:
            second = self._bash_text(read.text)
            # The worse view wins; at equal risk, "undoable" must hold for both views.
            if second.risk > worst.risk or (
                second.risk == worst.risk and worst.reversible and not second.reversible
            ):
                worst = second
        if worst.risk is not Risk.FORBIDDEN and _writes_named(read.text, _CONFIG_IN_TEXT):
            return _CONFIG_WRITE
        ci_write = not self.in_ci and _writes_named(read.text, _CI_IN_TEXT)
        if worst.risk is not Risk.FORBIDDEN and ci_write:
            # The text it writes into a CI configuration is in the command: judge it as one.
            ci = _ci_assess(command)
            if ci is not None and ci.risk is Risk.FORBIDDEN:
                return ci
        if worst.risk is not Risk.FORBIDDEN and any(_gists_files(c) for c in read.commands):
            return _PASTE_FILES
        if worst.risk is not Risk.FORBIDDEN and any(_scans_for_secrets(c) for c in read.commands):
            return Assessment(
                Risk.FORBIDDEN,
                "It searches the computer outside your folder for keys and passwords.",
                "secret-scan",
            )
        if worst.reversible and (DYNAMIC_SHOWN in read.text or read.opaque):
            # Where a computed word could point is unknown: not provably inside the folder.
            worst = Assessment(worst.risk, worst.reason, worst.rule)
        if read.opaque and worst.risk is not Risk.FORBIDDEN:
            runs_hidden = any(o in _RUNS_TEXT for o in read.opaque)
            if runs_hidden and shellwords.has_decoder(command):
                return Assessment(
                    Risk.FORBIDDEN,
                    "It decodes hidden text and runs it as commands, which cannot be checked.",
                    "encoded-exec",
                )
            if worst.risk is Risk.ROUTINE:
                return Assessment(
                    Risk.RISKY,
                    f"It hides what it really runs: {read.opaque[0]}.",
                    "obfuscated",
                )
        return worst

    def _bash_text(self, command: str) -> Assessment:
        norm = _normalise(command)
        if _reaches_credentials(command) or _ENV_HUNT.search(norm):
            return Assessment(
                Risk.FORBIDDEN,
                "It tries to reach stored passwords, keys or secrets, which the agent never needs.",
                "credentials",
            )
        if _GIT_CONFIG_EXEC.search(norm) or _writes_named(norm, _HOST_EXEC_IN_TEXT):
            return _HOST_EXEC
        if _writes_named(norm, _STARTUP_FILES) or _PERSIST.search(norm):
            return Assessment(
                Risk.FORBIDDEN,
                "It would set up commands that run again later without you.",
                "persistence",
            )
        for pattern, reason, rule in _FORBIDDEN_ACTS:
            if pattern.search(norm):
                return Assessment(Risk.FORBIDDEN, reason, rule)
        if _writes_named(norm, _NETWORK_FILES):
            return _NETWORK_TAMPER
        if _WHOLE_SYSTEM_DELETE.search(norm):
            return Assessment(
                Risk.FORBIDDEN,
                "It would erase the whole system, including your folder.",
                "system-destructive",
            )
        urls = [m.group(0) for m in _URL.finditer(command)]
        if not urls:
            urls = [f"https://{m}" for m in _BARE_HOST_URL.findall(norm)]
        uploads = bool(_UPLOAD.search(" " + norm))
        # Loopback inside the VM is the VM itself (a preview server the agent started): no
        # egress, nothing leaves the machine.
        urls = [u for u in urls if not _is_loopback_url(u)] if urls else urls
        local_only = bool(_URL.search(command) or _BARE_HOST_URL.search(norm)) and not urls
        sends = uploads and not local_only and bool(_NET_TOOL.search(norm) or urls)
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
        if (sends or _IRREVERSIBLE[0][0].search(norm)) and _SECRET_NAME.search(norm):
            return Assessment(
                Risk.FORBIDDEN,
                "It would send a file that holds passwords or keys to a server.",
                "secret-upload",
            )
        if _folder_sent(norm):
            return Assessment(
                Risk.FORBIDDEN,
                "It would send an archive of your whole folder to another computer, which no "
                "task needs.",
                "folder-upload",
            )
        if _ENV_DUMP.search(norm) and (sends or urls or _NET_TOOL.search(norm)):
            return Assessment(
                Risk.FORBIDDEN,
                "It would send the agent's environment settings, where keys and tokens live, "
                "to a server.",
                "environment-upload",
            )
        # A body typed into the command (a here-document on stdin) is seen; one read from
        # files while it runs is not.
        typed_body = "@-" in norm and "<<" in norm and "$(" not in norm
        pasted = sends and _PASTE_HOST.search(norm) and _BODY_FROM_FILES.search(norm)
        if pasted and not typed_body:
            return _PASTE_FILES
        if (sends and _ACCESS_PATH.search(norm)) or _ACCESS_TOOL.search(norm):
            return Assessment(
                Risk.FORBIDDEN,
                "It would give a person or a key access to your account or project; only you "
                "should do that, outside cowork.",
                "account-access",
            )
        # Quoted option values (``-c "user.name=A B"``) are read before the quotes go.
        gnorm = _canonical_git(_normalise(_canonical_git(command)))
        if _PUSH_TO_TYPED.search(gnorm):
            return Assessment(
                Risk.FORBIDDEN,
                "It would publish your project to an address typed into the command, not to "
                "its own server.",
                "push-elsewhere",
            )
        raw_target = _IP_OR_HOST_TARGET.search(norm)
        if _RAW_NET.search(norm) and raw_target and not _LOOPBACK.search(norm):
            return Assessment(
                Risk.FORBIDDEN,
                "It opens a direct connection to another computer, as only a backdoor would.",
                "raw-network",
            )
        if _CURL_PIPE_SHELL.search(norm):
            # Code fetched at run time is never seen by anyone before it runs, whichever
            # host serves it: a granted code host serves anyone's files.
            return Assessment(
                Risk.FORBIDDEN,
                "It would download a program from the internet and run it unseen.",
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
                Risk.FORBIDDEN,
                "It would leak information hidden inside network name lookups.",
                "dns-exfiltration",
            )
        if _NET_TOOL.search(norm) and ("$(" in command or "`" in command):
            return Assessment(
                Risk.RISKY,
                "It would send the output of another command over the internet.",
                "network-substitution",
            )
        if sends:
            # Granted or not, a network write cannot be taken back: the person decides.
            where = _hosts(urls) if urls else "a server on the internet"
            return Assessment(
                Risk.RISKY,
                f"It would send data or make changes on {where}, which cannot be undone.",
                "upload",
            )
        for pattern, reason, rule in _IRREVERSIBLE:
            if pattern.search(norm) or pattern.search(gnorm):
                return Assessment(Risk.RISKY, reason, rule)
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
        if _GIT_ALIAS_OPT.search(norm):
            return Assessment(
                Risk.RISKY,
                "It defines a git command name on the spot, which can hide what it really does.",
                "obfuscated",
            )
        for pattern, reason, rule in _DESTRUCTIVE:
            if pattern.search(norm) or pattern.search(gnorm):
                return Assessment(Risk.RISKY, reason, rule, reversible=rule in STAGED_REVERSIBLE)
        deletion = _mass_deletion(norm) or _bulk_overwrite(norm)
        if deletion:
            return deletion
        return ROUTINE


#: Files that tell a CI service what to run on its servers when the project is pushed.
_CI_FILE = re.compile(
    r"^\.(github|gitea|forgejo)/workflows/|^(\.github/actions/.+/)?action\.ya?ml$|"
    r"^\.gitlab-ci|^\.gitlab/ci/|^\.circleci/|^\.(travis|drone|woodpecker|cirrus)(\.ya?ml$|/)|"
    r"^(azure-pipelines|bitbucket-pipelines)\.ya?ml$|^\.buildkite/|(^|/)jenkinsfile$"
)
_CI_IN_TEXT = re.compile(
    r"\.(github|gitea|forgejo)/workflows/|\.github/actions/|\.gitlab-ci|\.gitlab/ci/|"
    r"\.circleci/|\.(travis|drone|woodpecker|cirrus)\.ya?ml\b|"
    r"\b(azure|bitbucket)-pipelines\.ya?ml\b|\.buildkite/|\bjenkinsfile\b"
)
_CI_CONFIG = Assessment(
    Risk.RISKY,
    "It would change automation that runs on a server when you publish.",
    "ci-config",
    reversible=True,
)
#: Keys whose value is shell text the CI server runs (GitHub ``run``, GitLab and Bitbucket
#: ``script``, CircleCI and Buildkite ``command``, Drone ``commands``, Travis phases ...).
_CI_RUN_KEY = re.compile(
    r"run|script|scripts|\w+_script|command|commands|cmd|entrypoint|bash|sh|pwsh|powershell|"
    r"inlinescript|install|before_install|after_success|after_failure|before_deploy|"
    r"after_deploy",
    re.IGNORECASE,
)
_CI_KEY_LINE = re.compile(r"([\w.-]+)\s*:(?:\s+(.*))?")
#: An expression the CI server fills with a secret (``${{ secrets.X }}``, ``toJSON(secrets)``,
#: the job's own token).
_CI_SECRET = re.compile(r"\$\{\{[^}]*\b(secrets|github\.token)\b[^}]*\}\}", re.IGNORECASE)
_CI_EXPR = re.compile(r"\$\{\{.*?\}\}", re.S)
#: ``NAME: ${{ secrets.X }}``: an environment variable that carries a secret.
_CI_SECRET_ENV = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*)\s*:\s*['\"]?\$\{\{[^}]*\b(secrets|github\.token)\b",
    re.IGNORECASE,
)
#: Jenkins pipeline shell steps: ``sh 'make'``, ``sh(script: "...")``, ``sh '''...'''``.
_JENKINS_SH = re.compile(r"\bsh\s*\(?\s*(?:script\s*:\s*)?('''|\"\"\"|'|\")(.*?)\1", re.S)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        return inner.replace("''", "'") if value[0] == "'" else inner
    return value


def _ci_commands(text: str) -> list[str]:
    """The shell lines of a CI configuration, or of a piece of one (an edit): values of the
    keys that hold commands, their blocks and lists, and lines that are no YAML key at all
    (inside a block whose key the piece does not show). Block text of other keys (a
    description) is left out."""
    out: list[str] = []
    skip_indent: int | None = None  # inside a block of a key that holds no commands
    cmd_indent: int | None = None  # inside a block or list of a key that holds commands
    for raw in text.splitlines():
        body = raw.strip()
        if not body or body.startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip())
        if skip_indent is not None:
            if indent > skip_indent:
                continue
            skip_indent = None
        item = body[1:].lstrip() if body.startswith("-") and body[1:2] in ("", " ") else body
        key = _CI_KEY_LINE.fullmatch(item)
        if cmd_indent is not None:
            if indent > cmd_indent or (indent == cmd_indent and item != body and not key):
                out.append(_unquote(item))
                continue
            cmd_indent = None
        if key:
            value = (key.group(2) or "").strip()
            runs = _CI_RUN_KEY.fullmatch(key.group(1)) is not None
            at = indent + len(body) - len(item)
            if value[:1] in ("|", ">"):
                if runs:
                    cmd_indent = at
                else:
                    skip_indent = at
            elif not value:
                cmd_indent = at if runs else None
            elif runs:
                out.append(_unquote(value.strip("[]") if value.startswith("[") else value))
            continue
        out.append(_unquote(item))
    # A line ending in a backslash goes on in the next one.
    return "\n".join(out).replace("\\\n", " ").splitlines()


def _ci_assess(text: str, *, jenkins: bool = False) -> Assessment | None:
    """A CI configuration (or a piece of one) judged by what its commands would do on the
    server: a secret of the CI service sent with a network command is refused, and the
    commands are judged by the same rules as a script written into the folder."""
    if jenkins:
        lines = [ln for m in _JENKINS_SH.finditer(text) for ln in m.group(2).splitlines()]
    else:
        lines = _ci_commands(text)
    names = sorted({m.group(1) for m in _CI_SECRET_ENV.finditer(text)})
    # The variable by name: $NAME, ${{ env.NAME }}, os.environ["NAME"], process.env.NAME.
    carries = re.compile(r"\b(" + "|".join(names) + r")\b") if names else None
    secret_lines = [ln for ln in lines if _CI_SECRET.search(ln) or (carries and carries.search(ln))]
    for line in secret_lines:
        net = _NET_TOOL.search(line) or _URL.search(line) or _RAW_NET.search(line)
        if net or _DNS_TOOL.search(line) or _IRREVERSIBLE[1][0].search(line):
            return Assessment(
                Risk.FORBIDDEN,
                "It would make your CI service send one of its secrets to a server, from a "
                "step the agent wrote.",
                "ci-secret-send",
            )
    shell = _CI_EXPR.sub("ci-value", "\n".join(lines))
    rules = RuleAssessor()
    rules.in_ci = True
    inner = rules.assess(ToolCall("ci", "bash", {"command": shell}))
    if inner.risk is Risk.FORBIDDEN:
        return Assessment(
            Risk.FORBIDDEN,
            f"It would change automation that, on a server, does this: {inner.reason}",
            f"ci:{inner.rule}",
        )
    if secret_lines and any(_sends_out(ln) for ln in lines):
        return Assessment(
            Risk.RISKY,
            "It would change automation that uses a secret of your CI service next to a step "
            "that sends data to a server.",
            "ci-secret-nearby",
        )
    return None


_SCRIPT_SUFFIX = re.compile(
    r".*\.(sh|bash|zsh|ksh|fish|command|py|pyw|pl|rb|js|mjs|cjs|ts|php|lua|tcl|ps1|bat|cmd|mk|"
    r"r|R|jl|nu)$"
)
_SCRIPT_NAMES = frozenset(
    {"makefile", "gnumakefile", "justfile", "rakefile", "dockerfile", "containerfile", "procfile",
     "package.json", "pyproject.toml", "tox.ini", "noxfile.py", "setup.cfg", "taskfile.yml",
     "taskfile.yaml", ".envrc", ".bashrc", ".profile"}
)  # fmt: skip


def _is_script(rel: str, text: str) -> bool:
    """Is this file (by name, suffix or ``#!`` line) something that runs commands?"""
    base = posixpath.basename(rel)
    return (
        _SCRIPT_SUFFIX.fullmatch(base) is not None
        or base.casefold() in _SCRIPT_NAMES
        or text.lstrip().startswith("#!")
    )


#: Text that stands in for content still to be written.
_PLACEHOLDER = re.compile(
    r"\b(TODO|TBD|FIXME|XXX|placeholder|lorem ipsum|to be (re)?written|rewrite (it )?from "
    r"scratch|coming soon)\b",
    re.IGNORECASE,
)
#: Records: a value replaced everywhere hits dates, amounts and names that only look alike.
_DATA_FILE = re.compile(
    r".*\.(csv|tsv|psv|jsonl|ndjson|ledger|journal|hledger|beancount|qif|ofx|qfx|dat|vcf|ics)$",
    re.IGNORECASE,
)


def _wipes_or_rewrites(call: ToolCall, rel: str) -> Assessment | None:
    """A file emptied or replaced by a placeholder, or one value replaced throughout a data
    file (or a bare number anywhere): the original content is gone unless changes are staged.
    An ordinary edit, or a rename in a document, is not."""
    if call.name == "write_file":
        content = str(call.input.get("content") or "")
        lines = [
            ln for ln in content.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
        ]
        empty = not content.strip() and posixpath.basename(rel) not in _EMPTY_MARKERS
        if empty or (len(lines) <= 2 and _PLACEHOLDER.search(content)):
            return Assessment(
                Risk.RISKY,
                f"It would replace what {rel} holds with an empty placeholder.",
                "overwrite",
                reversible=True,
            )
    if call.name == "edit_file" and call.input.get("replace_all") is True:
        old = str(call.input.get("old_string") or "")
        if _DATA_FILE.fullmatch(rel) or re.fullmatch(r"[\d\s.,:/+-]+", old):
            return Assessment(
                Risk.RISKY,
                f"It would change one value everywhere in {rel}, including values that only "
                "look alike, and the old values would be gone.",
                "overwrite",
                reversible=True,
            )
    return None


_EMPTY_MARKERS = frozenset({"__init__.py", ".gitkeep", ".keep", ".nojekyll", "py.typed"})


def _is_loopback_url(url: str) -> bool:
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return False
    return host in ("localhost", "::1") or re.fullmatch(r"127(\.\d{1,3}){3}", host) is not None


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


#: Files that steer the agent or cowork; only the person may change them (in any case:
#: on a case-insensitive disk ``.CLAUDE`` is ``.claude``).
_CONFIG_NAMES = (".cowork.toml", ".mcp.json")
_CONFIG_IN_TEXT = re.compile(
    r"(?:^|[\s/=:'\"<>])(?:\.claude(?=/|\s|$|[;&|)'\"])|\.cowork\.toml\b|\.mcp\.json\b)"
)
#: Commands that only read what they are given (so naming a config file with them is fine).
_READERS = frozenset(
    {"cat", "less", "more", "head", "tail", "ls", "grep", "egrep", "fgrep", "rg", "jq", "wc",
     "stat", "file", "diff", "sha256sum", "md5sum", "test", "[", "echo", "printf", "tree",
     "realpath", "readlink", "du", "cmp", "bat", "yq", "tomlq"}
)  # fmt: skip
_GIT_READS = re.compile(r"^git\s+(log|diff|show|status|blame|ls-files|check-ignore)\b")
_RUNS_TEXT = (
    "it runs text produced by another command as a program",
    "it runs text that is built while it runs (eval or sh -c)",
    "it runs program code that is built while it runs",
)
DYNAMIC_SHOWN = "$?"  # how shellwords shows a word computed while the command runs
_CONFIG_WRITE = Assessment(
    Risk.FORBIDDEN,
    "It would change the folder's agent settings, which only you may change.",
    "workspace-config",
)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _is_workspace_config(rel: str) -> bool:
    parts = [_fold(p) for p in PurePosixPath(rel).parts]
    return ".claude" in parts or (bool(parts) and parts[-1] in _CONFIG_NAMES)


def _writes_named(text: str, names: re.Pattern[str]) -> bool:
    """True when a shell command names a file matching ``names`` with anything but a plain
    reader (or redirects output into it)."""
    for segment in re.split(r"\s(?:;|&&|\|\||\||&)\s|\n", _fold(text)):
        found = names.search(segment)
        if not found:
            continue
        seg = segment.strip()
        redirect = re.search(r"(>>?|>\|)\s*(\S+)", seg)
        if redirect and names.search(" " + redirect.group(2)):
            return True
        words = seg.split()
        first = posixpath.basename(words[0]) if words else ""
        if first in _READERS or _GIT_READS.match(seg):
            continue
        if first == "find" and not re.search(r"-(delete|exec|execdir|ok|fprint)", seg):
            continue
        return True
    return False


#: A sed or awk flag left over when a quoted ``s/a/b/g`` script is split into words.
_SED_TAIL = re.compile(r"/[gimpIMe0-9]{1,3}")


#: A slash followed by what no file name starts with: program text, not a path.
_NOT_A_NAME = re.compile(r"/[,;:)}\]!#^|]")


def _outside_paths(norm: str) -> list[str]:
    found: list[str] = []
    has_cd = re.search(r"(^|[\s;&|(])cd\s", norm) is not None
    # Words split as the shell would, but not at ')': in program text (``a)/b(``) a slash
    # after a parenthesis is division or a regular expression, not a path.
    for m in re.finditer(r"[^\s;&|(<>`=]+", norm):
        word = m.group(0).rstrip(")")
        if "://" in word:
            continue
        if word.startswith("/"):
            if "^" in word or "$/" in word or "\\" in word or _SED_TAIL.fullmatch(word):
                continue  # a sed or awk address such as /^$/d, not a path
            if (word == "/" and norm[m.start() - 1 : m.start()] == "(") or _NOT_A_NAME.match(word):
                continue  # gsub(/ /,"") or /,/: a regular expression in program text
            path = posixpath.normpath(word)
            if not any(path == p or path.startswith(p + "/") for p in _ALLOWED_ABS):
                found.append(word)
        elif (word == ".." or word.startswith("../")) and not has_cd:
            found.append(word)
    return found


def _mass_deletion(norm: str) -> Assessment | None:
    found = _mass_deletion_in(norm)
    if found is None:
        return None
    # Undoable (with staged changes) only if every path it names is inside the folder.
    inside = all(
        _inside_workspace(w) and w not in ("~", "..") and "$" not in w and "`" not in w
        for w in _tokens(norm)
        if w.startswith(("/", "~", "..", "$")) and "://" not in w
    )
    return found if inside else Assessment(found.risk, found.reason, found.rule)


def _mass_deletion_in(norm: str) -> Assessment | None:
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
                scratch = _inside_tmp(clean)
                if _GLOB_CHARS.search(name) and not _REGENERABLE_GLOB.match(name) and not scratch:
                    return _many_files()  # every file of a kind: the person's, not a cache
            if words[:2] == ["xargs", "rm"]:
                return _many_files()
        if (words[0] == "xargs" and "rm" in words[1:]) or (
            words[0] == "rsync" and re.search(r"\s--(delete\S*|remove-source-files)\b", segment)
        ):
            return _many_files()
        if words[0] == "find" and re.search(r"-(exec|execdir|ok|okdir)\b.*\brm\b", norm):
            names = re.findall(r"-i?name\s+(\S+)", segment)
            if not names or not all(_REGENERABLE_GLOB.match(n) or n in _REGENERABLE for n in names):
                return _many_files()
        if words[0] == "find" and (" -delete" in segment or "-exec rm" in segment):
            names = re.findall(r"-name\s+(\S+)", segment)
            if not names or not all(_REGENERABLE_GLOB.match(n) or n in _REGENERABLE for n in names):
                return _many_files()
    return None


def _inside_tmp(path: str) -> bool:
    norm = posixpath.normpath(path)
    return any(norm == p or norm.startswith(p + "/") for p in ("/tmp", "/var/tmp"))


#: Tools that rewrite the files they are given (``sed -i``, ``perl -pi``, ``mogrify`` without
#: ``-path``, any ``--in-place``).
_IN_PLACE = re.compile(
    r"(^|[\s;&|(])(sed|gsed)\s+(-\S+\s+)*(-[a-zA-Z]*i|--in-place)|"
    r"(^|[\s;&|(])(perl|ruby)\s+(-\S+\s+)*-[a-zA-Z]*i|"
    r"(^|[\s;&|(])g?awk\s+(-\S+\s+)*-i\s+inplace\b|"
    r"(^|[\s;&|(])mogrify\b(?![^;&|]*\s-path\b)|"
    r"\s--(in-?place|overwrite|replace-original|force-overwrite)\b"
)
#: Many files: a loop over a glob, or names fed by xargs or find -exec (whole command) ...
_MANY_FED = re.compile(r"\bfor\s+\w+\s+in\s+[^;]*[*?\[]|\bxargs\b|\bfind\b[^;]*-(exec|execdir)\b")
#: ... or a glob or recursion among one command's own arguments.
_MANY_ARGS = re.compile(r"(^|\s)[^\s-][^\s]*[*?\[]|--recursive\b")


#: Programs whose last operand is the file they write.
_CONVERTERS = frozenset(
    {"convert", "magick", "gm", "ffmpeg", "avconv", "sox", "qpdf", "gs", "pdftk", "cjpeg",
     "djpeg", "pngquant", "ps2pdf", "pdf2ps", "iconv", "unoconv", "soffice", "heif-convert"}
)  # fmt: skip


def _command_words(words: list[str]) -> list[str]:
    """The words from the program on: without a leading ``do``, ``then``, ``sudo`` ..."""
    while words and words[0] in ("do", "then", "else", "{", "!", "sudo", "time", "nice", "env"):
        words = words[1:]
    return words


def _file_args(words: list[str]) -> list[str]:
    """The operands of one command that name files: not its options, nor the program text of
    sed, perl, ruby or awk (``s/^v=.*/2/`` is no glob)."""
    words = _command_words(words)
    if not words:
        return []
    prog = posixpath.basename(words[0])
    rest = words[1:]
    out: list[str] = []
    script_due = prog in ("sed", "gsed", "awk", "gawk", "mawk") and not any(
        w in ("-e", "--expression", "-f") for w in rest
    )
    skip_next = False
    for w in rest:
        if skip_next:
            skip_next = False
            continue
        if w.startswith("-"):
            if prog in ("sed", "gsed", "perl", "ruby", "awk", "gawk") and re.fullmatch(
                r"-[a-zA-Z]*[eE]|--expression|-i|-f", w
            ):
                skip_next = w != "-i" or prog in ("awk", "gawk")
            continue
        if script_due:
            script_due = False
            continue
        out.append(w)
    return out


#: ``sed -i.bak``, ``perl -pi~``, ``--in-place=.orig``: every file rewritten keeps a copy.
_BACKUP_SUFFIX = re.compile(r"(^|\s)(-[a-zA-Z]*i[.~_]\S*|--in-place=\S+)(\s|$)")
_MOVERS = frozenset({"mv", "cp", "gmv", "gcp"})


def _folders_made(segments: list[str]) -> set[str]:
    """Folders a ``mkdir`` in the command creates (a move into them replaces nothing)."""
    made: set[str] = set()
    for segment in segments:
        words = _command_words(segment.split())
        if words and posixpath.basename(words[0]) == "mkdir":
            made.update(posixpath.normpath(w) for w in words[1:] if not w.startswith("-"))
    return made


def _moves_onto_many(words: list[str], made: set[str], *, fed: bool) -> bool:
    """``mv``/``cp`` of many files (a glob, three or more names, or files fed by a loop, xargs
    or find) into a folder of the person's, where any file of the same name is replaced;
    not when told to keep (``-n``, ``-i``) or back up (``-b``) what is there, nor into a
    scratch, build or just-made folder (unless forced with ``-f``)."""
    core = _command_words(words)
    if core and posixpath.basename(core[0]) in ("find", "xargs"):
        core = _fed_command(core)
    git = core[:2] == ["git", "mv"]
    core = core[1:] if git else core
    if not core or posixpath.basename(core[0]) not in _MOVERS:
        return False
    short, long_, operands = "", [], []
    target: str | None = None
    args = iter(core[1:])
    for w in args:
        if w in ("-t", "--target-directory"):
            target = next(args, "")
        elif w.startswith("--target-directory="):
            target = w.split("=", 1)[1]
        elif w.startswith("--"):
            long_.append(w)
        elif w.startswith("-") and len(w) > 1:
            short += w[1:]
        else:
            operands.append(w)
    force = "f" in short or "--force" in long_
    backup = "b" in short or any(w.startswith("--backup") for w in long_)
    keep = ("n" in short or "i" in short) or any(
        w in ("--no-clobber", "--interactive", "--update=none", "--update=none-fail") for w in long_
    )
    if backup or (keep and not force) or (git and not force):
        return False  # git mv refuses to replace a file unless forced
    given = target is not None
    if target is None:
        if len(operands) < 2:
            return False
        target, sources = operands[-1], operands[:-1]
    else:
        sources = operands
    folder = posixpath.normpath(target) if target else "."
    if _inside_tmp(folder) or _REGENERABLE.intersection(PurePosixPath(folder).parts):
        return False
    if folder in made and not force:
        return False
    globbed = any(_GLOB_CHARS.search(s) or ("{" in s and "," in s) for s in sources)
    # A rename (``mv "$f" "${f%.srt}.en.srt"``) names a file; a folder ends in a slash, is
    # given with -t, receives several names, or has no suffix (``chapters``).
    name = posixpath.basename(target.rstrip("/"))
    into_folder = (
        given
        or target.endswith("/")
        or len(sources) > 1
        or ("." not in name.lstrip(".") and "$" not in name)
    )
    return len(sources) >= 3 or ((globbed or fed) and into_folder)


def _fed_command(words: list[str]) -> list[str]:
    """The command that ``find -exec`` or ``xargs`` runs on the files it is fed."""
    takes_value = {"-I", "-n", "-P", "-L", "-d", "-a", "-E", "-s", "--max-args"}
    for i, w in enumerate(words):
        if w in ("-exec", "-execdir", "-ok", "-okdir"):
            return words[i + 1 :]
    if posixpath.basename(words[0]) == "xargs":
        j = 1
        while j < len(words) and words[j].startswith("-"):
            j += 2 if words[j] in takes_value else 1
        return words[j:]
    return []


def _bulk_overwrite(norm: str) -> Assessment | None:
    """Rewriting many files in place (``sed -i`` over a glob, ``mogrify *.jpg``, a loop that
    converts each file onto itself): with changes written through, the originals are gone."""
    segments = re.split(r"\s(?:;|&&|\|\||&)\s|;", norm)
    fed = _MANY_FED.search(norm) is not None
    made = _folders_made(segments)
    for segment in segments:
        words = segment.split()
        if any(_moves_onto_many(part.split(), made, fed=fed) for part in segment.split("|")):
            return Assessment(
                Risk.RISKY,
                "It would move or copy many files over any of the same name, and the files "
                "it replaces would be gone.",
                "bulk-overwrite",
                reversible=True,
            )
        files = _file_args(words)
        many = fed or any(_MANY_ARGS.search(" " + w) for w in files)
        # A converter given the same file to read and to write (convert "$f" -strip "$f").
        core = _command_words(words)
        prog = posixpath.basename(core[0]) if core else ""
        onto_itself = prog in _CONVERTERS and len(files) >= 2 and files[-1] in files[:-1]
        for flag in ("-o", "--output", "-O"):
            if flag in words[:-1]:
                out = words[words.index(flag) + 1]
                others = [
                    w for i, w in enumerate(words[1:], 1) if w != flag and words[i - 1] != flag
                ]
                onto_itself = onto_itself or out in others
        in_place = _IN_PLACE.search(" " + segment) and not _BACKUP_SUFFIX.search(segment)
        if (in_place or onto_itself) and many:
            return Assessment(
                Risk.RISKY,
                "It would rewrite many of your files in place, and the originals would be gone.",
                "bulk-overwrite",
                reversible=True,
            )
    return None


def _many_files() -> Assessment:
    return Assessment(
        Risk.RISKY,
        "It would delete a folder or many files at once, which cannot be undone.",
        "mass-delete",
        reversible=True,
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

    def __init__(
        self, mode: ApprovalMode, assessor: Assessor, *, changes_staged: bool = False
    ) -> None:
        self.mode = ApprovalMode(mode)
        self.assessor = assessor
        #: The session's changes to the folder are staged for review (not written through):
        #: auto mode then runs risky-but-reversible work confined to the folder unasked.
        self.changes_staged = changes_staged

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
            undoable = self.changes_staged and a.reversible is True
            if self.mode is ApprovalMode.AUTO and undoable:
                verdict = Verdict.RUN
            else:
                verdict = Verdict.REFUSE if self.mode is ApprovalMode.DENY_RISKY else Verdict.ASK
        elif self.mode is ApprovalMode.ASK and call.name not in READ_ONLY_TOOLS:
            verdict = Verdict.ASK
        else:
            verdict = Verdict.RUN
        reason = a.reason
        if verdict is Verdict.ASK and risk is Risk.ROUTINE:
            reason = "You chose to approve every action that changes something."
        if verdict is Verdict.RUN and risk is Risk.RISKY:
            reason = "Its changes stay staged in your folder for you to review or undo."
        return Decision(verdict, reason, risk=risk.label, rule=a.rule)
