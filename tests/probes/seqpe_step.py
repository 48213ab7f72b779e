"""Run under torchrun: a few real SeqPE training steps (`Trainer.train_step`); record what each rank
encoded.

Writes OUT/rank_<r>.pt with the distillation teacher embeddings, student positions, the
number of encoder passes per step and how many of them the model laid out itself (rather than
running the planner's pass). The step's own objects are observed, not replaced: the
distillation sampler and loss are wrapped to record their inputs and outputs and call through.
"""
import sys
from pathlib import Path

import torch

from megaseqpe.config import load_config
from megaseqpe.training.loop import Trainer, startup_checks

config_path, out = sys.argv[1], Path(sys.argv[2])
config = load_config(config_path)
trainer = Trainer(config, *startup_checks(config))
position = trainer.engine.module.position
passes, samples, teacher_embeddings, own_layouts = [], [], [], []
position.encoder.register_forward_hook(lambda module, args, output: passes.append(1))


def recorded(function, outputs, pick=lambda args, result: result):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        outputs.append(pick(args, result))
        return result
    return wrapper


sampler, distillation = trainer.planner.objectives.distillation, position.objectives.distillation
graphs = position.encoder.graphs  # the model's own; the planner lays out with its own DigitGraphs
graphs.encoder_pass = recorded(graphs.encoder_pass, own_layouts)
sampler.sample = recorded(sampler.sample, samples)
distillation.loss = recorded(distillation.loss, teacher_embeddings, pick=lambda args, result: args[0])
record = {"teacher_embeddings": [], "teacher_positions": [], "student_positions": [], "passes": [],
          "own_layouts": []}
data = iter(trainer.loader)
for _ in range(3):
    passes.clear()
    own_layouts.clear()
    trainer.train_step(data)
    teacher, student = samples[-1].positions
    record["teacher_positions"].append(teacher.cpu())
    record["student_positions"].append(student.cpu())
    record["teacher_embeddings"].append(teacher_embeddings[-1].detach().float().cpu())
    record["passes"].append(len(passes))
    record["own_layouts"].append(len(own_layouts))
torch.save(record, out / f"rank_{trainer.rank}.pt")
