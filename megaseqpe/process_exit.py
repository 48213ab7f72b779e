"""How a megaseqpe command line ends: without Python's last garbage collection over torch's heap."""
from __future__ import annotations

import atexit
import gc
from typing import Optional, Sequence

_registered = False


def skip_final_collection(argv: Optional[Sequence[str]]) -> None:
    """For a command line's `main(argv)` run as the process's own command (`argv` None: it reads
    sys.argv), not called from Python with arguments (tests): freeze the heap at interpreter exit,
    after the exit handlers registered later than this call (multiprocessing's, the data loader's)
    have run, so that Python's final collection skips it. Over torch's and DeepSpeed's objects that
    collection took 1.4-1.8 s of every training process on 2 cores (a 1-process run of 2 steps: 8.5
    -> 6.7 s), which every requeue, evaluation and export pays. Nothing needs it: the commands close
    their files, checkpoints, locks and process groups themselves, and the memory returns to the OS
    either way."""
    global _registered
    if argv is None and not _registered:
        atexit.register(gc.freeze)
        _registered = True
