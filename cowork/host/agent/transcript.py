"""Transcripts: one JSON-lines file per run, in cowork's data directory, per workspace.

Never in the workspace (the agent could read or change it there). Contract: a transcript
holds what the model saw and said and each decision; it never holds a credential (the loop
never has one) and file contents written by tools are reduced to their size.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from cowork.paths import Paths


def workspace_key(workspace: Path) -> str:
    """A stable folder name for a workspace: its name plus a hash of its full path."""
    resolved = workspace.expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in resolved.name)[:40]
    return f"{safe or 'root'}-{digest}"


class Transcript:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def create(cls, paths: Paths, workspace: Path) -> Transcript:
        folder = paths.transcripts / workspace_key(workspace)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return cls(folder / f"{stamp}-{secrets.token_hex(3)}.jsonl")

    def record(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"time": round(time.time(), 3), "kind": kind, **fields}, default=str)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text("utf-8").splitlines() if x.strip()]
