"""Who is writing a temp dir (pid, host, boot id, process start time, pid namespace), recorded beside it, and
whether that process still runs, as far as this host can tell (mashup.atomic_dir removes a dead writer's dir)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Owner:
    """Who is writing a temp dir; enough to tell on this host whether that process still runs."""

    pid: int
    host: str
    boot_id: str | None
    started: int | None  # process start time in clock ticks since boot (/proc/PID/stat), guards pid reuse
    created: str
    pid_namespace: int | None = None  # containers sharing a hostname see other pids

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        pid = os.getpid()
        return cls(pid, socket.gethostname(), _boot_id(), _process_start(pid),
                   datetime.now(timezone.utc).isoformat(timespec="seconds"), current_pid_namespace())

    def state(self) -> Literal["alive", "dead", "unknown"]:
        """Whether the writer still runs; "unknown" where this host cannot tell (another host or pid namespace)."""
        if self.host != socket.gethostname() or self.pid_namespace != current_pid_namespace():
            return "unknown"
        boot = _boot_id()
        if self.boot_id and boot and self.boot_id != boot:
            return "dead"  # the host rebooted since
        if Path("/proc/self/stat").exists():
            stat = _proc_stat(self.pid)
            if stat is None or stat[0] in ("Z", "X"):
                return "dead"
            return "dead" if self.started is not None and int(stat[19]) != self.started else "alive"
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return "dead"
        except PermissionError:
            pass
        return "alive"


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _process_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def current_pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@cache
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
