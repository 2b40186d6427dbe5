"""Reading a shell command the way the shell would, so approval rules judge what really runs.

:func:`normalise` turns a command line into the words the shell would see: quotes removed
(``c"ur"l`` is ``curl``), backslashes resolved (``c\\url``), ANSI-C strings decoded
(``$'\\x63url'``), variables set earlier in the same command substituted (``x=url; c$x``),
brace lists expanded (``{curl,-d,@f,host}``), and the text handed to ``eval``, ``sh -c`` and
``printf``/``echo -e`` read again as a command.

Contract: whatever cannot be read with confidence is listed in :attr:`Normalised.opaque` (a
plain reason each) and MUST be treated as risky by the caller, never as benign: a command name
computed while the command runs, ``eval`` of computed text, text piped into a shell, aliases
and functions, ``IFS`` tricks, globs in a command name, code built at run time in ``python
-c``. The function never raises for odd input: it reports it as opaque instead.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Marks an expansion whose value is not known before the command runs.
DYNAMIC = "\x00"

_OPERATORS = ("&&", "||", ";;", "|&", ";", "|", "&", "\n", "(", ")")
_REDIRECT = re.compile(r"(\d*)(<<<|<<-|<<|>>|>\||<>|>&|<&|>|<)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\+?=)(.*)$", re.S)
_WRAPPERS = frozenset(
    {"sudo", "doas", "command", "builtin", "exec", "nohup", "time", "nice", "ionice", "stdbuf",
     "then", "do", "else", "elif", "if", "while", "until", "!", "{", "}", "setsid", "chronic",
     "unbuffer", "chroot"}
)  # fmt: skip
_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "fish", "ash", "busybox", "csh"})
_INTERPRETERS = frozenset({"python", "python3", "perl", "ruby", "node", "php", "lua", "tclsh"})
_DECODERS = re.compile(
    r"\b(base64|base32|basenc|xxd|od|uudecode|openssl|rev|tr|gunzip|zcat|gzip|bzip2|xz|"
    r"printf|echo|python[0-9.]*|perl|awk|sed|iconv)\b"
)
_RUNTIME_CODE = re.compile(
    r"\b(exec|eval|compile|__import__|getattr|b64decode|a85decode|fromhex|codecs\.decode|"
    r"bytes\.fromhex|chr\s*\(|String\.fromCharCode|Buffer\.from|atob|pack\s*\()"
)
_FUNCTION_DEF = re.compile(r"(^|[;&|\s{(])[\w.:+-]+\s*\(\s*\)\s*[{(]|(^|[;&|\s])function\s+\S")
_ANSI_SIMPLE = {
    "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r",
    "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?",
}  # fmt: skip
_ESCAPE = re.compile(
    r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|0?[0-7]{1,3}|c.|.)", re.S
)


def decode_escapes(text: str) -> str:
    """Backslash escapes as ``$'…'``, ``printf`` and ``echo -e`` decode them."""

    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        try:
            if e[0] == "x":
                return chr(int(e[1:], 16))
            if e[0] in "uU":
                return chr(int(e[1:], 16))
            if e[0] in "01234567":
                return chr(int(e, 8) & 0xFF)
            if e[0] == "c" and len(e) == 2:
                return chr(ord(e[1]) & 0x1F)
        except (ValueError, OverflowError):
            return m.group(0)
        return _ANSI_SIMPLE.get(e, "\\" + e)

    return _ESCAPE.sub(one, text)


@dataclass
class _Word:
    text: str = ""
    dynamic: bool = False  # holds an expansion whose value is unknown
    quoted: bool = False
    inner: list[str] = field(default_factory=list)  # normalised texts of $(…) and `…`


@dataclass(frozen=True)
class _Body:
    """The text of here-documents: data for most programs, a script for a shell."""

    text: str


@dataclass(frozen=True)
class Normalised:
    """A command as the shell would read it.

    ``text`` is the words of every simple command joined by spaces, with the operators
    between them, followed by the normalised text of every nested command; ``commands`` the
    words of each simple command (unknown expansions shown as ``$?``); ``opaque`` the plain
    reasons why some of it cannot be read with confidence (empty when all of it can).
    """

    text: str
    commands: tuple[tuple[str, ...], ...]
    opaque: tuple[str, ...]


class _Lexer:
    def __init__(self, src: str, env: dict[str, str], depth: int) -> None:
        self.src = src
        self.i = 0
        self.env = env
        self.depth = depth
        self.opaque: list[str] = []
        self.inner: list[str] = []

    # Tokens are _Word or an operator string, produced lazily: a variable set by one simple
    # command is known when the next one is read.
    def tokens(self) -> Iterator[_Word | str | _Body]:
        """Words and operators, with here-document bodies (as :class:`_Body`) before the
        newline that ends the line introducing them."""
        pending: list[tuple[str, bool]] = []
        want: bool | None = None  # a delimiter word is due (True: <<- strips tabs)
        for tok in self._raw_tokens():
            if isinstance(tok, str) and tok in ("<<", "<<-"):
                want = tok == "<<-"
            elif isinstance(tok, _Word) and want is not None:
                pending.append((tok.text, want))
                want = None
            if tok == "\n" and pending:
                yield _Body(self._bodies(pending))
                pending = []
            yield tok
        if pending:
            self.opaque.append("it has an unterminated here-document")

    def _bodies(self, pending: list[tuple[str, bool]]) -> str:
        """Consume the here-document bodies that start at self.i; return their text."""
        out: list[str] = []
        for delim, strip_tabs in pending:
            while self.i <= len(self.src):
                end = self.src.find("\n", self.i)
                end = len(self.src) if end < 0 else end
                line = self.src[self.i : end]
                self.i = end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delim:
                    break
                out.append(line)
        self.i = min(self.i, len(self.src))
        return "\n".join(out)

    def _raw_tokens(self) -> Iterator[_Word | str]:
        word: _Word | None = None
        s = self.src
        while self.i < len(s):
            c = s[self.i]
            if c in " \t":
                if word is not None:
                    yield word
                    word = None
                self.i += 1
                continue
            if c == "#" and word is None:
                while self.i < len(s) and s[self.i] != "\n":
                    self.i += 1
                continue
            if word is None:
                m = _REDIRECT.match(s, self.i)
                if m:
                    self.i = m.end()
                    if m.group(2) in ("<", ">") and s.startswith("(", self.i):
                        # process substitution <(…) / >(…): a word naming a nested command's
                        # output, not a redirection
                        self.i += 1
                        inner = self._until_paren()
                        w = _Word(text=DYNAMIC, dynamic=True)
                        w.inner.append(self._nested(inner))
                        yield w
                    else:
                        yield m.group(2)
                    continue
            op = next((o for o in _OPERATORS if s.startswith(o, self.i)), None)
            if op is not None:
                if word is not None:
                    yield word
                    word = None
                self.i += len(op)
                yield op
                continue
            if word is None:
                word = _Word()
            self._word_part(word)
        if word is not None:
            yield word

    def _word_part(self, w: _Word) -> None:
        s = self.src
        c = s[self.i]
        if c == "\\":
            if self.i + 1 < len(s) and s[self.i + 1] != "\n":
                w.text += s[self.i + 1]
            self.i += 2
        elif c == "'":
            end = s.find("'", self.i + 1)
            if end < 0:
                self.opaque.append("it has an unterminated quote")
                end = len(s)
            w.text += s[self.i + 1 : end]
            w.quoted = True
            self.i = end + 1
        elif c == "$" and s.startswith("$'", self.i):
            j = self.i + 2
            buf = ""
            while j < len(s) and s[j] != "'":
                if s[j] == "\\" and j + 1 < len(s):
                    buf += s[j : j + 2]
                    j += 2
                else:
                    buf += s[j]
                    j += 1
            w.text += decode_escapes(buf)
            w.quoted = True
            self.i = j + 1
        elif c == '"' or (c == "$" and s.startswith('$"', self.i)):
            self.i += 1 if c == '"' else 2
            w.quoted = True
            while self.i < len(s) and s[self.i] != '"':
                if s[self.i] == "\\" and self.i + 1 < len(s):
                    nxt = s[self.i + 1]
                    w.text += nxt if nxt in '$`"\\' else ("" if nxt == "\n" else "\\" + nxt)
                    self.i += 2
                elif s[self.i] in "$`":
                    self._expansion(w)
                else:
                    w.text += s[self.i]
                    self.i += 1
            if self.i >= len(s):
                self.opaque.append("it has an unterminated quote")
            self.i += 1
        elif c in "$`":
            self._expansion(w)
        else:
            w.text += c
            self.i += 1

    def _until_paren(self) -> str:
        """Text up to the matching ``)`` (quotes respected); self.i moves past it."""
        s, depth, start = self.src, 1, self.i
        while self.i < len(s):
            c = s[self.i]
            if c == "\\":
                self.i += 2
                continue
            if c == "'":
                end = s.find("'", self.i + 1)
                self.i = (end if end >= 0 else len(s)) + 1
                continue
            if c == '"':
                j = self.i + 1
                while j < len(s) and s[j] != '"':
                    j += 2 if s[j] == "\\" else 1
                self.i = j + 1
                continue
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    self.i += 1
                    return s[start : self.i - 1]
            self.i += 1
        self.opaque.append("it has an unbalanced parenthesis")
        return s[start:]

    def _nested(self, text: str) -> str:
        if self.depth > 6:
            self.opaque.append("it nests commands too deeply to read")
            return text
        n = _normalise(text, dict(self.env), self.depth + 1)
        self.opaque.extend(n.opaque)
        self.inner.append(n.text)
        return n.text

    def _expansion(self, w: _Word) -> None:
        s = self.src
        if s[self.i] == "`":
            end = s.find("`", self.i + 1)
            if end < 0:
                self.opaque.append("it has an unterminated backquote")
                end = len(s)
            inner = s[self.i + 1 : end]
            self.i = end + 1
            self._substitute(w, inner)
            return
        if s.startswith("$((", self.i):
            self.i += 3
            self._until_paren()
            if s.startswith(")", self.i):
                self.i += 1
            w.text += DYNAMIC
            w.dynamic = True
            return
        if s.startswith("$(", self.i):
            self.i += 2
            self._substitute(w, self._until_paren())
            return
        if s.startswith("${", self.i):
            end = s.find("}", self.i)
            body = s[self.i + 2 : end if end >= 0 else len(s)]
            self.i = (end if end >= 0 else len(s)) + 1
            self._variable(w, body, braced=True)
            return
        m = _NAME.match(s, self.i + 1)
        if m:
            self.i = m.end()
            self._variable(w, m.group(0), braced=False)
            return
        if self.i + 1 < len(s) and s[self.i + 1] in "@*#?$!-0123456789":
            self.i += 2
            w.text += DYNAMIC
            w.dynamic = True
            return
        w.text += "$"
        self.i += 1

    def _substitute(self, w: _Word, inner: str) -> None:
        """``$(…)``: the output of ``echo``/``printf`` of plain words is known; else unknown."""
        n = self._nested_read(inner)
        w.inner.append(n.text)
        cmds = n.commands
        if (
            len(cmds) == 1
            and cmds[0]
            and cmds[0][0] in ("echo", "printf")
            and not any("$?" in a for a in cmds[0])
        ):
            args = [a for a in cmds[0][1:] if not (a.startswith("-") and cmds[0][0] == "echo")]
            w.text += decode_escapes(" ".join(args)) if cmds[0][0] == "printf" else " ".join(args)
            return
        w.text += DYNAMIC
        w.dynamic = True

    def _nested_read(self, text: str) -> Normalised:
        if self.depth > 6:
            self.opaque.append("it nests commands too deeply to read")
            return Normalised(text, (), ())
        n = _normalise(text, dict(self.env), self.depth + 1)
        self.opaque.extend(n.opaque)
        return n

    def _variable(self, w: _Word, body: str, *, braced: bool) -> None:
        if body.startswith("IFS"):
            self.opaque.append("it plays with IFS (how the shell splits words)")
        if body.startswith("!") and len(body) > 1:
            self.opaque.append("it looks up a variable named by another variable")
        if body in self.env:
            w.text += self.env[body]
        elif body in ("HOME", "USER", "PWD", "OLDPWD"):
            w.text += "${" + body + "}"  # kept visible for the home-folder rules
        elif _NAME.fullmatch(body) and body.isupper():
            w.text += "${" + body + "}" + DYNAMIC  # the environment: visible name, unknown value
            w.dynamic = True
        else:
            w.text += DYNAMIC
            w.dynamic = True
            if not _NAME.fullmatch(body):
                w.text += "${" + body + "}"  # substrings, indirection: keep the text to match


def _expand_braces(word: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not m:
        return [word]
    out: list[str] = []
    for part in m.group(1).split(","):
        out.extend(_expand_braces(word[: m.start()] + part + word[m.end() :]))
        if len(out) > 64:
            break
    return out


def _command_index(words: list[str]) -> int:
    """Index of the command name in one simple command (after assignments and wrappers)."""
    i = 0
    while i < len(words):
        w = words[i]
        if _ASSIGN.match(w) or w in _WRAPPERS:
            i += 1
        elif w == "env":
            i += 1
            while i < len(words) and (words[i].startswith("-") or _ASSIGN.match(words[i])):
                i += 1
        elif w in ("timeout", "xargs", "watch", "nice", "parallel"):
            i += 1
            while i < len(words) and (words[i].startswith("-") or words[i][:1].isdigit()):
                i += 1
        else:
            return i
    return i


def _base(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def normalise(command: str) -> Normalised:
    """The command as the shell would read it; see the module docstring."""
    try:
        return _normalise(command, {}, 0)
    except Exception as exc:  # odd input is reported, never trusted
        return Normalised(command, (), (f"it could not be read ({type(exc).__name__})",))


def _normalise(command: str, env: dict[str, str], depth: int) -> Normalised:
    lex = _Lexer(command, env, depth)
    tokens = lex.tokens()
    opaque = lex.opaque
    if _FUNCTION_DEF.search(command):
        opaque.append("it defines its own command names, which can hide what really runs")
    commands: list[tuple[str, ...]] = []
    parts: list[str] = []
    extra: list[str] = []
    current: list[_Word] = []
    prev_op = ""
    redirect_next = False
    redirs: list[str] = []

    def finish(op: str) -> None:
        nonlocal prev_op
        if current or redirs:
            words = _finish_command(current, env, opaque, extra, prev_op, redirs, depth)
            commands.append(tuple(words))
            shown = [r.replace(DYNAMIC, "$?") for r in redirs]
            parts.append(" ".join(words + shown))
        current.clear()
        redirs.clear()
        parts.append(op.strip() or ";")
        prev_op = op

    bodies: list[str] = []
    for tok in tokens:
        if isinstance(tok, _Body):
            bodies.append(tok.text)
            first = current[_command_index([w.text for w in current])] if current else None
            if first is not None and _base(first.text) in _SHELLS:
                extra.append(lex._nested_read(tok.text).text)
            else:
                extra.append(tok.text)  # data (or a script for python & co): visible as is
            continue
        if isinstance(tok, str):
            if tok in ("<", ">", ">>", "<<", "<<-", "<<<", ">|", "<>", ">&", "<&"):
                redirs.append(tok)
                redirect_next = True
                continue
            finish(tok)
            continue
        if redirect_next:
            redirect_next = False
            redirs.append(tok.text)
            extra.extend(tok.inner)
            continue
        current.append(tok)
    finish("")
    text = " ".join(p for p in parts if p)
    text = " ".join([text, *(t for t in extra if t)])
    return Normalised(text.strip(), tuple(commands), tuple(dict.fromkeys(opaque)))


def _finish_command(
    current: list[_Word],
    env: dict[str, str],
    opaque: list[str],
    extra: list[str],
    prev_op: str,
    redirs: list[str],
    depth: int,
) -> list[str]:
    words: list[str] = []
    for cw in current:
        extra.extend(cw.inner)
        words.extend([cw.text] if cw.quoted else _expand_braces(cw.text))
    shown = [w.replace(DYNAMIC, "$?") for w in words]
    idx = _command_index(words)
    # Assignments: remembered for later words when their value is known.
    for w in words[:idx]:
        m = _ASSIGN.match(w)
        if m:
            name = m.group(1)
            if name == "IFS" and m.group(3).strip(" \t\n"):
                # ``IFS= read`` (keep spaces) is an idiom; splitting on other characters
                # turns one word into a command and its arguments.
                opaque.append("it plays with IFS (how the shell splits words)")
            if DYNAMIC in m.group(3):
                env.pop(name, None)
            else:
                env[name] = (env.get(name, "") if m.group(2) == "+=" else "") + m.group(3)
    if idx >= len(words):
        return shown
    name = words[idx]
    args = words[idx + 1 :]
    base = _base(name)
    if DYNAMIC in name:
        opaque.append("the program it runs is computed while it runs")
    elif re.search(r"[*?\[]", name):
        opaque.append("the program it runs is chosen by a wildcard")
    if (
        base in ("alias", "function", "unalias", "hash", "enable")
        or (len(words) > idx + 1 and words[idx + 1].startswith("()"))
        or name.endswith("()")
    ):
        opaque.append("it defines its own command names, which can hide what really runs")
    if base == "for" and len(args) == 3 and args[1] == "in" and _NAME.fullmatch(args[0]):
        # ``for f in photos/*.png``: inside the loop ``$f`` is one file the glob names, as
        # much inside (or outside) the folder as the glob itself. With several words the
        # variable takes each in turn and stays unknown.
        if DYNAMIC in args[2]:
            env.pop(args[0], None)
        else:
            env[args[0]] = args[2]
    if base in ("declare", "typeset", "local", "export", "readonly", "read", "mapfile", "set"):
        for a in args:
            m = _ASSIGN.match(a)
            if m and DYNAMIC not in m.group(3):
                env[m.group(1)] = m.group(3)
            elif m:
                env.pop(m.group(1), None)
            if m and m.group(1) == "IFS" and m.group(3).strip(" \t\n"):
                opaque.append("it plays with IFS (how the shell splits words)")
    if base == "eval" or (base in _SHELLS and "-c" in args) or (base == "source" and not args):
        code_args = args
        if base in _SHELLS:
            code_args = args[args.index("-c") + 1 :][:1]
        code = " ".join(code_args)
        if DYNAMIC in code:
            opaque.append("it runs text that is built while it runs (eval or sh -c)")
        elif code:
            n = _normalise(code, dict(env), depth + 1) if depth < 6 else None
            if n is None:
                opaque.append("it nests commands too deeply to read")
            else:
                extra.append(n.text)
                opaque.extend(n.opaque)
    if base in ("printf", "echo", "print"):
        decoded = decode_escapes(" ".join(a for a in args if not a.startswith("-")))
        if decoded != " ".join(args):
            extra.append(decoded)
        if "%" in " ".join(args):  # printf '%b%b' … or %c: pieces glued at run time
            extra.append(" ".join(decode_escapes(a) for a in args).replace("%s", ""))
    # Text from another program (a pipe, a process substitution) is not visible here; a
    # here-document or a file in the workspace is (like running a script).
    stdin_program = prev_op in ("|", "|&") or any(
        r in ("<", "<<<") and DYNAMIC in t for r, t in itertools.pairwise(redirs)
    )
    reads_stdin = (
        not args
        or args[0] in ("-", "-s", "-i", "/dev/stdin")
        or (args and all(a.startswith("-") for a in args) and "-c" not in args and "-e" not in args)
    )
    if base in ("source", ".") and args and (DYNAMIC in args[0] or args[0] in ("/dev/stdin", "-")):
        opaque.append("it runs text produced by another command as a program")
    if (base in _SHELLS or re.fullmatch(r"(python[0-9.]*|perl|ruby|node|php)", base)) and (
        stdin_program and reads_stdin
    ):
        opaque.append("it runs text produced by another command as a program")
    if base in _SHELLS and args and DYNAMIC in args[0]:
        opaque.append("it runs text produced by another command as a program")
    if re.fullmatch(r"(python[0-9.]*|perl|ruby|node|php)", base) and any(
        a in ("-c", "-e", "-E", "-r", "--eval") for a in args
    ):
        flag = next(i for i, a in enumerate(args) if a in ("-c", "-e", "-E", "-r", "--eval"))
        code = args[flag + 1] if flag + 1 < len(args) else ""
        if DYNAMIC in code or _RUNTIME_CODE.search(code):
            opaque.append("it runs program code that is built while it runs")
    return shown


def has_decoder(text: str) -> bool:
    """True when ``text`` names a tool that can turn hidden text into commands."""
    return _DECODERS.search(text) is not None


__all__ = ["DYNAMIC", "Normalised", "decode_escapes", "has_decoder", "normalise"]
