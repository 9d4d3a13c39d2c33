"""Latent health per cell, and the lens figures: is a setting's latent reasoning still a sane vector?

From scored (or inference) records with lens columns (latentmas.engine.lens):

* ``latent_health.{csv,md}`` — one row per latent_mas cell: samples, traced samples, share of samples with any flagged
  step (non-finite, norm outside :data:`latentmas.engine.lens.SANE`, near-uniform lens, collapse to the
  end-of-turn token), the share with a collapse flag alone, mean norm ratio
  ‖map(h)‖/‖h‖, mean lens entropy (nats and as a share of log(vocab)), mean final drift, accuracy of flagged vs
  unflagged samples;
* ``latent_lens.{png,svg}`` — per latent cell, ‖h‖ and lens entropy per agent and step (mean over samples).

Accuracy vs latent steps is ``latentmas figures``' ``latent_steps`` figure (report/figures.py).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from latentmas.records import atomic_path, iter_records

CELL_KEYS = ("model", "task", "method", "arch", "latent_steps", "realign", "memory", "control", "seed")
TABLE_FILES = ("latent_health.csv", "latent_health.md")
FIGURE_FILES = ("latent_lens.png", "latent_lens.svg")


def _lenses(rec: dict) -> list[tuple[str, dict]]:
    return [(a["name"], a["latent"]["lens"]) for a in rec.get("agents", [])
            if (a.get("latent") or {}).get("lens")]


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def cell_health(records: list[dict]) -> list[dict[str, Any]]:
    """One row per latent_mas cell (records of other methods are skipped)."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("method") == "latent_mas":
            cells[tuple(r.get(k) for k in CELL_KEYS)].append(r)
    rows = []
    for key, recs in sorted(cells.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        traced = [r for r in recs if _lenses(r)]
        flagged = [r for r in traced if any(col["flags"] for _, col in _lenses(r))]
        collapsed = [r for r in traced if any(f["kind"] == "collapse" for _, col in _lenses(r) for f in col["flags"])]
        cols = [col for r in traced for _, col in _lenses(r)]
        ratio = _mean([x for c in cols for x in c["ratio"]])
        ent = _mean([x for c in cols for x in c["entropy"]])
        ent_frac = _mean([x / c["log_vocab"] for c in cols for x in c["entropy"] if x is not None and c["log_vocab"]])
        drift = _mean([c["drift"][-1] for c in cols if c["drift"]])
        unflagged = [r for r in traced if r not in flagged]
        rows.append({**dict(zip(CELL_KEYS, key)), "n": len(recs), "n_traced": len(traced),
                     "share_flagged": len(flagged) / len(traced) if traced else None,
                     "share_collapsed": len(collapsed) / len(traced) if traced else None,
                     "mean_norm_ratio": ratio, "mean_lens_entropy": ent, "mean_lens_entropy_frac": ent_frac,
                     "mean_final_drift": drift,
                     "acc_flagged": _mean([float(bool(r.get("correct"))) for r in flagged]) if flagged else None,
                     "acc_unflagged": _mean([float(bool(r.get("correct"))) for r in unflagged]) if unflagged else None})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ["model", "task", "setting", "seed", "traced", "flagged", "collapsed to end of turn", "‖map(h)‖/‖h‖", "lens entropy (nats)",
            "entropy / log V", "final drift"]

    def f(x, pct=False):
        return "—" if x is None else f"{100 * x:.0f}%" if pct else f"{x:.3g}"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        setting = f"{r['arch']} k{r['latent_steps']} {'realign' if r['realign'] else 'no-realign'} mem={r['memory']}"
        setting += f" {r['control']}" if r.get("control") else ""
        lines.append("| " + " | ".join([str(r["model"]), str(r["task"]), setting, str(r["seed"]),
                                        f"{r['n_traced']}/{r['n']}", f(r["share_flagged"], True),
                                        f(r.get("share_collapsed"), True),
                                        f(r["mean_norm_ratio"]), f(r["mean_lens_entropy"]),
                                        f(r["mean_lens_entropy_frac"]), f(r["mean_final_drift"])]) + " |")
    if not rows:
        lines.append("| (no latent_mas cells) |" + " |" * (len(head) - 1))
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out_dir: str | Path) -> None:
    import polars as pl

    out = Path(out_dir)
    schema = {k: pl.Utf8 for k in ("model", "task", "method", "arch", "memory", "control")}
    df = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame(schema=schema)
    with atomic_path(out / "latent_health.csv") as tmp:
        df.write_csv(tmp)
    with atomic_path(out / "latent_health.md") as tmp:
        tmp.write_text(markdown(rows), encoding="utf-8")


def trajectories(records: list[dict]) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """{cell label: {agent: {"norm_h": mean per step, "entropy": mean per step}}} over traced samples."""
    from latentmas.report.audit import cell_label

    acc: dict[str, dict[str, dict[str, list[list[float]]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        for agent, col in _lenses(r):
            slot = acc[cell_label(r)][agent]
            for key in ("norm_h", "entropy"):
                per_step = slot.setdefault(key, [[] for _ in col[key]])
                for t, x in enumerate(col[key][:len(per_step)]):
                    if x is not None:
                        per_step[t].append(x)
    return {cell: {agent: {k: [_mean(v) for v in steps] for k, steps in d.items()} for agent, d in agents.items()}
            for cell, agents in acc.items()}


def draw_trajectories(records: list[dict]):
    """One row of two panels per latent cell: ‖h‖ and lens entropy per agent against the latent step."""
    from matplotlib.figure import Figure

    traj = trajectories(records)
    fig = Figure(figsize=(10, 3.0 * max(1, len(traj))), layout="constrained")
    if not traj:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no traced latent_mas samples (trace: summary or full)", ha="center", va="center")
        ax.set_axis_off()
        return fig
    subs = fig.subfigures(len(traj), 1, squeeze=False)[:, 0]
    for (cell, agents), sub in zip(sorted(traj.items()), subs):
        sub.suptitle(cell, fontsize=9)
        ax_n, ax_e = sub.subplots(1, 2)
        for agent, d in agents.items():
            ax_n.plot(range(len(d["norm_h"])), d["norm_h"], marker="o", ms=3, label=agent)
            ax_e.plot(range(len(d["entropy"])), d["entropy"], marker="o", ms=3, label=agent)
        ax_n.set_ylabel("‖h‖ before the map")
        ax_e.set_ylabel("logit-lens entropy (nats)")
        for ax in (ax_n, ax_e):
            ax.set_xlabel("latent step")
            ax.grid(alpha=0.3)
        ax_e.legend(fontsize=8)
    return fig


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentmas latent-health",
                                 description="latent health table and lens figures from (scored) records")
    ap.add_argument("inputs", nargs="+", metavar="RECORDS.jsonl")
    ap.add_argument("--out-dir", required=True, help="folder for latent_health.{csv,md}")
    ap.add_argument("--figures-dir", default=None, help="folder for latent_lens.{png,svg} (default: no figures)")
    args = ap.parse_args(argv)
    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        print(f"latentmas latent-health: error: no such file: {missing[0]}", file=sys.stderr)
        return 2
    records = list(iter_records(args.inputs))
    write_tables(cell_health(records), args.out_dir)
    if args.figures_dir:
        fig = draw_trajectories(records)
        for name in FIGURE_FILES:
            target = Path(args.figures_dir) / name
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=target.suffix[1:], dpi=120)
    return 0
