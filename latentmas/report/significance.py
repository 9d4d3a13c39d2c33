"""``latentmas significance``: the report's table of which LatentMAS differences hold (docs/CONTROLS.md).

For every LatentMAS cell (the method itself, not a control) it pairs the cell, sample by sample and seed by seed,
with: the TextMAS cell of the same model, task and arch; the single agent of the same model and task; each control
run beside it; and (for a W_a cell) the same cell with the identity map. Each row is a
:func:`latentmas.report.compare.pair_cells` comparison (A = LatentMAS), and Holm's adjustment runs across the whole
table. Two cells are paired on the seeds both ran (the seeds are shown); within those seeds their samples must be
identical, else the stage fails naming the missing ids.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Sequence

from latentmas.records import atomic_path
from latentmas.report.compare import CELL_FIELDS, CompareError, Outcomes, Row, load_cells, pair_cells, render_rows
from latentmas.report.compare import NOTES, SMALL_N, with_holm

OUTPUT_FILES = ("significance.md", "significance.csv")


def _f(key: tuple) -> dict:
    return dict(zip(CELL_FIELDS, key))


def _is_base_of(base: dict, ctl: dict) -> bool:
    """Is ``base`` the LatentMAS cell a control cell ``ctl`` was run beside? (experiment.control_variants)"""
    if (base["model"], base["task"], base["arch"], base["latent_steps"]) != \
            (ctl["model"], ctl["task"], ctl["arch"], ctl["latent_steps"]):
        return False
    if base["memory"] != ctl["memory"]:
        return False
    return base["realign"] is True if "map_random" in ctl["control"] else base["realign"] == ctl["realign"]


def comparisons(keys: Sequence[tuple]) -> list[tuple[tuple, tuple]]:
    """(LatentMAS cell, reference cell) pairs the table reports, in a stable order."""
    cells = [_f(k) for k in keys]
    by = {tuple(c[f] for f in CELL_FIELDS): c for c in cells}
    out = []
    for key in sorted(by, key=lambda k: tuple(str(x) for x in k)):
        lm = by[key]
        if lm["method"] != "latent_mas" or lm["control"] is not None:
            continue
        refs = [c for c in cells if c["method"] == "text_mas"
                and (c["model"], c["task"], c["arch"]) == (lm["model"], lm["task"], lm["arch"])]
        refs += [c for c in cells if c["method"] == "baseline" and (c["model"], c["task"]) == (lm["model"], lm["task"])]
        if lm["realign"] is True:
            refs += [c for c in cells if c["method"] == "latent_mas" and c["control"] is None
                     and c["realign"] is False and all(c[f] == lm[f] for f in CELL_FIELDS if f != "realign")]
        refs += sorted((c for c in cells if c["method"] == "latent_mas" and c["control"] is not None
                        and _is_base_of(lm, c)), key=lambda c: c["control"])
        out += [(key, tuple(r[f] for f in CELL_FIELDS)) for r in refs]
    return out


def _on_seeds(o: Outcomes, seeds: set[int]) -> Outcomes:
    return {p: v for p, v in o.items() if p[1] in seeds}


def significance_rows(cells: dict[tuple, Outcomes]) -> tuple[list[Row], list[list[int]]]:
    rows, seeds_of = [], []
    for ka, kb in comparisons(list(cells)):
        seeds = {s for _, s in cells[ka]} & {s for _, s in cells[kb]}
        if not seeds:
            continue
        try:
            rows.append(pair_cells(ka, _on_seeds(cells[ka], seeds), kb, _on_seeds(cells[kb], seeds)))
        except CompareError as exc:
            raise CompareError(f"{exc} (comparing {ka} with {kb})") from None
        seeds_of.append(sorted(seeds))
    return with_holm(rows), seeds_of


def render(rows: list[Row], seeds: list[list[int]]) -> str:
    lines = ["# Which differences hold: paired significance", "",
             "A = a LatentMAS cell; B = what it is compared with (TextMAS, the single agent, the identity map, each "
             "control run beside it). Δ > 0: LatentMAS is better.", ""]
    small = sum(1 for r in rows if r.n < SMALL_N)
    if not rows:
        lines += ["No LatentMAS cell with a counterpart was run: nothing to compare.", ""]
    elif small:
        lines += [f"**Small n: {small} of {len(rows)} comparisons have fewer than {SMALL_N} pairs. Their p-values and "
                  "intervals are indicative only; a non-significant result there does not show the methods are "
                  "equal.**", ""]
    table = render_rows(rows)
    table[0] += " seeds |"
    table[1] += "---:|"
    table[2:] = [line + f" {', '.join(map(str, s))} |" for line, s in zip(table[2:], seeds)]
    return "\n".join(lines + table + [""] + [line for note in NOTES for line in (note, "")]).rstrip("\n") + "\n"


def to_csv(rows: list[Row], seeds: list[list[int]]) -> str:
    buf = io.StringIO()
    fields = list(Row.__dataclass_fields__) + ["seeds", "small_n"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r, s in zip(rows, seeds):
        w.writerow({**r.__dict__, "seeds": " ".join(map(str, s)), "small_n": r.n < SMALL_N})
    return buf.getvalue()


def write_significance(paths: Sequence[str | Path], out_dir: str | Path) -> list[Row]:
    rows, seeds = significance_rows(load_cells(paths))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("significance.md", render(rows, seeds)), ("significance.csv", to_csv(rows, seeds))):
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(text.encode("utf-8"))
    return rows


def cli_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentmas significance",
                                 description="Paired significance of every LatentMAS cell vs TextMAS, the single agent "
                                             "and its controls (significance.md, significance.csv).")
    ap.add_argument("inputs", nargs="+", metavar="SCORED.jsonl")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        write_significance(args.inputs, args.out_dir)
    except CompareError as exc:
        print(f"latentmas significance: error: {exc}", file=sys.stderr)
        return 1
    return 0
