"""``cowork policy show`` renders every kind of value, connectors included."""

from __future__ import annotations

import json


def test_policy_show_lists_connectors_from_user_settings(cli):
    settings = cli.root / "config" / "cowork" / "settings.toml"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(
        '[mcp.servers.notes]\ncommand = "python3"\nargs = ["/home/agent/notes.py"]\n'
        'env = { NOTES_DIR = "/workspace/notes" }\n'
    )
    out = cli("policy", "show")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("mcp.servers"))
    assert '"notes": {"command": "python3"' in line and line.endswith("(user)")
    shown = json.loads(cli("policy", "show", "--json").stdout)
    (row,) = [r for r in shown["values"] if r["key"] == "mcp.servers"]
    assert row["value"]["notes"]["env"] == {"NOTES_DIR": "/workspace/notes"}
