"""A training process's ties to the machine around it: its launcher, and DeepSpeed's JIT builds.

- `exit_with_parent`: a rank whose launcher (torchrun, the DeepSpeed launcher) dies gets a signal
  instead of training on as an orphan under PID 1, writing into the run with nobody watching.
- `check_stale_build_lock`: DeepSpeed's CPU accelerator JIT-builds its shared-memory collectives
  (`deepspeed_shm_comm`) with torch.utils.cpp_extension, which waits without end and without a
  word on `<build dir>/lock` (torch/utils/file_baton.py). A start killed mid-build leaves that lock
  behind and every later start, an automatic requeue included, hangs. This finds such a lock
  before DeepSpeed does and fails in one line saying which file to delete.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

LAUNCHER_PID_ENV = "MEGASEQPE_LAUNCHER_PID"  # exported by launch/*.sh and slurm/train.sbatch
BUILD_LOCK_TIMEOUT_ENV = "MEGASEQPE_BUILD_LOCK_TIMEOUT"
BUILD_LOCK_TIMEOUT_S = 120.0  # a first build of deepspeed_shm_comm takes well under a minute
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StaleBuildLockError(RuntimeError):
    """A JIT build lock that nobody releases; the message is one line naming the file to delete."""


def exit_with_parent(sig: int = signal.SIGTERM, parent_pid: Optional[int] = None,
                     environ: Mapping[str, str] = os.environ) -> bool:
    """Have the kernel send `sig` to this process when its parent dies (Linux prctl
    PR_SET_PDEATHSIG). Call it first thing in a rank, before the signal handlers are installed or
    after, as the caller wants `sig` handled (the trainer's SIGTERM handler checkpoints and exits).

    The parent may already be dead when this runs; then no signal would ever come, so `sig` is
    sent at once. That is detectable only when the launcher's pid is known: `parent_pid`, else
    $MEGASEQPE_LAUNCHER_PID (our launch scripts export it to torchrun). Without it there is no
    such check, because a parent of PID 1 is also a launcher run as a container's entry point.

    Returns False, having done nothing, off Linux (no PR_SET_PDEATHSIG there).
    Note: the kernel signals when the *thread* that started this process exits; torchrun and the
    DeepSpeed launcher start ranks from their main thread, so that is the launcher's death.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    expected = parent_pid if parent_pid is not None else int(environ.get(LAUNCHER_PID_ENV) or 0) or None
    if expected is not None and os.getppid() != expected:
        os.kill(os.getpid(), sig)
    return True


def check_stale_build_lock(timeout_s: Optional[float] = None) -> None:
    """Call before deepspeed.init_distributed: returns at once unless DeepSpeed will JIT-build its
    shared-memory op here (CPU accelerator, op not prebuilt); then waits while that op's build
    lock exists and is younger than `timeout_s` (default $MEGASEQPE_BUILD_LOCK_TIMEOUT or 120 s),
    since another rank may be building right now. Raises StaleBuildLockError for a lock older."""
    op = _jit_built_comm_op()
    if op is not None:
        wait_for_build_lock(build_lock_path(op), op, timeout_s)


def _jit_built_comm_op() -> Optional[str]:
    """The name of the op deepspeed.comm's TorchBackend will JIT-build, mirroring its
    build_shm_op() and OpBuilder.load(); None when it will not build one."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops

    accelerator = get_accelerator()
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    prebuilt = installed_ops.get(builder.NAME, False) and accelerator_name == accelerator._name
    return None if prebuilt else builder.NAME


def build_lock_path(op: str) -> Path:
    """`lock` in the directory torch.utils.cpp_extension builds `op` in (TORCH_EXTENSIONS_DIR, or
    its per-user cache with a python/accelerator folder such as py311_cpu), asked of torch itself."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(op, verbose=False)) / "lock"


def wait_for_build_lock(lock: Path, op: str, timeout_s: Optional[float] = None) -> None:
    """Return once `lock` is gone; raise StaleBuildLockError once it is older than `timeout_s`
    (by its mtime: a lock left hours ago fails at once) or was waited on that long (by this
    host's clock, in case the filesystem's clock runs ahead), unless a build is still running in
    its directory: on a loaded machine a real build can take minutes."""
    if timeout_s is None:
        timeout_s = float(os.environ.get(BUILD_LOCK_TIMEOUT_ENV) or BUILD_LOCK_TIMEOUT_S)
    start = time.monotonic()
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        expired = age >= timeout_s or time.monotonic() - start >= timeout_s
        if expired and not build_running_in(lock.parent):
            raise StaleBuildLockError(
                f"stale build lock {lock}: DeepSpeed waits for it before building its {op} op and it has "
                f"existed for {age:.0f} s with no process building in {lock.parent}, so a start killed "
                f"mid-build left it behind; delete it (rm {lock}), then start again "
                f"({BUILD_LOCK_TIMEOUT_ENV}={timeout_s:g} s)")
        time.sleep(min(0.5, timeout_s / 10))


def build_running_in(directory: Path) -> bool:
    """Whether a process on this host works in `directory`: torch runs ninja, and ninja the compiler,
    with the extension's build directory as their working directory (Linux /proc; False elsewhere)."""
    target = os.path.realpath(directory)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(entry / "cwd") == target:
                return True
        except OSError:  # gone meanwhile, or another user's process
            continue
    return False
