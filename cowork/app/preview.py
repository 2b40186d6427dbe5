"""Before/after of a changed file as readable HTML, like tracked changes (no Qt)."""

from __future__ import annotations

import difflib
import html
import re

from cowork.app import text as T
from cowork.app.service import FileChange

MAX_CHARS = 200_000
_TOKENS = re.compile(r"\s+|\w+|[^\w\s]")


def _words(text: str) -> list[str]:
    return _TOKENS.findall(text)


def _para(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def tracked(before: str, after: str) -> str:
    """The new text with insertions underlined in green and deletions struck in red."""
    a, b = _words(before[:MAX_CHARS]), _words(after[:MAX_CHARS])
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(_para("".join(a[i1:i2])))
            continue
        if op in ("delete", "replace"):
            gone = _para("".join(a[i1:i2]))
            out.append(f'<s style="color:#b00020;background:#fde0e0">{gone}</s>')
        if op in ("insert", "replace"):
            new = _para("".join(b[j1:j2]))
            out.append(f'<u style="color:#1b5e20;background:#e3f1e3">{new}</u>')
    return "".join(out)


_ADDED = '<u style="color:#1b5e20;background:#e3f1e3">{}</u>'
_REMOVED = '<s style="color:#b00020;background:#fde0e0">{}</s>'


def diff_html(diff: str) -> str:
    """A unified diff as marked-up text: added lines underlined in green, removed lines
    struck in red, unchanged lines plain, and "…" where unchanged parts are left out."""
    out: list[str] = []
    for line in diff[:MAX_CHARS].splitlines():
        if line.startswith(("--- ", "+++ ")):
            continue
        if line.startswith("@@"):
            if out:
                out.append('<p style="color:#666">…</p>')
            continue
        if line.startswith("\\"):
            continue  # "\ No newline at end of file"
        mark, body = line[:1], _para(line[1:])
        if not body:
            out.append("<br>")  # an empty line: nothing to mark
        elif mark == "+":
            out.append(_ADDED.format(body) + "<br>")
        elif mark == "-":
            out.append(_REMOVED.format(body) + "<br>")
        else:
            out.append(body + "<br>")
    return "".join(out)


def preview_html(change: FileChange) -> str:
    title = f"<h3>{html.escape(change.path)} — {T.CHANGE_KIND[change.kind]}</h3>"
    if change.conflict:
        title += f'<p style="color:#8a4b00"><b>{html.escape(T.CONFLICT)}</b></p>'
    if change.diff is not None:
        note = f"<p>{html.escape(change.note)}</p>" if change.note else ""
        body = diff_html(change.diff)
        return title + note + f'<div style="font-family:serif;line-height:140%">{body}</div>'
    if change.before is None and change.after is None:
        if change.note:
            return title + f"<p>{html.escape(change.note)}</p>"
        sizes = f"{T.size(change.size_before)} → {T.size(change.size_after)}"
        return title + f"<p>{html.escape(T.NOT_TEXT.format(size=sizes))}</p>"
    before = change.before or ""
    after = change.after or ""
    if change.before is None:
        body = f'<u style="color:#1b5e20;background:#e3f1e3">{_para(after)}</u>'
    elif change.after is None:
        body = f'<s style="color:#b00020;background:#fde0e0">{_para(before)}</s>'
    else:
        body = tracked(before, after)
    return title + f'<div style="font-family:serif;line-height:140%">{body}</div>'
