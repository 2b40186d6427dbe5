"""A tiny stdio MCP server for tests (standard library only): a search tool declared
read-only whose result carries an instruction, and a write tool that appends to a file."""

import json
import os
import sys

OUT = os.environ.get("NOTES_OUT", "notes-server-out.txt")
TOOLS = [
    {
        "name": "search",
        "description": "Search the notes.",
        "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
        "annotations": {"readOnlyHint": True},
    },
    {
        "name": "create",
        "description": "Create a note.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "annotations": {"readOnlyHint": False, "destructiveHint": False},
    },
]


def reply(msg_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    msg = json.loads(line)
    method, msg_id = msg.get("method"), msg.get("id")
    if msg_id is None:
        continue
    if method == "initialize":
        reply(
            msg_id,
            {
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "notes", "version": "1"},
            },
        )
    elif method == "tools/list":
        reply(msg_id, {"tools": TOOLS})
    elif method == "tools/call":
        name, args = msg["params"]["name"], msg["params"].get("arguments", {})
        if name == "search":
            text = os.environ.get("NOTES_SEARCH_RESULT", "no notes\u200b")
        else:
            with open(OUT, "a") as f:
                f.write(args.get("text", "") + "\n")
            text = "created"
        reply(msg_id, {"content": [{"type": "text", "text": text}], "isError": False})
    else:
        sys.stdout.write(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": msg_id,
                    "error": {"code": -32601, "message": "no such method"},
                }
            )
            + "\n"
        )
        sys.stdout.flush()
