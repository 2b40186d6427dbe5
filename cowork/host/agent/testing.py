"""Fakes for fast tests of the agent: a local runner standing in for the guest, approvers.

:class:`LocalRunner` runs commands with ``bash`` in a local directory that stands in for
/workspace. It is for tests only: it gives *no* isolation (that is the VM's job), so tests
that use it prove the agent's own logic (confinement in the file tools, approvals), not the
boundary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cowork.host.agent.loop import Decision, ToolCall
from cowork.host.channel import Result


@dataclass
class LocalRunner:
    """Runs each command as ``bash -c`` in its own process group, like sshd in the guest."""

    root: Path
    env: Mapping[str, str] | None = None
    #: Raise KeyboardInterrupt while running a command for which this returns True.
    interrupt_when: Callable[[str], bool] | None = None
    commands: list[str] = field(default_factory=list)
    #: Every stdout and stderr the runner returned, in order (for leak checks).
    outputs: list[str] = field(default_factory=list)
    #: Commands abandoned by a simulated Ctrl-C, with the thread that reaps each.
    interrupted: list[tuple[subprocess.Popen[str], threading.Thread]] = field(default_factory=list)

    def run(
        self,
        cmd: str,
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        input: str | None = None,
    ) -> Result:
        self.commands.append(cmd)
        env = (
            dict(self.env)
            if self.env is not None
            else {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(self.root),
                "LANG": "C.UTF-8",
            }
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            ["bash", "-c", cmd],
            cwd=cwd or str(self.root),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        if self.interrupt_when is not None and self.interrupt_when(cmd):
            # Let the command start (it writes its pid file) before the "Ctrl-C".
            time.sleep(0.3)
            # Like the channel, leave the command to be stopped by whoever handles the
            # interrupt; a reaper collects it so its pipes are closed.
            reaper = threading.Thread(target=proc.communicate, daemon=True)
            reaper.start()
            self.interrupted.append((proc, reaper))
            raise KeyboardInterrupt
        timed_out = False
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            timed_out = True
        self.outputs += [out, err]
        return Result(
            command=cmd,
            exited=124 if timed_out else proc.returncode,
            stdout=out,
            stderr=err,
            duration=time.monotonic() - started,
            timed_out=timed_out,
        )


@dataclass
class ScriptedApprover:
    """Answers approval prompts from a fixed policy and remembers what it was asked."""

    answer: bool = False
    asked: list[tuple[ToolCall, Decision]] = field(default_factory=list)

    def __call__(self, call: ToolCall, decision: Decision, description: str) -> bool:
        self.asked.append((call, decision))
        return self.answer
