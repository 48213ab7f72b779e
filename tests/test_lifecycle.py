"""A rank dies with its launcher; a stale DeepSpeed JIT build lock is named instead of hanging a start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from _launch import REPO
from megaseqpe.training.lifecycle import StaleBuildLockError, wait_for_build_lock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# A rank: arms exit_with_parent, then sleeps argv[1] seconds unless signalled.
RANK = """
import signal, sys, time
from megaseqpe.training.lifecycle import exit_with_parent

def stop(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("armed", exit_with_parent(), flush=True)
time.sleep(float(sys.argv[1]))
print("not signalled", flush=True)
"""
# A launcher: starts the rank (sharing its stdout) and waits.
LAUNCHER = f"""
import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", {RANK!r}, "30"])
print(rank.pid, flush=True)
time.sleep(60)
"""


def test_a_rank_gets_sigterm_when_its_launcher_is_killed():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], cwd=REPO, stdout=subprocess.PIPE, text=True)
    rank_pid = int(launcher.stdout.readline())
    assert launcher.stdout.readline().strip() == "armed True"
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    assert launcher.stdout.readline().strip() == "got SIGTERM"  # from the orphaned rank, through the pipe
    assert launcher.stdout.read() == "", "the rank closed its output"
    deadline = time.monotonic() + 5
    while not exited(rank_pid):
        assert time.monotonic() < deadline, "the orphaned rank still runs"
        time.sleep(0.05)


def exited(pid):
    """Gone, or a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def run_rank(launcher_pid):
    env = {**os.environ, "MEGASEQPE_LAUNCHER_PID": str(launcher_pid)}
    return subprocess.run([sys.executable, "-c", RANK, "0"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=30).stdout.split("\n")[:-1]


def test_a_launcher_dead_before_the_call_is_noticed_by_its_pid():
    assert run_rank(os.getpid()) == ["armed True", "not signalled"], "our test process is its launcher"
    assert run_rank(os.getpid() + 1_000_000) == ["got SIGTERM"], "the launcher named is not its parent any more"


def test_a_build_lock_is_waited_for_while_fresh_and_named_once_stale(tmp_path):
    lock = tmp_path / "lock"
    wait_for_build_lock(lock, "op", timeout_s=60)  # no lock: returns
    lock.touch()
    threading.Timer(0.3, lock.unlink).start()  # another rank's build finishing
    wait_for_build_lock(lock, "op", timeout_s=60)
    lock.touch()  # a lock that stays past the timeout is named
    with pytest.raises(StaleBuildLockError, match=rf"^stale build lock {lock}: .* existed for [01] s with no process building in {tmp_path},.*rm {lock}"):
        wait_for_build_lock(lock, "op", timeout_s=1)
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    # Left an hour ago: named at once (a wait of the 60 s timeout would report 3660 s).
    with pytest.raises(StaleBuildLockError, match="existed for 3600 s"):
        wait_for_build_lock(lock, "op", timeout_s=60)



def test_a_build_lock_is_not_stale_while_a_process_builds_in_its_directory(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))  # old, as after a slow build on a loaded machine
    builder = subprocess.Popen(["sleep", "30"], cwd=tmp_path)  # as ninja runs, in the build directory
    try:
        threading.Timer(1.0, lock.unlink).start()  # the build finishing
        wait_for_build_lock(lock, "op", timeout_s=0.2)  # returns: no StaleBuildLockError
    finally:
        builder.kill()
        builder.wait()
    assert not lock.exists()

CHECK = """
from pathlib import Path
from megaseqpe.training.lifecycle import StaleBuildLockError, build_lock_path, check_stale_build_lock
check_stale_build_lock()
print("no lock: clear")
build_lock_path("deepspeed_shm_comm").touch()
try:
    check_stale_build_lock()
except StaleBuildLockError as error:
    print(error)
"""


def test_check_finds_deepspeeds_cpu_build_lock_where_torch_builds(tmp_path):
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "DS_ACCELERATOR": "cpu",
           "MEGASEQPE_BUILD_LOCK_TIMEOUT": "0.5"}
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    lines = result.stdout.split("\n")[:-1]
    assert lines[0] == "no lock: clear", result.stderr[-2000:]
    assert lines[1].startswith(f"stale build lock {tmp_path / 'deepspeed_shm_comm' / 'lock'}: DeepSpeed waits for "
                               "it before building its deepspeed_shm_comm op"), lines
