"""Turn benchmarks/results/*.json into benchmarks/REPORT.md and PNG figures (benchmarks/figures/).

Only reports what the JSON holds: a benchmark that was not run is listed as missing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _markdown import figure, table  # noqa: E402
from activation_report import activation_section  # noqa: E402
from gpu_report import gpu_section  # noqa: E402
from qa_report import qa_section  # noqa: E402
from study_report import study_section  # noqa: E402

RESULTS = HERE / "results"
MiB = 2 ** 20


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def pe_section(data: dict) -> list[str]:
    out = ["## 1. Position-encoding cost (training step, forward + backward)", "",
           "Ratios to learned APE, measured side by side (interleaved) in one run; memory is the peak "
           "RSS growth of a fresh process over two steps. `seqpe_naive` encodes every occurrence and "
           "every digit token, as the reference code does.", ""]
    for row in data["train_step"] + ([data["train_step_large_batch"]] if "train_step_large_batch" in data else []):
        names = list(row["seconds_median"])
        out += [f"**{row['layers']} layers x {row['width']}, L = {row['seq_len']}, "
                f"batch {row.get('batch', data['config']['batch'])}**", ""]
        out += table(["variant", "step (s)", "time / APE", "peak MiB", "memory / APE", "positions encoded / step"],
                     [[n, f"{row['seconds_median'][n]:.3f}", f"{row['time_ratio_to_learned'][n]:.2f}",
                       f"{row['peak_bytes'][n] / MiB:.0f}", f"{row['memory_ratio_to_learned'][n]:.2f}",
                       f"{row['positions_encoded_per_step'].get(n, 0):.0f}" if n in row["positions_encoded_per_step"] else "-"]
                      for n in names]) + [""]

    def draw(ax):
        labels = [f"{r['layers']}x{r['width']} L{r['seq_len']}" for r in data["train_step"]]
        names = list(data["train_step"][0]["seconds_median"])
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar([x + i * width for x in range(len(labels))], [r["time_ratio_to_learned"][n] for r in data["train_step"]],
                   width, label=n)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set(ylabel="step time / learned APE", title="Training-step cost of each position scheme")
    out += [figure("pe_overhead", draw), ""]
    last = data["train_step"][-1]
    out += [f"Against TARGETS.md (SeqPE / learned APE <= 1.05x per step): measured "
            f"**{last['time_ratio_to_learned']['seqpe']:.2f}x** at {last['layers']}x{last['width']}, "
            f"L = {last['seq_len']}; unique batching and shared digit prefixes make SeqPE "
            f"{last['seconds_median']['seqpe_naive'] / last['seconds_median']['seqpe']:.2f}x faster than encoding "
            f"every occurrence, and it encodes {last['positions_encoded_per_step']['seqpe']:.0f} positions per step "
            f"(reference: 1552 unshifted).", ""]
    if "eval_forward" in data:
        ev = data["eval_forward"]
        out += [f"**Evaluation forward, batch 1, N = {data['config']['eval_len']} ({ev['layers']} layers x {ev['width']})**", ""]
        tensors = ev.get("tensor_peak_bytes", {})
        cells = lambda n: ([f"{tensors[n] / MiB:.0f}", f"{ev['tensor_memory_ratio_to_learned'][n]:.2f}"]
                           if n in tensors else ["-", "-"])
        out += table(["variant", "seconds", "time / APE", "peak RSS MiB", "RSS / APE", "live tensors MiB",
                      "tensors / APE"],
                     [[n, f"{ev['seconds_median'][n]:.3f}", f"{ev['time_ratio_to_learned'][n]:.2f}",
                       f"{ev['peak_bytes'][n] / MiB:.0f}", f"{ev['memory_ratio_to_learned'][n]:.2f}", *cells(n)]
                      for n in ev["seconds_median"]]) + [""]
    return out


def attention_section(data: dict) -> list[str]:
    variants = [v for v in data["variants"] if v != "cpu_bias"]
    if any("cpu_bias" in r["seconds_median"] for r in data["rows"]):
        variants.insert(variants.index("sdpa") + 1, "cpu_bias")
    cell = lambda r, v, f: f(r, v) if v in r["seconds_median"] else "-"
    out = ["## 2. Attention with SeqPE attn_scalar", "",
           f"Forward + backward, batch {data['config']['batch']}, {data['config']['heads']} heads of "
           f"{data['config']['head_dim']}; `no_pe` is sdpa without SeqPE's term, `sdpa`/`eager` concatenate "
           "pe_q/pe_k to q/k, `cpu_bias` hands the bias built once to the fused CPU kernel as its mask (CPU "
           "training, where the bias fits), `dense_bias` materialises the [B, H, N, N] bias.", ""]
    out += table(["N"] + [f"{v} ms" for v in variants] + [f"{v} MiB" for v in variants],
                 [[r["length"]] + [cell(r, v, lambda r, v: f"{r['seconds_median'][v] * 1e3:.1f}") for v in variants] +
                  [cell(r, v, lambda r, v: f"{r['peak_bytes'][v] / MiB:.0f}") for v in variants]
                  for r in data["rows"]]) + [""]

    def draw(ax):
        for v in variants:
            rows = [r for r in data["rows"] if v in r["peak_bytes"]]
            ax.plot([r["length"] for r in rows], [r["peak_bytes"][v] / MiB for r in rows], marker="o", label=v)
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="peak MiB", title="Attention peak memory")
    return out + [figure("attention_memory", draw), ""]


def data_section(data: dict) -> list[str]:
    out = ["## 3. Data pipeline", ""]
    rows = [["raw SentencePiece encode, 1 process", f"{data['raw_encode_tokens_per_s']:,.0f} tokens/s"],
            ["raw encode, 2 processes at once", f"{data['raw_encode_2_concurrent_processes_tokens_per_s']:,.0f} tokens/s"]]
    for workers, rate in data["shards_tokens_per_s"].items():
        rows.append([f"`megaseqpe-prep shards`, {workers} worker(s)",
                     f"{rate:,.0f} tokens/s ({data['shards_vs_raw_per_worker'][workers]:.2f}x raw per worker)"])
    for workers, rate in data["loader_rows_per_s"].items():
        rows.append([f"training loader, {workers} DataLoader worker(s)", f"{rate:,.0f} rows/s"])
    rows.append(["demo model consumes (one rank)", f"{data['demo_model_consumes_rows_per_s']['rows_per_s']:,.0f} rows/s"])
    return out + table(["what", "throughput"], rows) + [""]


def scaling_section(data: dict) -> list[str]:
    enc = data["encoder"]
    out = ["## 5. Scaling", "", "SeqPE encoder pass (forward + backward, width 256, 2 layers) vs unique positions:", ""]
    out += table(["unique positions", "shared prefixes ms", "every digit ms"],
                 [[r["unique_positions"], f"{r['seconds_shared_prefixes'] * 1e3:.1f}", f"{r['seconds_every_digit'] * 1e3:.1f}"]
                  for r in enc["rows"]]) + [""]
    for key, fit in enc["linear_fit"].items():
        out.append(f"- {key.removeprefix('seconds_')}: {fit['seconds_per_position'] * 1e6:.1f} us per position, "
                   f"R^2 = {fit['r_squared']:.4f} for a straight line")
    dp = data["data_parallel"]
    out += ["", f"Training tokens/s (configs/demo.yaml, DeepSpeed ZeRO-2, CPU): 1 process "
            f"{dp['1_process']:,.0f}, 2 processes {dp['2_process']:,.0f} ({dp['ratio_2_over_1']:.2f}x).", ""]
    return out


def main() -> None:
    sections = {"pe_overhead": pe_section, "attention": attention_section, "data_throughput": data_section,
                "extrapolation_study": study_section, "scaling": scaling_section,
                "qa_study": qa_section, "qa_study_long": qa_section, "activation_memory": activation_section}
    lines = ["# Benchmarks", "", "Made by `make bench` from `benchmarks/results/*.json`; all ratios measured side "
             "by side in one run on the same machine.", ""]
    machine = next((d["machine"] for d in map(load, sections) if d and "machine" in d), {})
    lines += [f"Machine: {machine.get('cpus', '?')} CPUs, torch {machine.get('torch', '?')}"
              f"{', GPU ' + machine['gpu'] if 'gpu' in machine else ', no GPU'}.", ""]
    for name, render in sections.items():
        data = load(name)
        lines += render(data) if data else [f"## {name}", "", f"not run: benchmarks/results/{name}.json is missing", ""]
    gpu = load("gpu")  # written by `make bench-gpu` on a lent GPU (README: Benchmarks on a GPU)
    lines += gpu_section(gpu) if gpu else [
        "## 6. GPU", "", "No GPU was lent to the session that made this report: GPT-2 small tokens/s and MFU "
        "in bf16 are not measured here (`make bench-gpu` on a GPU machine writes benchmarks/results/gpu.json).", ""]
    (HERE / "REPORT.md").write_text("\n".join(lines))
    print(f"wrote {HERE / 'REPORT.md'}")


if __name__ == "__main__":
    main()
