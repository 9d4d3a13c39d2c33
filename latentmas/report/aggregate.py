"""``latentmas aggregate``: scored records in, tidy tables and paper-style Markdown tables out.

One *cell* is one experimental configuration, ``(model, task, method, arch, latent_steps, realign, memory)``; its
seeds are replicates and are aggregated over. Outputs (all in ``--out-dir``, each written atomically):

* ``cells.parquet`` / ``cells.csv`` -- one row per cell (accuracy, confidence intervals, tokens, wall time, and for
  ``latent_mas`` rows the speedup and token reduction against the matching ``text_mas`` cell);
* ``per_seed.parquet`` / ``per_seed.csv`` -- one row per cell x seed;
* ``table_accuracy.md``, ``table_tokens.md``, ``table_speed.md`` -- laid out like the paper's Tables 1-3;
* ``summary.json`` -- counts and input checksums.

Every number is a pure function of the set of input records: records are validated, then sorted by cell, seed and
sample id before any arithmetic, sums use :func:`math.fsum`, and no timestamps are written, so the same inputs give
byte-identical outputs whatever their order on the command line. docs/TABLES.md defines every column.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl

from latentmas.records import atomic_path, read_records
from latentmas.report.stats import mean_sd, t_interval, wilson_interval

log = logging.getLogger(__name__)

CI_LEVEL = 0.95
METHODS = ("baseline", "text_mas", "latent_mas")
METHOD_LABEL = {"baseline": "Single", "text_mas": "TextMAS", "latent_mas": "LatentMAS"}
# canonical task order (mirrors latentmas.eval.tasks.TASK_NAMES / DESIGN.md); unknown tasks sort after, alphabetically
TASK_ORDER = ("gsm8k", "aime2024", "aime2025", "gpqa_diamond", "medqa", "arc_easy", "arc_challenge", "mbppplus",
              "humanevalplus")
ARCH_ORDER = ("sequential", "hierarchical")
CELL_KEY = ("model", "task", "method", "arch", "latent_steps", "realign", "memory")
TOKEN_KINDS = ("prompt", "latent", "generated", "total")
STATUSES = ("ok", "failed")
# run settings that are not part of the cell key but change results: all records of one cell must agree on them
# (when present), so that two differently configured runs are never silently pooled
CONFIG_FIELDS = ("greedy", "temperature", "top_p", "max_new_tokens", "agent_max_new_tokens", "think", "dtype",
                 "ridge_lambda")
_ABSENT = "<absent>"

CELL_SCHEMA: dict[str, Any] = {
    "model": pl.String,
    "task": pl.String,
    "method": pl.String,
    "arch": pl.String,
    "latent_steps": pl.Int64,
    "realign": pl.Boolean,
    "memory": pl.String,
    "n_seeds": pl.Int64,
    "seeds": pl.List(pl.Int64),
    "n_samples": pl.Int64,
    "n_samples_per_seed": pl.List(pl.Int64),
    "n_correct": pl.Int64,
    "n_failed": pl.Int64,
    "accuracy": pl.Float64,
    "accuracy_strict": pl.Float64,
    "acc_per_seed": pl.List(pl.Float64),
    "acc_seed_mean": pl.Float64,
    "acc_seed_sd": pl.Float64,
    "ci_method": pl.String,
    "acc_ci95_lo": pl.Float64,
    "acc_ci95_hi": pl.Float64,
    "acc_ci95_half": pl.Float64,
    "acc_wilson95_lo": pl.Float64,
    "acc_wilson95_hi": pl.Float64,
    "acc_t95_lo": pl.Float64,
    "acc_t95_hi": pl.Float64,
    "n_cost": pl.Int64,
    "tokens_prompt_mean": pl.Float64,
    "tokens_latent_mean": pl.Float64,
    "tokens_generated_mean": pl.Float64,
    "tokens_total_mean": pl.Float64,
    "wall_s_mean": pl.Float64,
    "speedup_vs_text_mas": pl.Float64,
    "token_reduction_vs_text_mas": pl.Float64,
    "token_reduction_incl_latent_vs_text_mas": pl.Float64,
}

PER_SEED_SCHEMA: dict[str, Any] = {
    **{k: CELL_SCHEMA[k] for k in CELL_KEY},
    "seed": pl.Int64,
    "n_samples": pl.Int64,
    "n_correct": pl.Int64,
    "n_failed": pl.Int64,
    "accuracy": pl.Float64,
    "n_cost": pl.Int64,
    "tokens_prompt_mean": pl.Float64,
    "tokens_latent_mean": pl.Float64,
    "tokens_generated_mean": pl.Float64,
    "tokens_total_mean": pl.Float64,
    "wall_s_mean": pl.Float64,
}

OUTPUT_FILES = ("cells.parquet", "cells.csv", "per_seed.parquet", "per_seed.csv", "table_accuracy.md",
                "table_tokens.md", "table_speed.md", "summary.json")


class AggregateInputError(ValueError):
    """The scored records cannot be aggregated (missing/invalid field, duplicate sample, no input)."""


# --------------------------------------------------------------------------------------------------------------------
# reading and validation


@dataclass(frozen=True)
class Sample:
    """The fields of one scored record that aggregation uses (validated)."""

    key: tuple  # CELL_KEY values
    seed: int
    sample_id: str
    ok: bool
    correct: bool
    tokens: tuple[int, int, int, int] | None  # prompt, latent, generated, total (None only for failed samples)
    wall_s: float | None  # None only for failed samples
    strict_correct: bool | None = None  # scored with extraction "both" (or "strict"): the original's rules


def _line_number(path: Path, record_index: int) -> int:
    """1-based line of the ``record_index``-th record (read_records skips blank lines; count them back in)."""
    seen = -1
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                seen += 1
                if seen == record_index:
                    return lineno
    return record_index + 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _validate(rec: Any, where_fn) -> Sample:
    """Check one record against the scored-record contract (DESIGN.md); raise naming the place and field."""

    def fail(field_name: str, problem: str) -> None:
        sid = rec.get("sample_id") if isinstance(rec, dict) else None
        sid_part = f" (sample_id {sid!r})" if sid is not None else ""
        raise AggregateInputError(f"{where_fn()}{sid_part}: field {field_name!r} {problem}")

    if not isinstance(rec, dict):
        raise AggregateInputError(f"{where_fn()}: record is a {type(rec).__name__}, not a JSON object")

    def need(name: str) -> Any:
        if name not in rec:
            hint = " (is this an unscored inference record? run `latentmas score` first)" if name == "correct" else ""
            fail(name, "is missing" + hint)
        return rec[name]

    for name in ("model", "task", "sample_id"):
        v = need(name)
        if not isinstance(v, str) or not v:
            fail(name, f"must be a non-empty string, got {v!r}")
    method = need("method")
    if method not in METHODS:
        fail("method", f"must be one of {list(METHODS)}, got {method!r}")
    arch = need("arch")
    if method == "baseline":
        if arch is not None:
            fail("arch", f"must be null for method 'baseline', got {arch!r}")
    elif not isinstance(arch, str) or not arch:
        fail("arch", f"must be a non-empty string for method {method!r}, got {arch!r}")
    latent_steps = need("latent_steps")
    realign = need("realign")
    if method == "latent_mas":
        if not _is_int(latent_steps) or latent_steps < 0:
            fail("latent_steps", f"must be a non-negative integer for method 'latent_mas', got {latent_steps!r}")
        if not isinstance(realign, bool):
            fail("realign", f"must be true or false for method 'latent_mas', got {realign!r}")
    else:
        if latent_steps is not None:
            fail("latent_steps", f"must be null unless method is 'latent_mas', got {latent_steps!r}")
        if realign is not None:
            fail("realign", f"must be null unless method is 'latent_mas', got {realign!r}")
    memory = need("memory")
    if memory is not None and (not isinstance(memory, str) or not memory):
        fail("memory", f"must be a non-empty string or null, got {memory!r}")
    seed = need("seed")
    if not _is_int(seed):
        fail("seed", f"must be an integer, got {seed!r}")
    status = need("status")
    if status not in STATUSES:
        fail("status", f"must be one of {list(STATUSES)}, got {status!r}")
    correct = need("correct")
    if not isinstance(correct, bool):
        fail("correct", f"must be true or false, got {correct!r}")
    ok = status == "ok"
    if not ok and correct:
        fail("correct", "is true for a sample with status 'failed' (failed samples are scored as incorrect)")

    tokens: tuple[int, int, int, int] | None = None
    if ok or rec.get("tokens") is not None:
        tok = need("tokens")
        if not isinstance(tok, dict):
            fail("tokens", f"must be an object with {list(TOKEN_KINDS)}, got {tok!r}")
        vals = []
        for kind in TOKEN_KINDS:
            if kind not in tok:
                fail(f"tokens.{kind}", "is missing")
            v = tok[kind]
            if not _is_int(v) or v < 0:
                fail(f"tokens.{kind}", f"must be a non-negative integer, got {v!r}")
            vals.append(v)
        if vals[3] != vals[0] + vals[1] + vals[2]:
            fail("tokens.total", f"is {vals[3]}, not prompt + latent + generated = {vals[0] + vals[1] + vals[2]}")
        tokens = (vals[0], vals[1], vals[2], vals[3])
    wall: float | None = None
    if ok or rec.get("wall_s") is not None:
        w = need("wall_s")
        if not _is_num(w) or w < 0:
            fail("wall_s", f"must be a finite non-negative number, got {w!r}")
        wall = float(w)
    if not ok:  # a failed sample's partial cost is not averaged (see TABLES.md); keep only its correctness
        tokens, wall = None, None

    key = (rec["model"], rec["task"], method, arch, latent_steps, realign, memory)
    strict_correct = rec.get("strict_correct")
    if strict_correct is None and rec.get("extraction") == "strict":
        strict_correct = correct
    if strict_correct is not None and not isinstance(strict_correct, bool):
        fail("strict_correct", f"must be true or false, got {strict_correct!r}")
    return Sample(key=key, seed=seed, sample_id=rec["sample_id"], ok=ok, correct=correct, tokens=tokens,
                  wall_s=wall, strict_correct=strict_correct)


def load_samples(paths: Sequence[str | Path]) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Read and validate all scored records; return samples and per-file input info (for summary.json)."""
    if not paths:
        raise AggregateInputError("no input files given")
    samples: list[Sample] = []
    inputs: list[dict[str, Any]] = []
    seen: dict[tuple, tuple[Path, int]] = {}
    cell_config: dict[tuple, tuple[tuple, Path, int]] = {}
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise AggregateInputError(f"{path}: input file not found")
        records = read_records(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        inputs.append({"path": str(raw_path), "sha256": digest, "n_records": len(records)})
        for i, rec in enumerate(records):
            s = _validate(rec, lambda i=i: f"{path}:{_line_number(path, i)}")
            ident = s.key + (s.seed, s.sample_id)
            if ident in seen:
                p0, i0 = seen[ident]
                raise AggregateInputError(
                    f"{path}:{_line_number(path, i)} (sample_id {s.sample_id!r}): duplicate sample -- the same "
                    f"cell, seed {s.seed} and sample_id already came from {p0}:{_line_number(p0, i0)}"
                )
            seen[ident] = (path, i)
            config = tuple(rec.get(f, _ABSENT) for f in CONFIG_FIELDS)
            if s.key not in cell_config:
                cell_config[s.key] = (config, path, i)
            elif cell_config[s.key][0] != config:
                c0, p0, i0 = cell_config[s.key]
                j = next(j for j in range(len(CONFIG_FIELDS)) if c0[j] != config[j])
                raise AggregateInputError(
                    f"{path}:{_line_number(path, i)} (sample_id {s.sample_id!r}): field {CONFIG_FIELDS[j]!r} is "
                    f"{config[j]!r} but {p0}:{_line_number(p0, i0)} of the same cell has {c0[j]!r} -- runs with "
                    f"different settings must not be pooled into one cell"
                )
            samples.append(s)
    if not samples:
        raise AggregateInputError("no scored records in the input files: " + ", ".join(str(p) for p in paths))
    return samples, sorted(inputs, key=lambda d: d["path"])


# --------------------------------------------------------------------------------------------------------------------
# ordering


def order_rank(value: Any, order: Sequence[str]) -> tuple:
    if value is None:
        return (0, 0, "")
    if value in order:
        return (1, order.index(value), "")
    return (2, 0, str(value))


def cell_sort_key(key: tuple) -> tuple:
    model, task, method, arch, latent_steps, realign, memory = key
    return (
        model,
        order_rank(task, TASK_ORDER),
        METHODS.index(method),
        order_rank(arch, ARCH_ORDER),
        -1 if latent_steps is None else latent_steps,
        0 if realign is None else (1 if realign else 2),  # realign on before off
        (0, "") if memory is None else ((1, "") if memory == "all" else (2, memory)),
    )


# --------------------------------------------------------------------------------------------------------------------
# arithmetic


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else None


def _cost_means(samples: Sequence[Sample]) -> dict[str, Any]:
    costed = [s for s in samples if s.ok]
    out: dict[str, Any] = {"n_cost": len(costed)}
    for j, kind in enumerate(TOKEN_KINDS):
        out[f"tokens_{kind}_mean"] = _mean(s.tokens[j] for s in costed)  # type: ignore[index]
    out["wall_s_mean"] = _mean(s.wall_s for s in costed)  # type: ignore[misc]
    return out


def _accuracy_ci(n_correct: int, n: int, per_seed_acc: Sequence[float]) -> dict[str, Any]:
    w_lo, w_hi = wilson_interval(n_correct, n, CI_LEVEL)
    seed_mean, seed_sd = mean_sd(per_seed_acc)
    t_lo = t_hi = None
    if len(per_seed_acc) >= 2:
        t_lo, t_hi = t_interval(per_seed_acc, CI_LEVEL)
    # primary: the t-interval over seeds when it exists and is not degenerate (all seeds equal -> zero width, which
    # says nothing about test-set sampling error); otherwise Wilson on the pooled samples
    if t_lo is not None and len(set(per_seed_acc)) > 1:
        method, lo, hi = "t_seeds", t_lo, t_hi
    else:
        method, lo, hi = "wilson", w_lo, w_hi
    return {
        "acc_seed_mean": seed_mean,
        "acc_seed_sd": seed_sd,
        "ci_method": method,
        "acc_ci95_lo": lo,
        "acc_ci95_hi": hi,
        "acc_ci95_half": (hi - lo) / 2.0,  # type: ignore[operator]
        "acc_wilson95_lo": w_lo,
        "acc_wilson95_hi": w_hi,
        "acc_t95_lo": t_lo,
        "acc_t95_hi": t_hi,
    }


def _pick_text_mas(lm: dict[str, Any], text_rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The text_mas cell a latent_mas cell is compared with: same model, task and arch; same memory if present,
    else the only candidate; ambiguous or absent -> None."""
    cands = [r for r in text_rows if (r["model"], r["task"], r["arch"]) == (lm["model"], lm["task"], lm["arch"])]
    same_mem = [r for r in cands if r["memory"] == lm["memory"]]
    if len(same_mem) == 1:
        return same_mem[0]
    if len(cands) == 1:
        return cands[0]
    if cands:
        log.warning("no unique text_mas reference for latent_mas cell %s/%s/%s memory=%s (%d candidates): "
                    "speedup and token reduction left null", lm["model"], lm["task"], lm["arch"], lm["memory"],
                    len(cands))
    return None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def compute_tables(samples: Sequence[Sample]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (cell rows, per-seed rows), both sorted; pure function of the set of samples."""
    by_cell: dict[tuple, dict[int, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_cell[s.key][s.seed].append(s)
    cells: list[dict[str, Any]] = []
    per_seed: list[dict[str, Any]] = []
    for key in sorted(by_cell, key=cell_sort_key):
        base = dict(zip(CELL_KEY, key))
        seeds = sorted(by_cell[key])
        all_samples: list[Sample] = []
        accs: list[float] = []
        ns: list[int] = []
        for seed in seeds:
            group = sorted(by_cell[key][seed], key=lambda s: s.sample_id)
            all_samples.extend(group)
            n = len(group)
            k = sum(1 for s in group if s.correct)
            acc = k / n
            accs.append(acc)
            ns.append(n)
            per_seed.append({**base, "seed": seed, "n_samples": n, "n_correct": k,
                             "n_failed": sum(1 for s in group if not s.ok), "accuracy": acc, **_cost_means(group)})
        if len(set(ns)) > 1:
            log.warning("cell %s: seeds have different sample counts %s (incomplete shards?)", key,
                        dict(zip(seeds, ns)))
        n_all = len(all_samples)
        k_all = sum(1 for s in all_samples if s.correct)
        row = {
            **base,
            "n_seeds": len(seeds),
            "seeds": seeds,
            "n_samples": n_all,
            "n_samples_per_seed": ns,
            "n_correct": k_all,
            "n_failed": sum(1 for s in all_samples if not s.ok),
            "accuracy": k_all / n_all,
            # only when every sample was also scored with the original's rules (scoring.extraction: both/strict)
            "accuracy_strict": (sum(bool(s.strict_correct) for s in all_samples) / n_all
                                if all(s.strict_correct is not None for s in all_samples) else None),
            "acc_per_seed": accs,
            **_accuracy_ci(k_all, n_all, accs),
            **_cost_means(all_samples),
            "speedup_vs_text_mas": None,
            "token_reduction_vs_text_mas": None,
            "token_reduction_incl_latent_vs_text_mas": None,
        }
        cells.append(row)

    text_rows = [r for r in cells if r["method"] == "text_mas"]
    for r in cells:
        if r["method"] != "latent_mas":
            continue
        ref = _pick_text_mas(r, text_rows)
        if ref is None:
            continue
        r["speedup_vs_text_mas"] = _ratio(ref["wall_s_mean"], r["wall_s_mean"])
        q = _ratio(r["tokens_generated_mean"], ref["tokens_generated_mean"])
        r["token_reduction_vs_text_mas"] = None if q is None else 1.0 - q
        lat = (None if r["tokens_generated_mean"] is None
               else r["tokens_generated_mean"] + r["tokens_latent_mean"])
        q2 = _ratio(lat, ref["tokens_generated_mean"])
        r["token_reduction_incl_latent_vs_text_mas"] = None if q2 is None else 1.0 - q2
    return cells, per_seed


# --------------------------------------------------------------------------------------------------------------------
# Markdown tables


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _variant(row: dict[str, Any]) -> str:
    parts = []
    if row["method"] == "latent_mas":
        parts.append(f"m={row['latent_steps']}")
        if row["realign"] is False:
            parts.append("no realign")
    if row["memory"] not in (None, "all"):
        parts.append(f"memory={row['memory']}")
    return ", ".join(parts)


def config_label(row: dict[str, Any]) -> str:
    """A configuration without its model and task: method, arch (MAS only) and non-default variant settings."""
    inner = ([row["arch"]] if row["arch"] is not None else []) + ([_variant(row)] if _variant(row) else [])
    return METHOD_LABEL[row["method"]] + (f" ({', '.join(inner)})" if inner else "")


def column_label(row: dict[str, Any]) -> str:
    """Readable column header: model, then :func:`config_label`."""
    return f"{row['model']} {config_label(row)}"


def _sections(cells: list[dict[str, Any]]) -> list[tuple[str | None, list[tuple]]]:
    """One section per MAS arch (baseline columns repeated in each, as in the paper); columns as cell keys minus
    task, in display order."""
    archs = sorted({r["arch"] for r in cells if r["arch"] is not None}, key=lambda a: order_rank(a, ARCH_ORDER))
    colkeys = sorted({tuple(r[k] for k in CELL_KEY if k != "task") for r in cells},
                     key=lambda c: cell_sort_key((c[0], "", *c[1:])))
    if not archs:
        return [(None, colkeys)]
    return [(a, [c for c in colkeys if c[2] is None or c[2] == a]) for a in archs]


def _tasks(cells: list[dict[str, Any]]) -> list[str]:
    return sorted({r["task"] for r in cells}, key=lambda t: order_rank(t, TASK_ORDER))


def _render(title: str, intro: str, cells: list[dict[str, Any]], fmt, notes: list[str]) -> str:
    index = {tuple(r[k] for k in CELL_KEY): r for r in cells}
    tasks = _tasks(cells)
    out = [f"# {title}", "", intro, ""]
    for arch, colkeys in _sections(cells):
        heading = {"sequential": "Sequential MAS (paper Table 1 layout)",
                   "hierarchical": "Hierarchical MAS (paper Table 2 layout)",
                   None: "Single agent only"}.get(arch, f"{arch} MAS")
        out += [f"## {heading}", ""]
        labels = [column_label(dict(zip([k for k in CELL_KEY if k != "task"], c))) for c in colkeys]
        out.append("| task | " + " | ".join(_md_escape(x) for x in labels) + " |")
        out.append("|:---|" + "---:|" * len(colkeys))
        for task in tasks:
            vals = []
            for c in colkeys:
                r = index.get((c[0], task, *c[1:]))
                vals.append("—" if r is None else fmt(r))
            out.append(f"| {_md_escape(task)} | " + " | ".join(vals) + " |")
        out.append("")
    out += notes
    return "\n".join(out).rstrip("\n") + "\n"


def _fmt_acc(r: dict[str, Any]) -> str:
    s = f"{100 * r['accuracy']:.1f} ± {100 * r['acc_ci95_half']:.1f}"
    if r["ci_method"] == "wilson":
        s += "†"
    if r["n_failed"]:
        s += "‡"
    return s


def _fmt_int(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _fmt_change(reduction: float | None) -> str:
    if reduction is None:
        return ""
    change = -100.0 * reduction
    return f" ({'+' if change >= 0 else '-'}{abs(change):.1f}%)"


def _fmt_gen(r: dict[str, Any]) -> str:
    return _fmt_int(r["tokens_generated_mean"]) + (
        _fmt_change(r["token_reduction_vs_text_mas"]) if r["method"] == "latent_mas" else "")


def _fmt_total(r: dict[str, Any]) -> str:
    if r["tokens_total_mean"] is None:
        return "n/a"
    return (f"{_fmt_int(r['tokens_total_mean'])} = {_fmt_int(r['tokens_prompt_mean'])} + "
            f"{_fmt_int(r['tokens_latent_mean'])} + {_fmt_int(r['tokens_generated_mean'])}")


def _fmt_speed(r: dict[str, Any]) -> str:
    if r["wall_s_mean"] is None:
        return "n/a"
    s = f"{r['wall_s_mean']:.2f} s"
    if r["method"] == "latent_mas" and r["speedup_vs_text_mas"] is not None:
        s += f" ({r['speedup_vs_text_mas']:.2f}×)"
    return s


COMMON_NOTES = [
    "Rows are tasks; columns are model × method (× MAS architecture and LatentMAS settings: m = latent steps). "
    "Each cell pools all seeds of one configuration; sample and seed counts are in cells.csv "
    "(n_samples, n_seeds). — = configuration not run. n/a = no successful sample to measure.",
]


def render_accuracy(cells: list[dict[str, Any]]) -> str:
    notes = COMMON_NOTES + [
        "",
        "Accuracy in percent over all samples of all seeds (failed samples count as incorrect). "
        "± is the half-width of the 95% confidence interval, (hi − lo)/2: a Student-t interval across the per-seed "
        "accuracies when a cell has ≥ 2 seeds that differ; † marks cells where it is instead the Wilson score interval "
        "on the pooled samples (one seed, or all seeds identical). ‡ marks cells with failed samples (n_failed > 0).",
    ]
    return _render("Accuracy (%)", "Accuracy ± half-width of the 95% CI (see notes).", cells, _fmt_acc, notes)


def render_tokens(cells: list[dict[str, Any]]) -> str:
    gen = _render("Tokens per sample",
                  "Mean output tokens per sample: tokens generated as text by all agents together (latent steps are "
                  "not tokens and are excluded). For LatentMAS, the change vs the TextMAS column with the same model, "
                  "task and architecture is in parentheses (negative = fewer tokens; the paper's 'token reduction').",
                  cells, _fmt_gen, [])
    total = _render("Total tokens per sample",
                    "Mean total tokens processed per sample = prompt (all agents' input tokens) + latent (latent "
                    "steps) + generated (output tokens).", cells, _fmt_total,
                    COMMON_NOTES + ["", "Means are over successful samples only (status ok); see docs/TABLES.md."])
    return gen + "\n" + total


def render_speed(cells: list[dict[str, Any]]) -> str:
    notes = COMMON_NOTES + [
        "",
        "Mean end-to-end wall-clock seconds per sample (the records' wall_s, successful samples only). For LatentMAS, "
        "the speedup in parentheses is TextMAS mean wall_s / LatentMAS mean wall_s for the same model, task and "
        "architecture. Timings are only comparable between cells run on the same hardware, batch size and dtype.",
    ]
    return _render("End-to-end time per sample", "Mean wall-clock seconds per sample (speedup vs TextMAS).", cells,
                   _fmt_speed, notes)


# --------------------------------------------------------------------------------------------------------------------
# writing


def _frame(rows: list[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame([{k: r[k] for k in schema} for r in rows], schema=schema, orient="row") if rows else \
        pl.DataFrame(schema=schema)


def _csv_frame(df: pl.DataFrame) -> pl.DataFrame:
    """CSV cannot hold list columns: write them as JSON arrays (e.g. ``[0.7, 0.8]``)."""
    exprs = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.List):
            exprs.append(pl.col(name).map_elements(lambda v: json.dumps(list(v)), return_dtype=pl.String))
        else:
            exprs.append(pl.col(name))
    return df.select(exprs)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def _write_frame(df: pl.DataFrame, out_dir: Path, stem: str) -> None:
    with atomic_path(out_dir / f"{stem}.parquet") as tmp:
        df.write_parquet(tmp, compression="zstd", statistics=True)
    with atomic_path(out_dir / f"{stem}.csv") as tmp:
        _csv_frame(df).write_csv(tmp)


def build_summary(cells: list[dict[str, Any]], samples: Sequence[Sample], inputs: list[dict[str, Any]]) -> dict:
    def uniq(field_name: str) -> list:
        vals = {r[field_name] for r in cells}
        order = {"task": TASK_ORDER, "arch": ARCH_ORDER}.get(field_name, ())
        return sorted(vals, key=lambda v: order_rank(v, order) if field_name != "method" else METHODS.index(v))

    return {
        "schema": 1,
        "ci_level": CI_LEVEL,
        "n_inputs": len(inputs),
        "inputs": inputs,
        "n_samples": len(samples),
        "n_failed": sum(1 for s in samples if not s.ok),
        "n_cells": len(cells),
        "n_cells_by_method": {m: sum(1 for r in cells if r["method"] == m) for m in METHODS},
        "n_cells_ci_t_seeds": sum(1 for r in cells if r["ci_method"] == "t_seeds"),
        "n_latent_mas_cells_with_text_mas_match": sum(
            1 for r in cells if r["method"] == "latent_mas" and r["speedup_vs_text_mas"] is not None),
        "models": uniq("model"),
        "tasks": uniq("task"),
        "methods": uniq("method"),
        "archs": [a for a in uniq("arch") if a is not None],
        "seeds": sorted({s.seed for s in samples}),
    }


def aggregate(paths: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Run the whole stage; return the summary dict."""
    samples, inputs = load_samples(paths)
    cells, per_seed = compute_tables(samples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_frame(_frame(cells, CELL_SCHEMA), out, "cells")
    _write_frame(_frame(per_seed, PER_SEED_SCHEMA), out, "per_seed")
    _write_text(out / "table_accuracy.md", render_accuracy(cells))
    _write_text(out / "table_tokens.md", render_tokens(cells))
    _write_text(out / "table_speed.md", render_speed(cells))
    summary = build_summary(cells, samples, inputs)
    _write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    log.info("aggregated %d samples from %d files into %d cells -> %s", len(samples), len(inputs), len(cells), out)
    return summary


def cli_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="latentmas aggregate",
        description="Aggregate scored records into cells.parquet/csv, per_seed.parquet/csv, Markdown tables and "
                    "summary.json (definitions: docs/TABLES.md).")
    parser.add_argument("inputs", nargs="+", metavar="SCORED.jsonl", help="scored record files")
    parser.add_argument("--out-dir", required=True, help="output folder")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        aggregate(args.inputs, args.out_dir)
    except AggregateInputError as exc:
        print(f"latentmas aggregate: error: {exc}", file=sys.stderr)
        return 1
    return 0
