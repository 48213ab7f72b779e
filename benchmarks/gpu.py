"""`make bench-gpu`: GPT-2 small with SeqPE against learned APE on one GPU, in bf16, without DeepSpeed.

Five parts, each with its own time budget; a part that fails is recorded as an error in the JSON and
the others still run, and the JSON is rewritten after every part (a killed run keeps what it measured):

- `backend_equality`: every attention backend (megaseqpe.model.attention.BACKENDS; flash where flash-attn
  imports) in bf16 against eager in float32, forward + backward, for learned, rope, alibi and SeqPE
  attn_scalar `single`, on a small model: max abs and relative (L2) differences of logits and gradients.
- `throughput`: configs/gpt2-small-seqpe.yaml (model and position sections, the reference text setting)
  against the same trunk with learned APE: tokens/s and MFU at each L x micro-batch, interleaved in one
  process. The step is the trainer's: the task's `training_loss` (SeqPE's contrastive and distillation
  objectives included) with the step planner's plan, backward, and the optimizer as DeepSpeed's bf16 mode
  runs it (bf16 parameters and gradients, AdamW on fp32 master weights, global-norm clipping).
- `eval_memory`: evaluation forward at N = 16k, batch 1, no_grad: learned APE (interpolated) vs SeqPE.
- `generation`: greedy decoding tokens/s with and without the KV cache (megaseqpe.generation.sampling).
- `trunk_options`: one configuration with `model.activation_checkpointing: full` and `train.compile: true`.

Writes benchmarks/results/gpu.json (`--smoke`: tiny sizes on whatever device there is, written to
benchmarks/runs/gpu-smoke.json; minutes on a CPU). It imports neither DeepSpeed nor webdataset.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the repo: the device machine has no installed package
from _measure import machine, time_interleaved  # noqa: E402

from megaseqpe.config import Config, config_from_dict  # noqa: E402
from megaseqpe.generation.sampling import Sampling, generate  # noqa: E402
from megaseqpe.model import GPT, build_gpt  # noqa: E402
from megaseqpe.model.attention import BACKENDS, flash_attn_func  # noqa: E402
from megaseqpe.model.checkpointing import prepare_trunk  # noqa: E402
from megaseqpe.positions import build_step_planner  # noqa: E402
from megaseqpe.tasks import build_task  # noqa: E402
from megaseqpe.training.engine import parameter_groups  # noqa: E402
from megaseqpe.training.flops import FlopCounter, peak_flops, peak_source  # noqa: E402

REFERENCE = yaml.safe_load((HERE.parent / "configs" / "gpt2-small-seqpe.yaml").read_text())
LEARNED = {"type": "learned"}
# Issue #16's GPU targets.
TARGETS = {"seqpe_over_learned_step_max": 1.05, "mfu_min": 0.45}
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation): a backend passes when its bf16 run
# is this close to eager float32, in relative L2 norm over all logits / all gradients.
TOLERANCE = {"logits_rel": 2e-2, "grads_rel": 5e-2}
EQUALITY_POSITIONS = {
    "seqpe": {"type": "seqpe", "use": "attn_scalar", "attn_scalar_proj": "single", "encoder_dropout": 0.0},
    "learned": LEARNED, "rope": {"type": "rope"}, "alibi": {"type": "alibi"},
}


@dataclass(frozen=True)
class Sizes:
    """What each part measures; FULL is GPT-2 small on a GPU, SMOKE a tiny stand-in for a CPU check."""

    trunk: dict  # model keys over configs/gpt2-small-seqpe.yaml's model section
    equality_trunk: dict
    equality_len: int
    equality_batch: int
    train_len: int  # the training length of the models that evaluation and generation use
    lengths: tuple
    batches: tuple
    warmup: int
    steps: int
    eval_len: int
    prompt: int
    new_tokens: int
    options_len: int
    options_batch: int
    compile: bool
    seqpe: dict = field(default_factory=dict)  # keys over configs/gpt2-small-seqpe.yaml's position section
    budgets: dict = field(default_factory=dict)  # part → seconds; checked between its configurations


FULL = Sizes(trunk={"preset": "gpt2-124m"}, equality_trunk={"n_layer": 2, "n_head": 4, "d_model": 256,
                                                            "vocab_size": 2048},
             equality_len=512, equality_batch=2, train_len=REFERENCE["model"]["max_seq_len"], lengths=(512, 1024),
             batches=(16, 32), warmup=5, steps=20,
             eval_len=16384, prompt=128, new_tokens=256, options_len=1024, options_batch=16, compile=True,
             budgets={"backend_equality": 120, "throughput": 150, "eval_memory": 60, "generation": 60,
                      "trunk_options": 120})
SMOKE = Sizes(trunk={"n_layer": 2, "n_head": 2, "d_model": 64, "vocab_size": 256},
              equality_trunk={"n_layer": 1, "n_head": 2, "d_model": 32, "vocab_size": 64},
              equality_len=16, equality_batch=2, train_len=16, lengths=(16, 32), batches=(2,), warmup=1, steps=1,
              eval_len=128, prompt=4, new_tokens=4, options_len=16, options_batch=2, compile=False,
              seqpe={"main_batch_size": 2, "random_shift_downsample": 8, "contrastive_batch_size": 2,
                     "contrastive_num": 4, "dist_sample_range": 8, "distill_batch_size": 2, "distill_num": 4},
              budgets={"backend_equality": 20, "throughput": 30, "eval_memory": 15, "generation": 15,
                       "trunk_options": 15})


def run_config(sizes: Sizes, position: dict, seq_len: int, batch: int = 1, **model: Any) -> Config:
    """configs/gpt2-small-seqpe.yaml at `seq_len` with `position`, and `sizes.trunk` then `model` over its
    model keys."""
    return config_from_dict({"model": {**REFERENCE["model"], **sizes.trunk, "max_seq_len": seq_len, **model},
                             "position": position, "train": REFERENCE["train"],
                             "data": {"micro_batch_size": batch}})


def seqpe_position(sizes: Sizes) -> dict:
    """The reference text setting's SeqPE (objectives included), with `sizes.seqpe` over it."""
    return {**REFERENCE["position"], **sizes.seqpe}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MasterWeightAdamW:
    """How DeepSpeed's bf16 mode steps, without DeepSpeed: the model's parameters and gradients are bf16,
    AdamW (the trainer's decay groups) updates fp32 master copies, clipped by the global gradient norm
    (`train.grad_clip`, DeepSpeed's gradient_clipping), which are then copied back into the model."""

    def __init__(self, model: torch.nn.Module, config: Config) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [torch.nn.Parameter(p.detach().float()) for p in self.params]
        master_of = {id(p): m for p, m in zip(self.params, self.master)}
        groups = [{**group, "params": [master_of[id(p)] for p in group["params"]]}
                  for group in parameter_groups(model, config.train.weight_decay)]
        self.optimizer = torch.optim.AdamW(groups, lr=config.train.lr, betas=config.train.betas)
        self.clip = config.train.grad_clip

    @torch.no_grad()
    def step(self) -> None:
        for param, master in zip(self.params, self.master):
            master.grad = None if param.grad is None else param.grad.float()
            param.grad = None
        if self.clip:
            torch.nn.utils.clip_grad_norm_([m for m in self.master if m.grad is not None], self.clip)
        self.optimizer.step()
        for param, master in zip(self.params, self.master):
            param.copy_(master)


class TrainStep:
    """One training micro-step of the trainer (megaseqpe.training.loop.Trainer.train_step without DeepSpeed
    and without its per-step host reads of the loss) on a fixed random batch; calling it runs and waits
    for one step."""

    def __init__(self, config: Config, device: torch.device, checkpointing: str = "none",
                 compile: bool = False) -> None:
        torch.manual_seed(config.train.seed)
        self.device, self.task = device, build_task(config)
        model = self.task.build_model()
        self.flops = FlopCounter(model, config.model.n_layer, config.model.d_model, self.task.sequence_length)
        self.model = prepare_trunk(model, checkpointing, compile).to(device, torch.bfloat16).train()
        self.optimizer = MasterWeightAdamW(self.model, config)
        self.planner = build_step_planner(config, self.task.position_extents)
        self.batch = torch.randint(config.model.vocab_size, (config.data.micro_batch_size,
                                                             self.task.sequence_length + 1), device=device)
        self.tokens = self.batch.shape[0] * self.task.sequence_length
        self.step_index, self.encoder_tokens = 0, 0

    def __call__(self) -> None:
        plan = self.planner.plan(self.step_index, 0, self.device)
        step_loss = self.task.training_loss(self.model, self.batch, plan)
        step_loss.loss.backward()
        self.optimizer.step()
        self.step_index, self.encoder_tokens = self.step_index + 1, step_loss.encoder_tokens
        synchronize(self.device)

    def rates(self, seconds: float, peak: Optional[float]) -> dict:
        """Tokens/s and MFU (None without a known peak) of a step that took `seconds`."""
        flops = self.flops.step_flops(self.tokens, self.encoder_tokens)
        return {"step_s": seconds, "tokens_per_s": self.tokens / seconds, "encoder_tokens": self.encoder_tokens,
                "tflops_per_s": flops / seconds / 1e12, "mfu": None if peak is None else flops / seconds / peak}


@dataclass
class Context:
    sizes: Sizes
    device: torch.device
    end: float  # the whole run's deadline (time.monotonic()); each part's is the earlier of its own and this
    deadline: float = 0.0

    def over_budget(self) -> bool:
        return time.monotonic() > self.deadline

    def peak(self) -> Optional[float]:
        return peak_flops(self.device, "bf16")


def _relative(diff: torch.Tensor, reference: torch.Tensor) -> float:
    return float(diff.norm() / reference.norm().clamp_min(1e-30))


def forward_backward(model: GPT, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, every gradient flattened into one vector), both float32, of one loss.backward()."""
    model.zero_grad(set_to_none=True)
    out = model(tokens[:, :-1], targets=tokens[:, 1:])
    out.loss.backward()
    grads = [p.grad.float().flatten() for p in model.parameters() if p.grad is not None]
    return out.logits.detach().float(), torch.cat(grads)


def compare_backend(config: Config, reference: GPT, expected: tuple, tokens: torch.Tensor) -> dict:
    """One backend in bf16 (the reference's weights) against the float32 eager results `expected`."""
    model = build_gpt(config)
    model.load_state_dict(reference.state_dict())
    logits, grads = forward_backward(model.to(tokens.device, torch.bfloat16), tokens)
    row = {"logits_max_abs": float((logits - expected[0]).abs().max()),
           "logits_rel": _relative(logits - expected[0], expected[0]),
           "grads_max_abs": float((grads - expected[1]).abs().max()),
           "grads_rel": _relative(grads - expected[1], expected[1])}
    row["pass"] = row["logits_rel"] <= TOLERANCE["logits_rel"] and row["grads_rel"] <= TOLERANCE["grads_rel"]
    return row


def backend_skip_reason(backend: str, device: torch.device) -> Optional[str]:
    if backend == "flash" and not (flash_attn_func is not None and device.type == "cuda"):
        return "flash-attn is not installed or no CUDA device"
    return None


def equality_config(sizes: Sizes, position: dict, backend: str) -> Config:
    return run_config(sizes, position, sizes.equality_len, **sizes.equality_trunk, dropout=0.0,
                      attention_backend=backend)


def equality_reference(ctx: Context, position: dict) -> tuple[GPT, tuple, torch.Tensor]:
    """The float32 eager model of `position`, its (logits, gradients) and the tokens they are of."""
    torch.manual_seed(0)
    config = equality_config(ctx.sizes, position, "eager")
    reference = build_gpt(config).to(ctx.device)
    tokens = torch.randint(config.model.vocab_size, (ctx.sizes.equality_batch, ctx.sizes.equality_len + 1),
                           device=ctx.device)
    return reference, forward_backward(reference, tokens), tokens


def backend_equality(ctx: Context) -> dict:
    sizes, rows = ctx.sizes, []
    references = {name: equality_reference(ctx, position) for name, position in EQUALITY_POSITIONS.items()}
    # Backend by backend: a slow one (flex compiles its kernels) cannot use up the budget of the others.
    for backend in [name for name in BACKENDS if name != "auto"]:
        for position_name, position in EQUALITY_POSITIONS.items():
            row = {"position": position_name, "backend": backend}
            skip = "time budget" if ctx.over_budget() else backend_skip_reason(backend, ctx.device)
            try:
                row.update({"skipped": skip} if skip else compare_backend(
                    equality_config(sizes, position, backend), *references[position_name]))
            except Exception as error:  # one backend failing (a kernel refusing a shape) is a result
                row["error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
            print(f"  equality {row}", flush=True)
    return {"config": {**sizes.equality_trunk, "seq_len": sizes.equality_len, "batch": sizes.equality_batch,
                       "reference": "eager, float32", "compared": "bf16 parameters and activations"},
            "tolerance": TOLERANCE, "rows": rows}


def throughput(ctx: Context) -> dict:
    sizes, rows = ctx.sizes, []
    for seq_len in sizes.lengths:
        for batch in sizes.batches:
            if ctx.over_budget():
                rows.append({"seq_len": seq_len, "batch": batch, "skipped": "time budget"})
                continue
            steps = {name: TrainStep(run_config(sizes, position, seq_len, batch), ctx.device)
                     for name, position in (("seqpe", seqpe_position(sizes)), ("learned", LEARNED))}
            seconds = time_interleaved(steps, sizes.warmup, sizes.steps)
            row = {"seq_len": seq_len, "batch": batch,
                   **{name: step.rates(seconds[name], ctx.peak()) for name, step in steps.items()},
                   "ratio_seqpe_over_learned": seconds["seqpe"] / seconds["learned"]}
            rows.append(row)
            print(f"  throughput L={seq_len} B={batch}: SeqPE/APE {row['ratio_seqpe_over_learned']:.3f}, "
                  f"SeqPE MFU {row['seqpe']['mfu']}", flush=True)
            del steps
            release_memory()
    return {"config": {"trunk": {**REFERENCE["model"], **sizes.trunk}, "precision": "bf16 parameters, fp32 "
                       "master weights (DeepSpeed bf16)", "warmup_steps": sizes.warmup, "timed_steps": sizes.steps,
                       "timing": "median step, interleaved SeqPE / APE, synchronized"},
            "rows": rows}


def peak_bytes_of(run: Callable[[], None], device: torch.device) -> Optional[int]:
    """Peak GPU memory allocated during `run()` above what was allocated before it (None on a CPU)."""
    if device.type != "cuda":
        run()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def eval_forward(ctx: Context, position: dict, tokens: torch.Tensor) -> dict:
    """Seconds (median of 3 after a warm-up) and peak memory of one no_grad forward over `tokens`
    of a bf16 model trained at `sizes.train_len`, made to reach `tokens`' length as evaluation does."""
    torch.manual_seed(0)
    model = build_gpt(run_config(ctx.sizes, position, ctx.sizes.train_len)).to(ctx.device, torch.bfloat16).eval()
    method = model.position.enable_extrapolation(tokens.shape[1])

    def forward() -> None:
        with torch.no_grad():
            model(tokens)
        synchronize(ctx.device)
    seconds = time_interleaved({"forward": forward}, 1, 3)["forward"]
    return {"method": method, "seconds": seconds, "peak_bytes": peak_bytes_of(forward, ctx.device),
            "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def eval_memory(ctx: Context) -> dict:
    sizes, rows = ctx.sizes, {}
    tokens = torch.randint(100, (1, sizes.eval_len), device=ctx.device)
    for name, position in (("learned", LEARNED), ("seqpe", seqpe_position(sizes))):
        rows[name] = eval_forward(ctx, position, tokens)
        release_memory()
    ratio = (rows["seqpe"]["peak_bytes"] / rows["learned"]["peak_bytes"]) if ctx.device.type == "cuda" else None
    return {"config": {"length": sizes.eval_len, "batch": 1, "train_length": sizes.train_len, "precision": "bf16",
                       "memory": "torch.cuda.max_memory_allocated during a forward above what was allocated "
                                 "before it (weights, SeqPE's cached table); None on a CPU"},
            "rows": rows, "memory_ratio_seqpe_over_learned": ratio,
            "time_ratio_seqpe_over_learned": rows["seqpe"]["seconds"] / rows["learned"]["seconds"]}


def generation(ctx: Context) -> dict:
    sizes = ctx.sizes
    torch.manual_seed(0)
    config = run_config(sizes, seqpe_position(sizes), sizes.train_len)
    model = build_gpt(config).to(ctx.device, torch.bfloat16)
    prompt = torch.randint(config.model.vocab_size, (sizes.prompt,)).tolist()
    rows = {}
    for use_cache in (True, False):
        def decode(count: int) -> None:
            list(generate(model, prompt, Sampling(max_new_tokens=count, temperature=0), use_cache=use_cache))
        decode(2)  # warm-up: kernels chosen, caches allocated
        start = time.perf_counter()
        decode(sizes.new_tokens)
        synchronize(ctx.device)
        seconds = time.perf_counter() - start
        rows["kv_cache" if use_cache else "no_cache"] = {"seconds": seconds,
                                                         "tokens_per_s": sizes.new_tokens / seconds}
    return {"config": {"model": "SeqPE (configs/gpt2-small-seqpe.yaml)", "precision": "bf16", "batch": 1,
                       "prompt_tokens": sizes.prompt, "new_tokens": sizes.new_tokens, "sampling": "greedy"},
            "rows": rows, "speedup_kv_cache": rows["no_cache"]["seconds"] / rows["kv_cache"]["seconds"]}


def trunk_options(ctx: Context) -> dict:
    sizes, rows = ctx.sizes, {}
    config = run_config(sizes, seqpe_position(sizes), sizes.options_len, sizes.options_batch)
    variants = {"none": ("none", False), "activation_checkpointing_full": ("full", False),
                "compile": ("none", True)}
    for name, (checkpointing, compile) in variants.items():
        if ctx.over_budget() or (compile and not sizes.compile):
            rows[name] = {"skipped": "time budget" if ctx.over_budget() else "--smoke: compilation takes minutes"}
            continue
        step = TrainStep(config, ctx.device, checkpointing, compile)
        for _ in range(sizes.warmup + (3 if compile else 0)):  # compilation happens in the first steps
            step()
        seconds = time_interleaved({name: step}, 0, sizes.steps)[name]
        rows[name] = {**step.rates(seconds, ctx.peak()), "peak_bytes": peak_bytes_of(step, ctx.device)}
        print(f"  trunk option {name}: {rows[name]['tokens_per_s']:.0f} tokens/s", flush=True)
        del step
        release_memory()
    return {"config": {"position": "seqpe", "seq_len": sizes.options_len, "batch": sizes.options_batch,
                       "timing": "each variant alone (not interleaved), median step after warm-up",
                       "memory": "peak allocated during one step above the model and optimizer state"},
            "rows": rows}


PARTS: dict[str, Callable[[Context], dict]] = {
    "backend_equality": backend_equality, "throughput": throughput, "eval_memory": eval_memory,
    "generation": generation, "trunk_options": trunk_options,
}


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_part(name: str, ctx: Context) -> dict:
    """Part `name` within its budget; an exception (out of memory included) becomes its recorded error."""
    start = time.monotonic()
    if start > ctx.end:
        return {"skipped": "time budget (--max-seconds)", "seconds": 0.0}
    ctx.deadline = min(start + ctx.sizes.budgets[name], ctx.end)
    print(f"gpu benchmark: {name} (budget {ctx.sizes.budgets[name]} s)", flush=True)
    try:
        result = PARTS[name](ctx)
    except Exception as error:
        traceback.print_exc()
        lines = traceback.format_exc().strip().splitlines()
        result = {"error": f"{type(error).__name__}: {error}", "traceback": lines[-6:]}
    release_memory()
    return {**result, "seconds": time.monotonic() - start}


def summary(parts: dict) -> dict:
    """Issue #16's targets against what `throughput` measured."""
    rows = [row for row in parts.get("throughput", {}).get("rows", []) if "seqpe" in row]
    ratios = {f"L{r['seq_len']}_B{r['batch']}": r["ratio_seqpe_over_learned"] for r in rows}
    mfus = {f"L{r['seq_len']}_B{r['batch']}": r["seqpe"]["mfu"] for r in rows}
    known = [m for m in mfus.values() if m is not None]
    return {"seqpe_over_learned_step": {"target_max": TARGETS["seqpe_over_learned_step_max"], "measured": ratios,
                                        "met": bool(ratios) and max(ratios.values()) <= TARGETS[
                                            "seqpe_over_learned_step_max"]},
            "seqpe_mfu": {"target_min": TARGETS["mfu_min"], "measured": mfus,
                          "met": bool(known) and max(known) >= TARGETS["mfu_min"]}}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device (a CPU check in minutes)")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: benchmarks/results/gpu.json; "
                                                "with --smoke benchmarks/runs/gpu-smoke.json)")
    parser.add_argument("--max-seconds", type=float, default=480.0,
                        help="time budget of the whole run: parts (and their configurations) that would start "
                             "after it are recorded as skipped (default 480: a device call is limited to 600)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.parts.split(",") if name not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    args.out = args.out or (HERE / "runs" / "gpu-smoke.json" if args.smoke else HERE / "results" / "gpu.json")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    ctx = Context(SMOKE if args.smoke else FULL, device, time.monotonic() + args.max_seconds)
    result = {"benchmark": "gpu", "smoke": args.smoke, "machine": machine(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "targets": TARGETS,
              "peak": {"flops": ctx.peak(), "source": peak_source(device, "bf16")}, "parts": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.parts.split(","):
        result["parts"][name] = run_part(name, ctx)
        result["summary"] = summary(result["parts"])
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every part: a killed run keeps them
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
