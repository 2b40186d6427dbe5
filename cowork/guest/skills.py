"""The skills program: lists and reads ``.claude/skills/*/SKILL.md`` (standard library only).

The host runs it as ``python3 -I /run/cowork/lib/cowork/guest/skills.py`` with one JSON
request on stdin and prints one JSON object:

- ``{"op": "list", "roots": [dir, ...]}`` -> ``{"ok": true, "skills": [{"name",
  "description", "root"}]}``: every ``<root>/skills/<dir>/SKILL.md`` whose frontmatter names
  it (a name given twice keeps the first root's);
- ``{"op": "read", "roots": [...], "name": str}`` -> ``{"ok": bool, "text": str}``: the body
  of that skill (frontmatter removed) and the files beside it, from the first root that has it.

Only the roots the host names are looked at (a workspace's own ``.claude`` only when the
person trusted the folder); a skill folder or file that resolves outside its root's
``skills`` folder (a symlink) is ignored.

It imports nothing from ``cowork``: it runs as a script, without the package on its path.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

MAX_SKILL_BYTES = 256_000
MAX_SKILLS = 200
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def frontmatter(text: str) -> tuple[dict[str, str], str]:
    """The ``key: value`` lines between the leading ``---`` lines, and the body after them."""
    if not text.startswith("---"):
        return {}, text
    lines = text.splitlines()
    fields: dict[str, str] = {}
    key = ""
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return fields, "\n".join(lines[i + 1 :]).lstrip("\n")
        m = re.match(r"^([A-Za-z_][\w-]*)\s*:\s*(.*)$", line)
        if m:
            key, value = m.group(1).lower(), m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            fields[key] = value
        elif key and line.startswith((" ", "\t")):  # a folded continuation line
            fields[key] = (fields[key] + " " + line.strip()).strip()
    return {}, text


def _inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base + os.sep)


def _skill_file(root: str, dirname: str) -> str | None:
    skills = os.path.join(root, "skills")
    path = os.path.join(skills, dirname, "SKILL.md")
    if not _NAME.match(dirname) or not os.path.isfile(path) or not _inside(path, skills):
        return None
    return path


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(MAX_SKILL_BYTES).decode("utf-8", "replace")


def list_skills(roots: list[str]) -> list[dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for root in roots:
        skills = os.path.join(root, "skills")
        try:
            names = sorted(os.listdir(skills))
        except OSError:
            continue
        for dirname in names:
            path = _skill_file(root, dirname)
            if path is None:
                continue
            fields, _ = frontmatter(_read(path))
            name = fields.get("name", dirname).strip()
            if not _NAME.match(name) or name in found or len(found) >= MAX_SKILLS:
                continue
            description = " ".join(fields.get("description", "").split())[:1024]
            found[name] = {"name": name, "description": description, "root": root, "dir": dirname}
    return list(found.values())


def read_skill(roots: list[str], name: str) -> dict[str, Any]:
    for skill in list_skills(roots):
        if skill["name"] != name:
            continue
        folder = os.path.join(skill["root"], "skills", skill["dir"])
        path = _skill_file(skill["root"], skill["dir"])
        if path is None:
            break
        _, body = frontmatter(_read(path))
        others = sorted(n for n in os.listdir(folder) if n != "SKILL.md")[:50]
        text = f"Skill {name} (folder {folder}):\n\n{body.strip()}"
        if others:
            text += "\n\nFiles beside it (read them with read_file or bash if needed): "
            text += ", ".join(others)
        return {"ok": True, "text": text}
    return {"ok": False, "text": f"there is no skill named {name!r}"}


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
        roots = [str(r) for r in request.get("roots", [])]
        if request.get("op") == "list":
            reply: dict[str, Any] = {"ok": True, "text": "", "skills": list_skills(roots)}
        elif request.get("op") == "read":
            reply = read_skill(roots, str(request.get("name", "")))
        else:
            reply = {"ok": False, "text": "unknown skills operation"}
    except Exception as exc:  # the host always gets one JSON line
        reply = {"ok": False, "text": f"skills failed: {type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(reply))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
