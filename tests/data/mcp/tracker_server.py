"""A tiny stdio MCP server for tests (standard library only) that files an issue with a web
API: it POSTs to ``$TRACKER_URL/tracker/issues`` through the proxy the environment names, with
``Authorization: Bearer $TRACKER_TOKEN`` (which cowork sets to its placeholder: the gateway
puts the real credential in)."""

import json
import os
import sys
import urllib.error
import urllib.request

TOOLS = [
    {
        "name": "file_issue",
        "description": "File an issue in the tracker.",
        "inputSchema": {"type": "object", "properties": {"title": {"type": "string"}}},
        "annotations": {"readOnlyHint": False},
    },
]


def reply(msg_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


def file_issue(title):
    req = urllib.request.Request(
        os.environ["TRACKER_URL"] + "/tracker/issues",
        data=json.dumps({"title": title}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer " + os.environ.get("TRACKER_TOKEN", ""),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return f"filed: {resp.status} {resp.read().decode(errors='replace')}", False
    except urllib.error.HTTPError as exc:
        return f"refused: {exc.code} {exc.read().decode(errors='replace')}", True
    except OSError as exc:
        return f"failed: {exc}", True


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
                "serverInfo": {"name": "tracker", "version": "1"},
            },
        )
    elif method == "tools/list":
        reply(msg_id, {"tools": TOOLS})
    elif method == "tools/call":
        text, failed = file_issue(msg["params"].get("arguments", {}).get("title", ""))
        reply(msg_id, {"content": [{"type": "text", "text": text}], "isError": failed})
    else:
        sys.stdout.write(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": msg_id,
                    "error": {"code": -32601, "message": f"unknown method {method}"},
                }
            )
            + "\n"
        )
        sys.stdout.flush()
