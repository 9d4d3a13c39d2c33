"""``latentmas figures``: the paper-style figures from ``settings.parquet`` (written by ``latentmas aggregate``).

Always writes the same eight files, so a workflow can declare them as fixed outputs:

* ``accuracy.{png,svg}`` -- accuracy per task, grouped bars per configuration, 95% CI error bars, one panel per model;
* ``tokens.{png,svg}`` -- mean tokens per sample stacked prompt / latent / generated, one panel per model x task;
* ``speedup.{png,svg}`` -- LatentMAS wall-clock speedup over the matching TextMAS setting, per task, one panel per model;
* ``latent_steps.{png,svg}`` -- accuracy vs number of latent steps for every latent_mas sweep (>= 2 values of m with
  everything else fixed); without a sweep the file holds one panel saying "no latent_steps sweep configured".

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas (no pyplot, no global backend
change), styled through a local ``rc_context``, coloured with the Okabe-Ito colour-blind-safe palette, and saved with
``svg.hashsalt`` fixed and the date metadata removed, so the same table gives byte-identical PNG and SVG files.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import polars as pl

from latentmas.contracts import ARCHS, EXIT_BAD_INPUT, EXIT_OK, FIGURE_FORMATS, FIGURE_NAMES, TASK_NAMES
from latentmas.records import atomic_path
from latentmas.report.labels import SETTING_KEY, config_label, order_rank, setting_sort_key, short_label

log = logging.getLogger(__name__)

# Okabe & Ito (2008) colour-blind-safe palette; yellow last (weak on white)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
HATCHES = ("", "//", "..", "xx", "\\\\", "oo")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
COMPONENT_COLOURS = {"prompt": "#56B4E9", "latent": "#E69F00", "generated": "#0072B2"}

DPI = 200
FIGURES = FIGURE_NAMES
OUTPUT_FILES = tuple(f"{name}.{ext}" for name in FIGURES for ext in FIGURE_FORMATS)
REQUIRED_COLUMNS = SETTING_KEY + ("accuracy", "acc_ci95_lo", "acc_ci95_hi", "ci_method", "tokens_prompt_mean",
                               "tokens_latent_mean", "tokens_generated_mean", "wall_s_mean", "speedup_vs_text_mas")

RC = {
    "svg.hashsalt": "latentmas",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.linewidth": 0.4,
    "grid.alpha": 0.5,
    "axes.axisbelow": True,
    "hatch.linewidth": 0.6,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "path.simplify": False,
}


class FigureInputError(ValueError):
    """The settings table is missing or lacks required columns."""


# --------------------------------------------------------------------------------------------------------------------
# input


def load_settings(table: str | Path) -> list[dict[str, Any]]:
    path = Path(table)
    if not path.is_file():
        raise FigureInputError(f"{path}: settings table not found (run `latentmas aggregate` first)")
    df = pl.read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise FigureInputError(f"{path}: missing column(s) {missing} (is this a settings.parquet from "
                               f"`latentmas aggregate`?)")
    rows = df.to_dicts()
    return sorted(rows, key=lambda r: setting_sort_key(tuple(r[k] for k in SETTING_KEY)))


def _models(settings: list[dict[str, Any]]) -> list[str]:
    return sorted({r["model"] for r in settings})


def _tasks(settings: list[dict[str, Any]]) -> list[str]:
    return sorted({r["task"] for r in settings}, key=lambda t: order_rank(t, TASK_NAMES))


def _config_key(r: dict[str, Any]) -> tuple:
    return tuple(r[k] for k in SETTING_KEY if k not in ("model", "task"))


def _configs(settings: list[dict[str, Any]]) -> list[tuple]:
    """All configurations (setting key minus model and task), in table order."""
    return sorted({_config_key(r) for r in settings}, key=lambda c: setting_sort_key(("", "", *c)))


def _config_row(c: tuple) -> dict[str, Any]:
    return dict(zip([k for k in SETTING_KEY if k not in ("model", "task")], c))


def _style(i: int) -> dict[str, Any]:
    """Colour (and hatch after the palette runs out) of series ``i``."""
    return {"color": PALETTE[i % len(PALETTE)], "hatch": HATCHES[(i // len(PALETTE)) % len(HATCHES)]}


# --------------------------------------------------------------------------------------------------------------------
# output


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    written = []
    for ext in FIGURE_FORMATS:
        target = out_dir / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            kwargs: dict[str, Any] = {"format": ext, "metadata": {"Date": None}}
            if ext == "png":
                kwargs["dpi"] = DPI
            fig.savefig(tmp, **kwargs)
        written.append(target)
    return written


def _placeholder(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, transform=ax.transAxes)


def _mark_zeros(ax, xs: list[float], ys: list[float], width: float, color: str) -> None:
    """A zero-height bar is invisible: draw a thick stub in its colour on the axis and a "0" above it."""
    for x, y in zip(xs, ys):
        if y == 0:
            ax.hlines(0.0, x - width / 2, x + width / 2, colors=color, linewidth=3.0, clip_on=False, zorder=3)
            ax.annotate("0", (x, 0.0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=6, color="#333333", zorder=4,
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"})


def _n_note(rows: list[dict[str, Any]], short: bool = False) -> str:
    """How many samples stand behind each bar of a panel: ``n = 10 samples per bar (1 seed)`` or ranges;
    ``short``: ``n = 10/bar, 1 seed``."""
    def span(vals: set) -> str:
        return str(min(vals)) if len(vals) == 1 else f"{min(vals)}–{max(vals)}"

    if not rows:
        return ""
    seeds = {r["n_seeds"] for r in rows if r.get("n_seeds") is not None}
    n = {r["n_samples"] for r in rows if r.get("n_samples") is not None}
    seed_part = f" ({span(seeds)} seed{'s' if max(seeds, default=1) != 1 else ''})" if seeds else ""
    if short:
        return f"n = {span(n)}/bar, {span(seeds)} seed{'s' if max(seeds, default=1) != 1 else ''}" if n else ""
    return f"n = {span(n)} samples per bar{seed_part}" if n else ""


def _ncols(n: int, width_in: float) -> int:
    return max(1, min(n, int(width_in // 1.9)))


# --------------------------------------------------------------------------------------------------------------------
# the figures


def draw_accuracy(settings: list[dict[str, Any]]) -> Figure:
    models, tasks, configs = _models(settings), _tasks(settings), _configs(settings)
    index = {(r["model"], r["task"], _config_key(r)): r for r in settings}
    n = max(1, len(configs))
    width = min(18.0, max(6.0, 1.0 + len(tasks) * (0.22 * n + 0.35)))
    fig = _new_figure(width, 0.6 + 2.4 * max(1, len(models)))
    if not settings:
        _placeholder(fig.add_subplot(), "no settings")
        return fig
    axes = fig.subplots(len(models), 1, squeeze=False, sharex=True)[:, 0]
    bar_w = 0.8 / n
    handles = {}
    for ax, model in zip(axes, models):
        for j, c in enumerate(configs):
            xs, ys, err_lo, err_hi = [], [], [], []
            for t_i, task in enumerate(tasks):
                r = index.get((model, task, c))
                if r is None:
                    continue
                acc = 100.0 * r["accuracy"]
                xs.append(t_i - 0.4 + bar_w * (j + 0.5))
                ys.append(acc)
                err_lo.append(max(0.0, acc - 100.0 * r["acc_ci95_lo"]))
                err_hi.append(max(0.0, 100.0 * r["acc_ci95_hi"] - acc))
            if not xs:
                continue
            st = _style(j)
            bars = ax.bar(xs, ys, width=bar_w, color=st["color"], hatch=st["hatch"], edgecolor="white",
                          linewidth=0.3, label=config_label(_config_row(c)))
            ax.errorbar(xs, ys, yerr=[err_lo, err_hi], fmt="none", ecolor="#333333", elinewidth=0.7, capsize=1.5)
            _mark_zeros(ax, xs, ys, bar_w, st["color"])
            handles.setdefault(j, bars)
        ax.set_title(model, loc="left")
        ax.set_title(_n_note([r for r in settings if r["model"] == model]), loc="right", fontsize=7, color="#555555")
        ax.set_ylabel("Accuracy (%)")
        ax.set_ylim(0.0, 100.0)
        ax.set_xlim(-0.5, len(tasks) - 0.5)
    return _finish_task_panels(fig, axes, tasks, handles, configs, width,
                               "Method (error bars: 95% CI, see TABLES.md)")


def _change_vs_text(r: dict[str, Any]) -> str:
    red = r.get("token_reduction_vs_text_mas")
    return "" if r["method"] != "latent_mas" or red is None else f"\n{-100.0 * red:+.0f}%"


def draw_tokens(settings: list[dict[str, Any]]) -> Figure:
    """Per model two rows of panels (columns = tasks): all tokens stacked prompt + latent + generated, and below it
    the generated tokens alone on their own scale, labelled with the value and, for LatentMAS, the change vs TextMAS
    (prompt tokens dominate the stack and would hide the paper's 'token reduction')."""
    models, tasks, configs = _models(settings), _tasks(settings), _configs(settings)
    index = {(r["model"], r["task"], _config_key(r)): r for r in settings}
    ncol = max(1, len(tasks))
    width = min(22.0, max(6.0, ncol * max(1.8, 0.42 * len(configs) + 0.6)))
    fig = _new_figure(width, 1.0 + 3.6 * max(1, len(models)))
    if not settings:
        _placeholder(fig.add_subplot(), "no settings")
        return fig
    axes = fig.subplots(2 * len(models), ncol, squeeze=False, sharex=True,
                        gridspec_kw={"height_ratios": [3, 2] * len(models)})
    labels = [short_label(_config_row(c)) for c in configs]
    crowded = len(configs) > 6  # then: vertical tick labels, only the % change above the generated bars
    for i, model in enumerate(models):
        for t_i, task in enumerate(tasks):
            ax, gen_ax = axes[2 * i, t_i], axes[2 * i + 1, t_i]
            rows = []
            for j, c in enumerate(configs):
                r = index.get((model, task, c))
                if r is None or r["tokens_prompt_mean"] is None:
                    continue
                rows.append(r)
                bottom = 0.0
                for comp in ("prompt", "latent", "generated"):
                    v = r[f"tokens_{comp}_mean"]
                    ax.bar([j], [v], bottom=[bottom], width=0.75, color=COMPONENT_COLOURS[comp], label=comp,
                           edgecolor="white", linewidth=0.3)
                    bottom += v
                gen = r["tokens_generated_mean"]
                bars = gen_ax.bar([j], [gen], width=0.75, color=COMPONENT_COLOURS["generated"])
                text = _change_vs_text(r).strip() if crowded else f"{gen:,.0f}{_change_vs_text(r)}"
                gen_ax.bar_label(bars, labels=[text], fontsize=5 if crowded else 6, padding=1,
                                 rotation=90 if crowded else 0)
                _mark_zeros(gen_ax, [j], [gen], 0.75, COMPONENT_COLOURS["generated"])
            name = f"{model} · {task}" if len(models) > 1 else task
            ax.set_title(f"{name}\n{_n_note(rows, short=True) or 'not run'}", loc="left", fontsize=8)
            gen_ax.margins(y=0.3)
            if t_i == 0:
                ax.set_ylabel("Tokens per sample (mean)")
                gen_ax.set_ylabel("Generated tokens\n(mean)")
            ax.set_xlim(-0.6, len(configs) - 0.4)
        for t_i in range(len(tasks)):
            axes[-1, t_i].set_xticks(range(len(configs)), labels, fontsize=6, rotation=90 if crowded else 0)
    handles = [matplotlib.patches.Patch(facecolor=COMPONENT_COLOURS[c], label=c)
               for c in ("prompt", "latent", "generated")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False,
               title="Tokens per sample: prompt (all agents' inputs) + latent steps + generated (output)\n"
                     "lower panels: generated alone; % = LatentMAS change vs TextMAS")
    return fig


def draw_speedup(settings: list[dict[str, Any]]) -> Figure:
    sp = [r for r in settings if r["method"] == "latent_mas" and r["speedup_vs_text_mas"] is not None]
    models, tasks, configs = _models(sp), _tasks(sp), _configs(sp)
    n = max(1, len(configs))
    width = min(18.0, max(6.0, 1.0 + len(tasks) * (0.22 * n + 0.35)))
    fig = _new_figure(width, 0.6 + 2.4 * max(1, len(models)))
    if not sp:
        _placeholder(fig.add_subplot(), "no latent_mas setting with a matching text_mas setting\n"
                                        "(same model, task and architecture): no speedup to show")
        return fig
    index = {(r["model"], r["task"], _config_key(r)): r for r in sp}
    axes = fig.subplots(len(models), 1, squeeze=False, sharex=True)[:, 0]
    bar_w = 0.8 / n
    ymax = max(r["speedup_vs_text_mas"] for r in sp)
    handles = {}
    for ax, model in zip(axes, models):
        for j, c in enumerate(configs):
            xs, ys = [], []
            for t_i, task in enumerate(tasks):
                r = index.get((model, task, c))
                if r is not None:
                    xs.append(t_i - 0.4 + bar_w * (j + 0.5))
                    ys.append(r["speedup_vs_text_mas"])
            if not xs:
                continue
            st = _style(j)
            bars = ax.bar(xs, ys, width=bar_w, color=st["color"], hatch=st["hatch"], edgecolor="white",
                          linewidth=0.3)
            if len(configs) * len(tasks) <= 24:
                ax.bar_label(bars, labels=[f"{y:.1f}×" for y in ys], fontsize=6, padding=1)
            _mark_zeros(ax, xs, ys, bar_w, st["color"])
            handles.setdefault(j, bars)
        ax.axhline(1.0, color="#333333", linewidth=0.8, linestyle="--")
        ax.set_title(model, loc="left")
        ax.set_title(_n_note([r for r in sp if r["model"] == model]), loc="right", fontsize=7, color="#555555")
        ax.set_ylabel("Speedup vs TextMAS (×)")
        ax.set_ylim(0.0, max(1.2, ymax * 1.15))
        ax.set_xlim(-0.5, len(tasks) - 0.5)
    return _finish_task_panels(fig, axes, tasks, handles, configs, width,
                               "LatentMAS configuration (speedup = TextMAS wall s / LatentMAS wall s per sample; "
                               "dashed line: 1×)")


def latent_step_sweeps(settings: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """latent_mas settings grouped by everything but latent_steps, keeping groups with >= 2 distinct values."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in settings:
        if r["method"] != "latent_mas" or r["latent_steps"] is None:
            continue
        key = (r["model"], r["task"], r["arch"], r["realign"], r["memory"])
        groups.setdefault(key, []).append(r)
    sweeps = {}
    for key, rows in groups.items():
        if len({r["latent_steps"] for r in rows}) >= 2:
            sweeps[key] = sorted(rows, key=lambda r: r["latent_steps"])
    return dict(sorted(sweeps.items(), key=lambda kv: (kv[0][0], order_rank(kv[0][1], TASK_NAMES),
                                                        order_rank(kv[0][2], ARCHS), kv[0][3] is False,
                                                        str(kv[0][4]))))


def draw_latent_steps(settings: list[dict[str, Any]]) -> Figure:
    sweeps = latent_step_sweeps(settings)
    if not sweeps:
        fig = _new_figure(6.0, 2.5)
        _placeholder(fig.add_subplot(), "no latent_steps sweep configured\n"
                                        "(needs >= 2 latent_steps values for one latent_mas setting)")
        return fig
    models = sorted({k[0] for k in sweeps})
    series = sorted({k[1:] for k in sweeps}, key=lambda s: (order_rank(s[0], TASK_NAMES), order_rank(s[1], ARCHS),
                                                           s[2] is False, str(s[3])))
    fig = _new_figure(7.0, 0.8 + 2.6 * len(models))
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    handles = {}
    for ax, model in zip(axes, models):
        steps = sorted({r["latent_steps"] for k, rows in sweeps.items() if k[0] == model for r in rows})
        # dodge the series sideways a little so that error bars at the same m do not hide each other
        gap = min((b - a for a, b in zip(steps, steps[1:])), default=1)
        dodge = 0.15 * gap / max(1, len(series))
        for i, s in enumerate(series):
            rows = sweeps.get((model, *s))
            if not rows:
                continue
            shift = (i - (len(series) - 1) / 2.0) * dodge
            xs = [r["latent_steps"] + shift for r in rows]
            ys = [100.0 * r["accuracy"] for r in rows]
            lo = [max(0.0, y - 100.0 * r["acc_ci95_lo"]) for y, r in zip(ys, rows)]
            hi = [max(0.0, 100.0 * r["acc_ci95_hi"] - y) for y, r in zip(ys, rows)]
            h = ax.errorbar(xs, ys, yerr=[lo, hi], color=PALETTE[i % len(PALETTE)],
                            linestyle=LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)],
                            marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.2, elinewidth=0.7,
                            capsize=2)
            handles.setdefault(i, h)
        ax.set_title(model, loc="left")
        ax.set_ylabel("Accuracy (%)")
        ax.set_xlabel("Latent steps per agent (m)")
        ax.set_ylim(0.0, 100.0)
        ax.set_xticks(steps)
        ax.grid(True, axis="x", linewidth=0.4, alpha=0.5)

    def label(s: tuple) -> str:
        task, arch, realign, memory = s
        extra = ([] if realign else ["no realign"]) + ([] if memory in (None, "all") else [f"memory={memory}"])
        return f"{task} · {arch}" + (f" ({', '.join(extra)})" if extra else "")

    order = sorted(handles)
    fig.legend([handles[i] for i in order], [label(series[i]) for i in order], loc="outside right upper",
               frameon=False, title="Task · architecture\n(error bars: 95% CI;\nseries dodged sideways)")
    return fig


def make_figures(table: str | Path, out_dir: str | Path) -> list[Path]:
    settings = load_settings(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.rc_context(RC):
        for name, draw in (("accuracy", draw_accuracy), ("tokens", draw_tokens), ("speedup", draw_speedup),
                           ("latent_steps", draw_latent_steps)):
            fig = draw(settings)
            written += _save(fig, out, name)
    if not latent_step_sweeps(settings):
        log.info("no latent_steps sweep in %s: latent_steps.{png,svg} hold a 'no latent_steps sweep configured' "
                 "panel", table)
    log.info("wrote %d figure files to %s", len(written), out)
    return written


def _finish_task_panels(fig, axes, tasks, handles, configs, width, legend_title: str):
    """Shared tail of the per-task bar figures: task ticks on the bottom panel and one legend below all panels."""
    axes[-1].set_xticks(range(len(tasks)), tasks, rotation=30 if len(tasks) > 4 else 0,
                        ha="right" if len(tasks) > 4 else "center")
    axes[-1].set_xlabel("Task")
    order = sorted(handles)
    fig.legend([handles[j] for j in order], [config_label(_config_row(configs[j])) for j in order],
               loc="outside lower center", ncols=_ncols(len(order), width), frameon=False, title=legend_title)
    return fig


def cli_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentmas figures",
                                     description="Draw accuracy/tokens/speedup/latent_steps figures (PNG + SVG) "
                                                 "from the settings table of `latentmas aggregate`.")
    parser.add_argument("--table", required=True, help="settings.parquet written by `latentmas aggregate`")
    parser.add_argument("--out-dir", required=True, help="output folder")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        make_figures(args.table, args.out_dir)
    except FigureInputError as exc:
        print(f"latentmas figures: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK
