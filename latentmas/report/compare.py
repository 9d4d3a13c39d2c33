"""``latentmas compare A.scored.jsonl B.scored.jsonl``: is the difference between two methods on the same samples real?

Two methods run on the same samples with the same seeds give *paired* outcomes; pairing removes the between-sample
variance that two independent accuracies carry. Per (model, task, arch) we report:

* ``n`` pairs (sample id x seed), the accuracy of each side and ``delta = acc_A - acc_B``;
* a paired bootstrap 95% interval for delta (pairs resampled with replacement, a seeded generator: reruns agree);
* the exact McNemar p-value: under "no difference" each discordant pair (one side right, the other wrong) is a fair
  coin, so ``p = min(1, 2 P(X <= min(b, c)))`` for ``X ~ Binomial(b + c, 1/2)``; no discordant pair gives p = 1;
* ``p_holm``: Holm's step-down adjustment across every row of the table (family-wise error <= 5% over the table).

Pairs must match exactly: a sample or seed present on one side only is an error that names it (a silent intersection
would compare the methods on a hand-picked subset). Records written by ``latentmas score`` (docs/DESIGN.md).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from latentmas.records import read_records

CELL_FIELDS = ("model", "task", "method", "arch", "latent_steps", "realign", "memory", "control")
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
SMALL_N = 30  # fewer pairs than this: say so next to the row (little power; intervals and p-values are rough)


class CompareError(ValueError):
    """The two sides cannot be paired (missing/duplicate samples, ambiguous groups, unscored records)."""


@dataclass(frozen=True)
class Row:
    model: str
    task: str
    arch: str | None
    label_a: str
    label_b: str
    n: int
    acc_a: float
    acc_b: float
    delta: float
    ci_lo: float
    ci_hi: float
    discordant_a: int  # pairs A right, B wrong
    discordant_b: int  # pairs B right, A wrong
    p_mcnemar: float
    p_holm: float | None = None


# ---------------------------------------------------------------------------------------------------------------------
# statistics


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p: the binomial test of ``a_only`` successes in ``a_only + b_only`` fair trials."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = math.fsum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: p_(i) x (m - i + 1), made monotone, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of mean(a - b) over pairs resampled with replacement (a, b: 0/1 arrays of one length)."""
    d = a.astype(np.float64) - b.astype(np.float64)
    if len(d) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(d))  # bounded memory for large test sets
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, len(d), size=(stop - start, len(d)))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def compare_pairs(a: np.ndarray, b: np.ndarray) -> dict:
    """Everything one row reports, from the two sides' 0/1 outcomes on the same pairs (same order)."""
    a_only = int(np.sum((a == 1) & (b == 0)))
    b_only = int(np.sum((a == 0) & (b == 1)))
    lo, hi = paired_bootstrap_ci(a, b)
    return {"n": len(a), "acc_a": float(a.mean()), "acc_b": float(b.mean()), "delta": float(a.mean() - b.mean()),
            "ci_lo": lo, "ci_hi": hi, "discordant_a": a_only, "discordant_b": b_only,
            "p_mcnemar": mcnemar_exact_p(a_only, b_only)}


# ---------------------------------------------------------------------------------------------------------------------
# records -> cells -> pairs


Outcomes = dict[tuple[str, int], bool]  # (sample_id, seed) -> correct


def load_cells(paths: Sequence[str | Path]) -> dict[tuple, Outcomes]:
    """Scored records grouped by cell (CELL_FIELDS values); a (sample, seed) twice in one cell is an error."""
    cells: dict[tuple, Outcomes] = defaultdict(dict)
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise CompareError(f"{p}: file not found")
        for i, rec in enumerate(read_records(p), 1):
            if "correct" not in rec:
                raise CompareError(f"{p}: record {i} has no 'correct' field (run `latentmas score` first)")
            key = tuple(rec.get(f) for f in CELL_FIELDS)
            pair = (str(rec["sample_id"]), int(rec["seed"]))
            if pair in cells[key]:
                raise CompareError(f"{p}: sample {pair[0]!r} seed {pair[1]} appears twice in one cell")
            cells[key][pair] = bool(rec["correct"])
    return dict(cells)


def cell_label(key: tuple) -> str:
    from latentmas.report.control_labels import control_label

    f = dict(zip(CELL_FIELDS, key))
    if f["method"] == "baseline":
        return "Single"
    if f["method"] == "text_mas":
        return "TextMAS"
    parts = [f"m={f['latent_steps']}"]
    if f["realign"] is False and "map_random" not in (f["control"] or ""):
        parts.append("identity map")
    if f["memory"] not in (None, "all"):
        parts.append(f"memory={f['memory']}")
    if f["control"]:
        parts.append(control_label(f["control"]))
    return f"LatentMAS ({', '.join(parts)})"


def _missing(ids, side: str) -> str:
    ids = sorted(ids)
    shown = ", ".join(f"{sid}@seed{seed}" for sid, seed in ids[:10])
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return f"{len(ids)} pair(s) missing from {side}: {shown}{more}"


def pair_cells(key_a: tuple, a: Outcomes, key_b: tuple, b: Outcomes) -> Row:
    """One table row from two cells; their (sample, seed) sets must be identical."""
    if a.keys() != b.keys():
        problems = []
        if a.keys() - b.keys():
            problems.append(_missing(a.keys() - b.keys(), "B (" + cell_label(key_b) + ")"))
        if b.keys() - a.keys():
            problems.append(_missing(b.keys() - a.keys(), "A (" + cell_label(key_a) + ")"))
        raise CompareError(f"{key_a[0]}/{key_a[1]}: the two sides were run on different samples; "
                           + "; ".join(problems))
    pairs = sorted(a)
    va = np.array([a[p] for p in pairs], dtype=np.int8)
    vb = np.array([b[p] for p in pairs], dtype=np.int8)
    arch = key_a[3] if key_a[3] is not None else key_b[3]
    return Row(model=key_a[0], task=key_a[1], arch=arch, label_a=cell_label(key_a), label_b=cell_label(key_b),
               **compare_pairs(va, vb))


def _groups(cells: dict[tuple, Outcomes], side: str) -> dict[tuple, tuple]:
    """(model, task, arch) -> cell key; two cells in one group are ambiguous."""
    out: dict[tuple, tuple] = {}
    for key in cells:
        g = (key[0], key[1], key[3])
        if g in out:
            raise CompareError(f"{side} holds two cells for {g[0]}/{g[1]}/{g[2]}: {cell_label(out[g])} and "
                               f"{cell_label(key)}; give one cell per file side")
        out[g] = key
    return out


def compare_files(paths_a: Sequence[str | Path], paths_b: Sequence[str | Path]) -> list[Row]:
    """Rows for every (model, task, arch) of A, paired with B's cell of the same model and task (a single agent,
    which has no arch, pairs with every arch); Holm-adjusted across the rows."""
    cells_a, cells_b = load_cells(paths_a), load_cells(paths_b)
    ga, gb = _groups(cells_a, "A"), _groups(cells_b, "B")
    rows = []
    for g, key_a in sorted(ga.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        match = [kb for h, kb in gb.items() if h[:2] == g[:2] and (h[2] == g[2] or None in (h[2], g[2]))]
        if len(match) != 1:
            raise CompareError(f"no unique cell in B for {g[0]}/{g[1]}/{g[2]} (found {len(match)})")
        rows.append(pair_cells(key_a, cells_a[key_a], match[0], cells_b[match[0]]))
    matched = {(r.model, r.task) for r in rows}
    unmatched = sorted(f"{h[0]}/{h[1]}" for h in gb if (h[0], h[1]) not in matched)
    if unmatched:
        raise CompareError(f"B has cells with no counterpart in A: {', '.join(unmatched)}")
    return with_holm(rows)


def with_holm(rows: list[Row]) -> list[Row]:
    adjusted = holm([r.p_mcnemar for r in rows])
    return [Row(**{**r.__dict__, "p_holm": p}) for r, p in zip(rows, adjusted)]


# ---------------------------------------------------------------------------------------------------------------------
# rendering


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _p(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2g}" if x >= 1e-4 else f"{x:.1e}"


HEADER = ("| model | task | arch | A | B | n pairs | acc A (%) | acc B (%) | Δ = A − B (pp) [95% CI] | "
          "A only / B only | McNemar p | Holm p |")


def render_rows(rows: list[Row]) -> list[str]:
    out = [HEADER, "|:---|:---|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = f"{r.n}" + (" (small n)" if r.n < SMALL_N else "")
        out.append(f"| {r.model} | {r.task} | {r.arch or '—'} | {r.label_a} | {r.label_b} | {n} | {_pct(r.acc_a)} | "
                   f"{_pct(r.acc_b)} | {100 * r.delta:+.1f} [{100 * r.ci_lo:+.1f}, {100 * r.ci_hi:+.1f}] | "
                   f"{r.discordant_a} / {r.discordant_b} | {_p(r.p_mcnemar)} | {_p(r.p_holm)} |")
    return out


NOTES = [
    "Pairs are (sample id, seed): both sides ran the same samples with the same seeds. Δ is in percentage points; its "
    f"interval is a paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}). McNemar p is the exact "
    "two-sided binomial test on the discordant pairs (A only / B only); Holm p adjusts it across every row of this "
    "table. A difference holds at the 5% level when Holm p < 0.05.",
    f"(small n): fewer than {SMALL_N} pairs — the test has little power, a large p-value here is *no evidence either "
    "way*, and the bootstrap interval is rough. How to read this table: docs/CONTROLS.md.",
]


def render_markdown(rows: list[Row], title: str = "Paired comparison") -> str:
    small = sum(1 for r in rows if r.n < SMALL_N)
    lines = [f"# {title}", ""]
    if small:
        lines += [f"**{small} of {len(rows)} rows have fewer than {SMALL_N} pairs (small n): read them as "
                  "indicative only.**", ""]
    lines += render_rows(rows) + [""] + [line for note in NOTES for line in (note, "")]
    return "\n".join(lines).rstrip("\n") + "\n"


def cli_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentmas compare",
                                 description="Paired comparison of two scored record files (same samples and seeds): "
                                             "accuracy, delta with a paired bootstrap CI, exact McNemar, Holm.")
    ap.add_argument("a", metavar="A.scored.jsonl")
    ap.add_argument("b", metavar="B.scored.jsonl")
    ap.add_argument("--out", default=None, help="also write the table (Markdown) to this file")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        rows = compare_files([args.a], [args.b])
    except CompareError as exc:
        print(f"latentmas compare: error: {exc}", file=sys.stderr)
        return 2
    text = render_markdown(rows, f"Paired comparison: A = {args.a}, B = {args.b}")
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0
