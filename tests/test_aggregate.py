"""latentmas aggregate: numbers against hand computations, table layout, determinism, input errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from latentmas.report import aggregate as agg
from latentmas.report.stats import t_central_prob, t_quantile_two_sided, wilson_interval

Z975 = 1.959963984540054  # standard normal 0.975 quantile
T975 = {1: 12.706204736174703, 2: 4.302652729749464, 4: 2.7764451051977987, 9: 2.2621571627409915,
        29: 2.045229642132703}  # Student-t 0.975 quantiles (statistical tables)


def wilson_by_hand(k: int, n: int, z: float = Z975) -> tuple[float, float]:
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def rec(model, task, method, seed, i, correct, *, arch=None, m=None, realign=None, memory="all", status="ok",
        prompt=100, latent=0, generated=50, wall=1.0):
    r = {
        "schema": 1, "cell": f"{model}-{task}-{method}", "config_hash": "x", "task": task,
        "sample_id": f"{task}/{i:04d}", "index": i, "method": method, "arch": arch, "model": model, "seed": seed,
        "latent_steps": m, "realign": realign, "memory": memory, "greedy": True, "max_new_tokens": 64,
        "status": status, "error": None if status == "ok" else "cuda oom at batch size 1", "final_text": "...",
        "gold": "1", "agents": [],
        "tokens": {"prompt": prompt, "latent": latent, "generated": generated, "total": prompt + latent + generated},
        "wall_s": wall, "peak_mem_mb": 1.0, "device": "cpu", "dtype": "float32", "batch_size": 1, "versions": {},
        "prediction": "1" if correct else "2", "correct": correct,
        "reason": "correct" if correct else ("inference_failed: oom" if status == "failed" else "wrong"),
    }
    return r


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def pattern(n_correct: int, n: int = 10) -> list[bool]:
    return [i < n_correct for i in range(n)]


def build_records() -> tuple[list[dict], list[dict]]:
    """Two files' worth of records with known correctness patterns.

    m1/gsm8k:
      baseline          seed 0: 7/10 correct                             -> Wilson on 7/10
      text_mas seq      seeds 0,1,2: 5,6,7 /10; generated 300+20i; wall 4 -> t-interval over (0.5, 0.6, 0.7)
      latent_mas seq    seeds 0,1,2: 8,8,8 /10, m=10, realign; seed 1 sample 9 failed; generated 100, latent 30,
                        wall 1.0 (ok samples) -> seeds identical -> Wilson on 24/30; speedup 4; reduction 1-100/390
      latent_mas hier   seed 0: 6/10, m=10 (no text_mas hier)         -> speedup null
      latent_mas seq    seed 0: 9/10, m=20 (a latent_steps sweep)
    m2/arc_easy:
      baseline seed 0 4/10; text_mas seq seed 0 6/10
    """
    a, b = [], []
    for i, c in enumerate(pattern(7)):
        a.append(rec("m1", "gsm8k", "baseline", 0, i, c, generated=200, wall=2.0))
    for seed, k in ((0, 5), (1, 6), (2, 7)):
        for i, c in enumerate(pattern(k)):
            a.append(rec("m1", "gsm8k", "text_mas", seed, i, c, arch="sequential", prompt=500,
                         generated=300 + 20 * i, wall=4.0))
    for seed in (0, 1, 2):
        for i, c in enumerate(pattern(8)):
            if seed == 1 and i == 9:
                b.append(rec("m1", "gsm8k", "latent_mas", seed, i, False, arch="sequential", m=10, realign=True,
                             status="failed", prompt=0, latent=0, generated=0, wall=0.0))
            else:
                b.append(rec("m1", "gsm8k", "latent_mas", seed, i, c, arch="sequential", m=10, realign=True,
                             prompt=400, latent=30, generated=100, wall=1.0))
    for i, c in enumerate(pattern(6)):
        b.append(rec("m1", "gsm8k", "latent_mas", 0, i, c, arch="hierarchical", m=10, realign=True, latent=40,
                     generated=80))
    for i, c in enumerate(pattern(9)):
        b.append(rec("m1", "gsm8k", "latent_mas", 0, i, c, arch="sequential", m=20, realign=True, latent=60,
                     generated=100, wall=2.0))
    for i, c in enumerate(pattern(4)):
        a.append(rec("m2", "arc_easy", "baseline", 0, i, c))
    for i, c in enumerate(pattern(6)):
        a.append(rec("m2", "arc_easy", "text_mas", 0, i, c, arch="sequential"))
    return a, b


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("agg")
    a, b = build_records()
    fa = write_jsonl(d / "a.jsonl", a)
    fb = write_jsonl(d / "b.jsonl", b)
    out = d / "out"
    assert agg.cli_main([str(fa), str(fb), "--out-dir", str(out)]) == 0
    settings = pl.read_parquet(out / "settings.parquet")
    return {"dir": d, "fa": fa, "fb": fb, "out": out, "settings": settings}


def setting(settings: pl.DataFrame, **kw) -> dict:
    df = settings
    for k, v in kw.items():
        df = df.filter(pl.col(k).is_null() if v is None else pl.col(k) == v)
    assert df.height == 1, (kw, df)
    return df.to_dicts()[0]


# ---------------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("k,n", [(7, 10), (0, 10), (10, 10), (1, 3), (24, 30), (50, 100)])
def test_wilson_matches_hand_formula(k, n):
    lo, hi = wilson_interval(k, n)
    elo, ehi = wilson_by_hand(k, n)
    assert lo == pytest.approx(max(0.0, elo), abs=1e-12)
    assert hi == pytest.approx(min(1.0, ehi), abs=1e-12)


def test_wilson_7_of_10_reference_values():
    lo, hi = wilson_interval(7, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)  # textbook value for 7/10 at 95%


def test_wilson_against_scipy_if_installed():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(7, 10), (3, 17), (24, 30)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_tables(df):
    assert t_quantile_two_sided(0.95, df) == pytest.approx(T975[df], rel=1e-9)
    assert t_central_prob(T975[df], df) == pytest.approx(0.95, abs=1e-10)


# ---------------------------------------------------------------------------------------------------- settings


def test_setting_count_and_order(run):
    settings = run["settings"]
    assert settings.height == 7
    keys = settings.select("model", "task", "method", "arch", "latent_steps").rows()
    assert keys == [
        ("m1", "gsm8k", "baseline", None, None),
        ("m1", "gsm8k", "text_mas", "sequential", None),
        ("m1", "gsm8k", "latent_mas", "sequential", 10),
        ("m1", "gsm8k", "latent_mas", "sequential", 20),
        ("m1", "gsm8k", "latent_mas", "hierarchical", 10),
        ("m2", "arc_easy", "baseline", None, None),
        ("m2", "arc_easy", "text_mas", "sequential", None),
    ]


def test_single_seed_setting_uses_wilson(run):
    r = setting(run["settings"], model="m1", method="baseline")
    assert (r["n_samples"], r["n_seeds"], r["n_correct"], r["n_failed"]) == (10, 1, 7, 0)
    assert r["accuracy"] == pytest.approx(0.7)
    lo, hi = wilson_by_hand(7, 10)
    assert r["ci_method"] == "wilson"
    assert (r["acc_ci95_lo"], r["acc_ci95_hi"]) == pytest.approx((lo, hi), abs=1e-12)
    assert (r["acc_wilson95_lo"], r["acc_wilson95_hi"]) == pytest.approx((lo, hi), abs=1e-12)
    assert r["acc_ci95_half"] == pytest.approx((hi - lo) / 2)
    assert r["acc_t95_lo"] is None and r["acc_t95_hi"] is None and r["acc_seed_sd"] is None
    assert r["acc_per_seed"] == [0.7] and r["seeds"] == [0]
    assert r["tokens_generated_mean"] == 200 and r["wall_s_mean"] == 2.0
    assert r["speedup_vs_text_mas"] is None and r["token_reduction_vs_text_mas"] is None


def test_three_seed_t_interval(run):
    r = setting(run["settings"], model="m1", method="text_mas")
    assert (r["n_samples"], r["n_seeds"], r["n_correct"]) == (30, 3, 18)
    assert r["acc_per_seed"] == pytest.approx([0.5, 0.6, 0.7])
    assert r["n_samples_per_seed"] == [10, 10, 10]
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["acc_seed_sd"] == pytest.approx(0.1)
    half = T975[2] * 0.1 / math.sqrt(3)  # = 0.24841...
    assert r["ci_method"] == "t_seeds"
    assert r["acc_ci95_lo"] == pytest.approx(0.6 - half, abs=1e-9)
    assert r["acc_ci95_hi"] == pytest.approx(0.6 + half, abs=1e-9)
    assert (r["acc_t95_lo"], r["acc_t95_hi"]) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-9)
    assert r["acc_ci95_half"] == pytest.approx(half, abs=1e-9)
    wl, wh = wilson_by_hand(18, 30)
    assert (r["acc_wilson95_lo"], r["acc_wilson95_hi"]) == pytest.approx((wl, wh), abs=1e-12)
    # tokens: prompt 500, generated 300 + 20 i over i = 0..9 -> mean 390
    assert r["tokens_prompt_mean"] == 500 and r["tokens_latent_mean"] == 0
    assert r["tokens_generated_mean"] == pytest.approx(390.0)
    assert r["tokens_total_mean"] == pytest.approx(890.0)
    assert r["wall_s_mean"] == pytest.approx(4.0)


def test_identical_seeds_fall_back_to_wilson_and_failed_sample_handling(run):
    r = setting(run["settings"], model="m1", method="latent_mas", arch="sequential", latent_steps=10)
    # seed 1 sample 9 failed (was incorrect anyway): 8, 8, 8 correct out of 10 each
    assert (r["n_samples"], r["n_correct"], r["n_failed"], r["n_cost"]) == (30, 24, 1, 29)
    assert r["acc_per_seed"] == pytest.approx([0.8, 0.8, 0.8])
    assert r["acc_seed_sd"] == 0.0
    assert (r["acc_t95_lo"], r["acc_t95_hi"]) == pytest.approx((0.8, 0.8))  # degenerate, reported but not primary
    assert r["ci_method"] == "wilson"
    assert (r["acc_ci95_lo"], r["acc_ci95_hi"]) == pytest.approx(wilson_by_hand(24, 30), abs=1e-12)
    # cost means over the 29 ok samples only (the failed one's zeros are not averaged in)
    assert r["tokens_prompt_mean"] == 400 and r["tokens_latent_mean"] == 30 and r["tokens_generated_mean"] == 100
    assert r["tokens_total_mean"] == 530 and r["wall_s_mean"] == 1.0


def test_speedup_and_token_reduction(run):
    settings = run["settings"]
    r10 = setting(settings, model="m1", method="latent_mas", arch="sequential", latent_steps=10)
    assert r10["speedup_vs_text_mas"] == pytest.approx(4.0 / 1.0)
    assert r10["token_reduction_vs_text_mas"] == pytest.approx(1 - 100 / 390)
    assert r10["token_reduction_incl_latent_vs_text_mas"] == pytest.approx(1 - 130 / 390)
    r20 = setting(settings, model="m1", method="latent_mas", arch="sequential", latent_steps=20)
    assert r20["speedup_vs_text_mas"] == pytest.approx(2.0)
    assert r20["token_reduction_vs_text_mas"] == pytest.approx(1 - 100 / 390)
    assert r20["token_reduction_incl_latent_vs_text_mas"] == pytest.approx(1 - 160 / 390)
    hier = setting(settings, model="m1", method="latent_mas", arch="hierarchical")
    assert hier["speedup_vs_text_mas"] is None and hier["token_reduction_vs_text_mas"] is None
    for method in ("baseline", "text_mas"):
        for r in settings.filter(pl.col("method") == method).to_dicts():
            assert r["speedup_vs_text_mas"] is None


def test_text_mas_reference_prefers_same_memory(tmp_path):
    recs = [rec("m", "gsm8k", "text_mas", 0, 0, True, arch="sequential", memory="all", wall=6.0),
            rec("m", "gsm8k", "text_mas", 0, 0, True, arch="sequential", memory="previous", wall=3.0),
            rec("m", "gsm8k", "latent_mas", 0, 0, True, arch="sequential", m=4, realign=True, memory="previous",
                wall=1.5),
            rec("m", "gsm8k", "latent_mas", 0, 0, True, arch="sequential", m=4, realign=True,
                memory="latent_only", wall=1.5)]
    out = tmp_path / "out"
    agg.aggregate([write_jsonl(tmp_path / "x.jsonl", recs)], out)
    settings = pl.read_parquet(out / "settings.parquet")
    assert setting(settings, method="latent_mas", memory="previous")["speedup_vs_text_mas"] == pytest.approx(2.0)
    # two text_mas candidates, neither with memory latent_only -> ambiguous -> null
    assert setting(settings, method="latent_mas", memory="latent_only")["speedup_vs_text_mas"] is None


def test_per_seed_table(run):
    ps = pl.read_parquet(run["out"] / "per_seed.parquet")
    assert ps.height == 1 + 3 + 3 + 1 + 1 + 1 + 1
    t = ps.filter(pl.col("method") == "text_mas", pl.col("model") == "m1").sort("seed")
    assert t["seed"].to_list() == [0, 1, 2]
    assert t["accuracy"].to_list() == pytest.approx([0.5, 0.6, 0.7])
    assert t["n_correct"].to_list() == [5, 6, 7]
    lm = ps.filter(pl.col("method") == "latent_mas", pl.col("latent_steps") == 10,
                   pl.col("arch") == "sequential").sort("seed")
    assert lm["n_failed"].to_list() == [0, 1, 0]
    assert lm["n_cost"].to_list() == [10, 9, 10]


def test_csv_matches_parquet(run):
    csv = pl.read_csv(run["out"] / "settings.csv")
    pq = run["settings"]
    assert csv.columns == pq.columns == list(agg.SETTING_SCHEMA)
    assert csv["accuracy"].to_list() == pq["accuracy"].to_list()
    assert json.loads(csv["acc_per_seed"][1]) == pq["acc_per_seed"][1].to_list()
    assert json.loads(csv["seeds"][1]) == [0, 1, 2]


def test_summary(run):
    s = json.loads((run["out"] / "summary.json").read_text())
    assert s["n_settings"] == 7 and s["n_samples"] == 10 + 30 + 30 + 10 + 10 + 10 + 10 and s["n_failed"] == 1
    assert s["models"] == ["m1", "m2"] and s["tasks"] == ["gsm8k", "arc_easy"]
    assert s["methods"] == ["baseline", "text_mas", "latent_mas"] and s["archs"] == ["sequential", "hierarchical"]
    assert s["n_settings_ci_t_seeds"] == 1 and s["n_latent_mas_settings_with_text_mas_match"] == 2
    assert [i["n_records"] for i in s["inputs"]] == [60, 50]
    assert "generated_at" not in json.dumps(s)


# ---------------------------------------------------------------------------------------------------- Markdown


def md_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """(section heading, rows of table cells) for each Markdown table in ``text``."""
    out, heading, rows = [], None, []
    for line in text.splitlines() + [""]:
        if line.startswith("## "):
            heading = line[3:]
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            out.append((heading, rows))
            rows = []
    return out


def test_accuracy_table_layout(run):
    text = (run["out"] / "table_accuracy.md").read_text(encoding="utf-8")
    tables = md_tables(text)
    assert [h for h, _ in tables] == ["Sequential MAS (paper Table 1 layout)",
                                      "Hierarchical MAS (paper Table 2 layout)"]
    seq = tables[0][1]
    assert seq[0] == ["task", "m1 Single", "m1 TextMAS (sequential)", "m1 LatentMAS (sequential, m=10)",
                      "m1 LatentMAS (sequential, m=20)", "m2 Single", "m2 TextMAS (sequential)"]
    assert seq[1] == [":---"] + ["---:"] * 6
    assert [row[0] for row in seq[2:]] == ["gsm8k", "arc_easy"]
    lo, hi = wilson_by_hand(7, 10)
    assert seq[2][1] == f"70.0 ± {100 * (hi - lo) / 2:.1f}†"
    assert seq[2][2] == f"60.0 ± {100 * T975[2] * 0.1 / math.sqrt(3):.1f}" == "60.0 ± 24.8"
    assert seq[2][3].startswith("80.0 ± ") and seq[2][3].endswith("†‡")  # Wilson fallback + failed samples
    assert seq[2][5] == "—" and seq[3][1] == "—"  # m2 did not run gsm8k, m1 did not run arc_easy
    hier = tables[1][1]
    assert hier[0] == ["task", "m1 Single", "m1 LatentMAS (hierarchical, m=10)", "m2 Single"]
    assert len(hier) == 2 + 2


def test_tokens_and_speed_tables(run):
    tok = md_tables((run["out"] / "table_tokens.md").read_text(encoding="utf-8"))
    assert len(tok) == 4  # output tokens and total tokens, each with a sequential and a hierarchical section
    gen_seq = tok[0][1]
    red = 100 * (1 - 100 / 390)
    assert gen_seq[2][1:5] == ["200", "390", f"100 (-{red:.1f}%)", f"100 (-{red:.1f}%)"]
    total_seq = tok[2][1]
    assert total_seq[2][2] == "890 = 500 + 0 + 390"
    assert total_seq[2][3] == "530 = 400 + 30 + 100"
    speed = md_tables((run["out"] / "table_speed.md").read_text(encoding="utf-8"))
    assert speed[0][1][2][1:5] == ["2.00 s", "4.00 s", "1.00 s (4.00×)", "2.00 s (2.00×)"]
    assert speed[1][1][2][2] == "1.00 s"  # hierarchical LatentMAS: no TextMAS to compare with


def test_single_agent_only_table(tmp_path):
    recs = [rec("m", "gsm8k", "baseline", 0, i, c) for i, c in enumerate(pattern(3))]
    out = tmp_path / "out"
    agg.aggregate([write_jsonl(tmp_path / "x.jsonl", recs)], out)
    tables = md_tables((out / "table_accuracy.md").read_text(encoding="utf-8"))
    assert [h for h, _ in tables] == ["Single agent only"]
    assert tables[0][1][0] == ["task", "m Single"]


def test_pipe_in_model_name_is_escaped(tmp_path):
    recs = [rec("a|b", "gsm8k", "baseline", 0, 0, True)]
    out = tmp_path / "out"
    agg.aggregate([write_jsonl(tmp_path / "x.jsonl", recs)], out)
    assert "| task | a\\|b Single |" in (out / "table_accuracy.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- determinism


def test_outputs_byte_identical_across_runs_and_input_order(run, tmp_path):
    out2 = tmp_path / "again"
    assert agg.cli_main([str(run["fb"]), str(run["fa"]), "--out-dir", str(out2)]) == 0  # reversed order
    for name in agg.OUTPUT_FILES:
        assert (run["out"] / name).read_bytes() == (out2 / name).read_bytes(), name


def test_shuffled_records_give_same_bytes(run, tmp_path):
    a, b = build_records()
    recs = list(reversed(a + b))
    f = write_jsonl(tmp_path / "one.jsonl", recs)
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    agg.aggregate([f], out1)
    agg.aggregate([f], out2)
    for name in agg.OUTPUT_FILES:
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes(), name
    for name in ("settings.parquet", "settings.csv", "per_seed.csv", "table_accuracy.md", "table_tokens.md",
                 "table_speed.md"):  # summary.json differs only by the input file list
        assert (out1 / name).read_bytes() == (run["out"] / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------------- errors


def _error(tmp_path, records, capsys, *, blank_first=False) -> str:
    f = tmp_path / "bad.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in records)
    f.write_text(("\n" if blank_first else "") + text, encoding="utf-8")
    assert agg.cli_main([str(f), "--out-dir", str(tmp_path / "out")]) == 2  # bad input
    err = capsys.readouterr().err
    assert not (tmp_path / "out" / "settings.parquet").exists()
    return err


def test_missing_field_names_file_line_sample_and_field(tmp_path, capsys):
    good = rec("m", "gsm8k", "baseline", 0, 0, True)
    bad = rec("m", "gsm8k", "baseline", 0, 1, True)
    del bad["correct"]
    err = _error(tmp_path, [good, bad], capsys, blank_first=True)
    assert f"{tmp_path / 'bad.jsonl'}:3" in err  # blank line 1, good line 2, bad line 3
    assert "'gsm8k/0001'" in err and "'correct'" in err and "is missing" in err and "latentmas score" in err


@pytest.mark.parametrize("mutate,field,words", [
    (lambda r: r["tokens"].pop("generated"), "tokens.generated", "is missing"),
    (lambda r: r.pop("model"), "model", "is missing"),
    (lambda r: r.pop("seed"), "seed", "is missing"),
    (lambda r: r.update(seed="0"), "seed", "must be an integer"),
    (lambda r: r.update(method="cot"), "method", "must be one of"),
    (lambda r: r.update(arch="sequential"), "arch", "must be null for method 'baseline'"),
    (lambda r: r.update(latent_steps=4), "latent_steps", "must be null unless"),
    (lambda r: r.update(correct=1), "correct", "must be true or false"),
    (lambda r: r.update(status="failed", correct=True), "correct", "status 'failed'"),
    (lambda r: r["tokens"].update(total=1), "tokens.total", "not prompt + latent + generated"),
    (lambda r: r.update(wall_s=float("nan")), "wall_s", "finite non-negative"),
    (lambda r: r.update(wall_s=None), "wall_s", "finite non-negative"),
])
def test_invalid_fields(tmp_path, capsys, mutate, field, words):
    r = rec("m", "gsm8k", "baseline", 0, 5, True)
    mutate(r)
    err = _error(tmp_path, [r], capsys)
    assert f"{tmp_path / 'bad.jsonl'}:1" in err and f"'{field}'" in err and words in err
    if "sample_id" in r:
        assert "'gsm8k/0005'" in err


def test_latent_mas_needs_latent_steps_and_realign(tmp_path, capsys):
    r = rec("m", "gsm8k", "latent_mas", 0, 0, True, arch="sequential", m=None, realign=True)
    assert "'latent_steps'" in _error(tmp_path, [r], capsys)
    r = rec("m", "gsm8k", "latent_mas", 0, 0, True, arch="sequential", m=3, realign=None)
    assert "'realign'" in _error(tmp_path, [r], capsys)


def test_failed_sample_may_lack_costs(tmp_path):
    r = rec("m", "gsm8k", "baseline", 0, 0, False, status="failed")
    del r["tokens"], r["wall_s"]
    ok = rec("m", "gsm8k", "baseline", 0, 1, True, generated=10, wall=3.0)
    out = tmp_path / "out"
    agg.aggregate([write_jsonl(tmp_path / "x.jsonl", [r, ok])], out)
    c = pl.read_parquet(out / "settings.parquet").to_dicts()[0]
    assert (c["n_samples"], c["n_failed"], c["accuracy"], c["tokens_generated_mean"], c["wall_s_mean"]) == \
        (2, 1, 0.5, 10.0, 3.0)


def test_all_failed_setting_has_null_costs_and_na_in_tables(tmp_path):
    r = rec("m", "gsm8k", "baseline", 0, 0, False, status="failed")
    out = tmp_path / "out"
    agg.aggregate([write_jsonl(tmp_path / "x.jsonl", [r])], out)
    c = pl.read_parquet(out / "settings.parquet").to_dicts()[0]
    assert c["n_cost"] == 0 and c["tokens_total_mean"] is None and c["wall_s_mean"] is None
    assert "| gsm8k | n/a |" in (out / "table_speed.md").read_text(encoding="utf-8")


def test_duplicate_sample_is_an_error(tmp_path, capsys):
    r = rec("m", "gsm8k", "baseline", 0, 0, True)
    f1 = write_jsonl(tmp_path / "s1.jsonl", [r])
    f2 = write_jsonl(tmp_path / "s2.jsonl", [rec("m", "gsm8k", "baseline", 0, 1, True), r])
    assert agg.cli_main([str(f1), str(f2), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "duplicate sample" in err and f"{f2}:2" in err and f"{f1}:1" in err and "'gsm8k/0000'" in err


def test_empty_and_missing_inputs(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert agg.cli_main([str(empty), "--out-dir", str(tmp_path / "out")]) == 2
    assert "no scored records" in capsys.readouterr().err
    assert agg.cli_main([str(tmp_path / "nope.jsonl"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "nope.jsonl: input file not found" in capsys.readouterr().err
    with pytest.raises(agg.AggregateInputError, match="no input files"):
        agg.aggregate([], tmp_path / "out")
    with pytest.raises(SystemExit):
        agg.cli_main(["--out-dir", str(tmp_path / "out")])  # argparse: at least one input


def test_setting_mixing_run_settings_is_an_error(tmp_path, capsys):
    r1 = rec("m", "gsm8k", "baseline", 0, 0, True)
    r2 = rec("m", "gsm8k", "baseline", 1, 0, True)
    r2["max_new_tokens"] = 1024
    err = _error(tmp_path, [r1, r2], capsys)
    assert f"{tmp_path / 'bad.jsonl'}:2" in err and "'max_new_tokens'" in err and "1024" in err
    assert f"{tmp_path / 'bad.jsonl'}:1" in err and "must not be pooled" in err


# ---------------------------------------------------------------------------------------------------- golden


GOLDEN = Path(__file__).resolve().parent / "golden" / "aggregate"


def test_outputs_match_the_committed_golden_tables(tmp_path, monkeypatch):
    """Refactors keep every table byte-identical: the golden outputs are those of the pre-polars aggregator
    (commit 44d6e03; since then only the unit renamed cell -> setting, wide sections split per model and main's
    accuracy_strict column added -- CSVs byte-identical to main's loop-based aggregator at each step) from tests/golden/aggregate/scored.jsonl (tests/golden/make_scored.py: 2 models, numeric,
    choice, code and unknown tasks, all methods and archs, sweeps, failures, an ambiguous TextMAS reference). Catches
    any change of a number's last bit, of the row order, of a label or of the Markdown layout."""
    monkeypatch.chdir(GOLDEN.parent.parent.parent)  # summary.json records the input path as given
    agg.aggregate(["tests/golden/aggregate/scored.jsonl"], tmp_path)
    for expected in sorted((GOLDEN / "expected").iterdir()):
        assert (tmp_path / expected.name).read_bytes() == expected.read_bytes(), expected.name
        if expected.suffix == ".csv":
            pq = pl.read_parquet(tmp_path / f"{expected.stem}.parquet")
            assert pq.height == pl.read_csv(expected).height


def test_wide_sections_split_into_one_table_per_model(tmp_path):
    """More than MAX_COLUMNS columns in a section -> one table per model, headed by the model, columns without the
    model prefix, only the tasks that model ran. Catches a renderer that always splits or never does."""
    from latentmas.report.markdown import MAX_COLUMNS

    agg.aggregate([GOLDEN / "scored.jsonl"], tmp_path)
    text = (tmp_path / "table_accuracy.md").read_text(encoding="utf-8")
    headings = [h for h, _ in md_tables(text)]
    assert "Sequential MAS (paper Table 1 layout): qwen-a" in headings
    assert "Sequential MAS (paper Table 1 layout): tiny\\|b" in headings
    tables = dict(md_tables(text))
    tiny = tables["Sequential MAS (paper Table 1 layout): tiny\\|b"]
    assert tiny[0][1] == "Single" and len(tiny[0]) - 1 <= MAX_COLUMNS
    assert [r[0] for r in tiny[2:]] == ["gsm8k", "arc_easy", "mbppplus"]  # tiny|b ran no aime2024 / zz_custom
    small = tmp_path / "small"
    agg.aggregate([write_jsonl(tmp_path / "s.jsonl", [rec("m1", "gsm8k", "baseline", 0, 0, True),
                                                       rec("m2", "gsm8k", "baseline", 0, 0, True)])], small)
    assert [h for h, _ in md_tables((small / "table_accuracy.md").read_text(encoding="utf-8"))] == \
        ["Single agent only"]


def test_strict_accuracy_column_only_when_every_record_has_it(tmp_path):
    """`accuracy_strict` is the share of `strict_correct` (scoring.extraction: both), independent of `correct`, and
    null for a setting where any record lacks it. Catches: the column copying `accuracy`, or averaging over a partial
    set of strictly scored records."""
    both = [dict(rec("m1", "gsm8k", "baseline", 0, i, c), extraction="both", strict_correct=(i < 2))
            for i, c in enumerate(pattern(7))]
    partial = [rec("m1", "arc_easy", "baseline", 0, i, c) for i, c in enumerate(pattern(5))]
    partial[0] = dict(partial[0], extraction="both", strict_correct=True)
    samples, _ = agg.load_samples([write_jsonl(tmp_path / "a.jsonl", both + partial)])
    settings, _ = agg.compute_tables(samples)
    by_task = {c["task"]: c for c in settings.to_dicts()}
    assert by_task["gsm8k"]["accuracy"] == 0.7 and by_task["gsm8k"]["accuracy_strict"] == 0.2
    assert by_task["arc_easy"]["accuracy_strict"] is None
