"""The GPU section of benchmarks/REPORT.md, from results/gpu.json (`make bench-gpu` on a lent GPU)."""
from __future__ import annotations

from typing import Optional

from _markdown import table

MiB = 2 ** 20


def _number(value: Optional[float], form: str = ".3g") -> str:
    return "-" if value is None else format(value, form)


def _mib(size: Optional[int]) -> str:
    return "-" if size is None else f"{size / MiB:,.0f}"


def _failed(name: str, part: dict) -> Optional[list[str]]:
    """The lines of a part that did not run (error or skipped), else None."""
    if "error" in part:
        return [f"`{name}` failed: {part['error']}", ""]
    if "skipped" in part:
        return [f"`{name}` skipped: {part['skipped']}", ""]
    return None


def _equality(part: dict) -> list[str]:
    config, tolerance = part["config"], part["tolerance"]
    out = [f"**bf16 backends against eager float32**, forward + backward, {config['n_layer']} layers x "
           f"{config['d_model']}, L = {config['seq_len']}, batch {config['batch']}; passes at relative L2 error "
           f"<= {tolerance['logits_rel']:g} (logits) and <= {tolerance['grads_rel']:g} (all gradients).", ""]
    rows = []
    for row in part["rows"]:
        if "logits_rel" in row:
            rows.append([row["position"], row["backend"], _number(row["logits_max_abs"]), _number(row["logits_rel"]),
                         _number(row["grads_max_abs"]), _number(row["grads_rel"]), "pass" if row["pass"] else "FAIL"])
        else:
            rows.append([row["position"], row["backend"], "", "", "", "",
                         row.get("error") or f"skipped: {row['skipped']}"])
    return out + table(["position", "backend", "logits max abs", "logits rel", "grads max abs", "grads rel",
                        "result"], rows) + [""]


def _throughput(part: dict, targets: dict) -> list[str]:
    out = [f"**GPT-2 small (configs/gpt2-small-seqpe.yaml) SeqPE against learned APE**, one training step "
           f"({part['config']['precision']}), {part['config']['timing']}; median of {part['config']['timed_steps']} "
           f"steps after {part['config']['warmup_steps']}. Targets: SeqPE / APE <= "
           f"{targets['seqpe_over_learned_step_max']}x, MFU >= {targets['mfu_min']:.0%}.", ""]
    rows = []
    for row in part["rows"]:
        if "seqpe" not in row:
            rows.append([row["seq_len"], row["batch"], "", "", "", "", "", row.get("skipped", "")])
            continue
        seqpe, learned = row["seqpe"], row["learned"]
        rows.append([row["seq_len"], row["batch"], f"{seqpe['tokens_per_s']:,.0f}", f"{learned['tokens_per_s']:,.0f}",
                     f"{row['ratio_seqpe_over_learned']:.3f}", _number(seqpe["mfu"], ".1%"),
                     _number(learned["mfu"], ".1%"), ""])
    return out + table(["L", "micro-batch", "SeqPE tokens/s", "APE tokens/s", "SeqPE / APE step", "SeqPE MFU",
                        "APE MFU", "note"], rows) + [""]


def _eval_memory(part: dict) -> list[str]:
    config = part["config"]
    out = [f"**Evaluation forward at N = {config['length']}**, batch 1, {config['precision']}, trained at "
           f"L = {config['train_length']}; memory: {config['memory']}.", ""]
    rows = [[name, row["method"], f"{row['seconds']:.3f}",
             _mib(row["peak_bytes"])] for name, row in part["rows"].items()]
    out += table(["position", "beyond L", "seconds", "peak MiB"], rows)
    memory = part["memory_ratio_seqpe_over_learned"]
    return out + ["", f"SeqPE / APE: time {part['time_ratio_seqpe_over_learned']:.2f}x, memory "
                      f"{'not measured' if memory is None else f'{memory:.2f}x'}.", ""]


def _generation(part: dict) -> list[str]:
    config = part["config"]
    rows = [[name, f"{row['tokens_per_s']:,.1f}"] for name, row in part["rows"].items()]
    return [f"**Generation**, {config['model']}, {config['precision']}, {config['prompt_tokens']}-token prompt, "
            f"{config['new_tokens']} new tokens, {config['sampling']}: the KV cache is "
            f"{part['speedup_kv_cache']:.1f}x faster.", ""] + table(["decoding", "tokens/s"], rows) + [""]


def _trunk_options(part: dict) -> list[str]:
    config = part["config"]
    rows = [[name, f"skipped: {row['skipped']}", "", ""] if "skipped" in row else
            [name, f"{row['tokens_per_s']:,.0f}", _number(row["mfu"], ".1%"),
             _mib(row["peak_bytes"])] for name, row in part["rows"].items()]
    return [f"**Trunk options**, SeqPE, L = {config['seq_len']}, micro-batch {config['batch']}; {config['timing']}; "
            f"memory: {config['memory']}.", ""] + table(["variant", "tokens/s", "MFU", "peak MiB"], rows) + [""]


def gpu_section(data: dict) -> list[str]:
    out = ["## 6. GPU (`make bench-gpu`)", "",
           f"{data['device']}, torch {data['torch']} (CUDA {data['cuda']}). {data['peak']['source']}.", ""]
    if data.get("smoke"):
        out += ["**Smoke run** (tiny sizes): the numbers only show that every part runs.", ""]
    render = {"backend_equality": _equality, "throughput": lambda part: _throughput(part, data["targets"]),
              "eval_memory": _eval_memory, "generation": _generation, "trunk_options": _trunk_options}
    for name, part in data["parts"].items():
        out += _failed(name, part) or render[name](part)
    summary = data.get("summary")
    if summary:
        ratio, mfu = summary["seqpe_over_learned_step"], summary["seqpe_mfu"]
        out += [f"Targets: SeqPE / APE per step <= {ratio['target_max']}x: **{'met' if ratio['met'] else 'not met'}**; "
                f"MFU >= {mfu['target_min']:.0%}: **{'met' if mfu['met'] else 'not met'}**.", ""]
    return out
