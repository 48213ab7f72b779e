"""Two real torchrun processes (gloo) x 2 DataLoader workers read every sample exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from megaseqpe.data import iter_raw_samples, load_manifest

SCRIPT = r'''
import json, os, sys
from itertools import islice
import torch.distributed as dist
from megaseqpe.data import build_train_loader

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
loader = build_train_loader(sys.argv[1], max_seq_len=63, micro_batch_size=2, seed=5, rank=rank,
                            world_size=world, num_workers=2)
batches = [b.shape[0] for b in islice(loader, 20)]          # real worker processes, per rank
ds = loader.dataset
keys = [k for w in range(2) for k, _ in ds.reader_documents(ds.reader_id(w), 0)]
gathered = [None] * world
dist.all_gather_object(gathered, {"rank": rank, "keys": keys, "batches": len(batches)})
if rank == 0:
    with open(sys.argv[2], "w") as f:
        json.dump(gathered, f)
dist.destroy_process_group()
'''


@pytest.mark.multiprocess
def test_torchrun_two_ranks_disjoint_and_complete(tmp_path: Path, data_manifest: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    out = tmp_path / "gathered.json"
    # A session of its own, so a hang kills torchrun's rank processes too, not just torchrun.
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(script), str(data_manifest), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish in 120 s")
    assert proc.returncode == 0, stderr[-3000:]
    gathered = json.loads(out.read_text())
    assert [g["batches"] for g in gathered] == [20, 20]
    seen = Counter(k for g in gathered for k in g["keys"])
    manifest = load_manifest(data_manifest)
    everything = {s["__key__"] for shard in manifest.splits["train"].shards
                  for s in iter_raw_samples(manifest.shard_path(shard))}
    assert set(seen) == everything and set(seen.values()) == {1}
