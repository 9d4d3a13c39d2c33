"""What ``latentmas bench`` writes: the environment stamp, the ``summary`` of target ratios, JSON, Markdown, figure.

The summary names are fixed (docs/bench/latest.json and the README cite them); each entry is
``{"value", "target", "met"}`` (``batch8_over_batch1.*`` add ``bound_by_prompts``, ``text_over_latent_end_to_end``
adds ``bound_full_batches``: ceilings no decode-loop work can lift, docs/BENCH.md). Targets come
from the performance issue: a latent step ≤ 0.9 × a decode step, latent_mas ≥ 4 × faster than text_mas with ≥ 70 %
fewer generated tokens, batch 8 ≥ 2.5 × batch 1 (5 × on a GPU), a cached W_a load ≤ 1 s, ≥ 2 × the original
implementation's samples/s.
"""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import torch

from latentmas.bench.measure import PHASES

TARGETS = {"latent_step_over_decode_step": ("<=", 0.9), "text_over_latent_end_to_end": (">=", 4.0),
           "generated_token_reduction": (">=", 0.70), "w_a_cached_load_s": ("<=", 1.0),
           "over_reference_samples_per_s": (">=", 2.0)}
BOUNDS = ("bound_by_prompts", "bound_full_batches")  # ceilings a summary entry may carry beside its value


def environment(lm, model_path: str) -> dict:
    import transformers

    from latentmas.engine.models import dtype_name

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, False
    dev = lm.device
    return {"model": lm.name, "model_path": str(model_path), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or
            platform.machine(), "dtype": dtype_name(lm.dtype), "linear_kernel": lm.linear_kernel,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "git_commit": (commit + "-dirty") if commit and dirty else commit}


def _entry(name: str, value: float | None, target_override: float | None = None) -> dict:
    op, target = TARGETS.get(name, (">=", None))
    target = target if target_override is None else target_override
    met = None if value is None else (value <= target if op == "<=" else value >= target)
    return {"value": None if value is None else round(float(value), 4), "target": target, "met": met}


def summarise(result: dict, on_gpu: bool) -> dict:
    """The issue's named ratios from one run's rows (entries absent when their part was not measured)."""
    s: dict[str, dict] = {}
    steps = result.get("step_costs") or []
    if steps:  # the worst context/batch: the target holds at every one
        s["latent_step_over_decode_step"] = _entry("latent_step_over_decode_step",
                                                   max(r["latent_over_decode"] for r in steps))
    e2e = result.get("end_to_end") or {}
    arch = "sequential" if "latent_mas/sequential" in e2e else next(
        (k.split("/")[1] for k in e2e if k.startswith("latent_mas/")), None)
    lat, txt = e2e.get(f"latent_mas/{arch}"), e2e.get(f"text_mas/{arch}")
    if lat and txt:
        s["text_over_latent_end_to_end"] = _entry("text_over_latent_end_to_end",
                                                  txt["s_per_sample"]["median"] / lat["s_per_sample"]["median"])
        bound = _full_batch_bound(lat, txt, steps)
        if bound is not None:
            s["text_over_latent_end_to_end"]["bound_full_batches"] = round(bound, 4)
        gen_t = txt["generated_tokens_per_sample"]
        s["generated_token_reduction"] = _entry(
            "generated_token_reduction", 1 - lat["generated_tokens_per_sample"] / gen_t if gen_t else None)
    scaling = result.get("batch_scaling") or []
    by = {(r["variant"], r["batch_size"]): r["samples_per_s"]["median"] for r in scaling}
    for variant in dict.fromkeys(r["variant"] for r in scaling):
        if (variant, 1) in by and (variant, 8) in by:
            method = variant.split("/")[0]
            if f"batch8_over_batch1.{method}" in s:
                continue  # one entry per method: the first architecture measured
            s[f"batch8_over_batch1.{method}"] = _entry("batch8", by[(variant, 8)] / by[(variant, 1)],
                                                       5.0 if on_gpu else 2.5)
            bound = _prompt_bound(scaling, variant)
            if bound is not None:
                s[f"batch8_over_batch1.{method}"]["bound_by_prompts"] = round(bound, 4)
    w_a = result.get("w_a") or {}
    if w_a.get("cached_load_s"):
        s["w_a_cached_load_s"] = _entry("w_a_cached_load_s", w_a["cached_load_s"]["median"])
    ratio = _over_reference(result.get("reference"), e2e, arch, result["environment"]["dtype"])
    if ratio is not None:
        s["over_reference_samples_per_s"] = _entry("over_reference_samples_per_s", ratio)
    return s


def _prompt_bound(scaling: list[dict], variant: str) -> float | None:
    """The most batch 8 could gain over batch 1 if everything but the prompt forwards were free at batch 8: batch 1's
    seconds per sample (from the median samples/s, as the ratio itself) over batch 8's prompt-forward seconds per
    sample (phase clock, mean over repeats). Below the target, no decode-loop work can meet it; only cheaper prompt
    reading can."""
    rows = {r["batch_size"]: r for r in scaling if r["variant"] == variant}
    eight = rows[8].get("phases_s_per_sample") or {}
    if not eight.get("prompt"):
        return None
    return 1 / rows[1]["samples_per_s"]["median"] / eight["prompt"]  # batch 1's s/sample as the ratio's value uses


def _full_batch_bound(lat: dict, txt: dict, steps: list[dict]) -> float | None:
    """The most latent_mas could gain over text_mas if each of its decoded tokens cost a full batch's share of a
    decode step, i.e. if no batch ever decoded on after most of its answers had ended (perfect continuous
    batching): text_mas's seconds per sample as measured, over latent_mas's with its text phase replaced by its
    generated tokens × the cheapest per-token decode cost in the step-cost part (decode step ÷ batch, batches up to
    the end-to-end batch size). Its prompts, latent steps and other work stay as measured (prompt forwards are
    compute-bound on a CPU: no schedule makes them cheaper). Below the target, no decode scheduling can meet it."""
    text = (lat.get("phases_s_per_sample") or {}).get("text")
    if text is None:
        return None
    cells = [r["decode_ms"]["median"] / 1e3 / r["batch_size"] for r in steps if r["batch_size"] <= lat["batch_size"]]
    if not cells:
        return None
    floor = lat["s_per_sample"]["median"] - text + lat["generated_tokens_per_sample"] * min(cells)
    return txt["s_per_sample"]["median"] / floor if floor > 0 else None


def reference_rows(ref) -> list[dict]:
    """``--reference-json``: one timing of the original or a list of them (docs/BENCH.md)."""
    return [] if not ref else list(ref) if isinstance(ref, list) else [ref]


def _over_reference(ref, e2e: dict, arch: str | None, dtype: str) -> float | None:
    """Ours / the original's samples/s. Rows measured beside the original in one process carry our samples/s too
    (``latentmas_samples_per_s``) and are preferred: of the latent_mas ones in this run's dtype, the one at the
    original's best samples/s (its best batch size) counts. Otherwise the original's best row is compared with
    this run's end-to-end row of the same method (same batch size and --ignore-eos are then the user's job)."""
    rows = [r for r in reference_rows(ref) if r.get("dtype", dtype) == dtype]
    timed = [r for r in rows if r.get("method") == "latent_mas" and "latentmas_samples_per_s" in r]
    if timed:
        best = max(timed, key=lambda r: r["samples_per_s"])
        return best["latentmas_samples_per_s"]["median"] / best["samples_per_s"]
    alone = [r for r in rows if "latentmas_samples_per_s" not in r]
    if not alone:
        return None
    best = max(alone, key=lambda r: r["samples_per_s"])
    ours = e2e.get(f"{best['method']}/{best.get('arch', arch)}", e2e.get(best["method"]))
    return ours["samples_per_s"]["median"] / best["samples_per_s"] if ours else None


def _rate(d: dict) -> str:
    return f"{d['median']:.3f} [{d['min']:.3f}, {d['max']:.3f}]"


def _ms(d: dict) -> str:
    return f"{d['median']:.1f} [{d['min']:.1f}, {d['max']:.1f}]"


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# latentmas bench — {env['model']}", "",
             f"{env['device']} ({env['device_name']}), {env['dtype']}, {env.get('linear_kernel', 'aten')} linears, "
             f"{env['threads']} threads, torch {env['torch']},"
             f" transformers {env['transformers']}, commit {env['git_commit']}", "", "## Summary", "",
             "| ratio | value | target | met | ceiling (docs/BENCH.md) |", "|---|---|---|---|---|"]
    for name, e in result["summary"].items():
        bound = next((f"{e[k]} ({k})" for k in BOUNDS if k in e), "")
        lines.append(f"| `{name}` | {e['value']} | {e['target']} | {e['met']} | {bound} |")
    if result.get("step_costs"):
        lines += ["", "## Step costs (ms, median [min, max])", "",
                  "| context | batch | latent step | decode step | latent/decode |", "|---|---|---|---|---|"]
        for r in result["step_costs"]:
            lines.append(f"| {r['context']} | {r['batch_size']} | {_ms(r['latent_ms'])} | {_ms(r['decode_ms'])} | "
                         f"{r['latent_over_decode']:.2f} |")
    if result.get("end_to_end"):
        lines += ["", "## End to end (same samples, greedy, interleaved batch by batch)", "",
                  "| variant | s/sample | samples/s | generated tok/sample | latent steps/sample | peak MB | "
                  "KV bytes handed/sample |", "|---|---|---|---|---|---|---|"]
        for k, r in result["end_to_end"].items():
            kv = "" if r["kv_bytes_handed_per_sample"] is None else f"{r['kv_bytes_handed_per_sample'] / 2**20:.1f} MiB"
            lines.append(f"| {k} | {_ms(r['s_per_sample'])} | {r['samples_per_s']['median']:.3f} | "
                         f"{r['generated_tokens_per_sample']:.1f} | {r['latent_steps_per_sample']:.1f} | "
                         f"{r['peak_mem_mb']} | {kv} |")
    if result.get("batch_scaling"):
        lines += ["", "## Batch scaling (samples/s, median [min, max])", "", "| variant | batch | samples/s | peak MB |",
                  "|---|---|---|---|"]
        for r in result["batch_scaling"]:
            sp = r["samples_per_s"]
            lines.append(f"| {r['variant']} | {r['batch_size']} | {sp['median']:.3f} [{sp['min']:.3f}, "
                         f"{sp['max']:.3f}] | {r['peak_mem_mb']} |")
    lines += _phases_markdown(result)
    lines += _alternatives_markdown(result)
    if result.get("w_a"):
        w = result["w_a"]
        lines += ["", "## W_a", "", f"computed from the weight files in a fresh process: {w['compute_s']} s "
                  f"(process wall {w['process_wall_s']} s), peak memory {w['peak_mem_mb']} MB ({w['peak_kind']}); "
                  f"cached load {w['cached_load_s']['median']:.3f} s (median of {w['cached_load_s']['n']})"]
    lines += ["", "Settings: `" + json.dumps(result["settings"]) + "`", ""]
    return "\n".join(lines)


def _phases_markdown(result: dict) -> list[str]:
    """Seconds per sample by phase for the end-to-end and batch-scaling rows (measure.PhaseClock)."""
    rows = [("end to end", k, r) for k, r in (result.get("end_to_end") or {}).items()]
    rows += [("scaling", r["variant"], r) for r in result.get("batch_scaling") or []]
    rows = [(part, name, r) for part, name, r in rows if r.get("phases_s_per_sample")]
    if not rows:
        return []
    lines = ["", "## Where the time goes (s/sample by phase, mean over repeats)", "",
             "Seconds inside the forwards of agents' prompts, latent steps and decoded tokens; `other` is everything "
             "between them (docs/BENCH.md, \"Phases\").", "", "| part | variant | batch | prompt | latent | text | "
             "other | total |",
             "|---|---|---|---|---|---|---|---|"]
    for part, name, r in rows:
        p = r["phases_s_per_sample"]
        lines.append(f"| {part} | {name} | {r['batch_size']} | " + " | ".join(f"{p[k]:.2f}" for k in PHASES)
                     + f" | {sum(p.values()):.2f} |")
    return lines


def _two_ways_markdown(d: dict | None, title: str, label: str) -> list[str]:
    """A ``model_compare`` section (the same model loaded two ways: samples/s, equal texts, step costs)."""
    if not d:
        return []
    names = d.get("names") or d["dtypes"]  # snapshots before the kernel part named the list "dtypes"
    ref, other = names[0], names[-1]
    lines = ["", f"## {title}: {ref} vs {other} (same samples, interleaved)", "",
             f"| variant | batch | {ref} samples/s | {other} samples/s | {other}/{ref} | same final text as {ref} |",
             "|---|---|---|---|---|---|"]
    for r in d["end_to_end"]:
        lines.append(f"| {r['variant']} | {r['batch_size']} | {r[ref]['samples_per_s']['median']:.3f} | "
                     f"{r[other]['samples_per_s']['median']:.3f} | {r['speedup_' + other]:.2f} | "
                     f"{r[other]['same_final_text_as_' + ref]:.0%} |")
    lines += ["", f"| {label} | context | batch | latent step ms | decode step ms |", "|---|---|---|---|---|"]
    for name, rows in d["step_costs"].items():
        lines += [f"| {name} | {r['context']} | {r['batch_size']} | {_ms(r['latent_ms'])} | {_ms(r['decode_ms'])} |"
                  for r in rows]
    return lines


def _alternatives_markdown(result: dict) -> list[str]:
    """The trace-level, dtype, kernel, decode-graph, prefill, retire, reference and backend sections (each only
    when its part ran)."""
    lines = []
    if result.get("trace"):
        lines += ["", "## Trace level (latent_mas, same samples, interleaved)", "",
                  "| trace | variant | s/sample | × none | latent steps/sample | trace bytes/sample |", "|---|---|---|---|---|---|"]
        for r in result["trace"]:
            lines.append(f"| {r['trace']} | {r['variant']} | {_ms(r['s_per_sample'])} | {r['over_none']:.3f} | "
                         f"{r['latent_steps_per_sample']:.1f} | {r['trace_bytes_per_sample']:.0f} |")
    lines += _two_ways_markdown(result.get("dtype"), "Compute dtype", "dtype")
    lines += _two_ways_markdown(result.get("kernel"), "Linear kernel", "kernel")
    g = result.get("graph")
    if g:
        ref = g["graphs"][0]
        lines += ["", "## Decode graphs (same samples, interleaved; first pass = compile + warm-up, untimed)", "",
                  "| variant | batch | graph | samples/s | × eager | first pass s | same final text as eager |",
                  "|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            base = r[ref]["samples_per_s"]["median"]
            lines += [f"| {r['variant']} | {r['batch_size']} | {name} | {_rate(r[name]['samples_per_s'])} | "
                      f"{r[name]['samples_per_s']['median'] / base:.2f} | {r[name]['first_pass_s']} | "
                      f"{r[name]['same_final_text_as_' + ref]:.0%} |" for name in g["graphs"]]
    if result.get("prefill"):
        lines += ["", "## Prompt prefill: one padded forward vs one forward per sample (same samples, interleaved)", "",
                  "| variant | batch | prompt pad share | padded samples/s | per_row samples/s | per_row/padded | "
                  "same final text as padded |", "|---|---|---|---|---|---|---|"]
        for r in result["prefill"]:
            pad, row = r["padded"]["samples_per_s"], r["per_row"]["samples_per_s"]
            lines.append(f"| {r['variant']} | {r['batch_size']} | {r['prompt_pad_share']:.1%} | {_rate(pad)} | "
                         f"{_rate(row)} | {row['median'] / pad['median']:.2f} | "
                         f"{r['per_row']['same_final_text_as_padded']:.0%} |")
    if result.get("retire"):
        lines += ["", "## Retiring finished rows: every row to the end of its batch vs finished rows dropped "
                  "(same samples, interleaved)", "",
                  "| variant | batch | off samples/s | on samples/s | on/off | same final text as off |",
                  "|---|---|---|---|---|---|"]
        for r in result["retire"]:
            off, on = r["off"]["samples_per_s"], r["on"]["samples_per_s"]
            lines.append(f"| {r['variant']} | {r['batch_size']} | {_rate(off)} | {_rate(on)} | "
                         f"{on['median'] / off['median']:.2f} | {r['on']['same_final_text_as_off']:.0%} |")
    rows = reference_rows(result.get("reference"))
    if rows:
        lines += ["", "## Versus the original LatentMAS (its HF path, same model and samples, EOS ignored; docs/BENCH.md)",
                  "", "| method | dtype | batch | n | tokens/agent | original samples/s | ours samples/s | ours/original |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ours = r.get("latentmas_samples_per_s", {}).get("median")
            lines.append(f"| {r['method']} | {r.get('dtype', '')} | {r['batch_size']} | {r.get('samples', '')} | "
                         f"{r.get('tokens_per_agent', '')} | {r['samples_per_s']:.4f} | "
                         + (f"{ours:.4f} | {ours / r['samples_per_s']:.2f} |" if ours else "| |"))
    b = result.get("backends")
    if b:
        lines += ["", f"## Backends: HF vs vLLM (same samples; vLLM engine start {b['engine_start_s']} s, excluded)",
                  "", "| variant | n | HF samples/s | vLLM samples/s | vLLM/HF | identical final text | "
                  "mean common prefix (tokens) |", "|---|---|---|---|---|---|---|"]
        for r in b["rows"]:
            lines.append(f"| {r['variant']} | {r['n']} | {r['hf_samples_per_s']:.3f} | {r['vllm_samples_per_s']:.3f} | "
                         f"{r['vllm_samples_per_s'] / r['hf_samples_per_s']:.2f} | {r['identical_share']:.0%} | "
                         f"{r['mean_common_prefix_tokens']:.1f} |")
    return lines


def _plain_ticks(ax, values: list[int]) -> None:
    if values:
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    steps = result.get("step_costs") or []
    for bsz in sorted({r["batch_size"] for r in steps}):
        rows = [r for r in steps if r["batch_size"] == bsz]
        ctx = [r["context"] for r in rows]
        axes[0].plot(ctx, [r["decode_ms"]["median"] for r in rows], "o-", label=f"decode step, batch {bsz}")
        axes[0].plot(ctx, [r["latent_ms"]["median"] for r in rows], "s--", label=f"latent step, batch {bsz}")
    axes[0].set(xlabel="context length (tokens)", ylabel="ms per step", title="Step cost", xscale="log")
    _plain_ticks(axes[0], sorted({r["context"] for r in steps}))
    e2e = result.get("end_to_end") or {}
    keys = list(e2e)
    axes[1].bar(range(len(keys)), [e2e[k]["s_per_sample"]["median"] for k in keys],
                yerr=[[e2e[k]["s_per_sample"]["median"] - e2e[k]["s_per_sample"]["min"] for k in keys],
                      [e2e[k]["s_per_sample"]["max"] - e2e[k]["s_per_sample"]["median"] for k in keys]], capsize=3)
    axes[1].set_xticks(range(len(keys)), keys, rotation=20, ha="right")
    axes[1].set(ylabel="seconds per sample", title="End to end (median, min–max)")
    scaling = result.get("batch_scaling") or []
    for variant in dict.fromkeys(r["variant"] for r in scaling):
        rows = [r for r in scaling if r["variant"] == variant]
        axes[2].plot([r["batch_size"] for r in rows], [r["samples_per_s"]["median"] for r in rows], "o-",
                     label=variant)
    axes[2].set(xlabel="batch size", ylabel="samples/s", title="Batch scaling", xscale="log")
    _plain_ticks(axes[2], sorted({r["batch_size"] for r in scaling}))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    env = result["environment"]
    fig.suptitle(f"{env['model']} · {env['device']} · {env['dtype']} · {env.get('linear_kernel', 'aten')} linears · "
                 f"{env['threads']} threads · commit {env['git_commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write(result: dict, out_dir: Path, name: str = "bench") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    from latentmas.records import atomic_path

    paths = [out_dir / f"{name}.{ext}" for ext in ("json", "md", "png")]
    with atomic_path(paths[0]) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    with atomic_path(paths[1]) as tmp:
        Path(tmp).write_text(markdown(result))
    with atomic_path(paths[2]) as tmp:
        figure(result, Path(tmp))
    return paths
