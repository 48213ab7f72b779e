"""Where this process sits in the job, from whichever launcher started it.

torchrun and the DeepSpeed launcher export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT. A plain `srun` (one task per GPU, no torchrun) exports only SLURM_* variables:
the rank is SLURM_PROCID, the master is the first host of SLURM_JOB_NODELIST (as `scontrol show
hostnames` expands it) and the port is derived from the job id, so every task of the job computes
the same address on its own.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping, MutableMapping


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | deepspeed | slurm | single

    def export(self, environ: MutableMapping[str, str]) -> None:
        """Set the variables torch.distributed's env:// initialisation reads."""
        environ.update(RANK=str(self.rank), LOCAL_RANK=str(self.local_rank), WORLD_SIZE=str(self.world_size),
                       MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port))


def hostnames(nodelist: str) -> list[str]:
    """The hosts of a SLURM node list, as `scontrol show hostnames` expands it where SLURM is
    installed (it knows every syntax the site's SLURM accepts), else by `expand_nodelist`."""
    if shutil.which("scontrol"):
        try:
            result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                    text=True, timeout=10)  # without a reachable config it retries for 60 s
            # Some versions reject a list (e.g. `node-[1-2]-ib`) with exit 0 and no hosts.
            if result.returncode == 0 and result.stdout.split():
                return result.stdout.split()
        except subprocess.TimeoutExpired:
            pass
    return expand_nodelist(nodelist)


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host lists without SLURM: `gpu[01-03,07],login1` → gpu01 gpu02 gpu03 gpu07
    login1; text after and between brackets is kept (`node-[1-2]-ib` → node-1-ib node-2-ib,
    `r[1-2]n[1-2]` → r1n1 r1n2 r2n1 r2n2); zero padding follows the range's first number."""
    if nodelist.count("[") != nodelist.count("]"):
        raise ValueError(f"unbalanced brackets in the SLURM node list {nodelist!r}")
    hosts = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip()):  # commas outside brackets split
        pieces = re.split(r"\[([^\]]*)\]", item)  # literal, ranges, literal, ranges, ..., literal
        choices = [[piece] if index % 2 == 0 else _expand_ranges(piece) for index, piece in enumerate(pieces)]
        hosts.extend("".join(combination) for combination in itertools.product(*choices))
    return hosts


def _expand_ranges(ranges: str) -> list[str]:
    """`01-03,07` → 01 02 03 07."""
    numbers = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        width = len(first)  # zero padding: gpu[01-03]
        numbers.extend(f"{number:0{width}d}" for number in range(int(first), int(last or first) + 1))
    return numbers


def slurm_port(job_id: str) -> int:
    """A port every task of one job agrees on, different between concurrent jobs."""
    return 20000 + int(job_id) % 20000


def detect(environ: Mapping[str, str] = os.environ) -> DistributedEnv:
    if "RANK" in environ and "WORLD_SIZE" in environ:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in environ else "deepspeed"
        return DistributedEnv(int(environ["RANK"]), int(environ.get("LOCAL_RANK", 0)), int(environ["WORLD_SIZE"]),
                              environ.get("MASTER_ADDR", "127.0.0.1"), int(environ.get("MASTER_PORT", 29500)),
                              launcher)
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
        return DistributedEnv(int(environ["SLURM_PROCID"]), int(environ.get("SLURM_LOCALID", 0)),
                              int(environ["SLURM_NTASKS"]), environ.get("MASTER_ADDR") or hostnames(nodelist)[0],
                              int(environ.get("MASTER_PORT") or slurm_port(environ["SLURM_JOB_ID"])), "slurm")
    # Port 0: the OS picks a free one. A group of one has no peer to agree a port with, so single-process
    # runs sharing a machine (a workstation, a test suite) can never collide on it.
    return DistributedEnv(0, 0, 1, "127.0.0.1", 0, "single")
