"""The web fetch program: runs in the guest as the agent user (standard library only).

The host runs it as ``python3 -I /run/cowork/lib/cowork/guest/webfetch.py``; it reads one JSON
request ``{"url": str, "max_bytes": int, "timeout": float}`` on stdin and prints one JSON
object ``{"ok": bool, "text": str, "status": int, "findings": {kind: count}}``.

The request goes through the egress gateway (the proxy variables every guest process gets),
so grants, the floor and the audit apply unchanged. Untrusted markup is turned into text here,
in the guest, never on the host. The converter is :class:`html.parser.HTMLParser` from the
standard library: dropping what a reader cannot see needs the element structure with its
attributes (``hidden``, ``aria-hidden``, ``display:none``, ``visibility:hidden``, white text
on a white background), which text converters such as html2text do not remove, and the
standard parser needs no change to the guest image. Scripts, styles, templates and comments
never reach the text. Every removal is counted in ``findings``.

It imports nothing from ``cowork``: it runs as a script, without the package on its path.
"""

from __future__ import annotations

import html.parser
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

MAX_BYTES = 2_000_000
TIMEOUT = 30.0
USER_AGENT = "cowork-web-fetch/1"

_DROP = frozenset({"script", "style", "template", "noscript", "svg", "head", "iframe", "object"})
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr"}
)  # fmt: skip
_BLOCK = frozenset(
    {"p", "div", "section", "article", "header", "footer", "nav", "aside", "main", "ul", "ol",
     "table", "tr", "blockquote", "pre", "form", "figure", "h1", "h2", "h3", "h4", "h5", "h6",
     "li", "dt", "dd", "br", "hr", "title"}
)  # fmt: skip
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0(?:\.0+)?\s*(?:;|$)|"
    r"font-size\s*:\s*0(?:px|em|rem|pt)?\s*(?:;|$)",
    re.IGNORECASE,
)
_WHITE = r"(?:#fff(?:fff)?|white|rgb\(\s*255\s*,\s*255\s*,\s*255\s*\))"
_WHITE_TEXT = re.compile(rf"(?:^|;|\s)color\s*:\s*{_WHITE}", re.IGNORECASE)
_WHITE_BG = re.compile(rf"background(?:-color)?\s*:\s*{_WHITE}", re.IGNORECASE)


def _hidden(tag: str, attrs: dict[str, str]) -> bool:
    if "hidden" in attrs or attrs.get("aria-hidden", "").lower() == "true":
        return True
    if tag == "input" and attrs.get("type", "").lower() == "hidden":
        return True
    style = attrs.get("style", "")
    return bool(style and _HIDDEN_STYLE.search(style))


class Readable(html.parser.HTMLParser):
    """HTML to readable text, without what a reader of the page cannot see."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.findings: dict[str, int] = {}
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, hides, white background)
        self._skip = 0  # depth inside hidden or dropped elements
        self._href: str | None = None
        self.title = ""
        self._in_title = False

    def _count(self, kind: str) -> None:
        self.findings[kind] = self.findings.get(kind, 0) + 1

    def _white_bg(self) -> bool:
        return any(white for _, _, white in self._stack)

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = {k.lower(): (v or "") for k, v in attrs_list}
        if tag in _VOID:
            if tag in ("br", "hr") and not self._skip:
                self.out.append("\n")
            elif tag == "img" and not self._skip and attrs.get("alt") and not _hidden(tag, attrs):
                self.out.append(f"[image: {attrs['alt']}]")
            return
        style = attrs.get("style", "")
        white_bg = bool(_WHITE_BG.search(style)) or self._white_bg()
        hides = False
        if tag in _DROP:
            hides = True
        elif _hidden(tag, attrs):
            hides = True
            if not self._skip:
                self._count("hidden-elements")
        elif white_bg and _WHITE_TEXT.search(style):
            hides = True
            if not self._skip:
                self._count("white-on-white")
        self._stack.append((tag, hides, bool(_WHITE_BG.search(style))))
        if hides:
            self._skip += 1
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = True
        if tag in _BLOCK:
            self.out.append("\n\n" if tag not in ("li", "tr", "dt", "dd") else "\n")
        if tag == "li":
            self.out.append("- ")
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append("#" * int(tag[1]) + " ")
        if tag == "a" and attrs.get("href"):
            self._href = attrs["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        # Close up to the matching open tag (tolerates unclosed children).
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                for _, hides, _w in self._stack[i:]:
                    if hides:
                        self._skip -= 1
                del self._stack[i:]
                break
        else:
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = False
        if tag == "a" and self._href:
            if not self._href.startswith(("#", "javascript:")):
                self.out.append(f" ({self._href})")
            self._href = None
        if tag in _BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
        self.out.append(data)

    def handle_comment(self, data: str) -> None:
        self._count("html-comments")

    def text(self) -> str:
        raw = "".join(self.out)
        lines = [" ".join(line.split()) for line in raw.splitlines()]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> tuple[str, dict[str, int]]:
    parser = Readable()
    parser.feed(markup)
    parser.close()
    return parser.text(), parser.findings


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only (never ftp or file), at most 5."""

    max_redirections = 5

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-web URL", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _charset(content_type: str) -> str:
    m = re.search(r"charset=([\w.-]+)", content_type, re.IGNORECASE)
    return m.group(1) if m else "utf-8"


def _refused_text(host: str, detail: str) -> str:
    return (
        f"The policy does not allow {host}; an administrator can grant it. "
        f"(The gateway said: {detail.strip()[:300]})"
    )


def fetch(request: dict[str, Any]) -> dict[str, Any]:
    url = str(request.get("url", ""))
    max_bytes = int(request.get("max_bytes") or MAX_BYTES)
    timeout = float(request.get("timeout") or TIMEOUT)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return {"ok": False, "text": f"not an http(s) URL: {url!r}", "status": 0}
    req = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"}
    )
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    try:
        with opener.open(req, timeout=timeout) as resp:
            body = resp.read(max_bytes + 1)
            status = resp.status
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode("utf-8", "replace")
        if exc.code in (403, 407) and "cowork egress" in detail:
            return {"ok": False, "text": _refused_text(host, detail), "status": exc.code}
        return {"ok": False, "text": f"{host} answered {exc.code} {exc.reason}", "status": exc.code}
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
        if "Tunnel connection failed: 403" in reason or "407" in reason:
            return {"ok": False, "text": _refused_text(host, reason), "status": 403}
        if "timed out" in reason:
            return {"ok": False, "text": f"{host} did not answer within {timeout:.0f} s"}
        return {"ok": False, "text": f"could not fetch {url}: {reason}", "status": 0}
    truncated = len(body) > max_bytes
    body = body[:max_bytes]
    text = body.decode(_charset(ctype), "replace")
    findings: dict[str, int] = {}
    if "html" in ctype.lower() or text.lstrip()[:200].lower().startswith(("<!doctype", "<html")):
        text, findings = html_to_text(text)
    if truncated:
        text += f"\n[the page is longer than {max_bytes} bytes; the rest was not read]"
    return {"ok": True, "text": text or "(the page has no text)", "status": status,
            "findings": findings}  # fmt: skip


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
        reply = fetch(request)
    except Exception as exc:  # the host always gets one JSON line
        reply = {"ok": False, "text": f"web fetch failed: {type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(reply))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
