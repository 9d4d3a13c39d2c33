"""The paper-style Markdown tables: rows are tasks, columns are settings without their task.

One section per MAS arch (the single-agent columns repeated in each, as in the paper's Tables 1-3); a section wider
than :data:`MAX_COLUMNS` becomes one table per model, so a page stays readable. Formatting is per value (Python string formatting); the numbers come from :mod:`latentmas.report.tables`.
"""
from __future__ import annotations

from typing import Any, Callable

import polars as pl

from latentmas.report.labels import SETTING_KEY, column_label, config_label, setting_sort_key, sorted_archs, sorted_tasks

Row = dict[str, Any]
_COL_KEY = tuple(k for k in SETTING_KEY if k != "task")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _sections(settings: list[Row]) -> list[tuple[str | None, list[tuple]]]:
    """One section per MAS arch; columns as setting keys minus task, in display order."""
    archs = sorted_archs(r["arch"] for r in settings)
    colkeys = sorted({tuple(r[k] for k in _COL_KEY) for r in settings}, key=lambda c: setting_sort_key((c[0], "", *c[1:])))
    if not archs:
        return [(None, colkeys)]
    return [(a, [c for c in colkeys if c[2] is None or c[2] == a]) for a in archs]


MAX_COLUMNS = 10  # a wider section is split into one table per model (the paper grid has 21 columns per section)


def _table(tasks: list[str], colkeys: list[tuple], labels: list[str], index: dict, fmt: Callable[[Row], str]) -> list:
    out = ["| task | " + " | ".join(_md_escape(x) for x in labels) + " |", "|:---|" + "---:|" * len(colkeys)]
    for task in tasks:
        vals = []
        for c in colkeys:
            r = index.get((c[0], task, *c[1:]))
            vals.append("—" if r is None else fmt(r))
        out.append(f"| {_md_escape(task)} | " + " | ".join(vals) + " |")
    return out + [""]


def _render(title: str, intro: str, settings: list[Row], fmt: Callable[[Row], str], notes: list[str]) -> str:
    index = {tuple(r[k] for k in SETTING_KEY): r for r in settings}
    tasks = sorted_tasks(r["task"] for r in settings)
    out = [f"# {title}", "", intro, ""]
    for arch, colkeys in _sections(settings):
        heading = {"sequential": "Sequential MAS (paper Table 1 layout)",
                   "hierarchical": "Hierarchical MAS (paper Table 2 layout)",
                   None: "Single agent only"}.get(arch, f"{arch} MAS")
        models = sorted({c[0] for c in colkeys})
        if len(colkeys) <= MAX_COLUMNS or len(models) == 1:
            labels = [column_label(dict(zip(_COL_KEY, c))) for c in colkeys]
            out += [f"## {heading}", "", *_table(tasks, colkeys, labels, index, fmt)]
            continue
        for model in models:  # one table per model; the heading names the model, the columns the configuration
            mine = [c for c in colkeys if c[0] == model]
            labels = [config_label(dict(zip(_COL_KEY, c))) for c in mine]
            run = [t for t in tasks if any(k[0] == model and k[1] == t for k in index)]  # tasks this model ran
            out += [f"## {heading}: {_md_escape(model)}", "", *_table(run, mine, labels, index, fmt)]
    out += notes
    return "\n".join(out).rstrip("\n") + "\n"


def _fmt_acc(r: Row) -> str:
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


def _fmt_gen(r: Row) -> str:
    return _fmt_int(r["tokens_generated_mean"]) + (
        _fmt_change(r["token_reduction_vs_text_mas"]) if r["method"] == "latent_mas" else "")


def _fmt_total(r: Row) -> str:
    if r["tokens_total_mean"] is None:
        return "n/a"
    return (f"{_fmt_int(r['tokens_total_mean'])} = {_fmt_int(r['tokens_prompt_mean'])} + "
            f"{_fmt_int(r['tokens_latent_mean'])} + {_fmt_int(r['tokens_generated_mean'])}")


def _fmt_speed(r: Row) -> str:
    if r["wall_s_mean"] is None:
        return "n/a"
    s = f"{r['wall_s_mean']:.2f} s"
    if r["method"] == "latent_mas" and r["speedup_vs_text_mas"] is not None:
        s += f" ({r['speedup_vs_text_mas']:.2f}×)"
    return s


COMMON_NOTES = [
    "Rows are tasks; columns are model × method (× MAS architecture and LatentMAS settings: m = latent steps). "
    "Each value pools all seeds of one setting (configuration); sample and seed counts are in settings.csv "
    "(n_samples, n_seeds). — = configuration not run. n/a = no successful sample to measure.",
]


def render_accuracy(settings: pl.DataFrame) -> str:
    notes = COMMON_NOTES + [
        "",
        "Accuracy in percent over all samples of all seeds (failed samples count as incorrect). "
        "± is the half-width of the 95% confidence interval, (hi − lo)/2: a Student-t interval across the per-seed "
        "accuracies when a setting has ≥ 2 seeds that differ; † marks values where it is instead the Wilson score interval "
        "on the pooled samples (one seed, or all seeds identical). ‡ marks settings with failed samples (n_failed > 0).",
    ]
    return _render("Accuracy (%)", "Accuracy ± half-width of the 95% CI (see notes).", settings.to_dicts(), _fmt_acc,
                   notes)


def render_tokens(settings: pl.DataFrame) -> str:
    rows = settings.to_dicts()
    gen = _render("Tokens per sample",
                  "Mean output tokens per sample: tokens generated as text by all agents together (latent steps are "
                  "not tokens and are excluded). For LatentMAS, the change vs the TextMAS column with the same model, "
                  "task and architecture is in parentheses (negative = fewer tokens; the paper's 'token reduction').",
                  rows, _fmt_gen, [])
    total = _render("Total tokens per sample",
                    "Mean total tokens processed per sample = prompt (all agents' input tokens) + latent (latent "
                    "steps) + generated (output tokens).", rows, _fmt_total,
                    COMMON_NOTES + ["", "Means are over successful samples only (status ok); see docs/TABLES.md."])
    return gen + "\n" + total


def render_speed(settings: pl.DataFrame) -> str:
    notes = COMMON_NOTES + [
        "",
        "Mean end-to-end wall-clock seconds per sample (the records' wall_s, successful samples only). For LatentMAS, "
        "the speedup in parentheses is TextMAS mean wall_s / LatentMAS mean wall_s for the same model, task and "
        "architecture. Timings are only comparable between settings run on the same hardware, batch size and dtype.",
    ]
    return _render("End-to-end time per sample", "Mean wall-clock seconds per sample (speedup vs TextMAS).",
                   settings.to_dicts(), _fmt_speed, notes)
