"""`python -m megaseqpe.training.universal --input_folder TAG --output_folder TAG_universal`:
DeepSpeed's ds_to_universal (same arguments) with every `torch.load` weights-only, so that a
planted file cannot run code during a world-size change (see megaseqpe.safe_loading). Its
worker processes are forked and inherit the restriction."""
import runpy
import sys

from ..safe_loading import enforce_weights_only

if __name__ == "__main__":
    enforce_weights_only()
    sys.argv[0] = "ds_to_universal"
    runpy.run_module("deepspeed.checkpoint.ds_to_universal", run_name="__main__", alter_sys=True)
