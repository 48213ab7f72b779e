"""One writer per run directory: `RUN/LOCK`, held for the life of a run.

The lock is a file created with O_CREAT|O_EXCL (atomic on local disks and on NFSv3+/Lustre/GPFS,
so it works across the nodes of a cluster). It holds one JSON object naming its holder: host,
pid, SLURM job id and restart count, start time. The holder's heartbeat thread touches the
file's mtime every `heartbeat_s` seconds, so a holder on another node that died (a lost node)
is recognisable by a heartbeat older than `stale_after_s`.

A second writer gets `RunLockedError` naming the holder. A dead holder's lock is taken over, and
`acquire` returns a warning saying why it was judged dead:
  - the same SLURM job at another restart count (the job was requeued; SLURM killed the old one),
  - its heartbeat is older than `stale_after_s`,
  - the same host (same boot, same pid namespace) and its pid is gone or now another process
    (the process start time in /proc guards against pid reuse), or the host rebooted since.

Take-over is race-safe: the stale file is first renamed to a name of our own, then checked to be
the very file we judged stale (its bytes carry the holder's random token), and only then is a new
lock created with O_EXCL; of two contenders, one renames the stale file and the other finds
nothing to rename, or a fresh lock, which it puts back.

Limits: a holder stopped (SIGSTOP, `scontrol suspend`) for longer than `stale_after_s` loses its
lock to the next writer; it notices at its next heartbeat and logs an error. Staleness compares
the file's mtime with this host's clock, so node clocks must agree to well within `stale_after_s`.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

LOCK_NAME = "LOCK"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0  # six heartbeats: a busy shared filesystem may delay a few


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock; the message is one line naming it."""


def _read_proc(path: str) -> Optional[str]:
    try:
        return Path(path).read_text().strip()
    except OSError:  # no /proc (not Linux) or no such process
        return None


def _stat_fields(pid: int) -> Optional[list[str]]:
    """/proc/PID/stat from field 3 (the state) on; field 22, the start time, is then [19]."""
    stat = _read_proc(f"/proc/{pid}/stat")
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split() if stat else None


def _start_time(pid: int) -> Optional[str]:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _running(pid: int, start_time: Optional[str]) -> bool:
    """Whether `pid` is still the process that started at `start_time` (clock ticks since boot):
    a pid the kernel has given to a new process, or a zombie, is not."""
    if start_time is None:  # no /proc here: existence is all we can check
        return _pid_alive(pid)
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X") and fields[19] == start_time


def _pid_namespace() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    job = f"job {holder['job']}" if holder.get("job") else "no SLURM job"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} ({job}) "
            f"since {holder.get('since', '?')}")


def _parse(raw: bytes) -> dict[str, Any]:
    """The holder's record; {} for a file caught between its creation and its write, or foreign."""
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _write_exclusive(path: Path, payload: bytes) -> bool:
    """Create `path` holding `payload` unless it exists (atomically: O_CREAT|O_EXCL)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, payload)
        os.fsync(fd)  # readers on other nodes see the record, not an empty file
    finally:
        os.close(fd)
    return True


class RunLock:
    """`RUN/LOCK` for one process of a run (rank 0, before the process group starts).

        lock = RunLock(run_dir)
        warning = lock.acquire()   # RunLockedError if a live process holds it; a text if taken over
        ...
        lock.release()             # removes the file only if it is still ours

    or `with RunLock(run_dir) as lock:` (then `lock.warning`).
    """

    def __init__(self, run_dir: str | os.PathLike[str], heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.warning: Optional[str] = None  # why a dead holder's lock was taken over, if it was
        self.lost = False  # set by the heartbeat when another process took the lock over
        self._payload: Optional[bytes] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self) -> Optional[str]:
        """Take the lock. Returns None, or a one-line warning naming the dead holder taken over.
        Raises RunLockedError when a live process holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = self._record()
        payload = (json.dumps(me) + "\n").encode()
        self.warning = None
        while not _write_exclusive(self.path, payload):
            try:
                raw, age = self._read()
            except FileNotFoundError:
                continue  # released between our attempt and the read: try again
            holder = _parse(raw)
            reason = self._dead_reason(holder, me, age)
            if reason is None:
                raise RunLockedError(
                    f"run directory {self.run_dir} is in use by {_describe(holder)}; stop that run or choose "
                    f"another run.dir (its lock {self.path} is taken over once that process is gone, its SLURM "
                    f"job is requeued, or its heartbeat, last {age:.0f} s ago, is older than "
                    f"{self.stale_after_s:.0f} s)")
            if self._remove_if(raw):
                self.warning = f"took over the run lock {self.path} from {_describe(holder)}: {reason}"
        self._payload = payload
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="megaseqpe-run-lock", daemon=True)
        self._thread.start()
        return self.warning

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (never another's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._payload is not None and self._read_raw() == self._payload:
            self._remove_if(self._payload)
        self._payload = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "job": os.environ.get("SLURM_JOB_ID") or None,
                "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "boot_id": _read_proc("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_namespace(),
                "pid_start": _start_time(pid), "token": uuid.uuid4().hex}

    def _read(self) -> tuple[bytes, float]:
        """The lock's bytes and its heartbeat's age in seconds, from one open file."""
        with open(self.path, "rb") as file:
            return file.read(), time.time() - os.fstat(file.fileno()).st_mtime

    def _read_raw(self) -> Optional[bytes]:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _dead_reason(self, holder: dict[str, Any], me: dict[str, Any], age: float) -> Optional[str]:
        """Why the holder is certainly gone, or None if it may be alive."""
        if me["job"] and holder.get("job") == me["job"] and holder.get("restart") != me["restart"]:
            return (f"SLURM job {me['job']} was requeued (restart {holder.get('restart')} -> {me['restart']}) "
                    "and SLURM ends a job's processes before it requeues it")
        if age > self.stale_after_s:
            return f"its heartbeat stopped {age:.0f} s ago (stale after {self.stale_after_s:.0f} s)"
        if holder.get("host") != me["host"]:
            return None
        if holder.get("boot_id") != me["boot_id"]:
            return "its host has rebooted since"
        pid = holder.get("pid")
        # Another container on this host (other pid namespace): its pids mean nothing here.
        if holder.get("pid_ns") != me["pid_ns"] or not isinstance(pid, int):
            return None
        return None if _running(pid, holder.get("pid_start")) else "that process is no longer running"

    def _remove_if(self, raw: bytes) -> bool:
        """Remove the lock if it still holds `raw`. The rename makes it ours before we look, so of
        several processes removing one stale lock, exactly one does."""
        aside = self.path.with_name(f"{LOCK_NAME}.{uuid.uuid4().hex}.removing")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # another process removed it first
        moved = aside.read_bytes()
        if moved != raw:
            # A newer lock, created after we read the stale one: give it back to its holder.
            _write_exclusive(self.path, moved)
        aside.unlink()
        return moved == raw

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._touch():
                self.lost = True
                raw = self._read_raw()
                logger.error("the run lock %s is no longer this process's (now held by %s): another process "
                             "may be writing to %s", self.path, _describe(_parse(raw)) if raw else "nobody",
                             self.run_dir)
                return

    def _touch(self) -> bool:
        """Refresh the heartbeat; False if the lock now belongs to another process."""
        try:
            if self.path.read_bytes() != self._payload:
                return False
            os.utime(self.path)
            return True
        except FileNotFoundError:
            # Deleted by hand, or set aside for an instant by a contender checking an older lock
            # (who puts it back): recreate it unless someone else holds it by now.
            return _write_exclusive(self.path, self._payload) or self._read_raw() == self._payload
