"""`latentmas compare` and the significance table against independent computations (scipy, by hand)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from latentmas.report.compare import (CompareError, cli_main, compare_files, holm, mcnemar_exact_p,
                                      paired_bootstrap_ci)
from latentmas.report.significance import comparisons, write_significance


def _rec(sample_id, seed, correct, method="latent_mas", arch="sequential", control=None, realign=True, task="gsm8k"):
    lat = method == "latent_mas"
    return {"model": "m", "task": task, "method": method, "arch": None if method == "baseline" else arch,
            "latent_steps": 10 if lat else None, "realign": realign if lat else None, "memory": "all" if lat else None,
            "control": control, "seed": seed, "sample_id": sample_id, "status": "ok", "correct": bool(correct)}


def _write(path, outcomes, seeds=(0,), **kw):
    with open(path, "w") as fh:
        for seed in seeds:
            for i, c in enumerate(outcomes):
                fh.write(json.dumps(_rec(f"s{i}", seed, c, **kw)) + "\n")
    return path


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (3, 3), (0, 5), (7, 2), (1, 12), (20, 21), (0, 1)])
def test_mcnemar_matches_scipy_binomial_test(a_only, b_only):
    """Catches a one-sided test, a normal approximation or a wrong tail (ties and no-discordance included)."""
    want = 1.0 if a_only + b_only == 0 else binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert mcnemar_exact_p(a_only, b_only) == pytest.approx(want, rel=1e-12)


def test_holm_by_hand():
    """Catches Bonferroni (x m for all), a missing monotonicity step, or results in sorted instead of input order:
    p = (0.01, 0.04, 0.03, 0.5) -> (0.04, max(0.08, 0.09) = 0.09, 0.09, 0.5)."""
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_paired_bootstrap_agrees_with_the_normal_interval_and_is_seeded():
    """Catches an unpaired bootstrap (resampling the two sides independently: a much wider interval) or an unseeded
    one: on 400 pairs it matches delta +- 1.96 sd(d)/sqrt(n) to within 1.5 points, and reruns agree exactly."""
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.6).astype(np.int8)
    b = a.copy()
    flip = rng.random(400) < 0.15  # strongly paired: b differs from a on ~15% of the samples
    b[flip] = 1 - b[flip]
    d = a.astype(float) - b
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    lo, hi = paired_bootstrap_ci(a, b)
    assert lo == pytest.approx(d.mean() - half, abs=0.015) and hi == pytest.approx(d.mean() + half, abs=0.015)
    assert (lo, hi) == paired_bootstrap_ci(a, b)


def test_compare_matches_a_hand_computation_with_ties(tmp_path):
    """Catches pairing by position instead of by (sample, seed), a swapped delta sign, or wrong discordant counts:
    two seeds, 4 vs 2 discordant pairs checked by hand, then a tie (2 vs 2 per seed: delta 0, p = 1)."""
    a = [1, 1, 0, 0, 1, 0, 1, 1]
    b = [0, 1, 1, 0, 1, 0, 0, 1]  # A only: s0, s6; B only: s2 -> per seed 2 / 1
    fa = _write(tmp_path / "a.jsonl", a, seeds=(0, 1))
    fb = tmp_path / "b.jsonl"
    recs = [_rec(f"s{i}", seed, c, method="text_mas") for seed in (1, 0) for i, c in reversed(list(enumerate(b)))]
    fb.write_text("".join(json.dumps(r) + "\n" for r in recs))  # another order: pairing must not depend on it
    (row,) = compare_files([fa], [fb])
    assert (row.n, row.discordant_a, row.discordant_b) == (16, 4, 2)
    assert row.acc_a == pytest.approx(10 / 16) and row.acc_b == pytest.approx(8 / 16)
    assert row.delta == pytest.approx(2 / 16)
    assert row.p_mcnemar == pytest.approx(binomtest(4, 6, 0.5).pvalue)
    assert row.ci_lo <= row.delta <= row.ci_hi
    assert row.p_holm == row.p_mcnemar  # one row: nothing to adjust
    tie_b = [0, 1, 1, 1, 1, 0, 1, 0]  # A only: s0, s7; B only: s2, s3 -> a tie
    (tie,) = compare_files([fa], [_write(tmp_path / "tie.jsonl", tie_b, seeds=(0, 1), method="text_mas")])
    assert tie.delta == 0 and tie.p_mcnemar == 1.0 and tie.ci_lo <= 0 <= tie.ci_hi


def test_all_concordant_pairs_give_p_one_and_a_zero_interval(tmp_path):
    """Catches a division by zero (no discordant pair) or an interval that is not degenerate when A == B."""
    out = [1, 0, 1, 1, 0]
    (row,) = compare_files([_write(tmp_path / "a.jsonl", out)], [_write(tmp_path / "b.jsonl", out, method="baseline")])
    assert row.p_mcnemar == 1.0 and (row.ci_lo, row.ci_hi) == (0.0, 0.0) and row.delta == 0.0
    assert row.arch == "sequential"  # the single agent (no arch) pairs with the MAS cell's arch


def test_mismatched_sample_sets_are_an_error_naming_the_ids(tmp_path, capsys):
    """Catches a silent intersection: a sample (or seed) on one side only fails, naming it and the side."""
    fa = _write(tmp_path / "a.jsonl", [1, 0, 1, 1])
    fb = _write(tmp_path / "b.jsonl", [1, 0, 1], method="text_mas")
    with pytest.raises(CompareError, match=r"1 pair\(s\) missing from B .*s3@seed0"):
        compare_files([fa], [fb])
    fc = _write(tmp_path / "c.jsonl", [1, 0, 1, 1], seeds=(0, 1), method="text_mas")
    with pytest.raises(CompareError, match=r"4 pair\(s\) missing from A .*s0@seed1"):
        compare_files([fa], [fc])
    assert cli_main([str(fa), str(fb)]) == 2
    assert "s3@seed0" in capsys.readouterr().err


def test_compare_cli_prints_the_table_and_flags_small_n(tmp_path, capsys):
    """Catches a table that hides a small n: the row and the header both say so."""
    fa = _write(tmp_path / "a.jsonl", [1, 1, 1, 0])
    fb = _write(tmp_path / "b.jsonl", [0, 0, 1, 0], method="text_mas")
    assert cli_main([str(fa), str(fb), "--out", str(tmp_path / "t.md")]) == 0
    text = capsys.readouterr().out
    assert "| 4 (small n) |" in text and "fewer than 30 pairs" in text
    assert text == (tmp_path / "t.md").read_text()
    assert f"| {binomtest(2, 2, 0.5).pvalue:.2g} |" in text


def test_significance_table_compares_latent_mas_with_text_single_and_its_controls(tmp_path):
    """Catches a significance table that misses a reference, compares a control with the wrong base cell, or adjusts
    p-values per row instead of across the table (Holm checked against the rows' own McNemar p)."""
    files = [
        _write(tmp_path / "lm.jsonl", [1, 1, 1, 1, 0, 1]),
        _write(tmp_path / "tm.jsonl", [0, 0, 1, 0, 0, 0], method="text_mas"),
        _write(tmp_path / "bl.jsonl", [1, 1, 1, 0, 0, 1], method="baseline"),
        _write(tmp_path / "nt.jsonl", [1, 1, 0, 1, 0, 1], control="no_transfer"),
        _write(tmp_path / "id.jsonl", [1, 0, 1, 1, 0, 1], realign=False),
        _write(tmp_path / "ro.jsonl", [0, 0, 0, 1, 0, 1], realign=False, control="map_random_orthogonal"),
        _write(tmp_path / "other_task.jsonl", [1, 1], task="arc_easy", method="text_mas"),
    ]
    rows = write_significance(files, tmp_path / "out")
    ident, wa = "LatentMAS (m=10, identity map)", "LatentMAS (m=10)"
    assert [(r.label_a, r.label_b) for r in rows] == [
        (ident, "TextMAS"), (ident, "Single"),  # realign off is a LatentMAS setting too (its controls: none here)
        (wa, "TextMAS"), (wa, "Single"), (wa, ident), (wa, "LatentMAS (m=10, random orthogonal map)"),
        (wa, "LatentMAS (m=10, no transfer)")]  # controls in name order
    assert rows[3].discordant_a == 1 and rows[3].discordant_b == 0  # LatentMAS vs single agent, counted by hand
    assert [r.p_holm for r in rows] == pytest.approx(holm([r.p_mcnemar for r in rows]))
    md = (tmp_path / "out" / "significance.md").read_text()
    assert "Small n: 7 of 7 comparisons" in md and md.count(" (small n) |") == 7
    csv_lines = (tmp_path / "out" / "significance.csv").read_text().splitlines()
    assert len(csv_lines) == 8 and csv_lines[0].startswith("model,task,arch,label_a")
    assert len(comparisons([])) == 0
