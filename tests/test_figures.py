"""latentmas figures: all files written, valid PNG/SVG, byte-identical across runs and processes, sweep handling."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from latentmas.report import aggregate as agg
from latentmas.report import figures as figs
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rec(model, task, method, seed, i, correct, *, arch=None, m=None, realign=None, generated=50, wall=1.0):
    """A minimal scored record (the fields aggregation reads; see tests/test_aggregate.py for the full shape)."""
    return {"model": model, "task": task, "method": method, "arch": arch, "latent_steps": m, "realign": realign,
            "memory": "all", "seed": seed, "sample_id": f"{task}/{i:04d}", "status": "ok", "correct": correct,
            "tokens": {"prompt": 100, "latent": 3 * (m or 0), "generated": generated,
                       "total": 100 + 3 * (m or 0) + generated},
            "wall_s": wall}


def pattern(n_correct: int, n: int = 10) -> list[bool]:
    return [i < n_correct for i in range(n)]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def build_records() -> tuple[list[dict], list[dict]]:
    """m1/gsm8k: Single, TextMAS seq (3 seeds), LatentMAS seq m=10 (3 seeds) and m=20, LatentMAS hier m=10;
    m2/arc_easy: Single and TextMAS seq. TextMAS wall 4 s; LatentMAS seq m=10 1 s, m=20 2 s -> speedups 4 and 2."""
    a, b = [], []
    a += [rec("m1", "gsm8k", "baseline", 0, i, c, generated=200, wall=2.0) for i, c in enumerate(pattern(7))]
    for seed, k in ((0, 5), (1, 6), (2, 7)):
        a += [rec("m1", "gsm8k", "text_mas", seed, i, c, arch="sequential", generated=390, wall=4.0)
              for i, c in enumerate(pattern(k))]
        b += [rec("m1", "gsm8k", "latent_mas", seed, i, c, arch="sequential", m=10, realign=True, generated=100)
              for i, c in enumerate(pattern(8))]
    b += [rec("m1", "gsm8k", "latent_mas", 0, i, c, arch="hierarchical", m=10, realign=True)
          for i, c in enumerate(pattern(6))]
    b += [rec("m1", "gsm8k", "latent_mas", 0, i, c, arch="sequential", m=20, realign=True, wall=2.0)
          for i, c in enumerate(pattern(9))]
    a += [rec("m2", "arc_easy", "baseline", 0, i, c) for i, c in enumerate(pattern(4))]
    a += [rec("m2", "arc_easy", "text_mas", 0, i, c, arch="sequential") for i, c in enumerate(pattern(6))]
    return a, b


def png_dpi(data: bytes) -> float | None:
    """Horizontal DPI from the pHYs chunk (pixels per metre)."""
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        if ctype == b"pHYs":
            ppm_x, _, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            return ppm_x * 0.0254 if unit == 1 else None
        pos += 12 + length
    return None


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """settings.parquet with a latent_steps sweep (m1/gsm8k/sequential m=10,20) and one without any sweep."""
    d = tmp_path_factory.mktemp("fig")
    a, b = build_records()
    with_sweep = d / "sweep"
    agg.aggregate([write_jsonl(d / "a.jsonl", a), write_jsonl(d / "b.jsonl", b)], with_sweep)
    no_sweep = d / "nosweep"
    recs = [rec("m", "gsm8k", "baseline", 0, i, c) for i, c in enumerate(pattern(5))]
    recs += [rec("m", "gsm8k", "latent_mas", 0, i, c, arch="sequential", m=8, realign=True)
             for i, c in enumerate(pattern(6))]
    agg.aggregate([write_jsonl(d / "n.jsonl", recs)], no_sweep)
    return {"dir": d, "sweep": with_sweep / "settings.parquet", "nosweep": no_sweep / "settings.parquet"}


def check_files(out: Path) -> None:
    for name in figs.OUTPUT_FILES:
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        data = path.read_bytes()
        if name.endswith(".png"):
            assert data.startswith(PNG_SIGNATURE), name
            assert data.endswith(b"IEND\xaeB`\x82"), name
            assert png_dpi(data) == pytest.approx(figs.DPI, rel=1e-3) and figs.DPI >= 150
        else:
            root = ET.fromstring(data)
            assert root.tag == "{http://www.w3.org/2000/svg}svg", name
            assert b"<dc:date>" not in data, name


def test_figures_written_valid_and_deterministic(tables, tmp_path):
    out1, out2 = tmp_path / "f1", tmp_path / "f2"
    assert figs.cli_main(["--table", str(tables["sweep"]), "--out-dir", str(out1)]) == 0
    check_files(out1)
    # second run in a fresh interpreter: hash seeds, ids and metadata must not leak into the bytes
    code = ("import sys; from latentmas.report.figures import cli_main; "
            f"sys.exit(cli_main(['--table', {str(tables['sweep'])!r}, '--out-dir', {str(out2)!r}]))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    for name in figs.OUTPUT_FILES:
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes(), name


def test_latent_steps_with_and_without_sweep(tables, tmp_path):
    sweep_settings = figs.load_settings(tables["sweep"])
    sweeps = figs.latent_step_sweeps(sweep_settings)
    assert list(sweeps) == [("m1", "gsm8k", "sequential", True, "all")]
    assert [r["latent_steps"] for r in sweeps[("m1", "gsm8k", "sequential", True, "all")]] == [10, 20]
    fig = figs.draw_latent_steps(sweep_settings)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Latent steps per agent (m)" and ax.get_ylabel() == "Accuracy (%)"
    assert [t for t in ax.get_xticks()] == [10, 20]
    assert not any("no latent_steps sweep" in t.get_text() for t in ax.texts)

    flat_settings = figs.load_settings(tables["nosweep"])
    assert figs.latent_step_sweeps(flat_settings) == {}
    fig = figs.draw_latent_steps(flat_settings)
    assert any("no latent_steps sweep configured" in t.get_text() for t in fig.axes[0].texts)
    out = tmp_path / "flat"
    assert figs.cli_main(["--table", str(tables["nosweep"]), "--out-dir", str(out)]) == 0
    check_files(out)  # all eight files exist even without a sweep (fixed workflow outputs)


def test_axes_are_labelled(tables):
    settings = figs.load_settings(tables["sweep"])
    acc = figs.draw_accuracy(settings)
    assert [ax.get_title(loc="left") for ax in acc.axes] == ["m1", "m2"]
    assert all(ax.get_ylabel() == "Accuracy (%)" for ax in acc.axes)
    assert acc.legends and acc.legends[0].get_texts()[0].get_text() == "Single"
    tok = figs.draw_tokens(settings)
    assert tok.axes[0].get_ylabel() == "Tokens per sample (mean)"
    assert [t.get_text() for t in tok.legends[0].get_texts()] == ["prompt", "latent", "generated"]
    sp = figs.draw_speedup(settings)
    assert sp.axes[0].get_ylabel() == "Speedup vs TextMAS (×)"
    # only m1 has latent_mas settings with a text_mas match (sequential m=10 and m=20: speedups 4 and 2)
    assert [ax.get_title(loc="left") for ax in sp.axes] == ["m1"]
    heights = sorted(p.get_height() for p in sp.axes[0].patches)
    assert heights == pytest.approx([2.0, 4.0])


def test_speedup_placeholder_without_pairs(tables):
    settings = figs.load_settings(tables["nosweep"])  # latent_mas without a text_mas setting
    fig = figs.draw_speedup(settings)
    assert any("no latent_mas setting with a matching text_mas setting" in t.get_text() for t in fig.axes[0].texts)


def test_bad_table(tmp_path, capsys):
    assert figs.cli_main(["--table", str(tmp_path / "missing.parquet"), "--out-dir", str(tmp_path)]) == 2
    assert "settings table not found" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"model": ["m"], "task": ["gsm8k"]}).write_parquet(bad)
    assert figs.cli_main(["--table", str(bad), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s)" in err and "'accuracy'" in err


def test_zero_bars_are_marked_n_is_shown_and_generated_tokens_get_their_own_panel(tables):
    """A 0% bar has no height: it must still show (stub + "0"); each panel says how many samples a bar stands on;
    tokens.png has a generated-only panel under each stacked one, with the LatentMAS change vs TextMAS. Catches a
    figure where a zero result looks like 'not run', panels without n, and a token reduction hidden by the prompt."""
    settings = figs.load_settings(tables["sweep"])
    zeroed = [dict(r, accuracy=0.0, acc_ci95_lo=0.0) if r["method"] == "baseline" and r["model"] == "m1" else r
              for r in settings]
    acc = figs.draw_accuracy(zeroed)
    ax = acc.axes[0]
    assert "0" in [t.get_text() for t in ax.texts]
    assert any(len(c.get_segments()) and c.get_segments()[0][0][1] == 0.0 for c in ax.collections
               if hasattr(c, "get_segments") and c.get_linewidth()[0] == 3.0)
    assert ax.get_title(loc="right").startswith("n = ") and "seed" in ax.get_title(loc="right")
    tok = figs.draw_tokens(settings)
    gen_axes = [a for a in tok.axes if a.get_ylabel() == "Generated tokens\n(mean)"]
    assert gen_axes, [a.get_ylabel() for a in tok.axes]
    labels = [t.get_text() for a in tok.axes for t in a.texts]
    assert any(t.endswith("%") for t in labels)  # m1 gsm8k latent_mas vs text_mas
    assert all(any(w in a.get_title(loc="left") for w in ("n = ", "not run")) or a.get_title(loc="left") == ""
               for a in tok.axes)
    ticks = [t.get_text() for t in tok.axes[-1].get_xticklabels()]
    assert max(len(line) for t in ticks for line in t.split("\n")) <= 16  # short labels, not "LatentMAS (sequ..."
