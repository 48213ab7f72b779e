"""The extrapolation study's section of benchmarks/REPORT.md (from results/extrapolation_study.json).

States only what the runs measured: perplexity per length (mean over seeds, with the range), the
validity gates next to SeqPE's numbers, which type is lowest at each length and whether the gap
is larger than the seeds' spread, perplexity per position bucket, and SeqPE's bias by distance.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from _markdown import figure, table

# What the person who ran the study concludes from its numbers, and why; shown under the tables.
NOTES = Path(__file__).resolve().parent / "results" / "extrapolation_study.notes.md"


def _by_variant(runs: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for run in runs:
        grouped[run["variant"]].append(run)
    return dict(grouped)


def _stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.mean(values), min(values), max(values)


def _cell(values: list[float]) -> str:
    mean, low, high = _stats(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ({low:.1f}–{high:.1f})"


def _valid(runs: list[dict]) -> bool:
    """A variant's numbers speak for its method unless a SeqPE seed failed the bias gate."""
    return all(run.get("gates", {}).get("learned_positions", True) for run in runs)


def _gate_cells(runs: list[dict]) -> list[str]:
    gates = [run["gates"] for run in runs if "gates" in run]
    if not gates:
        return ["–", "–", "–"]
    spread = " / ".join(f"{g['bias_std_in']:.3f}, {g['bias_std_beyond']:.3f}" for g in gates)
    entropy = " / ".join(f"{g['teacher_entropy']:.2f} of {g['teacher_entropy_flat']:.2f}"
                         if g["teacher_entropy"] is not None else "n/a" for g in gates)
    status = "learned positions" if _valid(runs) else "**did not learn positions**"
    return [spread, entropy, status]


def _ppl(runs: list[dict], length: str) -> list[float]:
    return [run["ppl"][length] for run in runs if run["ppl"].get(length) is not None]


def _winners(variants: dict[str, list[dict]], lengths: list[str]) -> list[str]:
    """Per length: the lowest mean among valid variants, and whether its lead beats the seed spread."""
    lines = []
    for length in lengths:
        ranked = sorted((statistics.mean(_ppl(runs, length)), name) for name, runs in variants.items()
                        if _valid(runs) and _ppl(runs, length))
        if len(ranked) < 2:
            continue
        (best, name), (second, runner) = ranked[0], ranked[1]
        # Paired by seed: the same seed gives every type the same data order, so compare within seeds.
        by_seed = lambda runs: {run["seed"]: run["ppl"][length] for run in runs}
        winner, other = by_seed(variants[name]), by_seed(variants[runner])
        paired = all(winner[seed] < other[seed] for seed in winner.keys() & other.keys())
        lines.append(f"- {length}: **{name}** {best:.1f}, then {runner} {second:.1f} "
                     f"({'lower with every seed' if paired else 'not lower with every seed'})")
    return lines


def _relative_to(variants: dict[str, list[dict]], lengths: list[str], reference: str = "nope") -> list[str]:
    """Each type's perplexity over NoPE's with the same seed (data order), mean over seeds: the seeds
    differ far more from each other than the types within a seed."""
    if reference not in variants:
        return []
    base = {run["seed"]: run["ppl"] for run in variants[reference]}
    rows = []
    for name, runs in variants.items():
        ratios = [[run["ppl"][n] / base[run["seed"]][n] for run in runs if run["seed"] in base] for n in lengths]
        rows.append([name] + [f"{statistics.mean(r):.3f}" for r in ratios])
    return [f"Perplexity relative to {reference} with the same seed (below 1 = better than {reference}):", ""] + \
        table(["type"] + lengths, rows) + [""]


def _attention_distill(variants: dict[str, list[dict]], lengths: list[str]) -> list[str]:
    if "seqpe" not in variants or "seqpe-attention-distill" not in variants:
        return []
    rows = []
    for length in lengths:
        base, attention = _ppl(variants["seqpe"], length), _ppl(variants["seqpe-attention-distill"], length)
        if base and attention:
            change = statistics.mean(attention) / statistics.mean(base) - 1
            rows.append([length, _cell(base), _cell(attention), f"{change:+.1%}"])
    return ["`position.distill_space: attention` against the paper's embedding space (same seeds):", ""] + \
        table(["length", "seqpe (embedding)", "seqpe (attention)", "change"], rows) + [""]


def _buckets(variants: dict[str, list[dict]]) -> list[str]:
    names = list(next(iter(variants.values()))[0]["bucket_ppl"])
    rows = [[name] + [_cell([run["bucket_ppl"][b] for run in runs]) for b in names] for name, runs in variants.items()]
    return ["Perplexity per position bucket on the same 16L windows (tokens at positions [a, b)):", ""] + \
        table(["type"] + names, rows) + [""]


def _bias_by_distance(variants: dict[str, list[dict]]) -> list[str]:
    seqpe = {name: runs for name, runs in variants.items() if all("gates" in run for run in runs)}
    if not seqpe:
        return []
    names = list(next(iter(seqpe.values()))[0]["gates"]["bias_by_distance"])
    rows = [[name] + [f"{statistics.mean(r['gates']['bias_by_distance'][d]['mean'] for r in runs):+.3f}"
                      for d in names] for name, runs in seqpe.items()]
    return ["SeqPE's attention bias by query-key distance (mean logit over pairs and heads; a recency "
            "bias falls with distance):", ""] + table(["variant"] + names, rows) + [""]


def _plots(variants: dict[str, list[dict]], lengths: list[str], train: int) -> list[str]:
    def draw_lengths(ax):
        base = {run["seed"]: run["ppl"] for run in variants.get("nope", [])}
        for name, runs in variants.items():
            # Relative to NoPE with the same seed when it ran: seeds differ far more than types.
            value = (lambda run, n: run["ppl"][n] / base[run["seed"]][n]) if base else (lambda run, n: run["ppl"][n])
            points = [(int(n), statistics.mean(value(run, n) for run in runs)) for n in lengths if _ppl(runs, n)]
            ax.plot(*zip(*points), marker="o", label=name + ("" if _valid(runs) else " (no positions learned)"))
        ax.axvline(train, color="grey", linestyle=":")
        ax.set(xscale="log", xlabel="evaluation length (tokens)",
               ylabel="perplexity / NoPE's, same seed" if base else "perplexity",
               title=f"Trained at L = {train}; whole validation split, mean over seeds")

    def draw_buckets(ax):
        for name, runs in variants.items():
            buckets = list(runs[0]["bucket_ppl"])
            ax.plot(range(len(buckets)), [statistics.mean(r["bucket_ppl"][b] for r in runs) for b in buckets],
                    marker="o", label=name)
            ax.set_xticks(range(len(buckets)), buckets)
        ax.set(yscale="log", xlabel="token positions in the 16L window", ylabel="perplexity",
               title="Perplexity per position bucket, identical windows")
    return [figure("extrapolation", draw_lengths), "", figure("extrapolation_buckets", draw_buckets), ""]


def _images(results: list[dict]) -> list[str]:
    """2-D: accuracy per type, protocol and image side (mean over seeds; n/a where not scored)."""
    if not results:
        return []
    variants = _by_variant(results)
    first = results[0]
    sizes, train = list(next(iter(first["acc"].values()))), first["train_length"]
    rows = []
    for name, runs in variants.items():
        for protocol in first["acc"]:
            values = [[run["acc"][protocol][size] for run in runs if run["acc"][protocol][size] is not None]
                      for size in sizes]
            rows.append([name, protocol] + [f"{statistics.mean(v):.3f}" if v else "n/a" for v in values])
    seeds = sorted({run["seed"] for run in results})
    return ["### 2-D: accuracy against image size (MNIST-5k, ViT trained at "
            f"{train} px, seeds {', '.join(map(str, seeds))}, mean)", "",
            "`resize`: the 28 px source resized to each side (real detail grows); `pad`: the training-size "
            "image at its trained place on a larger blank canvas (only new positions are added); "
            "`pad_moved`: it on positions never seen in training (sides of at least 2x only).", ""] + \
        table(["type", "protocol"] + [f"{size} px" for size in sizes], rows) + [""]


def study_section(data: dict) -> list[str]:
    config, variants = data["config"], _by_variant(data["runs"])
    lengths, train = [str(n) for n in config["lengths"]], config["length"]
    tokens = data["runs"][0]["tokens"]
    out = ["## 4. Length extrapolation study", "",
           f"`make study`: stdlib code + pydoc prose, configs/study/base.yaml (4 x 128, L = {train}, "
           f"max_position 32L) with each type's defaults, {config['steps']} steps, seeds {config['seeds']}; "
           f"perplexity on the whole validation split ({tokens[lengths[0]]:,} tokens at L, {tokens[lengths[-1]]:,} "
           f"at 16L), batch 1. Cells: mean over seeds (range). Gates (docs/method.md §3): SeqPE's bias spread "
           f"over keys for queries inside / beyond L (a run under {config['gate_bias_std']} logits did not learn "
           f"positions), and the distillation teacher's entropy against a flat teacher's log m.", ""]
    rows = [[name] + [_cell(_ppl(runs, n)) if _ppl(runs, n) else "n/a" for n in lengths]
            + [f"{statistics.mean(_ppl(runs, lengths[-1])) / statistics.mean(_ppl(runs, lengths[0])):.3f}"]
            + _gate_cells(runs) for name, runs in variants.items()]
    out += table(["type"] + [f"{n} ({int(n) // train}L)" for n in lengths] +
                 ["16L / L", "bias spread in, beyond (per seed)", "teacher entropy (per seed)", "status"], rows)
    out += ["", "Lowest perplexity at each length (SeqPE variants count only if every seed learned positions):", ""]
    out += _winners(variants, lengths) + [""] + _relative_to(variants, lengths)
    notes = [NOTES.read_text(), ""] if NOTES.exists() else []
    return out + notes + _attention_distill(variants, lengths) + _buckets(variants) + \
        _bias_by_distance(variants) + _plots(variants, lengths, train) + _images(data.get("images", []))
