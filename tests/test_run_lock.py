"""RUN/LOCK: one writer per run directory, with real processes contending for it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from _launch import REPO
from megaseqpe.training.run_lock import RunLock, RunLockedError

# Takes the lock of argv[1] and says so on stdout; "hold" keeps it until stdin closes.
CONTENDER = """
import sys
from megaseqpe.training.run_lock import RunLock, RunLockedError
lock = RunLock(sys.argv[1], heartbeat_s=0.2, stale_after_s=float(sys.argv[2]))
try:
    warning = lock.acquire()
except RunLockedError as error:
    print(f"locked: {error}", flush=True)
    sys.exit(2)
print(f"acquired {warning or ''}", flush=True)
if sys.argv[3] == "hold":
    sys.stdin.read()
lock.release()
"""


def contender(run_dir, mode="once", stale_after_s=60.0, env=None):
    return subprocess.Popen([sys.executable, "-c", CONTENDER, str(run_dir), str(stale_after_s), mode], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def holder(run_dir):
    process = contender(run_dir, "hold")
    assert process.stdout.readline().startswith("acquired"), "the first process takes the lock"
    return process


def attempt(run_dir, stale_after_s=60.0, env=None):
    process = contender(run_dir, stale_after_s=stale_after_s, env=env)
    out, _ = process.communicate(timeout=30)
    return process.returncode, out.strip()


def write_lock(run_dir, age_s=0.0, **record):
    """A lock written as another process would have, its heartbeat `age_s` seconds old."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "LOCK"
    path.write_text(json.dumps({"pid": 4242, "job": None, "restart": 0, "since": "2024-01-01T00:00:00+00:00",
                                "token": "theirs", **record}) + "\n")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path):
    first = holder(tmp_path / "run")
    code, out = attempt(tmp_path / "run")
    assert code == 2 and "\n" not in out
    assert out.startswith(f"locked: run directory {tmp_path / 'run'} is in use by pid {first.pid} on host "
                          f"{socket.gethostname()} (no SLURM job) since "), out
    first.communicate("")  # the holder releases and exits
    assert not (tmp_path / "run" / "LOCK").exists()
    assert attempt(tmp_path / "run") == (0, "acquired")


def test_a_killed_holders_lock_is_taken_over_with_a_warning(tmp_path):
    first = holder(tmp_path / "run")
    first.send_signal(signal.SIGKILL)
    first.wait()
    code, out = attempt(tmp_path / "run")
    assert code == 0 and out.startswith(f"acquired took over the run lock {tmp_path / 'run' / 'LOCK'} from pid "
                                        f"{first.pid} on host {socket.gethostname()}"), out
    assert out.endswith("that process is no longer running")


def test_a_reused_pid_does_not_keep_a_dead_holders_lock(tmp_path):
    mine = RunLock(tmp_path)._record()
    # Our own pid, alive, but recorded with another start time: the holder was an earlier process.
    write_lock(tmp_path, **{**mine, "pid_start": "1", "token": "theirs"})
    lock = RunLock(tmp_path)
    assert lock.acquire().endswith("that process is no longer running")
    lock.release()


def test_another_hosts_lock_is_taken_over_only_when_its_heartbeat_is_stale(tmp_path):
    write_lock(tmp_path, age_s=5, host="elsewhere")
    code, out = attempt(tmp_path, stale_after_s=30)
    assert code == 2 and "pid 4242 on host elsewhere (no SLURM job)" in out, "its pid means nothing here"
    write_lock(tmp_path, age_s=120, host="elsewhere")
    code, out = attempt(tmp_path, stale_after_s=30)
    assert code == 0 and "from pid 4242 on host elsewhere" in out and "heartbeat stopped 120 s ago" in out, out


def test_the_same_slurm_job_requeued_takes_its_lock_over(tmp_path):
    env = {**os.environ, "SLURM_JOB_ID": "777", "SLURM_RESTART_COUNT": "1"}
    write_lock(tmp_path, host="node9", job="777", restart=1)
    code, out = attempt(tmp_path, env=env)
    assert code == 2 and "(job 777)" in out, "the same run of the job: another of its steps"
    write_lock(tmp_path, host="node9", job="777", restart=0)
    code, out = attempt(tmp_path, env=env)
    assert code == 0 and "SLURM job 777 was requeued (restart 0 -> 1)" in out, out


def test_of_contenders_for_one_stale_lock_exactly_one_wins(tmp_path):
    write_lock(tmp_path, age_s=300, host="elsewhere")
    processes = [contender(tmp_path, "hold", stale_after_s=30) for _ in range(4)]
    outs = [p.stdout.readline() for p in processes]  # the winner holds on until we close its stdin
    for process in processes:
        process.communicate("", timeout=30)
    assert sum(out.startswith("acquired took over") for out in outs) == 1, outs
    assert sum(out.startswith("locked:") for out in outs) == 3, outs


def test_a_contender_that_judged_a_replaced_lock_stale_leaves_the_new_one(tmp_path):
    stale = write_lock(tmp_path, age_s=300, host="elsewhere").read_bytes()
    winner = RunLock(tmp_path, stale_after_s=30)
    assert "heartbeat stopped" in winner.acquire()
    # A slower contender read the same stale lock and now tries to remove it: it finds the winner's.
    assert not RunLock(tmp_path)._remove_if(stale)
    assert winner.path.read_bytes() == winner._payload and [p.name for p in tmp_path.iterdir()] == ["LOCK"]
    winner.release()


def test_release_never_removes_another_holders_lock(tmp_path):
    first = holder(tmp_path)
    refused = RunLock(tmp_path)
    with pytest.raises(RunLockedError):
        refused.acquire()
    refused.release()
    assert f'"pid": {first.pid}' in (tmp_path / "LOCK").read_text()
    first.communicate("")
    # A holder whose lock was taken over (it looked dead) releases nothing of its successor's.
    old = RunLock(tmp_path, heartbeat_s=3600)
    old.acquire()
    os.utime(old.path, (time.time() - 600, time.time() - 600))
    new = RunLock(tmp_path, stale_after_s=60)
    assert "heartbeat stopped" in new.acquire()
    old.release()
    assert new.path.read_bytes() == new._payload
    new.release()
    assert not new.path.exists()


def eventually(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_heartbeat_keeps_the_lock_fresh_and_notices_a_take_over(tmp_path):
    with RunLock(tmp_path, heartbeat_s=0.1) as lock:
        assert lock.warning is None
        os.utime(lock.path, (time.time() - 600, time.time() - 600))
        eventually(lambda: time.time() - lock.path.stat().st_mtime < 5)
        lock.path.unlink()  # deleted by hand while the run goes on: the heartbeat puts it back
        eventually(lambda: lock.path.exists() and lock.path.read_bytes() == lock._payload)
        write_lock(tmp_path, host="elsewhere")
        eventually(lambda: lock.lost)
    assert "elsewhere" in (tmp_path / "LOCK").read_text(), "the new holder's lock stays"
