"""Run under torchrun: a few real SeqPE training steps; record what each rank encoded.

Writes OUT/rank_<r>.pt with the distillation teacher embeddings, student positions and the
number of encoder passes per step.
"""
import sys
from pathlib import Path

import torch

from megaseqpe.config import load_config
from megaseqpe.training.loop import Trainer

config_path, out = sys.argv[1], Path(sys.argv[2])
trainer = Trainer(load_config(config_path))
encoder = trainer.engine.module.position.encoder
passes = []
encoder.register_forward_hook(lambda module, args, output: passes.append(1))
record = {"teacher_embeddings": [], "teacher_positions": [], "student_positions": [], "passes": []}
data = iter(trainer.loader)
for _ in range(3):
    passes.clear()
    loss, parts, plan, output = trainer.forward(next(data))
    trainer.engine.backward(loss)
    trainer.engine.step()
    trainer.micro_step += 1
    teacher, student = plan.objectives.distillation.positions
    record["teacher_positions"].append(teacher.cpu())
    record["student_positions"].append(student.cpu())
    record["teacher_embeddings"].append(output.position_signal.extra_embeddings[2].detach().float().cpu())
    record["passes"].append(len(passes))
torch.save(record, out / f"rank_{trainer.rank}.pt")
