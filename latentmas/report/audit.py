"""``latentmas show``: one sample's audit page — what every agent read, thought (lens tokens) or wrote, and the verdict.

The page is built from the record alone (a scored record adds prediction, score and failure reason): the question
and every agent's rendered prompt are in records written with ``trace: summary|full``; the lens columns are those of
latentmas.engine.lens. Output: the terminal (rich) and a static, self-contained HTML page (inline CSS, no script, no
external asset), optionally side by side with the same sample under another method. The workflow writes a few pages
per cell (the first correct and the first incorrect sample) and links them from the report.
"""
from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path
from typing import Any

from latentmas.records import read_records

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:72em;color:#222;padding:0 1em}
h1{font-size:1.3em} h2{font-size:1.1em;margin:1.2em 0 .3em} .meta{color:#555}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.6em;border-radius:4px;max-height:22em;overflow:auto}
table{border-collapse:collapse;margin:.4em 0} td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
th{background:#f0f0f0} .lens-token{font-family:monospace;background:#eef4ff;border-radius:3px;padding:0 3px}
.near{background:#f3efe6} tr.flagged{background:#fde8e8} .ok{color:#0a7a2a;font-weight:bold}
.bad{color:#b00020;font-weight:bold} .agent{border-left:4px solid #56B4E9;padding-left:.8em;margin:1em 0}
.cols{display:flex;gap:1.5em} .cols>div{flex:1;min-width:0;overflow-x:auto} body.wide{max-width:none} details>summary{cursor:pointer;color:#345}
"""


class AuditError(ValueError):
    """The records file or sample id cannot be shown; the message names it."""


def find_record(path: str | Path, sample_id: str) -> dict[str, Any]:
    recs = read_records(path)
    if not recs:
        raise AuditError(f"{path}: no records (missing or empty file)")
    for r in recs:
        if str(r.get("sample_id")) == str(sample_id):
            return r
    ids = ", ".join(str(r.get("sample_id")) for r in recs[:8])
    raise AuditError(f"{path}: no sample {sample_id!r} (first ids: {ids})")


def visible(token: str) -> str:
    """A token as text with its whitespace made visible (lens tokens are often ' ', '\\n')."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·") or "∅"


def _steps(agent: dict) -> list[dict]:
    lens = (agent.get("latent") or {}).get("lens")
    if not lens:
        return []
    flagged = {f["step"]: f["kind"] for f in lens.get("flags", [])}
    return [{"step": t, "top": lens["top"][t], "top_p": lens["top_p"][t], "near": lens["near"][t],
             "norm_h": lens["norm_h"][t], "ratio": lens["ratio"][t], "drift": lens["drift"][t],
             "cos_prev": lens["cos_prev"][t],
             "entropy": lens["entropy"][t], "flag": flagged.get(t)} for t in range(len(lens["top"]))]


def verdict(rec: dict) -> tuple[str, str]:
    """(label, css class) of the sample's outcome: scored records have ``correct``/``reason``."""
    if "correct" not in rec:
        return ("not scored" + (f" (inference failed: {rec['error']})" if rec.get("error") else ""), "meta")
    if rec["correct"]:
        return "correct", "ok"
    reason = rec.get("reason") or "wrong"
    return ("wrong" if reason == "wrong" else f"wrong — {reason}"), "bad"


def cell_label(rec: dict) -> str:
    parts = [rec.get("model"), rec.get("task"), rec.get("method"), rec.get("arch")]
    if rec.get("method") == "latent_mas":
        parts.append(f"k{rec.get('latent_steps')}{'' if rec.get('realign') else ' no-realign'}")
    return " / ".join(str(p) for p in parts if p is not None) + f" / seed {rec.get('seed')}"


# --------------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(x: Any, nd: int = 3) -> str:
    return "—" if x is None else f"{x + 0.0:.{nd}g}" if isinstance(x, float) else str(x)  # + 0.0: no "-0"


def _lens_table(steps: list[dict]) -> str:
    head = ("<tr><th>step</th><th>logit lens (top, p)</th><th>nearest input token</th><th>‖h‖</th>"
            "<th>‖map(h)‖/‖h‖</th><th>cos prev</th><th>drift</th><th>entropy</th><th>health</th></tr>")
    rows = []
    for s in steps:
        top = " ".join(f'<span class="lens-token">{_e(visible(t))}</span>&nbsp;{_fmt(p, 2)}'
                       for t, p in zip(s["top"], s["top_p"]))
        near = " ".join(f'<span class="lens-token near">{_e(visible(t))}</span>' for t in s["near"])
        cls = ' class="flagged"' if s["flag"] else ""
        rows.append(f"<tr{cls}><td>{s['step']}</td><td>{top}</td><td>{near}</td><td>{_fmt(s['norm_h'])}</td>"
                    f"<td>{_fmt(s['ratio'])}</td><td>{_fmt(s['cos_prev'])}</td><td>{_fmt(s['drift'])}</td><td>{_fmt(s['entropy'])}</td>"
                    f"<td>{_e(s['flag'] or 'ok')}</td></tr>")
    return f'<table class="lens">{head}{"".join(rows)}</table>'


def _agent_html(agent: dict, rec: dict, is_last: bool) -> str:
    name = agent["name"]
    stats = (f"{agent.get('input_tokens')} prompt tokens · {agent.get('latent_steps')} latent steps · "
             f"{agent.get('generated_tokens')} generated tokens · {agent.get('wall_s', 0):.3f} s")
    body = []
    if agent.get("prompt"):
        body.append(f"<details><summary>rendered prompt</summary><pre>{_e(agent['prompt'])}</pre></details>")
    else:
        body.append('<p class="meta">rendered prompt not recorded (run with trace: summary or full)</p>')
    steps = _steps(agent)
    if steps:
        body.append(_lens_table(steps))
    elif agent.get("latent_steps"):
        body.append('<p class="meta">latent steps not traced (trace: none)</p>')
    text = agent.get("text") or (rec.get("final_text") if is_last else None)
    if text:
        body.append(f"<pre>{_e(text)}</pre>")
    return (f'<section class="agent" data-agent="{_e(name)}"><h2>{_e(name)}</h2>'
            f'<p class="meta">{stats}</p>{"".join(body)}</section>')


def sample_html(rec: dict) -> str:
    """The body of one sample's page (a <div>), shared by the single and the side-by-side pages."""
    label, cls = verdict(rec)
    agents = rec.get("agents", [])
    question = rec.get("question") or "(question not recorded: run with trace: summary or full)"
    tok = rec.get("tokens", {})
    parts = [
        f'<p class="meta">{_e(cell_label(rec))} · sample <b>{_e(rec.get("sample_id"))}</b> · '
        f'{tok.get("total")} tokens · {rec.get("wall_s")} s</p>',
        f'<h2>Question</h2><pre id="question">{_e(question)}</pre>',
        *[_agent_html(a, rec, i == len(agents) - 1) for i, a in enumerate(agents)],
        f'<h2>Answer</h2><p>prediction: <b id="final-answer">{_e(_fmt(rec.get("prediction")))}</b> · '
        f'gold: <b id="gold">{_e(rec.get("gold"))}</b> · score: <span id="score" class="{cls}">{_e(label)}</span></p>',
    ]
    return f'<div class="sample">{"".join(parts)}</div>'


def _page(title: str, body: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<style>{CSS}</style></head><body{cls}><h1>{_e(title)}</h1>{body}</body></html>\n')


def page_html(rec: dict) -> str:
    return _page(f"Sample {rec.get('sample_id')} — {rec.get('method')}", sample_html(rec))


def compare_html(a: dict, b: dict) -> str:
    body = f'<div class="cols"><div>{sample_html(a)}</div><div>{sample_html(b)}</div></div>'
    return _page(f"Sample {a.get('sample_id')}: {a.get('method')} vs {b.get('method')}", body, wide=True)


def placeholder_html(title: str, why: str) -> str:
    return _page(title, f'<p class="meta">{_e(why)}</p>')


# --------------------------------------------------------------------------------------------------------------------
# Terminal
# --------------------------------------------------------------------------------------------------------------------
def print_terminal(rec: dict, file=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text  # model text and tokens are data, never rich markup

    con = Console(file=file, soft_wrap=False)
    label, cls = verdict(rec)
    con.rule(escape(f"{cell_label(rec)} · sample {rec.get('sample_id')}"))
    con.print(Panel(Text(rec.get("question") or "(question not recorded)"), title="question"))
    agents = rec.get("agents", [])
    for i, a in enumerate(agents):
        con.print(f"[bold]{escape(a['name'])}[/bold]  {a.get('input_tokens')} prompt · {a.get('latent_steps')} latent · "
                  f"{a.get('generated_tokens')} generated tokens · {a.get('wall_s', 0):.3f} s")
        steps = _steps(a)
        if steps:
            t = Table("step", "logit lens", "nearest", "‖h‖", "ratio", "cos prev", "drift", "entropy", "health")
            for s in steps:
                t.add_row(str(s["step"]),
                          Text(" ".join(f"{visible(x)} {_fmt(p, 2)}" for x, p in zip(s["top"], s["top_p"]))),
                          Text(" ".join(visible(x) for x in s["near"])), _fmt(s["norm_h"]), _fmt(s["ratio"]),
                          _fmt(s["cos_prev"]),
                          _fmt(s["drift"]), _fmt(s["entropy"]), s["flag"] or "ok", style="red" if s["flag"] else None)
            con.print(t)
        text = a.get("text") or (rec.get("final_text") if i == len(agents) - 1 else None)
        if text:
            con.print(Panel(Text(text), title=Text(f"{a['name']} wrote")))
    style = {"ok": "green", "bad": "red"}.get(cls, "yellow")
    con.print(f"prediction: [bold]{escape(str(rec.get('prediction', '—')))}[/bold] · gold: "
              f"[bold]{escape(str(rec.get('gold')))}[/bold] · score: [{style}]{escape(label)}[/{style}]", highlight=False)


# --------------------------------------------------------------------------------------------------------------------
# Pages the workflow writes per cell
# --------------------------------------------------------------------------------------------------------------------
def pick(records: list[dict], correct: bool) -> dict | None:
    """The first sample (dataset order) with that outcome; failed inference counts as incorrect."""
    for r in sorted(records, key=lambda r: r.get("index", 0)):
        if bool(r.get("correct")) == correct:
            return r
    return None


def write_cell_pages(scored: str | Path, out_correct: str | Path, out_incorrect: str | Path) -> None:
    recs = read_records(scored)
    for want, out in ((True, out_correct), (False, out_incorrect)):
        rec = pick(recs, want)
        kind = "correct" if want else "incorrect"
        text = page_html(rec) if rec else placeholder_html(f"No {kind} sample", f"{scored}: no {kind} sample")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")


def write_compare_page(scored_a: str | Path, scored_b: str | Path, out: str | Path) -> None:
    """Same sample under two methods: the first one where their scores differ, else the first in common."""
    a = {r["sample_id"]: r for r in read_records(scored_a)}
    b = {r["sample_id"]: r for r in read_records(scored_b)}
    common = sorted(set(a) & set(b), key=lambda s: a[s].get("index", 0))
    differ = [s for s in common if bool(a[s].get("correct")) != bool(b[s].get("correct"))]
    sid = (differ or common or [None])[0]
    text = compare_html(a[sid], b[sid]) if sid else placeholder_html("No common sample", f"{scored_a} vs {scored_b}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentmas show", description="render one sample's audit page")
    ap.add_argument("records", help="records JSONL (scored records add prediction, score and failure reason)")
    ap.add_argument("--id", required=True, dest="sample_id", help="sample id")
    ap.add_argument("--html", default=None, help="also write a self-contained HTML page here")
    ap.add_argument("--vs", default=None, help="a second records file: side-by-side page of the same sample")
    ap.add_argument("--quiet", action="store_true", help="no terminal rendering (only --html)")
    args = ap.parse_args(argv)
    try:
        rec = find_record(args.records, args.sample_id)
        other = find_record(args.vs, args.sample_id) if args.vs else None
    except AuditError as exc:
        print(f"latentmas show: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print_terminal(rec)
        if other is not None:
            print_terminal(other)
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(compare_html(rec, other) if other else page_html(rec), encoding="utf-8")
    return 0


def partner_of(rec: dict, firsts: dict[str, dict]) -> str | None:
    """For a latent_mas cell (or record): the text_mas cell of the same model/task/arch/seed, else the baseline cell;
    None for other methods. ``firsts``: {cell id: a record or cell dict of it} (the workflow passes its cells)."""
    if rec.get("method") != "latent_mas":
        return None
    for cid, other in firsts.items():
        same = all(other.get(k) == rec.get(k) for k in ("model", "task", "seed"))
        if same and other.get("method") == "text_mas" and other.get("arch") == rec.get("arch"):
            return cid
    for cid, other in firsts.items():
        if all(other.get(k) == rec.get(k) for k in ("model", "task", "seed")) and other.get("method") == "baseline":
            return cid
    return None


def write_site(cells: dict[str, str | Path], out_dir: str | Path) -> list[Path]:
    """Audit pages of every cell ({cell id: scored records}) under ``out_dir`` plus ``index.html`` linking them:
    ``<cell>/correct.html``, ``<cell>/incorrect.html`` and, for latent_mas cells, ``<cell>/compare.html`` (the same
    sample under the text_mas or baseline cell of the same model, task and seed)."""
    out = Path(out_dir)
    firsts = {cid: (read_records(p) or [{}])[0] for cid, p in cells.items()}
    written, rows = [], []
    for cid, path in sorted(cells.items()):
        d = out / cid
        write_cell_pages(path, d / "correct.html", d / "incorrect.html")
        links = [f'<a href="{_e(cid)}/correct.html">correct</a>', f'<a href="{_e(cid)}/incorrect.html">incorrect</a>']
        written += [d / "correct.html", d / "incorrect.html"]
        partner = partner_of(firsts[cid], firsts)
        if partner:
            write_compare_page(path, cells[partner], d / "compare.html")
            written.append(d / "compare.html")
            links.append(f'<a href="{_e(cid)}/compare.html">vs {_e(firsts[partner].get("method"))}</a>')
        rows.append(f"<tr><td>{_e(cid)}</td><td>{' · '.join(links)}</td></tr>")
    index = _page("Audit pages", "<p>One sample per page: what every agent read, its latent steps through the "
                  "logit lens, what it wrote, and the verdict. The first correct and the first incorrect sample of "
                  "each cell; latent_mas cells also side by side with another method.</p>"
                  f"<table><tr><th>cell</th><th>pages</th></tr>{''.join(rows)}</table>")
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text(index, encoding="utf-8")
    return [out / "index.html", *written]
