"""The private channel to the guest: SSH (paramiko) over the VM's virtio-serial port.

This module is the only one that imports paramiko.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """What a guest command did. Timeouts and exit codes are data, not exceptions."""

    command: str
    exited: int  # exit status; 124 after a timeout, 130 after an interrupt, -N for signal N
    stdout: str
    stderr: str
    duration: float  # seconds
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exited == 0 and not self.timed_out
