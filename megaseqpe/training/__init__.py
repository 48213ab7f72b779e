"""Training under DeepSpeed: engine set-up, the SeqPE step, checkpoints, monitoring."""
